"""`tl-tensorsim demo head_formation`: the induction head forms where induction accuracy jumps."""

from __future__ import annotations

import json

import pytest

from tests.conftest import HAS_HOOKED_TRANSFORMER
from tl_tensorsim import cli


@pytest.mark.slow
def test_head_formation_demo(tmp_path, capsys):
    assert cli.main(["demo", "head_formation", "--out", str(tmp_path)]) == 0
    assert str(tmp_path / "report.md") in capsys.readouterr().out
    text = (tmp_path / "report.md").read_text()
    assert "## Heads forming across training" in text and "figures/head_formation.png" in text
    assert (tmp_path / "figures" / "head_formation.png").stat().st_size > 1000
    (summary,) = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["induction_head"].startswith("L1") and summary["previous_token_head"].startswith("L0")
    assert summary["final_induction_accuracy"] > 0.85
    if not HAS_HOOKED_TRANSFORMER:
        # TransformerLens 4 builds the model as a TransformerBridge, which draws its initial attention weights in
        # another order and scale (W_O std ~0.05 vs ~0.10), so the run differs from the measured one below; the
        # measured claim is checked in the TransformerLens 3.9 leg.
        return
    # measured (seed 0, 1000 steps, checkpoints every 50): accuracy jumps 650 -> 700, the induction head's QK
    # similarity to its final self 600 -> 650: within one checkpoint of each other
    assert abs(summary["similarity_jump_step"] - summary["accuracy_jump_step"]) <= 50
