"""Mutual information between subspaces (KSG, k=1) and the merge rule that sizes NDM's subspaces
(Huang & Hahn, arXiv 2508.01916, Sec. 3.2; Kraskov, Stögbauer & Grassberger 2004, estimator 1).

For subspaces i, j the distances inside each are divided by the square root of the subspace's total variance,
the joint distance is the max of the two, and with `N` = number of keys + 1

    I(i; j) = ψ(1) + ψ(N) − ⟨ψ(n_i + 1) + ψ(n_j + 1)⟩

where, for each query, `ε` is the joint distance to its nearest key and `n_i` (`n_j`) counts the keys strictly
closer than `ε` in subspace i (j). Queries and keys are disjoint random rows of the activations.

Ties. When a query's joint distance is exactly 0 (exact duplicates: discrete components such as a silent feature
group), KSG's counts are undefined and give a spurious ~log N; such queries use the mixture rule of Gao, Kannan,
Oh & Viswanath (NeurIPS 2017): `ψ(1)` becomes `ψ(k̃)` with `k̃` the keys at joint distance 0, and `n_i`, `n_j`
count the keys at distance 0. Without ties (continuous activations) the estimate is exactly KSG.

Merging: pairs with `I(i; j) / (d_i + d_j) > merge_threshold` merge greedily in descending order of that score,
each subspace at most once per round and at most `max(1, S // 8)` pairs per round; merged blocks concatenate their
columns and the blocks are re-sorted by width, widest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.checks import check_finite, checked_int
from tl_tensorsim.distributed import Collectives, shard_range
from tl_tensorsim.ndm.objective import size_groups
from tl_tensorsim.ndm.partition import SubspacePartition, as_partition

MI_BLOCK_ELEMENTS = 2**23  # distances held per query block: subspaces x queries x keys


def _scaled_distances(q: Tensor, k: Tensor, k_norms: list[Tensor], sizes: Sequence[int], scale: Tensor) -> Tensor:
    """`‖q_s − k_s‖ / sqrt(var_s)` for every subspace: `[n_subspaces, n_q, n_k]`."""
    out = q.new_empty(len(sizes), len(q), len(k))
    for g, kn in zip(size_groups(sizes), k_norms):
        cols = g.cols.to(q.device)
        qg = q[:, cols].transpose(0, 1)  # [n, q, s]
        sq = torch.baddbmm(
            kn[:, None, :] + qg.square().sum(-1, keepdim=True), qg, k[:, cols].permute(1, 2, 0), alpha=-2
        )
        out[list(g.blocks)] = sq.clamp_min_(0).sqrt_()
    return out / scale[:, None, None]


def _scale(keys: Tensor, sizes: Sequence[int], n_k: int, comm: Collectives) -> Tensor:
    """sqrt of each subspace's total variance over the keys of every rank (two passes, float64), `[S]`."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    x = keys.to(torch.float64)
    mean = comm.all_reduce(x.sum(0)) / n_k
    var = comm.all_reduce((x - mean).square().sum(0)) / max(n_k - 1, 1)
    return torch.stack([var[a : a + s].sum() for a, s in zip(starts, sizes)]).clamp_min(1e-30).sqrt().to(keys.dtype)


def _pair_eps(dist: Tensor) -> list[Tensor]:
    """For each subspace i, the joint (max) distance to the nearest key for every pair (i, j > i): `[S-i-1, q]`."""
    return [torch.maximum(dist[i : i + 1], dist[i + 1 :]).amin(-1) for i in range(len(dist) - 1)]


