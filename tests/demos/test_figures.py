"""The demo figures read at a glance: one colour scale per figure, readable labels, titles, axis labels, colour bars.

Each figure function is called on small synthetic results (no training)."""

from __future__ import annotations

import types

import matplotlib
import pytest
import torch

from tl_tensorsim.similarity import CheckpointSimilarity
from tl_tensorsim.tensor_networks import TensorSimilarityMatrix

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

T = 6


def _luminance(colour) -> float:
    r, g, b = to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _matrix(seed: int, low: float) -> TensorSimilarityMatrix:
    g = torch.Generator().manual_seed(seed)
    v = low + (1 - low) * torch.rand(T, T, generator=g, dtype=torch.float64)
    v = (v + v.T) / 2
    v.fill_diagonal_(1.0)
    return TensorSimilarityMatrix(v, steps=list(range(0, 100 * T, 100)))


def _images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_phase_names_are_readable_on_any_colour():
    ax = _matrix(0, 0.9).plot(phases=[("clean", 0, 2), ("poisoned", 3, T - 1)])  # values near 1: yellow
    labels = [t for t in ax.texts if t.get_text() in ("clean", "poisoned")]
    assert len(labels) == 2
    for text in labels:
        box = text.get_bbox_patch()
        assert box is not None, "white text needs a dark box (white on yellow is unreadable)"
        assert _luminance(text.get_color()) - _luminance(box.get_facecolor()) > 0.7
    assert ax.get_xlabel() and ax.get_ylabel()


def test_tensor_similarity_matrix_plot_is_written_where_asked(tmp_path):
    ax = _matrix(1, 0.2).plot(tmp_path / "m" / "matrix.png")
    assert ax.get_images() and (tmp_path / "m" / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_backdoor_panels_share_one_colour_scale_and_the_accuracy_panel_is_labelled():
    from tl_tensorsim.demos import backdoor

    mats = {name: _matrix(i, low) for i, (name, low) in enumerate(zip(backdoor.PAPER_DELTA, (0.5, 0.2, 0.0, -0.4)))}
    steps = list(range(0, 100 * T, 100))
    metrics = {"test_acc": [0.5 + 0.08 * i for i in range(T)], "attack_success": [0.0, 0.0, 0.0, 0.6, 0.9, 0.95]}
    run = types.SimpleNamespace(
        steps=steps, config=types.SimpleNamespace(clean_steps=200, target=9), metric=lambda name: metrics[name]
    )
    fig = backdoor._plot(mats, run, [0.1] * 10)
    limits = {im.get_clim() for im in _images(fig)}
    lowest = float(mats["behavioural, clean"].values.min())
    assert limits == {(lowest, 1.0)}, limits  # the behavioural panel's negative values set them all
    accuracy = fig.axes[5]
    assert accuracy.get_title() and accuracy.get_ylabel(), "the accuracy panel needs a title and a y-label"


def test_grokking_panels_share_one_colour_scale():
    from tl_tensorsim.demos import grokking

    tn, wc, lc = _matrix(1, 0.3), _matrix(2, 0.6), _matrix(3, -0.2)
    metrics = {"val_acc": [0.0, 0.1, 0.3, 0.9, 1.0, 1.0], "train_acc": [0.1, 1.0, 1.0, 1.0, 1.0, 1.0]}
    run = types.SimpleNamespace(steps=tn.steps, metric=lambda name: metrics[name])
    fig = grokking._plot(tn, wc, lc, run, [("start", 0, 2), ("grok", 3, T - 1)])
    assert {im.get_clim() for im in _images(fig)} == {(float(lc.values.min()), 1.0)}
    curves = fig.axes[1]
    assert curves.get_title() and curves.get_ylabel()


def test_head_formation_matrix_panel_has_axis_labels():
    from tl_tensorsim.demos import head_formation

    steps = list(range(0, 100 * T, 100))
    values = torch.rand(4, T, T, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    labels = ["L0H0", "L0H1", "L1H0", "L1H1"]
    res = CheckpointSimilarity(values, labels, steps, "QK", "residual")
    results = {name: res for name in ("tensor QK (residual)", "tensor OV (token)")}
    fig = head_formation._figure(results, [i / T for i in range(T)], steps, "L1H0", "L0H1")
    matrix = next(ax for ax in fig.axes if ax.get_images())
    assert matrix.get_xlabel() and matrix.get_ylabel(), "the T x T panel names its axes"


def test_attention_patterns_have_a_colour_bar():
    from tl_tensorsim.demos import induction
    from tl_tensorsim.models.induction import config_of, load_default, repeated_tokens

    model = load_default()
    fig = induction._plot_patterns(model, repeated_tokens(config_of(model), 1, seed=0), [(0, 0), (1, 0)])
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "attention probability"]
    assert len(bars) == 1 and len(fig.axes) == 3
    assert {im.get_clim() for im in _images(fig) if im.axes not in bars} == {(0.0, 1.0)}


def test_interchange_bars_have_axis_labels():
    from tl_tensorsim.demos import induction

    rows = [{"subspace": name, "accuracy": 0.5, "attention to key": 0.4} for name in ("none (clean run)", "L0H0")]
    ax = induction._plot_interchange(rows).axes[0]
    assert ax.get_title() and ax.get_ylabel() and ax.get_xlabel()
