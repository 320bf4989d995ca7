"""`ProofResult`: what every proof strategy returns, a certified accuracy bound with its certificate and its cost.

Gross et al. (arXiv 2406.11779) measure a proof by the bound it certifies and the length of its check; here the
length is the FLOP count and wall time of the check, while the (untrusted) search for the proof's parameters is
timed separately (`search_time`), as in the paper's subcubic proofs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure

__all__ = ["ProofComparison", "ProofResult", "pareto_front", "plot_frontier"]


@dataclass(repr=False)
class ProofResult(Artifact):
    """A certified lower bound on a model's accuracy over a finite input distribution.

    `bound` = `n_certified / n_inputs`, the fraction of the (uniform) input distribution every input of which is
    proven correct. `certified` (bool) marks the certified input classes on the grid named by `class_axes` (for the
    Max-of-K proofs: `("query", "max", "nonmax", "copies")`, read by `max_of_k.certified_inputs`; for brute force
    one axis per position, one class per input). `margin` (float64, same grid, optional): a certified lower bound
    on each class's worst-case margin (correct logit minus the largest other), net of the rounding error bound.

    Cost: `wall_time` (seconds) and `flops` (floating-point operations on values) of the proof **check**;
    `flops_bounds`: the extra operations spent on rounding-error bounds; `search_time`: seconds of the untrusted
    search that chose the proof's parameters (not part of the check). `true_accuracy` is filled by `compare`.
    """

    strategy: str
    bound: float
    n_certified: int
    n_inputs: int
    wall_time: float
    flops: float
    certified: Tensor
    class_axes: tuple[str, ...]
    flops_bounds: float = 0.0
    search_time: float = 0.0
    margin: Tensor | None = None
    true_accuracy: float | None = None
    model_name: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        if self.certified.dtype != torch.bool:
            raise ValueError(f"certified: expected a bool tensor; got dtype {self.certified.dtype}")
        if self.certified.ndim != len(self.class_axes):
            raise ValueError(
                f"certified: expected one axis per name in class_axes {list(self.class_axes)}; "
                f"got shape {list(self.certified.shape)}"
            )
        if self.margin is not None:
            expect_shape("margin", self.margin, tuple(self.certified.shape), "the class grid of `certified`")
        if not 0 <= self.n_certified <= self.n_inputs:
            raise ValueError(f"n_certified: expected 0..n_inputs={self.n_inputs}; got {self.n_certified}")
        if abs(self.bound - self.n_certified / self.n_inputs) > 1e-12:
            raise ValueError(
                f"bound: expected n_certified / n_inputs = {self.n_certified / self.n_inputs}; got {self.bound}"
            )

    @property
    def ratio(self) -> float | None:
        """`bound / true_accuracy` (the paper's normalised bound), None while the true accuracy is unknown."""
        if self.true_accuracy is None or self.true_accuracy == 0:
            return None
        return self.bound / self.true_accuracy

    def summary(self) -> dict[str, Any]:
        """One table row: strategy, bound, true accuracy, ratio, FLOPs, check and search seconds."""
        return {
            "strategy": self.strategy,
            "bound": self.bound,
            "true_accuracy": self.true_accuracy,
            "ratio": self.ratio,
            "flops": self.flops,
            "flops_bounds": self.flops_bounds,
            "check_s": self.wall_time,
            "search_s": self.search_time,
        }

    def __repr__(self) -> str:
        ratio = f", ratio {self.ratio:.4f}" if self.ratio is not None else ""
        search = f" + {self.search_time:.3g}s search" if self.search_time else ""
        return (
            f"ProofResult({self.strategy}: bound {self.bound:.6f} ({self.n_certified}/{self.n_inputs}){ratio}, "
            f"{self.flops:.3g} FLOPs, {self.wall_time:.3g}s check{search}, classes {list(self.class_axes)})"
        )


@dataclass(repr=False)
class ProofComparison(Artifact):
    """Every proof strategy run on one model: one `rows` entry per strategy (`ProofResult.summary()`: strategy,
    bound, true accuracy, ratio = bound / true accuracy, FLOPs, check and search seconds), and the results
    themselves in `results` (kept in memory only; `save` stores the rows). arXiv 2406.11779: the
    bound against the proof's length, as in its frontier figure."""

    model_name: str
    true_accuracy: float
    rows: list[dict[str, Any]]
    results: list[ProofResult] | None = field(default=None, compare=False)
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _encode_field(self, name: str, value: Any) -> Any:
        return None if name == "results" else value

    def to_dataframe(self):
        """The rows as a pandas DataFrame, one per strategy."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def frontier(self) -> list[dict[str, Any]]:
        """The rows on the bound-versus-FLOPs frontier: each has a higher ratio than every cheaper proof."""
        return pareto_front(self.rows)

    def plot(self, path=None, ax=None, title: str | None = None):
        """Normalised bound against the FLOPs of the check (log scale), frontier drawn (`plot_frontier`)."""
        return plot_frontier([self], path=path, ax=ax, title=title or f"proofs of {self.model_name}")

    def __repr__(self) -> str:
        best = max(
            (r for r in self.rows if r["ratio"] is not None and "brute" not in r["strategy"]),
            default=None,
            key=lambda r: r["ratio"],
        )
        shown = f", best non-brute-force {best['strategy']} ratio {best['ratio']:.4f}" if best else ""
        return f"ProofComparison({self.model_name}: true accuracy {self.true_accuracy:.6f}, {len(self.rows)} strategies{shown})"


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows (with `flops` and `ratio`) not beaten by a proof that is as cheap or cheaper, sorted by FLOPs."""
    front, best = [], -float("inf")
    for row in sorted((r for r in rows if r.get("ratio") is not None), key=lambda r: (r["flops"], -r["ratio"])):
        if row["ratio"] > best:
            front.append(row)
            best = row["ratio"]
    return front


def plot_frontier(comparisons: list[ProofComparison], path=None, ax=None, title: str | None = None):
    """Normalised bound (bound / true accuracy) against the FLOPs of the proof check, log scale: one point per
    (model, strategy), each strategy's mean over the models marked, and the frontier of the means (the paper's
    bound-versus-FLOPs frontier figure). Saved to `path` when given; returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.8))
    names = list(dict.fromkeys(r["strategy"] for c in comparisons for r in c.rows))
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    means = []
    for i, name in enumerate(names):
        pts = np.array([(r["flops"], r["ratio"]) for c in comparisons for r in c.rows if r["strategy"] == name])
        ax.scatter(pts[:, 0], pts[:, 1], s=12, alpha=0.35, color=colours(i % colours.N))
        mean = {"strategy": name, "flops": float(np.exp(np.log(pts[:, 0]).mean())), "ratio": float(pts[:, 1].mean())}
        ax.scatter(
            [mean["flops"]],
            [mean["ratio"]],
            s=60,
            marker="D",
            color=colours(i % colours.N),
            label=name,
            edgecolor="k",
            linewidth=0.5,
        )
        means.append(mean)
    front = pareto_front(means)
    ax.step(
        [r["flops"] for r in front],
        [r["ratio"] for r in front],
        where="post",
        color="k",
        lw=1,
        ls="--",
        label="frontier (means)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs of the proof check")
    ax.set_ylabel("bound / true accuracy")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(title or f"accuracy bound vs proof length ({len(comparisons)} model{'s' * (len(comparisons) > 1)})")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(ax.figure, path)
