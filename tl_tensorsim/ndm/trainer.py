"""`NDMState`: one NDM fit as a module for `tl_tensorsim.training.train_loop` (Huang & Hahn, arXiv 2508.01916,
Sec. 3): `batch_loss` is the nearest-neighbour loss of a random batch, `merge_check` the mutual-information merge
round, and every piece of state a resumed run needs (rotation, partition, key-pool ids, the rotation the pool was
last rotated with, the refresh counter, the last MI) is a parameter or buffer of fixed shape, so the loop's
checkpoints restore it bit-identically.

Key pool. Every `refresh_every` steps (and after every merge) `key_pool` rows are drawn at random (all rows when
there are fewer) and rotated with the current R for the search; between refreshes the search ranks keys under that
rotation and the `rerank` best candidates per query and subspace are re-scored exactly with the current R, so the
loss is always the exact distance to the chosen neighbour. `refresh_every=1, rerank=1` is the paper's step.

Processes. With a `Collectives` of several ranks (`torch.distributed`) the key pool is sharded and the step runs
as described in `ndm.sharded`; the gradient of R is all-reduced before the clip, the MI estimate reduces its
neighbour counts over ranks, so R, the partition and every merge are identical on every rank.

Merging re-creates the reference's trainer in place: the parametrization's base becomes the merged R, its skew
weight returns to 0 and Adam's state is cleared (the same as a new Adam).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tl_tensorsim.artifacts import DictConfig
from tl_tensorsim.distributed import Collectives
from tl_tensorsim.ndm.mutual_info import merge_pairs, merged_order, subspace_mutual_information
from tl_tensorsim.ndm.objective import (
    NeighbourSearch,
    OrthogonalRotation,
    ndm_loss,
    nearest_orthogonal,
    neighbour_distances,
)
from tl_tensorsim.ndm.partition import SubspacePartition, mean_pairwise
from tl_tensorsim.ndm.sharded import gather_rows, global_candidates, sharded_neighbour_distances


@dataclass(frozen=True)
class NDMSettings(DictConfig):
    """Every setting of an NDM fit (see `fit_ndm` for their meaning); the defaults are the paper's GPT-2 run."""

    unit_size: int = 32
    sizes: tuple[int, ...] | None = None
    merge_threshold: float = 0.04
    merge_start: int = 20_000
    merge_interval: int = 8_000
    max_steps: int = 100_000
    stop_at_n_subspaces: int = 1
    reinit_every: int = 0
    reinit_until: int = 0
    reinit_draws: int = 50
    batch_size: int = 128
    lr: float = 3e-4
    grad_clip: float = 100.0
    key_pool: int = 409_600
    refresh_every: int = 8
    rerank: int = 4
    search_dtype: str = "float32"
    parametrization: str = "cayley"
    mi_queries: int = 12_800
    mi_keys: int = 98_304
    seed: int = 0
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (`sizes` as a list), so that a checkpoint's stored settings compare equal."""
        return {**asdict(self), "sizes": None if self.sizes is None else list(self.sizes)}

    def reinit_steps(self) -> list[int]:
        """The steps after which the pair re-initialisation runs (the last one only reverts to the best R)."""
        if not self.reinit_every:
            return []
        return sorted({*range(self.reinit_every, self.reinit_until + 1, self.reinit_every), self.reinit_until})

    def merge_steps(self) -> list[int]:
        """The steps after which a merge check runs (none with a fixed partition)."""
        if self.sizes is not None:
            return []
        return list(range(max(self.merge_start, 1), self.max_steps + 1, self.merge_interval))


