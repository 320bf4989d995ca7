"""The cubic proof: a certified accuracy bound in O(V³·n) (arXiv 2406.11779, "the cubic proof"), vectorised.

For a class (q, m, k, c) (query q, max m, c copies of one non-max token k < m at non-query positions, the max
filling the others) the largest wrong logit is bounded through the path decomposition:

    logit_x - logit_m = (EUPU[q, x] - EUPU[q, m]) + Σ_i a_i (EVOU[t_i, x] - EVOU[t_i, m]) + Σ_i a_i (PVOU[i, x] - PVOU[i, m])

The positional term is at most P[m, x] = max_i (PVOU[i, x] - PVOU[i, m]); splitting the maximum over x between the
direct path and each token's OV row gives, for every sequence of the class,

    max_{x != m} (logit_x - logit_m) <= b[q, m] + Σ_i a_i d[t_i, m]                                   (*)

with either split **A**: b = max_x (EUPU[q, x] - EUPU[q, m] + P[m, x]), d[t, m] = max_x (EVOU[t, x] - EVOU[t, m]),
or **B**: b = max_x (EUPU[q, x] - EUPU[q, m]), d[t, m] = max_x (EVOU[t, x] - EVOU[t, m] + P[m, x]) (x != m).
The right side is a weighted average of d over the tokens with attention weights a; it is linear-fractional in
the positional sum S_J of the c non-max positions, so its worst ordering is one of the two extremes
(`attention.position_sums`); both are evaluated and the larger kept. A class is good when that bound's certified
upper end is negative.

**Convexity** (the paper's counting argument). (*) is Σ_i e^{s_i} (b + d[t_i]) / Σ_i e^{s_i} with
e^{s_i} = e^{EQKE[q, t_i]}·e^{EQKP[q, i]}: token and position factor separately, so for a sequence whose non-max
tokens k_j all lie in the good set G(q, m, c) (for one split), the numerator is at most that of the pure sequence
with the same positions and the single token k* maximising e^{EQKE[q, k]}·(b + d[k]) over G, which is negative.
Hence every such sequence is certified, and `classes.certified_count` counts C(n-1, c)·|G|^c of them. The split
is chosen per (q, m, c), never mixed within a good set.
"""

from __future__ import annotations

import time

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tl_tensorsim.adapter import ModelLike
from tl_tensorsim.checks import checked_int
from tl_tensorsim.proofs.certified import Ball, count_flops, stack
from tl_tensorsim.proofs.max_of_k.attention import exclude_diagonal, max_excluding, position_sums, worst_position_gap
from tl_tensorsim.proofs.max_of_k.classes import certified_count, valid_classes
from tl_tensorsim.proofs.max_of_k.paths import PathTables, check_against_forward, check_model, path_tables
from tl_tensorsim.proofs.result import ProofResult

__all__ = ["CLASS_AXES", "cubic", "cubic_good_set", "worst_wrong_logit"]

CLASS_AXES = ("query", "max", "nonmax", "copies")


def _splits(tables: PathTables) -> list[tuple[Ball, Ball]]:
    """The two splits (b `[q, m]`, d `[t, m]`) of the module docstring, A then B. O(V³)."""
    gap = worst_position_gap(tables.PVOU)  # [m, x]
    eupu, evou = tables.EUPU, tables.EVOU
    direct = eupu.map(lambda t: t[:, None, :]) - eupu.map(lambda t: t[:, :, None])  # [q, m, x]
    ov = evou.map(lambda t: t[:, None, :]) - evou.map(lambda t: t[:, :, None])  # [t, m, x]
    b_a = exclude_diagonal(direct + gap.map(lambda t: t[None])).amax(2)
    d_a = max_excluding(evou) - evou
    b_b = max_excluding(eupu) - eupu
    d_b = exclude_diagonal(ov + gap.map(lambda t: t[None])).amax(2)
    return [(b_a, d_a), (b_b, d_b)]