def _pair_counts(dist: Tensor, eps: list[Tensor]) -> list[Tensor]:
    """For each i: `[3, S-i-1, q]` counts of keys (n_i, n_j, k̃ − 0): strictly closer than ε in subspace i and j,
    and at joint distance 0; for a query with ε = 0 (exact duplicates), the keys at distance 0 in i and j."""
    out = []
    for i, e in enumerate(eps):
        n_i = (dist[i : i + 1] < e[..., None]).sum(-1, dtype=torch.int32)
        n_j = (dist[i + 1 :] < e[..., None]).sum(-1, dtype=torch.int32)
        k_tilde = torch.zeros_like(n_i)
        tied = (e == 0).nonzero(as_tuple=True)  # exact duplicates: the mixture rule
        if len(tied[0]):
            joint = torch.maximum(dist[i][tied[1]], dist[i + 1 :][tied])
            k_tilde[tied] = (joint == 0).sum(-1, dtype=torch.int32)
            n_i[tied] = (dist[i][tied[1]] == 0).sum(-1, dtype=torch.int32)
            n_j[tied] = (dist[i + 1 :][tied] == 0).sum(-1, dtype=torch.int32)
        out.append(torch.stack([n_i, n_j, k_tilde]))
    return out


def ksg_pairwise(
    queries: Float[Tensor, "n_q d"],
    keys: Float[Tensor, "n_k d"],
    sizes: Sequence[int],
    comm: Collectives | None = None,
) -> Float[Tensor, "n_subspaces n_subspaces"]:
    """KSG (k=1) mutual information between every pair of the contiguous column blocks `sizes` of already
    rotated `queries` and `keys` (disjoint samples), each block's distances scaled by sqrt of its total variance
    (estimated on the keys). Returns a symmetric float64 matrix in nats, diagonal 0 (not estimated).

    `comm`: under `torch.distributed`, `keys` is this rank's shard of the key set (queries the same on every
    rank); ε is the minimum over ranks and the neighbour counts their sum, so every rank gets the same matrix,
    equal to the estimate over all keys. Cost per query: `S · n_k · d` multiply-adds for the distances and
    `S² · n_k / 2` comparisons; communication per block of queries: `S²/2 · q` floats and `3 S²/2 · q` counts."""
    comm = comm or Collectives.single()
    n_s = len(sizes)
    if n_s < 2:  # no pair
        return torch.zeros(n_s, n_s, dtype=torch.float64, device=keys.device)
    n_k = int(comm.all_reduce(torch.tensor(len(keys))))
    scale = _scale(keys, sizes, n_k, comm)
    k_norms = [keys[:, g.cols.to(keys.device)].square().sum(-1).T for g in size_groups(sizes)]
    psi_sum = torch.zeros(n_s, n_s, dtype=torch.float64, device=keys.device)
    largest = shard_range(n_k, 0, comm.world)[1]  # the largest shard: the same query blocks on every rank
    step = max(1, MI_BLOCK_ELEMENTS // (n_s * max(largest, 1)))
    dg = torch.special.digamma
    for start in range(0, len(queries), step):
        dist = _scaled_distances(queries[start : start + step], keys, k_norms, sizes, scale)
        eps = _pair_eps(dist)
        lengths = [e.numel() for e in eps]
        eps = comm.all_reduce(torch.cat([e.reshape(-1) for e in eps]), "min").split(lengths)
        eps = [e.view(-1, dist.shape[1]) for e in eps]
        counts = _pair_counts(dist, eps)
        counts = comm.all_reduce(torch.cat([c.reshape(-1) for c in counts])).split([3 * n for n in lengths])
        for i, (e, c) in enumerate(zip(eps, counts)):
            n_i, n_j, k_tilde = c.view(3, *e.shape).double()
            k_tilde = torch.where(e == 0, k_tilde, torch.ones_like(k_tilde))
            psi_sum[i, i + 1 :] += (dg(n_i + 1) + dg(n_j + 1) - dg(k_tilde)).sum(-1)
    const = torch.special.digamma(torch.tensor(n_k + 1.0, dtype=torch.float64, device=keys.device))
    mi = torch.triu(const - psi_sum / len(queries), diagonal=1)
    return mi + mi.T


def subspace_mutual_information(
    acts: Float[Tensor, "n d"],
    partition: SubspacePartition | Sequence[int],
    *,
    n_queries: int = 12_800,
    n_keys: int = 98_304,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    comm: Collectives | None = None,
) -> Float[Tensor, "n_subspaces n_subspaces"]:
    """Pairwise mutual information (nats) between the subspaces of `partition` on activations `acts`.

    KSG with k=1 (arXiv 2508.01916, Sec. 3.2): each subspace's distances scaled by the square root of its total
    variance, joint distance = max, `I = ψ(1) + ψ(N) − ⟨ψ(n_i+1) + ψ(n_j+1)⟩` with `N = n_keys + 1`.

    Args:
        acts: `[n, d]` activations (in memory or memory-mapped; any float dtype).
        partition: a `SubspacePartition`, or widths summing to d (the identity basis).
        n_queries, n_keys: disjoint random rows used as queries and as the neighbour pool (the reference: 100
            batches of 128 and 98,304); scaled down proportionally when `acts` has fewer rows.
        seed: the rows drawn; device: where the distances are computed (default: `acts`' device); dtype: their dtype.
        comm: a `tl_tensorsim.distributed.Collectives`; with several processes each rank reads the queries and its
            shard of the keys, and every rank gets the estimate over all keys (`ksg_pairwise`). Default: one process.

    Returns:
        `[S, S]` float64, symmetric, diagonal 0 (not estimated). The mean pairwise MI is the mean above the diagonal.
    """
    part = as_partition(partition, argument="partition")
    if acts.ndim != 2 or acts.shape[1] != part.d:
        raise ValueError(
            f"acts: expected [n, d={part.d}] activations for a partition of d={part.d}; got shape {list(acts.shape)}"
        )
    n_queries = checked_int(n_queries, "n_queries", 1, "a positive int")
    n_keys = checked_int(n_keys, "n_keys", 1, "a positive int")
    n = acts.shape[0]
    if n < 3:
        raise ValueError(f"acts: need at least 3 rows to estimate mutual information; got {n}")
    total = min(n, n_queries + n_keys)
    n_q = max(1, min(total - 2, round(total * n_queries / (n_queries + n_keys))))
    comm = comm or Collectives.single()
    drawn = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:total]
    lo, hi = comm.shard(total - n_q)
    drawn = torch.cat([drawn[:n_q], drawn[n_q + lo : n_q + hi]])  # the queries and this rank's keys
    rows, order = drawn.sort()
    device = acts.device if device is None else torch.device(device)
    x = acts[rows].to(device=device, dtype=dtype)
    check_finite(x, "acts", "NaN or inf activations give no mutual information", row_ids=rows)
    x = x[torch.argsort(order)]  # read in order, used in random order
    rotated = x @ part.rotation_as(dtype, device)
    return ksg_pairwise(rotated[:n_q], rotated[n_q:], part.sizes, comm).cpu()


