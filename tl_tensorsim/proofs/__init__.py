"""Compact proofs of model performance (Gross et al., arXiv 2406.11779): certified lower bounds on accuracy,
measured by their tightness and by the length (FLOPs) of their check.

`certified` holds the float64 ball arithmetic with explicit rounding-error bounds that every proof computes in
(`Ball`, `count_flops`); `result` the `ProofResult` every strategy returns and the `ProofComparison` of several;
`max_of_k` the Max-of-K proofs (brute force, cubic, subcubic, `compare`); `groups` the group-operation proofs
(groups, real irreps, ρ-set explanations, brute force and the ρ-set verifier, `compare`).
"""

from tl_tensorsim.proofs import groups, max_of_k
from tl_tensorsim.proofs.certified import Ball, FlopCount, count_flops, row_range_bound, spectral_norm_bound
from tl_tensorsim.proofs.result import ProofComparison, ProofResult, pareto_front, plot_frontier

__all__ = [
    "Ball",
    "FlopCount",
    "ProofComparison",
    "ProofResult",
    "count_flops",
    "groups",
    "max_of_k",
    "pareto_front",
    "plot_frontier",
    "row_range_bound",
    "spectral_norm_bound",
]
