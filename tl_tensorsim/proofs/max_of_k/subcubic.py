"""Subcubic proofs: certified bounds in O(V²·(n + d)) from the mechanistic reading of the model (arXiv 2406.11779,
the subcubic proofs): attention is an increasing function of the key token (EQKE is nearly rank one,
`EQKE[q, t] ≈ u_q·v_t` with v increasing), and the OV circuit copies.

A class is (q, m, c) with a **gap** g: every sequence with query q, max m and c non-max non-query tokens, all
at most m - g, is certified when the bound below is negative; sequences with a non-max token closer to m are
conceded. The bound (for all such sequences and all orderings):

    max_{x != m} (logit_x - logit_m) <= b[q, m] + d[m, m] + relu(d[q, m] - d[m, m])·a_q + relu(D(m, g) - d[m, m])·a_nm

where d[t, m] = max_{x != m} EVOU[t, x] - EVOU[t, m] (EVOU formed in full), D(m, g) = max_{t <= m-g} d[t, m], and

- `direct` handles the direct path b[q, m] >= max_{x != m} (EUPU[q, x] - EUPU[q, m] + P[m, x]) (P: `worst_position_gap`):
  "exact" forms EUPU (O(V²d)) and splits the max over x; "mean+max_diff" writes EUPU = mean over queries + a
  per-query rest whose range over x is bounded by the max_diff trick (O(V·d), no V x V product);
- `attention` bounds the weights a_nm (all non-max tokens) and a_q (the query, when q < m) from a lower bound γ on
  the score gap EQKE[q, m] - EQKE[q, t] for t <= m - g: "exact" forms EQKE (O(V²d)); the others take the rank-1
  part u vᵀ (from the SVD, advice of the search) exactly and bound the rows of the residual R = EQKE - u vᵀ
  (kept factored, rank <= d + 1) with "svd" (√2·σ₁(R), σ₁ certified by `spectral_norm_bound`), "max_diff" or
  "mean+max_diff" (`row_range_bound`), in O(V·d²).

`search` (untrusted: the SVD and, by bisection, the smallest certified gap of every class) is separate from the
check, which evaluates the bound once, at the searched gaps, in certified float64; only the check is timed as the
proof and counted in FLOPs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.adapter import ModelLike, ModelView
from tl_tensorsim.checks import check_choice, checked_int
from tl_tensorsim.proofs.certified import Ball, cat, count_flops, row_range_bound, spectral_norm_bound
from tl_tensorsim.proofs.max_of_k.attention import (
    PositionSums,
    exclude_diagonal,
    max_excluding,
    position_sums,
    worst_position_gap,
)
from tl_tensorsim.proofs.max_of_k.classes import certified_count, valid_classes
from tl_tensorsim.proofs.max_of_k.cubic import CLASS_AXES
from tl_tensorsim.proofs.max_of_k.paths import check_against_forward, check_model, model_weights, path_tables
from tl_tensorsim.proofs.result import ProofResult

__all__ = ["ATTENTION", "DIRECT", "SubcubicAdvice", "search", "subcubic", "subcubic_bound"]

Attention = Literal["exact", "svd", "max_diff", "mean+max_diff"]
Direct = Literal["exact", "mean+max_diff"]
ATTENTION: tuple[str, ...] = ("exact", "svd", "max_diff", "mean+max_diff")
DIRECT: tuple[str, ...] = ("exact", "mean+max_diff")


@dataclass
class SubcubicAdvice:
    """What the search hands the check: the rank-1 direction of EQKE (`u` `[V]`, `v` `[V]`, float64; None for
    attention="exact") and the gap of every class (`gaps` `[q, m, c]` int64, m + 1 where nothing is certified)."""

    u: Tensor | None
    v: Tensor | None
    gaps: Tensor


@dataclass
class _Parts:
    """The certified pieces of the bound (module docstring), all float64 balls."""

    b: Ball  # [q, m]
    d: Ball  # [t, m]
    d_prefix: Ball  # [t, m]: max over t' <= t of d[t', m]
    sums: PositionSums
    query_gap: Ball  # [q, m]: EQKE[q, q] - EQKE[q, m] (its ball holds the uncertainty of the attention handling)
    eqke_prefix: Ball | None = None  # exact: [q, t] running max over t of EQKE[q, t]; eqke [q, m] in `eqke`
    eqke: Ball | None = None
    u: Ball | None = None  # rank one: [V]
    v: Tensor | None = None  # [V] exact
    delta: Ball | None = None  # [V]: bound on the row range of the residual

    def score_gap(self, top_token: Int[Tensor, "q m c"]) -> Ball:
        """Lower bounds `[q, m, c]` of EQKE[q, m] - EQKE[q, t] over t <= top_token[q, m, c] (clamped at 0)."""
        V = self.d.shape[0]
        t = top_token.clamp_min(0)
        if self.eqke is not None:
            best = self.eqke_prefix.map(lambda e: e.gather(1, t.reshape(V, -1)).reshape(t.shape))
            return self.eqke.map(lambda e: e[:, :, None]) - best
        v = self.v
        vmax, vmin = v.cummax(0).values[t], v.cummin(0).values[t]  # [q, m, c]
        u = self.u.map(lambda x: x[:, None, None])
        best = (u * vmax).maximum(u * vmin)  # max over t <= top of u_q·v_t: at an extreme of v
        return u * v[None, :, None] - best - self.delta.map(lambda x: x[:, None, None])


def _parts(view: ModelView, attention: str, direct: str, u: Tensor | None, v: Tensor | None, device) -> _Parts:
    """The certified pieces from the weights, forming only what the chosen handling needs (module docstring)."""
    w = model_weights(view, device)
    E, P = Ball.exact(w["W_E"]), Ball.exact(w["W_pos"])
    n = P.shape[0]
    resid_q = E + P[n - 1]
    query = (resid_q @ w["W_Q"] + w["b_Q"]) / w["scale"]  # [V, h]
    key = E @ w["W_K"]
    eqkp = query @ (P @ w["W_K"] + w["b_K"]).T  # [V, n]
    evou = ((E @ w["W_V"]) @ w["W_O"]) @ w["W_U"]
    pvou = ((P @ w["W_V"] + w["b_V"]) @ w["W_O"]) @ w["W_U"]
    gap = worst_position_gap(pvou)  # [m, x]
    direct_in = resid_q + w["b_O"]  # [V, d]
    if direct == "exact":
        eupu = direct_in @ w["W_U"] + w["b_U"]
        b = max_excluding(eupu) - eupu + max_excluding(gap).map(lambda t: t.diagonal()[None, :])
    else:  # EUPU = mean over queries + a rest whose range over x the max_diff trick bounds
        mean_in = direct_in.sum(0) / direct_in.shape[0]
        mean_logit = mean_in @ w["W_U"] + w["b_U"]  # [x]
        spread = row_range_bound(direct_in - mean_in, Ball.exact(w["W_U"].T))  # [q]
        to_x = mean_logit.map(lambda t: t[None, :]) - mean_logit.map(lambda t: t[:, None]) + gap  # [m, x]
        b = exclude_diagonal(to_x).amax(1).map(lambda t: t[None, :]) + spread.map(lambda t: t[:, None])
    d = max_excluding(evou) - evou
    common = {"b": b, "d": d, "d_prefix": d.cummax(0), "sums": position_sums(eqkp)}
    if attention == "exact":
        eqke = query @ key.T
        query_gap = eqke.map(lambda t: t.diagonal()[:, None]) - eqke
        return _Parts(**common, query_gap=query_gap, eqke=eqke, eqke_prefix=eqke.cummax(1))
    dev = query.mid.device
    u_ball, v = Ball.exact(u.to(dev)), v.to(dev, torch.float64)
    left = cat([query, -u_ball.map(lambda t: t[:, None])], 1)  # the residual R = left @ right.T = EQKE - u vᵀ
    right = cat([key, Ball.exact(v[:, None])], 1)
    if attention == "svd":  # |R[q, t] - R[q, t']| = |e_qᵀ R (e_t - e_t')| <= √2 σ₁(R)
        bound = math.sqrt(2) * spectral_norm_bound(left, right) * (1 + 1e-12)
        delta = Ball.exact(torch.full((u.shape[0],), bound, dtype=torch.float64, device=dev))
    else:
        delta = row_range_bound(left, right, center=attention == "mean+max_diff")
    v_ball = Ball.exact(v)
    to_query = v_ball.map(lambda t: t[:, None]) - v_ball.map(lambda t: t[None, :])  # [q, m]: v_q - v_m
    residual = Ball(torch.zeros_like(to_query.mid), delta.upper()[:, None].expand_as(to_query.mid))  # ± δ_q
    query_gap = u_ball.map(lambda t: t[:, None]) * to_query + residual
    return _Parts(**common, query_gap=query_gap, u=u_ball, v=v, delta=delta)


def subcubic_bound(parts: _Parts, gaps: Int[Tensor, "q m c"]) -> Ball:
    """Upper bounds `[q, m, c]` (float64 balls) on the largest wrong-logit gap over every sequence of class
    (q, m, c) whose non-max tokens are at most m - gaps[q, m, c], every ordering (module docstring). For c = 0 the
    gap plays no part. O(V²·n) given the parts."""
    V, n = parts.d.shape[0], parts.sums.top.shape[1]
    dev = parts.d.mid.device
    tok = torch.arange(V, device=dev)
    is_query_max = (tok[:, None] == tok[None, :])[:, :, None]  # [q, m, 1]
    has_nonmax = (torch.arange(n, device=dev) > 0)[None, None, :]  # [1, 1, c]
    s_nonmax = parts.sums.top.map(lambda t: t[:, None, :])  # [q, 1, c]: the c positions of most attention
    s_max = parts.sums.bottom.map(lambda t: t.flip(1)[:, None, :])  # [q, 1, c]: the other n-1-c
    # the query's factor relative to e^{EQKE[q, m]}, e^{σ}, at the ends of σ's interval (the bounds are monotone in σ)
    sigma = parts.query_gap.map(lambda t: torch.where(is_query_max, 0.0, t[:, :, None]))  # [q, m, 1]
    query = parts.sums.query.map(lambda t: t[:, None, None])
    w_query_lo, w_query_hi = (query * Ball.exact(end).exp() for end in (sigma.lower(), sigma.upper()))
    gamma = parts.score_gap(tok[None, :, None] - gaps)  # [q, m, c]
    nonmax = (s_nonmax * (-gamma).exp()).map(lambda t: torch.where(has_nonmax, t, 0.0))  # <= Σ_J e^{s_j - E_qm}
    a_nonmax = nonmax / (nonmax + s_max + w_query_lo)
    a_query = w_query_hi / (w_query_hi + s_max)
    d_max = parts.d.map(lambda t: t.diagonal()[None, :, None])  # [1, m, 1]
    d_query = (parts.d - parts.d.map(lambda t: t.diagonal()[None, :])).map(
        lambda t: torch.where(is_query_max, 0.0, t[:, :, None])
    )  # [q, m, 1]: d[q, m] - d[m, m], absent when the query is the max
    top = (tok[None, :, None] - gaps).clamp_min(0)  # [q, m, c]
    d_nonmax = parts.d_prefix.map(lambda t: t.T.gather(1, top.transpose(0, 1).reshape(V, -1)).reshape(V, V, n))
    d_nonmax = d_nonmax.map(lambda t: t.transpose(0, 1)) - d_max  # [q, m, c]: D(m, g) - d[m, m]
    return parts.b.map(lambda t: t[:, :, None]) + d_max + d_query.relu() * a_query + d_nonmax.relu() * a_nonmax


def rank_one(view: ModelView, device=None) -> tuple[Float[Tensor, " d_vocab"], Float[Tensor, " d_vocab"]]:
    """The leading singular pair of EQKE as `u` (scaled by σ₁) and `v`, `EQKE ≈ u vᵀ` with v increasing on
    balance (float64, O(V·d²) from the factors; untrusted advice)."""
    w = model_weights(view, device)
    query = ((w["W_E"] + w["W_pos"][-1]) @ w["W_Q"] + w["b_Q"]) / w["scale"]
    key = w["W_E"] @ w["W_K"]
    q_basis, q_r = torch.linalg.qr(query)
    k_basis, k_r = torch.linalg.qr(key)
    left, sing, right_t = torch.linalg.svd(q_r @ k_r.T)
    u, v = q_basis @ left[:, 0] * sing[0], k_basis @ right_t[0]
    return (-u, -v) if v[-1] < v[0] else (u, v)


def search(
    model: ModelLike, *, attention: Attention = "mean+max_diff", direct: Direct = "mean+max_diff", device=None
) -> SubcubicAdvice:
    """The untrusted proof search: the rank-1 direction (SVD) and, for every class (q, m, c), the smallest gap g
    in 1..m whose bound is certified negative (vectorised bisection, the bound being non-increasing in g;
    m + 1 where none is). O(V²·n·log V) after the parts."""
    view = check_model(model)
    u, v = rank_one(view, device) if attention != "exact" else (None, None)
    parts = _parts(view, attention, direct, u, v, device)
    V, n = view.cfg.d_vocab, view.cfg.n_ctx
    dev = parts.d.mid.device
    lo = torch.ones(V, V, n, dtype=torch.int64, device=dev)
    hi = (torch.arange(V, device=dev)[None, :, None] + 1).expand(V, V, n).clone()
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        ok = subcubic_bound(parts, mid).upper() < 0
        active = lo < hi
        hi = torch.where(active & ok, mid, hi)
        lo = torch.where(active & ~ok, mid + 1, lo)
    return SubcubicAdvice(u=u, v=v, gaps=lo)


def subcubic(
    model: ModelLike,
    *,
    attention: Attention = "mean+max_diff",
    direct: Direct = "mean+max_diff",
    advice: SubcubicAdvice | None = None,
    device: torch.device | str | None = None,
    check_samples: int = 256,
) -> ProofResult:
    """A subcubic certified lower bound on the accuracy of a Max-of-K model (module docstring).

    `attention`: "exact", "svd", "max_diff" or "mean+max_diff" (how EQKE is handled); `direct`: "exact" or
    "mean+max_diff" (EUPU). `advice`: the search's output (default: run `search` first, timed as `search_time`).
    `check_samples`: sampled inputs on which the path tables are checked against the forward pass (0: skip; not
    timed). Returns a `ProofResult` over the class grid `CLASS_AXES`: `good[q, m, k, c]` = k <= m - gap."""
    check_choice(attention, ATTENTION, "attention")
    check_choice(direct, DIRECT, "direct")
    checked_int(check_samples, "check_samples", 0, "an integer >= 0")
    view = check_model(model)
    V, n = view.cfg.d_vocab, view.cfg.n_ctx
    if advice is not None and tuple(advice.gaps.shape) != (V, V, n):
        raise ValueError(f"advice: expected gaps of shape {[V, V, n]}; got {list(advice.gaps.shape)}")
    if check_samples:
        check_against_forward(view, path_tables(view, device), check_samples)
    start = time.perf_counter()
    advice = advice if advice is not None else search(view, attention=attention, direct=direct, device=device)
    searched = time.perf_counter()
    with count_flops() as flops:
        parts = _parts(view, attention, direct, advice.u, advice.v, device)
        dev = parts.d.mid.device
        gaps = advice.gaps.to(dev)
        upper = subcubic_bound(parts, gaps).upper()  # [q, m, c]
        tok = torch.arange(V, device=dev)
        top = torch.where(upper < 0, tok[None, :, None] - gaps, -1)  # largest certified non-max token
        good = (tok[None, None, :, None] <= top[:, :, None, :]) & (tok[None, None, :, None] < tok[None, :, None, None])
        good[..., 0] = (upper[..., 0] < 0)[:, :, None]
        good &= valid_classes(V, n, dev)[:, :, None, :]
        count = certified_count(good)
    return ProofResult(
        strategy=f"subcubic[attention={attention}, direct={direct}]",
        bound=count / V**n,
        n_certified=count,
        n_inputs=V**n,
        wall_time=time.perf_counter() - searched,
        flops=flops.value,
        flops_bounds=flops.bounds,
        certified=good.cpu(),
        class_axes=CLASS_AXES,
        search_time=searched - start,
        margin=(-upper)[:, :, None, :].expand(V, V, V, n).cpu(),  # a view: the margin does not depend on k
        model_name=view.cfg.model_name,
        settings={"attention": attention, "direct": direct, "check_samples": check_samples},
    )
