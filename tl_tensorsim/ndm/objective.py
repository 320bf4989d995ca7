"""The NDM objective (Huang & Hahn, arXiv 2508.01916, Sec. 3.1): mean distance to the nearest neighbour inside
each subspace of a rotated representation.

With `R` `[d, d]` orthogonal (row vectors: `ĥ = h @ R`) and a partition of its columns into contiguous blocks
`s = 1..S` of widths `d_s`, the loss of a batch of queries `h_1..h_B` against a key pool `K` is

    L(R) = (1/S) Σ_s (1/B) Σ_b ‖ĥ_b^(s) − ĥ_{n*(b,s)}^(s)‖₂,   n*(b,s) = argmin_{k ∈ K, k ≠ b} ‖ĥ_b^(s) − ĥ_k^(s)‖₂

Euclidean (not squared) distance; the neighbour is searched separately in each subspace, under `no_grad`, and
never is the query itself; the mean over subspaces is unweighted. The gradient flows through the rotation of both
the query and its neighbour (`ĥ_b − ĥ_n = (h_b − h_n) @ R`).

Cost. The search compares every query with every key in every subspace (`B · |K| · d` multiply-adds per step); the
rotation of the key pool (`|K| · d²`) dominates when it is redone every step, as in the reference implementation.
`NeighbourSearch` keeps the pool rotated by the rotation of its last `refresh`, batches equal-size subspaces into
one `bmm` over key blocks of `block_size`, and returns the `rerank` best candidates per query and subspace; the
loss then re-scores these candidates with the current rotation (exact distances) and keeps the nearest. With the
pool refreshed every step and `rerank=1` this is the paper's exact search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

# scores per key block (subspaces x queries x keys): on a CPU 16 MiB in float32, near cache size; on a GPU (any
# other device type) 512 MiB, so that a pool of a million keys takes a dozen large launches, not hundreds of small ones
SEARCH_BLOCK_ELEMENTS = {"cpu": 2**22, "cuda": 2**27}
Parametrization = Literal["cayley", "matrix_exp"]


def nearest_orthogonal(matrix: Float[Tensor, "d d"]) -> Float[Tensor, "d d"]:
    """The orthogonal matrix nearest to `matrix` (polar factor `U Vᵀ` of its SVD), in float64."""
    u, _, vh = torch.linalg.svd(matrix.detach().to(torch.float64))
    return u @ vh


class OrthogonalRotation(torch.nn.Module):
    """`R = base @ Φ(A)` with `A = tril(W, -1) − tril(W, -1)ᵀ` skew-symmetric and `W` initialised at 0, so that
    `R = base` (the identity for a fresh fit) before the first step, and `R` is orthogonal for every `W`.

    `Φ = matrix_exp` is the map of torch's orthogonal parametrization used by the reference code; `Φ = cayley`,
    `(I − A/2)⁻¹(I + A/2)`, agrees with it to second order in `A` and its gradient is a linear solve instead of a
    matrix exponential of twice the size (on a CPU at d=768 about 40 ms instead of 0.9 s per step). `base` is kept
    in float64; `forward()` returns `R` in `W`'s dtype, `matrix()` in float64 without gradient.
    """

    def __init__(self, base: Float[Tensor, "d d"], parametrization: Parametrization, dtype: torch.dtype):
        super().__init__()
        d = base.shape[0]
        self.parametrization = parametrization
        self.register_buffer("base", base.detach().to(torch.float64).clone())
        self.weight = torch.nn.Parameter(torch.zeros(d, d, dtype=dtype, device=base.device))

    def _map(self, w: Tensor) -> Tensor:
        a = w.tril(-1)
        a = a - a.T
        if self.parametrization == "matrix_exp":
            return torch.linalg.matrix_exp(a)
        eye = torch.eye(len(a), dtype=a.dtype, device=a.device)
        return torch.linalg.solve(eye - a / 2, eye + a / 2)

    def forward(self) -> Float[Tensor, "d d"]:
        return self.base.to(self.weight.dtype) @ self._map(self.weight)

    def rebase(self, base: Float[Tensor, "d d"]) -> None:
        """Start again from `R = base` (skew weight 0), in place."""
        with torch.no_grad():
            self.base.copy_(base)
            self.weight.zero_()

    def matrix(self) -> Float[Tensor, "d d"]:
        """`R` in float64, without gradient."""
        with torch.no_grad():
            return self.base @ self._map(self.weight.to(torch.float64))


@dataclass(frozen=True)
class SizeGroup:
    """The subspaces of one width: `blocks` (their indices in the partition) and `cols` `[n_blocks, size]`
    (their columns of R)."""

    size: int
    blocks: tuple[int, ...]
    cols: Tensor


def size_groups(sizes: Sequence[int]) -> list[SizeGroup]:
    """Subspaces grouped by width (widest first), so that each group is searched with one batched matmul."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    groups = []
    for size in sorted(set(sizes), reverse=True):
        blocks = tuple(i for i, s in enumerate(sizes) if s == size)
        cols = torch.stack([torch.arange(starts[i], starts[i] + size) for i in blocks])
        groups.append(SizeGroup(int(size), blocks, cols))
    return groups


