"""The input classes of the Max-of-K proofs, their combinatorial counts, and which sequences they certify.

arXiv 2406.11779 (the cubic proof and its convexity argument) partitions the V^n inputs t (query token
q = t[n-1], maximum m = max_i t_i) by (q, m, c), c = the number of non-query positions holding a token below m:

    q = m: c in 0..n-1, and the other n-1-c non-query positions hold m;
    q < m: c in 0..n-2 (the maximum must occur before the query).

A proof returns a **good-set grid** `good[q, m, k, c]` (bool, `[V, V, V, n]`): it certifies every sequence of class
(q, m, c) whose c non-max, non-query tokens all lie in `{k < m : good[q, m, k, c]}` (for c = 0, the single sequence
of the class, recorded identically along k). The number of certified sequences is therefore

    Σ_{valid (q, m, c)}  C(n-1, c) · |{k : good[q, m, k, c]}|^c        (c >= 1; 1 or 0 for c = 0)

(choose the c non-max positions, then their tokens), and the bound is that count over V^n: accuracy under the
uniform distribution on all inputs.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_tensorsim.checks import checked_int

__all__ = ["certified_count", "certified_inputs", "class_of", "class_sizes", "valid_classes"]


def valid_classes(d_vocab: int, n_ctx: int, device: torch.device | str | None = None) -> Bool[Tensor, "q m c"]:
    """`valid[q, m, c]`: class (q, m, c) holds sequences (q <= m; c <= n-1 when q = m, c <= n-2 when q < m; and
    c = 0 or m >= 1, since non-max tokens lie below m)."""
    V, n = d_vocab, n_ctx
    q = torch.arange(V, device=device)[:, None, None]
    m = torch.arange(V, device=device)[None, :, None]
    c = torch.arange(n, device=device)[None, None, :]
    return (q <= m) & ((c <= n - 2) | ((q == m) & (c == n - 1))) & ((c == 0) | (m >= 1))


def _good_sizes(good: Bool[Tensor, "q m k c"]) -> Int[Tensor, "q m c"]:
    """|{k < m : good[q, m, k, c]}| for c >= 1, and 1 or 0 for c = 0; zero for invalid classes."""
    V, n = good.shape[0], good.shape[-1]
    below = torch.arange(V, device=good.device)[None, :] < torch.arange(V, device=good.device)[:, None]  # [m, k]
    sizes = (good & below[None, :, :, None]).sum(2)
    sizes[..., 0] = good[:, :, 0, 0].to(sizes.dtype)
    return torch.where(valid_classes(V, n, good.device), sizes, torch.zeros_like(sizes))


def class_sizes(good: Bool[Tensor, "q m k c"]) -> Int[Tensor, "q m c"]:
    """The number of sequences each class (q, m, c) certifies under the good-set grid `good` (int64):
    `C(n-1, c)·|good set|^c`, zero for invalid classes (module docstring). Needs d_vocab^n_ctx < 2^63."""
    V, n = good.shape[0], good.shape[-1]
    if V**n >= 2**63:
        raise ValueError(f"good: d_vocab^n_ctx = {V}^{n} overflows int64 class sizes; use certified_count (exact)")
    c = torch.arange(n, device=good.device)
    choose = torch.tensor([math.comb(n - 1, int(i)) for i in c], dtype=torch.int64, device=good.device)
    counts = choose * _good_sizes(good).to(torch.int64) ** c
    counts[..., 0] = _good_sizes(good)[..., 0]
    return counts


def certified_count(good: Bool[Tensor, "q m k c"]) -> int:
    """The number of sequences the good-set grid certifies, exactly (Python integers, any d_vocab^n_ctx):
    Σ_c C(n-1, c)·Σ_s (number of classes with a good set of size s)·s^c."""
    V, n = good.shape[0], good.shape[-1]
    sizes = _good_sizes(good)
    total = int(sizes[..., 0].sum())
    for c in range(1, n):
        histogram = torch.bincount(sizes[..., c].flatten(), minlength=V + 1).tolist()
        total += math.comb(n - 1, c) * sum(count * s**c for s, count in enumerate(histogram))
    return total


def class_of(tokens: Int[Tensor, "batch n_ctx"]) -> tuple[Tensor, Tensor, Tensor]:
    """Each sequence's class: query token q `[batch]`, maximum m `[batch]` and c `[batch]`, the number of non-query
    positions holding a token below m."""
    q = tokens[:, -1]
    m = tokens.max(dim=1).values
    c = (tokens[:, :-1] < m[:, None]).sum(1)
    return q, m, c


def certified_inputs(good: Bool[Tensor, "q m k c"], tokens: Int[Tensor, "batch n_ctx"]) -> Bool[Tensor, " batch"]:
    """Whether the good-set grid certifies each sequence of `tokens` (its class is valid and every non-max,
    non-query token lies in the class's good set; module docstring). `good` `[V, V, V, n]`."""
    V, n = good.shape[0], good.shape[-1]
    if tuple(good.shape) != (V, V, V, n) or tokens.ndim != 2 or tokens.shape[1] != n:
        raise ValueError(
            f"tokens: expected [batch, {n}] for a good-set grid {list(good.shape)}; got {list(tokens.shape)}"
        )
    tokens = tokens.to(good.device)
    q, m, c = class_of(tokens)
    nonmax = tokens[:, :-1] < m[:, None]  # [batch, n-1]
    hit = good[q[:, None], m[:, None], tokens[:, :-1], c[:, None]]  # [batch, n-1]
    ok = torch.where(nonmax, hit, torch.ones_like(hit)).all(1)
    ok = torch.where(c == 0, good[q, m, 0, 0], ok)
    return ok & valid_classes(V, n, good.device)[q, m, c]


def all_inputs(d_vocab: int, n_ctx: int, start: int = 0, stop: int | None = None) -> Int[Tensor, "batch n_ctx"]:
    """The sequences with flat indices `start .. stop-1` in lexicographic order (index = Σ t_i·V^(n-1-i)), int64.
    Streams the V^n inputs in chunks without materialising them all."""
    V = checked_int(d_vocab, "d_vocab", 1, "an integer >= 1")
    n = checked_int(n_ctx, "n_ctx", 1, "an integer >= 1")
    stop = V**n if stop is None else stop
    index = torch.arange(start, stop, dtype=torch.int64)
    powers = V ** torch.arange(n - 1, -1, -1, dtype=torch.int64)
    return (index[:, None] // powers) % V
