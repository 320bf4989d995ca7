"""`tl-tensorsim demo induction` on the shipped weights writes its report, figures and headline numbers."""

from __future__ import annotations

import json

import pytest

from tl_tensorsim import cli


@pytest.mark.slow
def test_induction_demo_writes_report(tmp_path, capsys):
    assert cli.main(["demo", "induction", "--out", str(tmp_path)]) == 0
    assert str(tmp_path / "report.md") in capsys.readouterr().out
    text = (tmp_path / "report.md").read_text()
    assert "## Induction circuit in the embedded model" in text and "hooks.interchange" in text
    for name in ("induction_head_scores", "induction_patterns", "induction_interchange", "induction_training"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000, name
        assert f"figures/{name}.png" in text
    (summary,) = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["induction_acc"] > 0.95
    assert summary["prev_token_head"].startswith("L0") and summary["induction_head"].startswith("L1")
    # the previous-token head's write space carries what the induction heads' keys read: interchanging it (at the
    # key positions) hurts far more than a random subspace of the same dimension; interchanging everything destroys
    # induction. Measured: accuracy 0.15 vs 0.76, attention to key 0.11 vs 0.64, everything 0.02.
    assert summary["acc_patch_prev_token_subspace"] < summary["acc_patch_random_subspace"] - 0.4
    assert summary["attn_patch_prev_token_subspace"] < summary["attn_patch_random_subspace"] - 0.3
    assert summary["acc_patch_all"] < 0.1
