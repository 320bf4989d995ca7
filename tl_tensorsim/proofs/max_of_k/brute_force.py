"""Brute force: the exact accuracy of a Max-of-K model over all d_vocab^n_ctx inputs (arXiv 2406.11779, the
brute-force baseline).

Two evaluators, both streamed over the inputs by flat index (never materialised):

- `method="tables"` (default): the path formula (`paths.path_logits`) on the certified float64 path tables, O(n·V)
  per input after O(V²·d) precomputation, cross-checked against the model's own forward pass on sampled inputs.
  An input counts as correct only when its margin (the max token's logit minus the largest other logit) exceeds
  the floating-point error bound of the evaluation (`evaluation_error_bound`), so the count is a certified bound:
  inputs with |margin| within that bound are reported as `ambiguous` and not counted.
- `method="forward"`: the model's forward pass itself, in its own dtype (margin > 0 counts as correct); the
  reference the tables are checked against, and the paper's procedure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_tensorsim.adapter import ModelLike, ModelView
from tl_tensorsim.checks import check_choice, checked_int
from tl_tensorsim.proofs.certified import EPS, EXP_ULPS, TINY, add_flops, count_flops, gamma
from tl_tensorsim.proofs.max_of_k.classes import all_inputs
from tl_tensorsim.proofs.max_of_k.paths import PathTables, check_against_forward, check_model, path_logits, path_tables
from tl_tensorsim.proofs.result import ProofResult
from tl_tensorsim.training import limit_threads

__all__ = ["brute_force", "evaluation_error_bound", "group_correct", "margins"]

Method = Literal["tables", "forward"]
KEEP_LIMIT = 2**24  # keep the per-input certificate (bool [V]*n) up to this many inputs by default


def evaluation_error_bound(tables: PathTables) -> float:
    """A bound on |computed margin - exact margin| for `margins` and for the streamed evaluator, on any input
    (float64, round to nearest; constants deliberately generous).

    Scores `s_i = EQKE[q, t_i] + EQKP[q, i]` carry the tables' radii plus one rounding (ε_s). A perturbation ε of the
    scores changes every softmax weight by a factor within e^{±2ε}; the computed weights (exp, the shift by the max,
    the n-term sum, the division; in the streamed evaluator also log-sum-exp and two sigmoids) add a relative
    (3·EXP_ULPS + 2n + 16)·2u + 8u·max|s|. So every attention weight is within a relative ρ of the exact one (the
    computed weights need not sum to one), and each logit `EUPU[q] + Σ_i a_i (EVOU[t_i] + PVOU[i])`, or its
    streamed form `μ·(EUPU[q] + F) + λ·(EUPU[q] + values[t])`, is within
    ε_U + 2ε_W + 3ρ·(U + W + ε_U + ε_W) + 3γ_{n+4}·(U + W) of the exact one (U, W: the largest |EUPU| and
    |EVOU| + |PVOU|; ε: the radii). A margin, or the streamed evaluator's bounds on it, a difference of two such
    expressions, is within twice that plus its own rounding."""
    n = tables.n_ctx
    score_max = float(tables.EQKE.mid.abs().max() + tables.EQKP.mid.abs().max())
    eps_s = tables.EQKE.max_rad() + tables.EQKP.max_rad() + EPS * score_max
    rho = math.expm1(2 * eps_s + 8 * EPS * score_max) + (3 * EXP_ULPS + 2 * n + 16) * EPS
    U = float(tables.EUPU.mid.abs().max())
    W = float(tables.EVOU.mid.abs().max() + tables.PVOU.mid.abs().max())
    eps_u, eps_w = tables.EUPU.max_rad() + EPS * U, tables.EVOU.max_rad() + tables.PVOU.max_rad() + EPS * W
    eps_logit = eps_u + 2 * eps_w + 3 * rho * (U + W + eps_u + eps_w) + 3 * gamma(n + 4) * (U + W)
    return (2 * eps_logit + 2 * EPS * (U + W)) * 1.01 + TINY


def margins(tables: PathTables, tokens: Int[Tensor, "batch n_ctx"]) -> Float[Tensor, " batch"]:
    """The margin of each sequence by the path formula (float64): the logit of its maximum minus the largest other
    logit at the last position."""
    return _margin(path_logits(tables, tokens), tokens.max(dim=1).values)


def _margin(logits: Tensor, labels: Tensor) -> Tensor:
    right = logits.gather(1, labels[:, None])[:, 0]
    return right - logits.scatter(1, labels[:, None], -math.inf).amax(1)


def _excluding_max(y: Tensor) -> tuple[Tensor, Tensor]:
    """For each excluded column m: `max_{x != m} y[..., x]` and its argmax, `[..., V(m)]` each (top-2 trick)."""
    top = y.topk(2, dim=-1)
    m = torch.arange(y.shape[-1], device=y.device)
    first = top.indices[..., :1] == m
    value = torch.where(first, top.values[..., 1:], top.values[..., :1])
    return value, torch.where(first, top.indices[..., 1:], top.indices[..., :1])


@dataclass
class _Query:
    """Per-model precomputation of the streamed evaluator: `values[i]` = EVOU + PVOU[i]; `y1[q, t, x]` = EUPU[q, x]
    + values[n-2][t, x], the logits were all attention on position n-2; `m1`, `x1` `[q, t, m]`: their largest
    entry and its index, excluding column m."""

    values: Tensor
    y1: Tensor
    m1: Tensor
    x1: Tensor

    @classmethod
    def build(cls, tables: PathTables) -> _Query:
        values = tables.EVOU.mid[None] + tables.PVOU.mid[:, None]
        y1 = tables.EUPU.mid[:, None, :] + values[-2][None]
        m1, x1 = _excluding_max(y1)
        add_flops(values.numel() + 3 * y1.numel())
        return cls(values, y1, m1, x1)


def group_correct(
    tables: PathTables, pre: _Query, prefix: Int[Tensor, "groups n_ctx_minus_2"], eps: float
) -> tuple[Bool[Tensor, "groups d_vocab d_vocab"], int]:
    """Which of the sequences `prefix + (t, q)` (every token t at position n-2, every query q) have margin > `eps`:
    `[groups, t, q]` in the inputs' lexicographic order, and how many have |margin| <= eps (ambiguous).

    The softmax over the fixed positions (prefix and query) is taken once per (prefix, q): weighted value average F
    and log-sum-exp L. Position n-2 with score s gets weight λ = sigmoid(s - L) (the rest μ = sigmoid(L - s)), so
    the logits are the convex combination `μ·Y0 + λ·Y1`, Y0 = EUPU[q] + F, Y1 = EUPU[q] + values[n-2][t]. Since
    `max_x (μ Y0 + λ Y1) <= μ max_x Y0 + λ max_x Y1` (x != m), `Y[m] - μ·max Y0 - λ·max Y1` is a lower bound of the
    margin, and `Y[m] - Y[x]` at the two maximisers an upper bound, each O(1) per input; the inputs these two
    do not decide get the full O(n·V) evaluation (`margins`). Every comparison is against the error bound `eps`."""
    E, P, U = tables.EQKE.mid, tables.EQKP.mid, tables.EUPU.mid
    n, G, V = P.shape[1], prefix.shape[0], E.shape[0]
    fixed_scores = torch.cat(
        [
            (E[:, prefix] + P[:, None, : n - 2]).permute(1, 0, 2),
            (E.diagonal() + P[:, -1])[None, :, None].expand(G, V, 1),
        ],
        -1,
    )  # [G, q, n-1]
    shift = fixed_scores.amax(-1, keepdim=True)
    weights = torch.exp(fixed_scores - shift)
    total = weights.sum(-1, keepdim=True)
    weights = weights / total
    lse = (shift + total.log())[..., :1]  # [G, q, 1]
    y0 = U + (weights[..., -1:] * pre.values[-1][None])  # [G, q, x]
    for i in range(n - 2):
        y0 = y0 + weights[..., i : i + 1] * pre.values[i][prefix[:, i]][:, None, :]
    m0, x0 = _excluding_max(y0)
    score = (E + P[:, n - 2 : n - 1])[None]  # [1, q, t]
    lam, mu = torch.sigmoid(score - lse), torch.sigmoid(lse - score)  # [G, q, t]
    tok = torch.arange(V, device=E.device)
    labels = torch.maximum(tok[:, None], tok[None, :]).expand(G, V, V)  # [G, q, t]
    if n > 2:
        labels = torch.maximum(labels, prefix.amax(1)[:, None, None])
    row = (tok[:, None] * V + tok[None, :]) * V  # flat index of (q, t, 0) in [q, t, x]

    def y(x: Tensor) -> Tensor:  # the computed logit of output x, [G, q, t]
        return mu * y0.gather(2, x) + lam * pre.y1.reshape(-1)[row + x]

    ym = y(labels)
    lower = ym - mu * m0.gather(2, labels) - lam * pre.m1.reshape(-1)[row + labels]
    upper = ym - torch.maximum(y(x0.gather(2, labels)), y(pre.x1.reshape(-1)[row + labels]))
    correct = lower > eps
    undecided = ~correct & (upper >= -eps)
    g, q, t = undecided.nonzero(as_tuple=True)
    full = margins(tables, torch.cat([prefix[g], t[:, None], q[:, None]], 1))
    correct[g, q, t] = full > eps
    add_flops(G * V * ((n - 1) * (2 * V + 7) + 3 * V) + 40 * G * V * V + len(g) * (2 * n * V + 2 * V + 6 * n))
    return correct.transpose(1, 2), int((full.abs() <= eps).sum())


def _forward_flops(cfg) -> int:
    """FLOPs of one 1-layer attention-only forward pass (all positions, as TransformerLens computes them) plus
    the margin: embeddings, Q/K/V, scores, softmax, mixing, W_O, residual, unembedding."""
    n, d, h, V = cfg.n_ctx, cfg.d_model, cfg.d_head, cfg.d_vocab
    return n * d + 6 * n * d * h + 2 * n * n * h + 5 * n * n + 2 * n * n * h + 2 * n * h * d + n * d + 2 * n * d * V + V


def _stream_tables(tables: PathTables, batch_size: int, eps: float) -> Iterator[tuple[int, int, Tensor, int]]:
    """(first index, last index + 1, correct, ambiguous) over all inputs: V² inputs per prefix, prefixes in chunks."""
    V, n = tables.d_vocab, tables.n_ctx
    pre = _Query.build(tables)
    groups = V ** (n - 2)
    step = max(1, batch_size // (V * V))
    for lo in range(0, groups, step):
        hi = min(groups, lo + step)
        prefix = all_inputs(V, n - 2, lo, hi) if n > 2 else torch.zeros(1, 0, dtype=torch.int64)
        correct, ambiguous = group_correct(tables, pre, prefix.to(pre.values.device), eps)
        yield lo * V * V, hi * V * V, correct.reshape(-1), ambiguous


def _stream_forward(view: ModelView, batch_size: int) -> Iterator[tuple[int, int, Tensor, int]]:
    """(first index, last index + 1, margin > 0, 0) by the model's own forward pass, in its dtype."""
    V, n = view.cfg.d_vocab, view.cfg.n_ctx
    add_flops(_forward_flops(view.cfg) * V**n)
    for lo in range(0, V**n, batch_size):
        hi = min(V**n, lo + batch_size)
        tokens = all_inputs(V, n, lo, hi).to(view.device)
        with torch.no_grad():
            logits, _ = view.run_with_cache(tokens, names=[])
        yield lo, hi, _margin(logits[:, -1], tokens.max(dim=1).values) > 0, 0