class NDMState(nn.Module):
    """One NDM fit on `acts` `[n, d]` (CPU, possibly memory-mapped; rows move to `device` as they are drawn);
    `comm`: the processes sharing the fit (default: this one alone)."""

    def __init__(self, acts: Tensor, settings: NDMSettings, device: torch.device, comm: Collectives | None = None):
        super().__init__()
        s = settings
        self.acts, self.settings, self.device = acts, s, device
        self.comm = comm or Collectives.single()
        self.shard_offset = 0  # this rank's first position in the key pool
        self.n, self.d = acts.shape
        self.dtype = getattr(torch, s.dtype)
        sizes = s.sizes or (s.unit_size,) * (self.d // s.unit_size)
        blocks = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.rotation = OrthogonalRotation(
            torch.eye(self.d, dtype=torch.float64, device=device), s.parametrization, self.dtype
        )
        self.register_buffer("block_of", blocks.to(device))  # subspace of each column of R
        self.register_buffer("pool_ids", torch.zeros(min(s.key_pool, self.n), dtype=torch.long, device=device))
        self.register_buffer("search_rotation", torch.zeros(self.d, self.d, dtype=self.dtype, device=device))
        self.register_buffer("since_refresh", torch.tensor(s.refresh_every))
        self.register_buffer("done_step", torch.tensor(-1))  # the step of the check that ended the fit
        self.register_buffer("mi", torch.full((self.d, self.d), torch.nan, dtype=torch.float64))  # [:S, :S]
        self.register_buffer("mi_step", torch.tensor(-1))
        self.register_buffer("best_base", torch.eye(self.d, dtype=torch.float64, device=device))  # re-initialisation
        self.register_buffer("best_per", torch.full((self.d,), torch.inf, dtype=torch.float64))  # [:S]
        self.search: NeighbourSearch | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "search", None))
        self.rotation.weight.register_hook(self._clip)  # clip_grad_norm_ of the one parameter, inside backward
        self.optimizer = torch.optim.Adam(self.rotation.parameters(), lr=s.lr)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(torch.bincount(self.block_of).tolist())

    @property
    def done(self) -> bool:
        return int(self.done_step) >= 0

    def last_mi(self) -> Tensor | None:
        """The last MI estimate `[S, S]`, when it was made for the current partition."""
        n_s = len(self.sizes)
        return None if int(self.mi_step) < 0 or self.mi[:n_s, :n_s].isnan().any() else self.mi[:n_s, :n_s].clone()

    def partition(self, **kwargs: Any) -> SubspacePartition:
        return SubspacePartition(self.rotation.matrix().cpu(), self.sizes, **kwargs)

    # ------------------------------------------------------------------------------------------- the step
    def _clip(self, grad: Tensor) -> Tensor:
        grad = self.comm.all_reduce(grad)  # the sum of every rank's part (a no-op in one process)
        norm = torch.linalg.vector_norm(grad)
        return grad * (self.settings.grad_clip / (norm + 1e-6)).clamp(max=1.0)

    def _rows(self, ids: Tensor) -> Tensor:
        return self.acts[ids.to(self.acts.device)].to(device=self.device, dtype=self.dtype)

    def _search(self, generator: torch.Generator) -> NeighbourSearch:
        """The key pool for this step: kept, rebuilt after a resume from the stored ids and rotation, or redrawn
        and rotated with the current R when `refresh_every` steps have passed."""
        if self.search is not None and int(self.since_refresh) < self.settings.refresh_every:
            return self.search
        if int(self.since_refresh) >= self.settings.refresh_every:
            if self.n > len(self.pool_ids):
                ids = torch.randperm(self.n, generator=generator)[: len(self.pool_ids)].sort().values
            else:
                ids = torch.arange(self.n)
            with torch.no_grad():
                self.pool_ids.copy_(ids)
                self.search_rotation.copy_(self.rotation())
                self.since_refresh.zero_()
        search_dtype = getattr(torch, self.settings.search_dtype)
        if self.comm.distributed:  # this rank's contiguous share of the sorted pool
            lo, hi = self.comm.shard(len(self.pool_ids))
            self.shard_offset = lo
            self.search = NeighbourSearch(self._rows(self.pool_ids[lo:hi]), self.pool_ids[lo:hi], self.sizes,
                                          search_dtype)  # fmt: skip
        else:
            whole = len(self.pool_ids) == self.n
            keys = self.acts.to(self.device, self.dtype) if whole else self._rows(self.pool_ids)
            self.search = NeighbourSearch(keys, self.pool_ids, self.sizes, search_dtype)  # every row a key: no copy
        self.search.refresh(self.search_rotation)
        return self.search

    def batch_loss(self, step: int, generator: torch.Generator) -> Tensor:
        """The NDM loss of `batch_size` random queries (after the fit has ended: a constant without gradient
        for R, so the loop's remaining steps change nothing)."""
        if self.done:
            return torch.zeros((), requires_grad=True)
        s = self.settings
        search = self._search(generator)
        ids = torch.randint(self.n, (s.batch_size,), generator=generator)
        if self.comm.distributed:
            return self._sharded_loss(search, ids)
        queries, ids = self._rows(ids), ids.to(self.device)
        candidates = search.candidates(queries, ids, s.rerank)
        dist = neighbour_distances(queries, ids, search.keys, search.key_ids, candidates, self.rotation(), self.sizes)
        self.since_refresh += 1
        return dist.mean(0).mean()

    def _sharded_loss(self, search: NeighbourSearch, ids: Tensor) -> Tensor:
        """The step of `ndm.sharded`: the value is the loss over every rank's keys, the gradient this rank's part."""
        s, comm = self.settings, self.comm
        lo, hi = comm.shard(s.batch_size)
        queries = gather_rows(comm, self._rows(ids[lo:hi]), s.batch_size)
        ids = ids.to(self.device)
        k = min(s.rerank, len(self.pool_ids))
        cand = global_candidates(search, queries, ids, k, self.shard_offset, comm)
        dist, _ = sharded_neighbour_distances(
            queries, ids, search.keys, search.key_ids, self.shard_offset, cand, self.rotation(), self.sizes, comm
        )
        local = dist.sum(0).div(s.batch_size).mean()
        self.since_refresh += 1
        return comm.all_reduce(local.detach()) + (local - local.detach())

    # ------------------------------------------------------------------------------------------- merging
    def estimate_mi(self, step: int) -> Tensor:
        """KSG mutual information of the current partition (rows drawn from a stream seeded by seed and step)."""
        s = self.settings
        mi = subspace_mutual_information(
            self.acts, self.partition(), n_queries=s.mi_queries, n_keys=s.mi_keys,
            seed=s.seed * 1_000_003 + step, device=self.device, dtype=self.dtype, comm=self.comm,
        )  # fmt: skip
        self.mi.fill_(torch.nan)
        self.mi[: len(mi), : len(mi)] = mi
        self.mi_step.fill_(step)
        return mi

    def merge_check(self, step: int) -> dict[str, Any]:
        """Estimate MI and merge the pairs above the threshold; with none, the fit ends here. Returns the
        history entries: mean pairwise MI before merging, the merged pairs and the new sizes."""
        s = self.settings
        mi = self.estimate_mi(step)
        pairs = merge_pairs(mi, self.sizes, s.merge_threshold, min_subspaces=s.stop_at_n_subspaces)
        out = {"mean_mi": mean_pairwise(mi), "merged": [list(p) for p in pairs]}
        if not pairs:
            self.done_step.fill_(step)
            return {**out, "sizes": list(self.sizes)}
        columns, sizes = merged_order(self.sizes, pairs)
        base = nearest_orthogonal(self.rotation.matrix()[:, columns.to(self.device)])
        self.block_of.copy_(torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)))
        self._restart(base)
        return {**out, "sizes": list(sizes)}

    def _restart(self, base: Tensor) -> None:
        """Continue from `R = base` with a fresh Adam and a freshly drawn, rotated key pool."""
        self.rotation.rebase(base)
        self.optimizer.state.clear()
        self.since_refresh.fill_(self.settings.refresh_every)
        self.search = None

    # ------------------------------------------------------------------------------------------- re-initialisation
    def estimate_loss(self) -> tuple[float, Tensor]:
        """The loss of the current R, averaged over `reinit_draws` fixed random draws of `batch_size` queries and
        `key_pool` keys (the same draws at every call): `(loss, per_subspace)`."""
        s = self.settings
        g = torch.Generator().manual_seed(s.seed + 17)
        rotation, total = self.rotation.matrix().to(self.device, self.dtype), 0.0
        for _ in range(s.reinit_draws):
            ids = torch.randperm(self.n, generator=g)[: s.batch_size + min(s.key_pool, self.n - s.batch_size)]
            keys = ids[s.batch_size :].sort().values
            _, per = ndm_loss(self._rows(ids[: s.batch_size]), self._rows(keys), rotation, self.sizes,
                              query_ids=ids[: s.batch_size], key_ids=keys)  # fmt: skip
            total = total + per.double().cpu()
        per = total / s.reinit_draws
        return float(per.mean()), per

    def reinit(self, step: int) -> dict[str, Any]:
        """The paper's toy procedure (arXiv 2508.01916, toy experiment): keep the best R seen so far (by
        `estimate_loss`); then, before `reinit_until`, rotate the columns of the subspace with the highest loss and
        of a partner drawn with probability ∝ loss × MI by a random orthogonal matrix; at `reinit_until`, continue
        from the best R."""
        s, n_s = self.settings, len(self.sizes)
        loss, per = self.estimate_loss()
        if loss < float(self.best_per[:n_s].mean()):
            self.best_base.copy_(self.rotation.matrix())
            self.best_per[:n_s] = per
        per = self.best_per[:n_s]
        if step >= s.reinit_until:
            self._restart(self.best_base.clone())
            return {"reinit_loss": loss, "best_loss": float(per.mean())}
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + step)
        mi = subspace_mutual_information(
            self.acts, SubspacePartition(self.best_base.cpu(), self.sizes), n_queries=s.mi_queries,
            n_keys=s.mi_keys, seed=s.seed * 1_000_003 + step, device=self.device, dtype=self.dtype, comm=self.comm,
        )  # fmt: skip
        i = int(per.argmax())
        weight = (per * mi[i]).clamp_min(0)
        weight[i] = 0
        j = int(torch.multinomial(weight + 1e-12, 1, generator=g)) if n_s > 1 else i
        bounds = torch.cumsum(torch.tensor((0, *self.sizes)), 0).tolist()
        cols = torch.cat([torch.arange(bounds[k], bounds[k + 1]) for k in sorted({i, j})]).to(self.device)
        q = torch.linalg.qr(torch.randn(len(cols), len(cols), generator=g, dtype=torch.float64)).Q
        base = self.best_base.clone()
        base[:, cols] = base[:, cols] @ q.to(self.device)
        self._restart(base)
        return {"reinit_loss": loss, "best_loss": float(per.mean()), "reinit_pair": [i, j]}
