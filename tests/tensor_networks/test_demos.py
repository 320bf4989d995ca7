"""Smoke tests of the grokking and backdoor demos and their models, at toy sizes (seconds, not minutes)."""

from __future__ import annotations

import importlib

import torch

from tl_tensorsim import Report
from tl_tensorsim.models import backdoor as bd
from tl_tensorsim.models import grokking as gk


def test_grokking_fast_logits_is_the_network_forward():
    cfg = gk.GrokkingConfig(p=7, d_hidden=5)
    net = gk.make_model(cfg)
    pairs, labels = gk.all_pairs(7)
    assert torch.allclose(gk.fast_logits(net, pairs, 7), net(gk.one_hot_pairs(pairs, 7)), atol=1e-6)
    assert int(labels[7 * 3 + 5]) == (3 + 5) % 7
    steps = gk.checkpoint_steps(100_000, 100, 5)
    assert len(steps) == 90 and steps[0] == 0 and steps[-1] == 100_000
    assert {1374, 6901, 9633, 13168, 30359, 62092} <= set(steps)  # the paper's reported steps are on the schedule


def test_grokking_demo_runs(tmp_path, monkeypatch):
    demo = importlib.import_module("tl_tensorsim.demos.grokking")
    cfg = gk.GrokkingConfig(p=11, d_hidden=16, steps=300, lr=1e-2, weight_decay=1.0, batch_size=64)
    monkeypatch.setattr(demo, "_settings", lambda full: (cfg, gk.checkpoint_steps(300, 12, 2.0)))
    assert demo.DEFAULT is True and demo.ORDER == 30
    report = Report(tmp_path)
    out = demo.run(report, full=False)
    report.write()
    assert out["n_checkpoints"] >= 5 and len(out["phase_means"]) == 5
    assert len(out["milestones"]) == 3 and 0 <= out["memorize_x_grok"] <= 1
    assert (tmp_path / "figures" / "grokking_similarity.png").stat().st_size > 1000
    text = (tmp_path / "report.md").read_text()
    assert "TN sim to final (paper)" in text and text.count(demo.TITLE) == 0  # the demo runner adds the title


def test_backdoor_demo_runs(tmp_path, monkeypatch):
    demo = importlib.import_module("tl_tensorsim.demos.backdoor")
    cfg = bd.BackdoorConfig(d_hidden=8, clean_steps=60, poison_steps=40, every=20, batch_size=64, lr=1e-2)
    monkeypatch.setattr(demo, "_config", lambda full: cfg)
    report = Report(tmp_path)
    out = demo.run(report, full=False)
    assert set(out["delta"]) >= {"weight cosine", "tensor", "tensor, class-9 slice", "behavioural, clean"}
    assert len(out["class_deltas"]) == 10 and len(out["attack_success"]) == 3
    assert (tmp_path / "figures" / "backdoor_similarity.png").stat().st_size > 1000


def test_detector_delta_and_trigger():
    demo = importlib.import_module("tl_tensorsim.demos.backdoor")
    V = torch.tensor([[1.0, 0.9, 0.2, 0.1], [0.9, 1.0, 0.3, 0.2], [0.2, 0.3, 1.0, 0.8], [0.1, 0.2, 0.8, 1.0]])
    assert abs(demo.detector_delta(V, [False, False, True, True]) - (0.8 - 0.2)) < 1e-6
    x = torch.zeros(3, 64)
    img = bd.stamp(x, 2).reshape(3, 8, 8)
    assert img[:, :2, 6:].eq(1).all() and img.sum() == 3 * 4