def brute_force(
    model: ModelLike,
    *,
    method: Method = "tables",
    batch_size: int = 65536,
    check_samples: int = 256,
    keep_inputs: bool | None = None,
    device: torch.device | str | None = None,
    threads: int | None = 1,
    progress: bool = True,
) -> ProofResult:
    """Exact accuracy of a Max-of-K model on every one of the d_vocab^n_ctx inputs (module docstring).

    `method`: "tables" (certified path-table evaluation, margin > error bound) or "forward" (the model's forward
    pass, margin > 0). `batch_size`: inputs per streamed chunk. `check_samples`: sampled inputs on which the tables
    are checked against the forward pass (0: skip). `keep_inputs`: store the per-input certificate (bool
    `[V] * n_ctx`, True = correct) in the result; default when d_vocab^n_ctx <= 2^24. `device`: default the model's.
    `threads`: torch intra-op threads while evaluating (None: leave the setting alone).
    Returns a `ProofResult` with `bound` = the accuracy, `settings["ambiguous"]` the inputs (tables) whose margin
    lies within the error bound, and the FLOPs of the evaluation (tables: counted; forward: an analytic count).
    """
    check_choice(method, ("tables", "forward"), "method")
    batch_size = checked_int(batch_size, "batch_size", 1, "an integer >= 1")
    checked_int(check_samples, "check_samples", 0, "an integer >= 0")
    view = check_model(model)
    V, n = view.cfg.d_vocab, view.cfg.n_ctx
    total = V**n
    keep = total <= KEEP_LIMIT if keep_inputs is None else bool(keep_inputs)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    settings: dict = {"method": method, "batch_size": batch_size}
    correct = torch.zeros(total if keep else 0, dtype=torch.bool)
    n_correct = n_ambiguous = 0
    with count_flops() as flops, limit_threads(threads):
        if method == "tables":
            tables = path_tables(view, device)
            eps = evaluation_error_bound(tables)
            stream = _stream_tables(tables, batch_size, eps)
        else:
            eps = 0.0
            stream = _stream_forward(view, batch_size)
        bar = tqdm(total=total, desc=f"brute force ({method})", disable=not progress, unit="seq", mininterval=1.0)
        for lo, hi, ok, ambiguous in stream:
            n_correct += int(ok.sum())
            n_ambiguous += ambiguous
            if keep:
                correct[lo:hi] = ok.cpu()
            bar.update(hi - lo)
        bar.close()
    if method == "tables" and check_samples:
        settings["forward_max_abs_diff"] = check_against_forward(view, tables, check_samples)
    settings.update(error_bound=eps, ambiguous=n_ambiguous)
    return ProofResult(
        strategy=f"brute_force_{method}",
        bound=n_correct / total,
        n_certified=n_correct,
        n_inputs=total,
        wall_time=time.perf_counter() - start,
        flops=flops.value,
        flops_bounds=flops.bounds,
        certified=correct.reshape([V] * n) if keep else torch.zeros([0] * n, dtype=torch.bool),
        class_axes=tuple(f"pos{i}" for i in range(n)),
        true_accuracy=n_correct / total,
        model_name=view.cfg.model_name,
        settings=settings,
    )