def merge_pairs(
    mi: Float[Tensor, "n_subspaces n_subspaces"],
    sizes: Sequence[int],
    threshold: float,
    *,
    min_subspaces: int = 1,
) -> list[tuple[int, int]]:
    """The pairs `(i, j)` (`i < j`) to merge this round: `mi[i, j] / (d_i + d_j) > threshold`, greedily in
    descending order of that score, each subspace at most once, at most `max(1, S // 8)` pairs, and never fewer
    than `min_subspaces` subspaces left."""
    n_s = len(sizes)
    cap = min(max(1, n_s // 8), n_s - min_subspaces)
    scored = [
        (float(mi[i, j]) / (sizes[i] + sizes[j]), i, j)
        for i in range(n_s)
        for j in range(i + 1, n_s)
        if float(mi[i, j]) / (sizes[i] + sizes[j]) > threshold
    ]
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for _, i, j in scored:
        if len(pairs) >= cap:
            break
        if i not in used and j not in used:
            pairs.append((i, j))
            used.update((i, j))
    return pairs


def merged_order(sizes: Sequence[int], pairs: Sequence[tuple[int, int]]) -> tuple[Tensor, tuple[int, ...]]:
    """`(columns, new_sizes)`: the column order of R after merging `pairs` (each pair's columns concatenated,
    blocks then stably sorted by width, widest first) and the new widths."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    cols = [list(range(a, a + s)) for a, s in zip(starts, sizes)]
    merged = {k for p in pairs for k in p}
    blocks = [c for k, c in enumerate(cols) if k not in merged] + [cols[i] + cols[j] for i, j in pairs]
    blocks.sort(key=len, reverse=True)
    return torch.tensor([c for b in blocks for c in b]), tuple(len(b) for b in blocks)