def _grouped(rotation: Float[Tensor, "d d"], group: SizeGroup) -> Float[Tensor, "n_blocks d size"]:
    """The columns of each subspace of `group`, stacked: `[n_blocks, d, size]`."""
    return einops.rearrange(rotation[:, group.cols.to(rotation.device)], "d n s -> n d s")


def self_positions(query_ids: Int[Tensor, " batch"], key_ids: Int[Tensor, " pool"]) -> Int[Tensor, " batch"]:
    """For each query, the position of the query itself in the (sorted) key ids, or -1 when it is not a key."""
    pos = torch.searchsorted(key_ids, query_ids).clamp(max=max(len(key_ids) - 1, 0))
    return torch.where(key_ids[pos] == query_ids, pos, torch.full_like(pos, -1))


class NeighbourSearch:
    """A key pool rotated for the nearest-neighbour search, grouped by subspace width.

    `refresh(rotation)` rotates the pool (`keys @ rotation`, in chunks) and stores each size group as
    `[n_blocks, pool, size + 1]`: the rotated keys and, in the last column, their squared norms, so that one `bmm`
    with `[−2q, 1]` gives `|k|² − 2 q·k` (the squared distance less `|q|²`, which does not change the ranking).
    `candidates(queries, query_ids, k)` returns, for each group, the `k` keys nearest to each query under that
    rotation, `[n_blocks, batch, k]` (positions in the pool), never the query itself (`query_ids` against the
    sorted `key_ids`). Scores are computed for key blocks of about `SEARCH_BLOCK_ELEMENTS[device type]` (cache-sized
    on a CPU, large on a GPU or any other device).
    """

    def __init__(
        self,
        keys: Float[Tensor, "pool d"],
        key_ids: Int[Tensor, " pool"],
        sizes: Sequence[int],
        dtype: torch.dtype | None = None,
    ):
        if len(keys) != len(key_ids):
            raise ValueError(f"key_ids: expected one id per key ({len(keys)}); got {len(key_ids)}")
        self.keys, self.key_ids = keys, key_ids
        self.dtype = dtype or keys.dtype  # of the rotated pool and the search arithmetic
        self.groups = size_groups(sizes)
        self.rotation: Tensor | None = None
        self.rotated: list[Tensor] = []

    def refresh(self, rotation: Float[Tensor, "d d"], chunk: int = 16384) -> None:
        """Rotate the pool with `rotation` (kept as `self.rotation`, the rotation the search works in)."""
        self.rotation = rotation.detach()
        pool, dtype, device = len(self.keys), self.dtype, self.keys.device
        self.rotated = [torch.empty(len(g.blocks), pool, g.size + 1, dtype=dtype, device=device) for g in self.groups]
        with torch.no_grad():
            rotation = self.rotation.to(dtype)
            for i in range(0, pool, chunk):
                rot = self.keys[i : i + chunk].to(dtype) @ rotation
                for g, out in zip(self.groups, self.rotated):
                    part = einops.rearrange(rot[:, g.cols.to(device)], "p n s -> n p s")
                    out[:, i : i + chunk, :-1] = part
                    out[:, i : i + chunk, -1] = part.float().square().sum(-1)

    def candidates(
        self, queries: Float[Tensor, "batch d"], query_ids: Int[Tensor, " batch"], k: int
    ) -> list[Int[Tensor, "n_blocks batch k"]]:
        """Per size group, the `k` nearest keys of each query under the refreshed rotation (pool positions)."""
        return [idx for _, idx in self.scored_candidates(queries, query_ids, k)]

    def scored_candidates(
        self, queries: Float[Tensor, "batch d"], query_ids: Int[Tensor, " batch"], k: int
    ) -> list[tuple[Float[Tensor, "n_blocks batch k"], Int[Tensor, "n_blocks batch k"]]]:
        """`candidates` with their scores `|k|² − 2 q·k` (the squared distance less `|q|²`; +inf for the query
        itself), unsorted: per size group `(scores, pool positions)`, `k` each (fewer when the pool is smaller)."""
        if self.rotation is None:
            raise RuntimeError("NeighbourSearch.candidates: call refresh(rotation) first")
        pool, batch = len(self.keys), len(queries)
        k = min(k, pool)
        own = self_positions(query_ids.to(self.key_ids.device), self.key_ids)
        device = self.keys.device.type
        block = SEARCH_BLOCK_ELEMENTS.get(device, SEARCH_BLOCK_ELEMENTS["cuda"])
        with torch.no_grad():
            rot = queries.to(self.dtype) @ self.rotation.to(self.dtype)
            found = []
            for g, keys in zip(self.groups, self.rotated):
                q = einops.rearrange(rot[:, g.cols.to(rot.device)], "b n s -> n b s")
                q = torch.cat([-2 * q, torch.ones_like(q[..., :1])], -1).to(keys.dtype)
                step = max(k, block // (len(g.blocks) * batch))
                best_val = best_idx = None
                for start in range(0, pool, step):
                    stop = min(pool, start + step)
                    score = torch.bmm(q, keys[:, start:stop].transpose(1, 2))
                    rows = ((own >= start) & (own < stop)).nonzero().squeeze(1)
                    score[:, rows, own[rows] - start] = torch.inf
                    if k == 1:
                        val, idx = score.min(-1, keepdim=True)
                    else:
                        val, idx = score.topk(min(k, stop - start), dim=-1, largest=False, sorted=False)
                    idx += start
                    if best_val is not None:
                        val, idx = torch.cat([best_val, val], -1), torch.cat([best_idx, idx], -1)
                        val, sel = val.topk(min(k, val.shape[-1]), dim=-1, largest=False, sorted=False)
                        idx = idx.gather(-1, sel)
                    best_val, best_idx = val, idx
                found.append((best_val, best_idx))
        return found


def candidate_distances(
    queries: Float[Tensor, "batch d"],
    keys: Float[Tensor, "pool d"],
    candidates: Int[Tensor, "n_blocks batch k"],
    rotation_blocks: Float[Tensor, "n_blocks d size"],
) -> Float[Tensor, "n_blocks batch k"]:
    """`‖(h_b − key_c) @ R_s‖₂` for every candidate `c` (positions in `keys`) of each query and subspace `s` of one
    size group (`rotation_blocks`: each subspace's columns of R): `[n, b * k, d] @ [n, d, s]`."""
    n, b, k = candidates.shape
    rot = torch.bmm(keys[candidates.reshape(n, b * k)], rotation_blocks).view(n, b, k, rotation_blocks.shape[-1])
    own = torch.bmm(queries.expand(n, b, -1), rotation_blocks)
    return torch.linalg.vector_norm(own[:, :, None] - rot, dim=-1)


def neighbour_distances(
    queries: Float[Tensor, "batch d"],
    query_ids: Int[Tensor, " batch"],
    keys: Float[Tensor, "pool d"],
    key_ids: Int[Tensor, " pool"],
    candidates: list[Int[Tensor, "n_blocks batch k"]],
    rotation: Float[Tensor, "d d"],
    sizes: Sequence[int],
) -> Float[Tensor, "batch n_subspaces"]:
    """`‖(h_b − h_n) @ R_s‖₂` to the nearest of the candidates of each query and subspace, under `rotation`
    (differentiable in `rotation`): the candidates are re-scored exactly under `no_grad`, the nearest one (never the
    query itself) is kept, and its distance recomputed with gradient. Returns `[batch, n_subspaces]`."""
    parts, order = [], []
    for g, cand in zip(size_groups(sizes), candidates):
        r = _grouped(rotation, g)
        if cand.shape[-1] > 1:
            with torch.no_grad():
                dist = candidate_distances(queries, keys, cand, r.detach())
                dist = dist.masked_fill(key_ids[cand] == query_ids[None, :, None], torch.inf)
                cand = cand.gather(-1, dist.argmin(-1, keepdim=True))
        diff = queries[None] - keys[cand[..., 0]]  # [n, b, d]
        parts.append(torch.linalg.vector_norm(torch.bmm(diff, r), dim=-1).T)  # [b, n]
        order.extend(g.blocks)
    out = torch.cat(parts, dim=1)
    return out[:, torch.argsort(torch.tensor(order, device=out.device))]


def ndm_loss(
    queries: Float[Tensor, "batch d"],
    keys: Float[Tensor, "pool d"],
    rotation: Float[Tensor, "d d"],
    sizes: Sequence[int],
    *,
    query_ids: Int[Tensor, " batch"] | None = None,
    key_ids: Int[Tensor, " pool"] | None = None,
) -> tuple[Float[Tensor, ""], Float[Tensor, " n_subspaces"]]:
    """The NDM loss of `queries` against `keys` under `rotation` with an exact search (arXiv 2508.01916, Sec. 3.1).

    Args:
        queries: `[batch, d]` activations; keys: `[pool, d]` (same dtype and device).
        rotation: `[d, d]` orthogonal, row-vector convention (`ĥ = h @ R`); may require grad.
        sizes: subspace widths (summing to d), contiguous column blocks of `rotation` in order.
        query_ids, key_ids: row ids; a key whose id equals a query's id is that query and never its neighbour.
            Default: queries and keys are distinct rows (`key_ids` must be sorted).

    Returns:
        `(loss, per_subspace)`: the unweighted mean over subspaces of the batch-mean Euclidean distance to the
        nearest neighbour, and the per-subspace batch means `[n_subspaces]`, in `rotation`'s dtype.
    """
    if sum(sizes) != rotation.shape[0] or queries.shape[-1] != rotation.shape[0] or keys.shape[-1] != rotation.shape[0]:
        raise ValueError(
            f"sizes: expected widths summing to d={rotation.shape[0]} for queries {list(queries.shape)} and keys "
            f"{list(keys.shape)}; got {list(sizes)} (sum {sum(sizes)})"
        )
    if query_ids is None:
        query_ids = torch.arange(-len(queries), 0, device=keys.device)
    if key_ids is None:
        key_ids = torch.arange(len(keys), device=keys.device)
    search = NeighbourSearch(keys, key_ids, sizes)
    search.refresh(rotation)
    cand = search.candidates(queries, query_ids, 1)
    dist = neighbour_distances(queries, query_ids, keys, key_ids, cand, rotation, sizes)
    per_subspace = dist.mean(0)
    return per_subspace.mean(), per_subspace
