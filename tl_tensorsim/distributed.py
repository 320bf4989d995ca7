"""Processes and devices for one job: rank, world size and counted collectives over PyTorch's own engine
(`torch.distributed`; NCCL on GPUs, Gloo on CPUs, processes launched by `torchrun`).

    comm = Collectives.current()          # the default process group when one is up, else one process
    lo, hi = comm.shard(n)                # this rank's contiguous share of n items
    total = comm.all_reduce(partial)      # sum (or "min" / "max") over ranks; a no-op in one process
    every = comm.all_gather(mine)         # [world, *mine.shape]
    comm.stats.bytes                      # payload bytes this rank handed to each kind of collective

`init_from_env()` starts the default process group from the variables `torchrun` sets (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK) and, with CUDA, puts this process on `cuda:LOCAL_RANK`. Code written against
`Collectives` runs unchanged in one process, where every collective returns its input.

Byte counts are the payload each rank contributes (`numel * element_size` of the tensor passed in); on the wire a
ring all-reduce moves about `2 (W-1)/W` times that per rank and an all-gather `(W-1)` times it (W = world size).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

ReduceOp = Literal["sum", "min", "max"]
WORLD_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class CommStats:
    """Collectives issued by this rank: `calls[op]` and payload `bytes[op]` (see the module docstring)."""

    calls: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)

    def add(self, op: str, tensor: Tensor) -> None:
        self.calls[op] += 1
        self.bytes[op] += tensor.numel() * tensor.element_size()

    def reset(self) -> None:
        self.calls.clear()
        self.bytes.clear()


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process job (`torchrun` sets WORLD_SIZE > 1)."""
    return all(v in os.environ for v in WORLD_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(backend: str | None = None) -> Collectives:
    """Start the default process group from `torchrun`'s environment (backend: NCCL when CUDA is available,
    else Gloo) unless it is already up or the job has one process; returns `Collectives.current()`."""
    import torch.distributed as dist

    if launched_by_torchrun() and dist.is_available() and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and backend in (None, "nccl")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return Collectives.current()


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """`[lo, hi)`: rank `rank`'s contiguous share of `n` items, the first `n % world` ranks one item larger,
    in rank order (concatenating the shards of ranks 0..world-1 gives 0..n-1)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


class Collectives:
    """Counted collectives over a process group (None: the default group). With one process (no group up, or
    a world of 1) every collective returns its input without communicating."""

    def __init__(self, group: object | None = None, *, single: bool = False):
        import torch.distributed as dist

        self.group = group
        up = not single and dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if up else 0
        self.world = dist.get_world_size(group) if up else 1
        self.backend = dist.get_backend(group) if up else None
        self.stats = CommStats()

    @classmethod
    def current(cls) -> Collectives:
        """The default process group when one is up (one process otherwise)."""
        return cls()

    @classmethod
    def single(cls) -> Collectives:
        """One process, whatever is initialised (every collective is a no-op)."""
        return cls(single=True)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where collective buffers must live: this process's CUDA device for NCCL, else the CPU."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share `[lo, hi)` of `n` items (`shard_range`)."""
        return shard_range(n, self.rank, self.world)

    def _staged(self, tensor: Tensor) -> Tensor:
        return tensor.detach().to(self.device, copy=True).contiguous()

    def all_reduce(self, tensor: Tensor, op: ReduceOp = "sum") -> Tensor:
        """The elementwise `op` of `tensor` over ranks (a new tensor on `tensor`'s device; identical on every
        rank)."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        buf = self._staged(tensor)
        self.stats.add(f"all_reduce_{op}", buf)
        dist.all_reduce(buf, ops[op], group=self.group)
        return buf.to(tensor.device)

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every rank's `tensor` (same shape on all ranks), stacked in rank order: `[world, *tensor.shape]`."""
        if not self.distributed:
            return tensor[None]
        import torch.distributed as dist

        buf = self._staged(tensor)
        out = torch.empty((self.world, *buf.shape), dtype=buf.dtype, device=buf.device)
        self.stats.add("all_gather", buf)
        if self.backend == "nccl":
            dist.all_gather_into_tensor(out, buf, group=self.group)
        else:
            dist.all_gather(list(out.unbind(0)), buf, group=self.group)  # views of `out`, filled in place
        return out.to(tensor.device)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def __repr__(self) -> str:
        return f"Collectives(rank {self.rank} of {self.world}, backend {self.backend})"
