"""Every Max-of-K proof strategy on one model, tabulated against its cost (arXiv 2406.11779, the
bound-versus-FLOPs frontier)."""

from __future__ import annotations

import torch

from tl_tensorsim.adapter import ModelLike
from tl_tensorsim.proofs.max_of_k.brute_force import Method, brute_force
from tl_tensorsim.proofs.max_of_k.cubic import cubic
from tl_tensorsim.proofs.max_of_k.paths import check_against_forward, check_model, path_tables
from tl_tensorsim.proofs.max_of_k.subcubic import ATTENTION, DIRECT, subcubic
from tl_tensorsim.proofs.result import ProofComparison

__all__ = ["compare", "SUBCUBIC_VARIANTS"]

SUBCUBIC_VARIANTS: tuple[tuple[str, str], ...] = tuple((a, d) for a in ATTENTION for d in DIRECT)


def compare(
    model: ModelLike,
    *,
    subcubic_variants: tuple[tuple[str, str], ...] = SUBCUBIC_VARIANTS,
    method: Method = "tables",
    device: torch.device | str | None = None,
    check_samples: int = 256,
    progress: bool = False,
) -> ProofComparison:
    """Brute force (the true accuracy), the cubic proof and the subcubic proofs `subcubic_variants` ((attention,
    direct) pairs, default all eight) on `model`; every `ProofResult` gets `true_accuracy`, and the comparison
    holds one row per strategy (bound, ratio, FLOPs, seconds). `method`: the brute-force evaluator. The path tables
    are checked against the forward pass once, on `check_samples` sampled inputs (0: skip)."""
    view = check_model(model)
    if check_samples:
        check_against_forward(view, path_tables(view, device), check_samples)
    exact = brute_force(view, method=method, device=device, check_samples=0, progress=progress)
    results = [exact, cubic(view, device=device, check_samples=0)]
    results += [subcubic(view, attention=a, direct=d, device=device, check_samples=0) for a, d in subcubic_variants]
    for result in results:
        result.true_accuracy = exact.bound
    return ProofComparison(
        model_name=view.cfg.model_name,
        true_accuracy=exact.bound,
        rows=[r.summary() for r in results],
        results=results,
    )
