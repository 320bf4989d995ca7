"""Brute force, the ρ-set proof and the irrep / coset baselines (`baselines`) on group-operation models, tabulated
against their cost (arXiv 2410.07476: bound versus proof time; the frontier plot of `tl_tensorsim.proofs.result`)."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from tl_tensorsim.proofs.groups.baselines import coset, irrep
from tl_tensorsim.proofs.groups.explain import explain, model_group
from tl_tensorsim.proofs.groups.verify import brute_force, rho_set
from tl_tensorsim.proofs.result import ProofComparison, plot_frontier

__all__ = ["compare", "plot"]


def compare(models: list[Any] | Any, progress: bool = True) -> list[ProofComparison]:
    """One `ProofComparison` per GroupMLP: rows for brute force (the true accuracy) and the ρ-set proof with the
    split, pairwise, low-rank and Fourier deviation bounds, and the baselines `irrep` (Chughtai et al.) and `coset`
    (Stander et al.) built on the same explanation (its search time recorded as `search_s`), each with bound,
    ratio, FLOPs and seconds. A tqdm bar counts the models when there are several (`progress=False`: none)."""
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if not models:
        raise ValueError("models: expected a GroupMLP or a non-empty list of them; got an empty list")
    for model in models:
        model_group(model)  # every model checked before the first proof
    out = []
    for model in tqdm(models, desc="group proofs", unit="model", disable=not progress or len(models) == 1):
        exact = brute_force(model)
        t0 = time.perf_counter()
        expl = explain(model)
        search = time.perf_counter() - t0
        proofs = [
            rho_set(model, expl),
            rho_set(model, expl, deviation="pairwise"),
            rho_set(model, expl, deviation="lowrank"),
            rho_set(model, expl, deviation="fourier"),
            irrep(model, expl),
            coset(model, expl),
        ]
        for r in proofs:
            r.search_time = search
        for r in (exact, *proofs):
            r.true_accuracy = exact.bound
        out.append(
            ProofComparison(
                model_name=getattr(model.cfg, "model_name", ""),
                true_accuracy=exact.bound,
                rows=[r.summary() for r in (exact, *proofs)],
                results=[exact, *proofs],
            )
        )
    return out


def plot(comparisons: list[ProofComparison], path=None):
    """Normalised bound against the FLOPs of the check, one point per (model, strategy)."""
    return plot_frontier(comparisons, path=path, title="group-operation models: bound vs proof length")
