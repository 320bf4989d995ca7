"""Figures of an `Explanation`: the 3-d ρ-sets read off a trained network (arXiv 2410.07476, Figure 1: the
vectors that ρ permutes, a tetrahedron in S4's standard irrep, an icosahedron in A5's 3-d irreps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tl_tensorsim.artifacts import save_figure
from tl_tensorsim.proofs.groups.explain import Explanation

__all__ = ["plot_rho_sets"]


def plot_rho_sets(explanation: Explanation, path: str | Path | None = None) -> Any:
    """One 3-d panel per distinct 3-dimensional ρ-set of the explanation's circuits (left and right sets, in circuit
    order; a set equal to one already drawn, or its negative, is skipped): its vectors as points, joined where
    two vectors are nearest neighbours (the largest inner product below 1: a tetrahedron's 6 edges, an
    icosahedron's 30), titled by irrep, size and the number of neurons assigned to the circuit. Saved to `path`
    when given; returns the figure. Raises ValueError when no circuit has a 3-d ρ-set."""
    import matplotlib.pyplot as plt

    panels: list[tuple[str, torch.Tensor, int]] = []
    for c, name in enumerate(explanation.circuit_irrep):
        neurons = int((explanation.assign[:, 0] == c).sum())
        for side, vectors in zip(("left", "right"), explanation.rho_sets(c)):
            if vectors.shape[1] == 3 and not any(_same_set(vectors, v) for _, v, _ in panels):
                panels.append((f"{name} {side}: {len(vectors)} vectors", vectors, neurons))
    if not panels:
        sizes = sorted({len(u) for u in explanation.u})
        raise ValueError(f"explanation: no circuit has a 3-d ρ-set (circuit dimensions {sizes}); nothing to plot")
    fig = plt.figure(figsize=(3.6 * len(panels), 3.8))
    for k, (title, vectors, neurons) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1, projection="3d")
        pts = vectors.numpy()
        gram = vectors @ vectors.T
        nearest = float(gram.masked_fill(gram > 1 - 1e-6, -2.0).max())
        for i, j in (gram > nearest - 1e-6).triu(1).nonzero().tolist():
            ax.plot(*zip(pts[i], pts[j]), color="grey", lw=0.8)
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=30, color="tab:blue", depthshade=False)
        ax.set_title(f"{title}\n({neurons} neurons)", fontsize=9)
        ax.set_box_aspect((1, 1, 1))
    fig.suptitle(f"{explanation.group}: ρ-sets read off the weights", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _same_set(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> bool:
    """Whether the unit vectors of `a` and `b` are the same set, or negatives of each other."""
    if a.shape != b.shape:
        return False
    return any(bool((torch.cdist(a, s * b).amin(1) < tol).all()) for s in (1, -1))
