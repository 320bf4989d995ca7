"""`ProofResult` and `ProofComparison`: checks, save/load through `tl_tensorsim.load`, table, frontier, plot."""

from __future__ import annotations

import pytest
import torch

import tl_tensorsim as ts
from tests.proofs.factories import ideal_state, model_with
from tl_tensorsim.proofs import ProofComparison, ProofResult, max_of_k, pareto_front


@pytest.fixture(scope="module")
def comparison():
    return max_of_k.compare(model_with(ideal_state(7, 3, 8, seed=8, noise=0.02)))


def test_compare_tabulates_every_strategy(comparison):
    df = comparison.to_dataframe()
    assert list(df.strategy[:2]) == ["brute_force_tables", "cubic"] and len(df) == 2 + len(max_of_k.SUBCUBIC_VARIANTS)
    assert (df.bound <= comparison.true_accuracy).all() and df.ratio.iloc[0] == 1.0
    assert (df.flops > 0).all()  # (at V = 7 the asymptotic order of the costs does not show yet)
    assert all(r.true_accuracy == comparison.true_accuracy for r in comparison.results)
    front = comparison.frontier()
    assert front[-1]["ratio"] == df.ratio.max() == 1.0
    assert all(a["flops"] <= b["flops"] and a["ratio"] < b["ratio"] for a, b in zip(front, front[1:]))


def test_results_save_and_load(comparison, tmp_path):
    cubic = comparison.results[1]
    cubic.save(tmp_path / "cubic")
    loaded = ts.load(tmp_path / "cubic") if hasattr(ts, "load") else ProofResult.load(tmp_path / "cubic")
    assert isinstance(loaded, ProofResult) and loaded.bound == cubic.bound and loaded.class_axes == max_of_k.CLASS_AXES
    assert torch.equal(loaded.certified, cubic.certified) and torch.equal(loaded.margin, cubic.margin)
    assert "ratio" in repr(loaded)
    comparison.save(tmp_path / "cmp")
    again = ProofComparison.load(tmp_path / "cmp")
    assert again.rows == comparison.rows and again.results is None


def test_plot_frontier(comparison, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    fig = comparison.plot(tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 5000 and fig.axes[0].get_xscale() == "log"


def test_result_checks_its_fields():
    with pytest.raises(ValueError, match="certified: expected a bool tensor"):
        ProofResult("x", 0.5, 1, 2, 0.0, 0.0, torch.zeros(2), ("a",))._check()
    with pytest.raises(ValueError, match="bound: expected n_certified / n_inputs"):
        ProofResult("x", 0.4, 1, 2, 0.0, 0.0, torch.zeros(2, dtype=torch.bool), ("a",))._check()
    with pytest.raises(ValueError, match="margin: expected shape"):
        ProofResult("x", 0.5, 1, 2, 0.0, 0.0, torch.zeros(2, dtype=torch.bool), ("a",), margin=torch.zeros(3))._check()


def test_pareto_front():
    rows = [
        {"flops": 10, "ratio": 0.5},
        {"flops": 5, "ratio": 0.6},
        {"flops": 20, "ratio": 0.9},
        {"flops": 1, "ratio": 0.1},
    ]
    assert [r["flops"] for r in pareto_front(rows)] == [1, 5, 20]
