"""`tl-tensorsim demo group_proofs` writes its section, tables and ρ-set figure (S4 trained briefly here)."""

from __future__ import annotations

import json

import pytest

from tl_tensorsim import cli


def test_group_proofs_demo_writes_report(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import tl_tensorsim.demos.group_proofs as demo

    monkeypatch.setattr(demo, "S4_STEPS", 300)
    monkeypatch.setattr(demo, "SHIPPED_GROUPS", ("S4",))  # the demo itself also proves the shipped A5 and S5
    assert cli.main(["demo", "group_proofs", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "ρ-sets" in text and "45% (100 models)" in text and "group_mlp_S4_seed18 (shipped)" in text
    (summary,) = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["handbuilt_bound"] == 1.0 and summary["models"] == 2
    assert summary["lowrank_bounds"][1] >= 0.95  # the shipped S4 model
    assert summary["fourier_bounds"][1] >= 0.95 and "Fourier bound (irreps)" in text
