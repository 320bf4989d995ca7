"""The hidden layer h(x, y) = ReLU(w_l[x] + w_r[y]) of every pair of a group-operation network, read in blocks
that stay in cache: by blocks of x (`hidden_rows`, brute force) or answer by answer (`answer_rows`, the Fourier
check: the pairs (x, x⁻¹ ⋆ z) of a few answers z per block), and the per-neuron bounds on its float64 rounding
(`hidden_bounds`). Float64 throughout; one reused buffer per reading."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.proofs.certified import EPS, Ball

__all__ = ["answer_index", "answer_rows", "hidden_block", "hidden_bounds", "hidden_rows"]


def hidden_block(n: int, m: int, cache_bytes: int = 2**20) -> int:
    """How many x values per block of the hidden layer `[x, n, m]` (float64) so that a block fills about
    `cache_bytes` (a block stays in cache while every quantity of its pairs is read off it)."""
    return max(1, min(n, cache_bytes // (8 * n * m)))


def hidden_rows(wl: Tensor, wr: Tensor) -> Iterator[tuple[slice, Float[Tensor, "rows m"]]]:
    """The hidden layer h = ReLU(wl[x] + wr[y]) of every pair, block by block of x (`hidden_block`, in order):
    yields (xs, h) with h float64 `[|xs|·n, m]`, row x·n + y (local to the block), for the float64 midpoint tables
    wl, wr `[n, m]`. One buffer is reused, so h is valid until the next block. Cost 2·|G|²·m."""
    n, m = wl.shape
    step = hidden_block(n, m)
    buf = torch.empty(step * n, m, dtype=torch.float64)
    for start in range(0, n, step):
        xs = slice(start, min(n, start + step))
        rows = (xs.stop - xs.start) * n
        yield xs, torch.add(wl[xs, None], wr[None], out=buf[:rows].view(-1, n, m)).clamp_min_(0).view(rows, m)


def hidden_bounds(wl: Ball, wr: Ball) -> tuple[Tensor, Tensor]:
    """Per neuron (`[m]`): a bound on |h - fl(h)| for h = ReLU(wl[x] + wr[y]) over all pairs (the radii plus the
    rounding of the sum; ReLU is exact and 1-Lipschitz), and a bound on |fl(h)| (max_x wl + max_y wr, or 0)."""
    size = wl.mid.abs().amax(0) + wr.mid.abs().amax(0)
    colrad = (Ball.exact(wl.rad.amax(0)) + Ball.exact(wr.rad.amax(0)) + Ball.exact(size) * EPS).upper()
    top = (Ball.exact(wl.mid.amax(0)) + Ball.exact(wr.mid.amax(0))).upper().clamp_min(0) * (1 + EPS)  # fl(sum)
    return colrad, top


def answer_index(group: Any) -> Int[Tensor, "order order"]:
    """`y[z, x]` = x⁻¹ ⋆ z, the right factor that makes x ⋆ y = z: the pairs listed answer by answer (cached on
    the group)."""
    return group.cached("answer_index", lambda: group.table[group.inverse].T.contiguous())


def answer_rows(group: Any, wl: Tensor, wr: Tensor, step: int) -> Iterator[tuple[slice, Float[Tensor, "rows m"]]]:
    """`hidden_rows` answer by answer: for blocks zs of `step` answers, yields (zs, h), h float64 `[|zs|·n, m]` with
    row j·n + x the pair (x, x⁻¹ ⋆ z), z = zs.start + j (`answer_index`); one buffer (h is valid until the next
    block). Cost 2·|G|²·m, with the same roundings as `hidden_rows`."""
    n, m = wl.shape
    y, buf = answer_index(group), torch.empty(step * n, m, dtype=torch.float64)
    for start in range(0, n, step):
        zs = slice(start, min(n, start + step))
        h = torch.index_select(wr, 0, y[zs].flatten(), out=buf[: (zs.stop - zs.start) * n]).view(-1, n, m)
        yield zs, h.add_(wl).clamp_min_(0).view(-1, m)