def worst_wrong_logit(tables: PathTables, b: Ball, d: Ball) -> Ball:
    """Upper bounds `[q, m, k, c]` on `max_{x != m} (logit_x - logit_m)` over every sequence of each pure class
    (q, m, k, c) and every ordering, by (*) with the split (b `[q, m]`, d `[t, m]`); float64 balls. For c = 0 the
    entry does not depend on k. Invalid classes hold meaningless values (mask them with `valid_classes`)."""
    V, n = tables.d_vocab, tables.n_ctx
    sums = position_sums(tables.EQKP)
    eqke = tables.EQKE
    to_k = (eqke.map(lambda t: t[:, None, :]) - eqke.map(lambda t: t[:, :, None])).exp()  # [q, m, k]: e^{E_qk - E_qm}
    diag = eqke.map(lambda t: t.diagonal()[:, None])
    w_query = (diag - eqke).exp() * sums.query.map(lambda t: t[:, None])  # [q, m]
    d_max = d.map(lambda t: t.diagonal()[None, :])  # [1, m]: d[m, m]
    query_part = w_query * d  # [q, m]: d[q, m]
    d_k = d.map(lambda t: t.T[None])  # [1, m, k]: d[k, m]
    out = []
    for c in range(n):
        worst = None
        for s_nonmax, s_max in (
            (sums.top[:, c], sums.bottom[:, n - 1 - c]),
            (sums.bottom[:, c], sums.top[:, n - 1 - c]),
        ):
            s_max = s_max.map(lambda t: t[:, None])  # [q, 1]
            if c == 0:  # no non-max token: the bound does not depend on k
                bound = b + (s_max * d_max + query_part) / (s_max + w_query)
                bound = bound.map(lambda t: t[:, :, None].expand(V, V, V))
            else:
                w_k = s_nonmax.map(lambda t: t[:, None, None]) * to_k  # [q, m, k]
                num = (s_max * d_max + query_part).map(lambda t: t[:, :, None]) + w_k * d_k
                den = (s_max + w_query).map(lambda t: t[:, :, None]) + w_k
                bound = b.map(lambda t: t[:, :, None]) + num / den
            worst = bound if worst is None else worst.maximum(bound)
        out.append(worst)
    return stack(out, 3)


def cubic_good_set(tables: PathTables) -> tuple[Bool[Tensor, "q m k c"], Float[Tensor, "q m k c"]]:
    """The good-set grid `good[q, m, k, c]` (see `classes`) and a certified lower bound on each class's worst-case
    margin (`-upper(bound)`, float64) of the cubic proof; for each (q, m, c) the split certifying more sequences."""
    V, n = tables.d_vocab, tables.n_ctx
    valid = valid_classes(V, n, tables.EQKE.mid.device)[:, :, None, :]  # [q, m, 1, c]
    below = (torch.arange(V)[None, :] < torch.arange(V)[:, None]).to(valid.device)[None, :, :, None]  # k < m
    c_is_0 = torch.arange(n, device=valid.device) == 0
    goods, margins = [], []
    for b, d in _splits(tables):
        upper = worst_wrong_logit(tables, b, d).upper()
        goods.append((upper < 0) & valid & (below | c_is_0))
        margins.append(-upper)
    sizes = [g.sum(2, keepdim=True) for g in goods]
    use_a = sizes[0] >= sizes[1]
    good = torch.where(use_a, goods[0], goods[1])
    good[..., 0] = goods[0][..., 0] | goods[1][..., 0]  # c = 0: one sequence per class, either split certifies it
    margin = torch.where(use_a, margins[0], margins[1])
    margin[..., 0] = torch.maximum(margins[0][..., 0], margins[1][..., 0])
    return good, margin


def cubic(model: ModelLike, *, device: torch.device | str | None = None, check_samples: int = 256) -> ProofResult:
    """The cubic certified lower bound on the accuracy of a Max-of-K model over all d_vocab^n_ctx inputs (module
    docstring): float64 balls, O(V³·n) after the O(V²·d) path tables. `check_samples`: sampled inputs on which the
    path tables are checked against the forward pass first (0: skip; not part of the timed check). `device`:
    where to compute (default: the model's). Returns a `ProofResult` over the class grid `CLASS_AXES`, with the
    certified worst-case margins."""
    checked_int(check_samples, "check_samples", 0, "an integer >= 0")
    view = check_model(model)
    if check_samples:
        check_against_forward(view, path_tables(view, device), check_samples)
    start = time.perf_counter()
    with count_flops() as flops:
        tables = path_tables(view, device)
        good, margin = cubic_good_set(tables)
        count = certified_count(good)
    seconds = time.perf_counter() - start
    total = tables.d_vocab**tables.n_ctx
    return ProofResult(
        strategy="cubic",
        bound=count / total,
        n_certified=count,
        n_inputs=total,
        wall_time=seconds,
        flops=flops.value,
        flops_bounds=flops.bounds,
        certified=good.cpu(),
        class_axes=CLASS_AXES,
        margin=margin.cpu(),
        model_name=view.cfg.model_name,
        settings={"check_samples": check_samples},
    )
