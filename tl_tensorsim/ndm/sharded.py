"""The NDM step with the key pool sharded over `torch.distributed` ranks (Huang & Hahn, arXiv 2508.01916, Sec. 3.1;
the search of `objective.NeighbourSearch` over a pool split across processes).

Every rank holds the same rotation `R` and draws the same batch ids and pool ids (one seeded generator); rank `r`
holds the contiguous share `[lo_r, hi_r)` of the sorted pool and reads `batch / W` of the queries. One step:

1. all-gather the queries (`B x d`), so that every rank searches its shard for every query;
2. each rank's `k` best keys per query and subspace under the search rotation, all-gathered as
   `(score, pool position)`; the `k` best of the `W k` are the global candidates, the same set as one process finds;
3. with `k > 1`, the rank holding a candidate scores it exactly under the current `R`, the others give +inf; an
   all-reduce (min) gives every rank every candidate's exact distance, so the winner (argmin, never the query
   itself) is the same on every rank and the same as in one process;
4. the rank that holds the winning key computes `‖(h_b − h_n) @ R_s‖₂` with gradient (it has the query and the
   key, so no vector is fetched); the loss is the all-reduced sum, the gradient of `R` is all-reduced in
   `NDMState`'s gradient hook before the clip and the Adam step, so `R` stays identical on every rank.

Communication per step (payload per rank, float32 and int64): `B·d·4/W` (queries) + `S·B·k·12` (candidates)
+ `S·B·k·4` (exact distances, `k > 1`) + `d²·4` (gradient) + 8 (loss) bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.distributed import Collectives, shard_range
from tl_tensorsim.ndm.objective import NeighbourSearch, _grouped, candidate_distances, size_groups


def gather_rows(comm: Collectives, mine: Float[Tensor, "m d"], total: int) -> Float[Tensor, "total d"]:
    """Each rank's contiguous share (`comm.shard(total)`) of `total` rows, all-gathered in rank order."""
    width = -(-total // comm.world)
    padded = torch.zeros(width, *mine.shape[1:], dtype=mine.dtype, device=mine.device)
    padded[: len(mine)] = mine
    every = comm.all_gather(padded)
    sizes = [hi - lo for lo, hi in (shard_range(total, r, comm.world) for r in range(comm.world))]
    return torch.cat([every[r, :m] for r, m in enumerate(sizes)])


def global_candidates(
    search: NeighbourSearch,
    queries: Float[Tensor, "batch d"],
    query_ids: Int[Tensor, " batch"],
    k: int,
    offset: int,
    comm: Collectives,
) -> list[Int[Tensor, "n_blocks batch k"]]:
    """Per size group, the `k` best pool positions (global: `offset` + position in this rank's shard) of each query
    under the search rotation, over the keys of every rank."""
    out = []
    for val, idx in search.scored_candidates(queries, query_ids, k):
        pad = k - val.shape[-1]  # a shard smaller than k
        if pad:
            val = torch.cat([val, val.new_full((*val.shape[:-1], pad), torch.inf)], -1)
            idx = torch.cat([idx, idx.new_full((*idx.shape[:-1], pad), -1 - offset)], -1)
        every_val = comm.all_gather(val.float())  # [W, n, b, k]
        every_idx = comm.all_gather(idx + offset)
        val = torch.cat(every_val.unbind(0), -1)
        idx = torch.cat(every_idx.unbind(0), -1)
        best = val.topk(k, dim=-1, largest=False, sorted=False).indices
        out.append(idx.gather(-1, best))
    return out


def sharded_neighbour_distances(
    queries: Float[Tensor, "batch d"],
    query_ids: Int[Tensor, " batch"],
    keys: Float[Tensor, "shard d"],
    key_ids: Int[Tensor, " shard"],
    offset: int,
    candidates: list[Int[Tensor, "n_blocks batch k"]],
    rotation: Float[Tensor, "d d"],
    sizes: Sequence[int],
    comm: Collectives,
) -> tuple[Float[Tensor, "batch n_subspaces"], Float[Tensor, "batch n_subspaces"]]:
    """`(dist, owned)`: `dist[b, s] = ‖(h_b − h_n) @ R_s‖₂` to the nearest of the global candidates (differentiable
    in `rotation`) where this rank holds the winning key, 0 elsewhere; `owned` marks those entries (1.0 / 0.0).
    Summed over ranks, `dist` is `objective.neighbour_distances` of one process."""
    parts, owned_parts, order = [], [], []
    lo, hi = offset, offset + len(keys)
    for g, cand in zip(size_groups(sizes), candidates):
        r = _grouped(rotation, g)
        mine = (cand >= lo) & (cand < hi)
        local = (cand - lo).clamp(0, max(len(keys) - 1, 0))
        if cand.shape[-1] > 1:
            with torch.no_grad():  # exact distances of this rank's candidates; +inf for the others and the query
                dist = candidate_distances(queries, keys, local, r.detach())
                dist = dist.masked_fill(~mine | (key_ids[local] == query_ids[None, :, None]), torch.inf)
                dist = comm.all_reduce(dist.float(), "min")
                cand = cand.gather(-1, dist.argmin(-1, keepdim=True))
                mine = (cand >= lo) & (cand < hi)
                local = (cand - lo).clamp(0, max(len(keys) - 1, 0))
        mine, local = mine[..., 0], local[..., 0]
        neighbour = torch.where(mine[..., None], keys[local], queries[None])  # not held here: a zero difference
        diff = queries[None] - neighbour  # [n, b, d]
        parts.append(torch.linalg.vector_norm(torch.bmm(diff, r), dim=-1).T)  # [b, n]
        owned_parts.append(mine.T.to(parts[-1].dtype))
        order.extend(g.blocks)
    back = torch.argsort(torch.tensor(order, device=queries.device))
    return torch.cat(parts, dim=1)[:, back], torch.cat(owned_parts, dim=1)[:, back]
