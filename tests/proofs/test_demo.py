"""`tl-tensorsim demo max_of_k` writes its section, table and frontier figure (one short-trained seed here; the
demo itself trains 3 seeds with the paper's settings, 10 with --full)."""

from __future__ import annotations

import json

import pytest

from tl_tensorsim import cli
from tl_tensorsim.models import max_of_k as mok


def test_max_of_k_demo_writes_report(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    import tl_tensorsim.demos.max_of_k as demo

    real_train = mok.train
    monkeypatch.setattr(demo, "SEEDS_REDUCED", 1)
    monkeypatch.setattr(
        mok, "train", lambda config, **kw: real_train(mok.MaxOfKConfig(d_vocab=16, steps=300, eval_every=300), **kw)
    )
    assert cli.main(["demo", "max_of_k", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "## Compact proofs" in text and "0.954 ± 0.008" in text and "figures/max_of_k_frontier.png" in text
    assert (tmp_path / "figures" / "max_of_k_frontier.png").stat().st_size > 5000
    (summary,) = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["seeds"] == 1
    assert 0 <= summary["best_subcubic_ratio"] <= summary["cubic_ratio"] <= 1 and summary["brute_force_accuracy"] > 0.5
