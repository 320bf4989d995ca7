"""Certified pieces shared by the cubic and subcubic proofs: positional attention sums over the extreme orderings,
maxima over wrong outputs, and the position-pessimised OV term (arXiv 2406.11779, the cubic proof: pessimising
over orderings and the worst wrong logit).

**Orderings.** For a query q, the attention score of a token t at non-query position i is EQKE[q, t] + EQKP[q, i],
so the weight a class puts on its non-max tokens, as a function of *where* they sit, depends only on
S_J = Σ_{j in J} exp(EQKP[q, j]) for the set J of their positions (the max tokens fill the rest, summing to
T - S_J). Any ratio of the form (α + β·S_J) / (γ + δ·S_J) with a positive denominator is monotone in S_J, so over
all orderings it is extreme where J holds the c positions of largest or of smallest EQKP[q, ·]: two orderings
instead of C(n-1, c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from tl_tensorsim.proofs.certified import Ball, add_flops, stack

__all__ = ["PositionSums", "exclude_diagonal", "max_excluding", "position_sums", "worst_position_gap"]


@dataclass
class PositionSums:
    """Sums of `exp(EQKP[q, i] - ref[q])` over non-query positions, for every query q (`ref[q]` = the row's largest
    computed score, so nothing overflows; every attention ratio is invariant to it).

    `top[q, c]` `[V, n]` encloses the largest sum over c of the n-1 non-query positions, `bottom[q, c]` the smallest
    (so `top[:, 0] = bottom[:, 0] = 0` and `top[:, n-1] = bottom[:, n-1]` = all of them); `query[q]` `[V]` is the
    query position's factor. The sums are taken over the positions sorted by their computed factors, with each
    term's radius raised to the row's largest radius: the true extreme sum then lies inside even where the
    computed order differs from the exact one (near-ties)."""

    top: Ball
    bottom: Ball
    query: Ball


def position_sums(eqkp: Ball) -> PositionSums:
    """`PositionSums` of the positional scores `eqkp` `[V, n]` (Ball, float64). O(V·n log n)."""
    V, n = eqkp.shape
    factors = (eqkp - eqkp.mid.amax(1, keepdim=True)).exp()
    keys = factors[:, : n - 1]
    widest = keys.rad.amax(1, keepdim=True).expand_as(keys.rad) if n > 1 else keys.rad
    order = keys.mid.argsort(dim=1, descending=True)
    add_flops(V * n * max(1.0, math.log2(n)))
    desc = Ball(keys.mid.gather(1, order), widest)
    sums = []
    for terms in (desc, desc.map(lambda t: t.flip(1))):
        running = [Ball.exact(torch.zeros(V, dtype=torch.float64, device=eqkp.mid.device))]
        for c in range(n - 1):
            running.append(running[-1] + terms[:, c])
        sums.append(stack(running, 1))
    return PositionSums(top=sums[0], bottom=sums[1], query=factors[:, n - 1])


def max_excluding(table: Ball) -> Ball:
    """`out[..., m] = max_{x != m} table[..., x]` (`[..., V]` -> `[..., V]`), by the top-2 trick in O(V) per row;
    the radius is the row's largest radius. Needs V >= 2."""
    top = table.mid.topk(2, dim=-1)
    first = top.indices[..., :1] == torch.arange(table.shape[-1], device=table.mid.device)
    add_flops(2 * table.mid.numel(), table.mid.numel())
    mid = torch.where(first, top.values[..., 1:], top.values[..., :1])
    return Ball(mid, table.rad.amax(-1, keepdim=True).expand_as(mid))


def exclude_diagonal(table: Ball) -> Ball:
    """`table` `[..., m, x]` with the entries x = m set to -inf (radius 0), so that a max over x skips them."""
    V = table.shape[-1]
    eye = torch.eye(V, dtype=torch.bool, device=table.mid.device)
    return Ball(table.mid.masked_fill(eye, -math.inf), table.rad.masked_fill(eye, 0.0))


def worst_position_gap(pvou: Ball) -> Ball:
    """`P[m, x] = max_i (PVOU[i, x] - PVOU[i, m])` `[V(m), V(x)]`: the positional OV path's largest push towards
    output x against m, with all attention on the worst position (valid for any attention pattern, since the
    weights are non-negative and sum to one). O(n·V²)."""
    gap = pvou.map(lambda t: rearrange(t, "n x -> n 1 x")) - pvou.map(lambda t: rearrange(t, "n m -> n m 1"))
    return gap.amax(0)
