"""Compact proofs for Max-of-K (Gross et al., arXiv 2406.11779): certified lower bounds on the accuracy of a
1-layer, 1-head, attention-only transformer that reads the maximum of n_ctx tokens at its last position.

    from tl_tensorsim.proofs import max_of_k
    exact = max_of_k.brute_force(model)          # every one of the V^n inputs (streamed), margin > error bound
    fast = max_of_k.cubic(model)                 # O(V³·n): 0.95 of the true accuracy on the paper's models
    cheap = max_of_k.subcubic(model, attention="svd", direct="exact")   # O(V²·(n + d)), search kept apart
    table = max_of_k.compare(model)              # all of them: bound / true accuracy against FLOPs; .plot()

Every strategy returns a `ProofResult` whose certified classes `max_of_k.certified_inputs(result.certified,
tokens)` expands to input sequences; all arithmetic is certified float64 (`tl_tensorsim.proofs.certified`).
"""

from tl_tensorsim.proofs.max_of_k.brute_force import brute_force, evaluation_error_bound, margins
from tl_tensorsim.proofs.max_of_k.classes import (
    all_inputs,
    certified_count,
    certified_inputs,
    class_of,
    class_sizes,
    valid_classes,
)
from tl_tensorsim.proofs.max_of_k.compare import SUBCUBIC_VARIANTS, compare
from tl_tensorsim.proofs.max_of_k.cubic import CLASS_AXES, cubic, cubic_good_set, worst_wrong_logit
from tl_tensorsim.proofs.max_of_k.paths import (
    PathTables,
    attention_scale,
    check_against_forward,
    check_model,
    path_logits,
    path_tables,
)
from tl_tensorsim.proofs.max_of_k.subcubic import ATTENTION, DIRECT, SubcubicAdvice, rank_one, search, subcubic

__all__ = [
    "ATTENTION",
    "CLASS_AXES",
    "DIRECT",
    "SUBCUBIC_VARIANTS",
    "PathTables",
    "SubcubicAdvice",
    "all_inputs",
    "attention_scale",
    "brute_force",
    "certified_count",
    "certified_inputs",
    "check_against_forward",
    "check_model",
    "class_of",
    "class_sizes",
    "compare",
    "cubic",
    "cubic_good_set",
    "evaluation_error_bound",
    "margins",
    "path_logits",
    "path_tables",
    "rank_one",
    "search",
    "subcubic",
    "valid_classes",
    "worst_wrong_logit",
]
