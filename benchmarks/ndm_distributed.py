"""Benchmark: the NDM step on 1 and 2 processes (torch.distributed, Gloo on CPU) at the same global key pool.

Each configuration runs `NDMState` steps (batch 128, equal subspaces of 32, Adam) on synthetic correlated Gaussian
activations; with 2 processes the key pool is sharded (`tl_tensorsim.ndm.sharded`) and the processes are forked
from this script with one torch thread each (the 1-process run also uses one thread). Reported per setting:
seconds per step after a warm-up step (refreshes included), steps/s, the speed-up of 2 processes over 1, and the
payload bytes per step and per rank handed to each collective, counted in `tl_tensorsim.distributed.Collectives`.
The 2-process run also compares its result with the 1-process one: max |ΔP| over the subspace projectors
`P_s = R_s R_sᵀ` (what the loss depends on) and max |ΔR|. In float32 R itself drifts apart inside each subspace:
the gradient along rotations within a subspace is zero in exact arithmetic and ~1e-9 in float32, and Adam divides
it by its own magnitude plus eps = 1e-8, so rounding noise becomes steps of ~0.1 lr in those gauge directions.

On a shared machine the timings carry the other jobs' load; the byte counts do not.

    python benchmarks/ndm_distributed.py [--d 256] [--pool 32768] [--steps 12] [--world 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tl_tensorsim.distributed import Collectives
from tl_tensorsim.ndm.trainer import NDMSettings, NDMState

BATCH, UNIT = 128, 32
MODES = {"exact (refresh 1, rerank 1)": dict(refresh_every=1, rerank=1),
         "stale (refresh 8, rerank 4)": dict(refresh_every=8, rerank=4)}  # fmt: skip


def make_acts(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -1.5, d)[:, None]
    return torch.randn(n, d, generator=g) @ mix


def run_steps(args: argparse.Namespace, mode: dict, comm: Collectives) -> dict:
    """`args.steps` NDM steps; seconds per step after the first, bytes per step, the final rotation."""
    torch.set_num_threads(1)
    acts = make_acts(args.pool + 4096, args.d)
    settings = NDMSettings(unit_size=UNIT, batch_size=BATCH, key_pool=args.pool, merge_start=10**9, lr=3e-4, **mode)
    state = NDMState(acts, settings, torch.device("cpu"), comm)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps):
        if i == 1:
            comm.stats.reset()
        comm.barrier()
        t0 = time.perf_counter()
        loss = state.batch_loss(i, gen)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        times.append(time.perf_counter() - t0)
    steps = args.steps - 1
    per_step = {op: b / steps for op, b in comm.stats.bytes.items()}
    calls = {op: c / steps for op, c in comm.stats.calls.items()}
    return {"seconds": sum(times[1:]) / steps, "bytes": per_step, "calls": calls, "loss": float(loss),
            "R": state.rotation.matrix().flatten().tolist()}  # fmt: skip


def _worker(rank: int, port: int, world: int, args: argparse.Namespace, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=10))  # fmt: skip
    try:
        results = {name: run_steps(args, mode, Collectives()) for name, mode in MODES.items()}
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--pool", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--world", type=int, default=2)
    args = parser.parse_args()
    one = {name: run_steps(args, mode, Collectives.single()) for name, mode in MODES.items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.start_processes(_worker, args=(port, args.world, args, out), nprocs=args.world, join=True,
                           start_method="fork")  # fmt: skip
        many = json.loads(Path(out).read_text())
    print(f"d={args.d}, global key pool {args.pool}, batch {BATCH}, {args.d // UNIT} subspaces of {UNIT}, "
          f"{args.steps - 1} timed steps, 1 torch thread per process, Gloo on CPU\n")  # fmt: skip
    print("| step | processes | s/step | steps/s | speed-up | bytes/step/rank (payload) | collectives/step | "
          "max dP | max dR |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name in MODES:
        a, b = one[name], many[name]
        ra, rb = (torch.tensor(r["R"]).view(args.d, args.d) for r in (a, b))
        dr = float((ra - rb).abs().max())
        blocks = [slice(i, i + UNIT) for i in range(0, args.d, UNIT)]
        dp = max(float((ra[:, c] @ ra[:, c].T - rb[:, c] @ rb[:, c].T).abs().max()) for c in blocks)
        print(f"| {name} | 1 | {a['seconds']:.3f} | {1 / a['seconds']:.2f} | 1.00 | 0 | 0 | - | - |")
        total = sum(b["bytes"].values())
        detail = ", ".join(f"{op} {v / 1024:.1f} KiB" for op, v in sorted(b["bytes"].items()))
        print(f"| {name} | {args.world} | {b['seconds']:.3f} | {1 / b['seconds']:.2f} | "
              f"{a['seconds'] / b['seconds']:.2f} | {total / 1024:.1f} KiB ({detail}) | "
              f"{sum(b['calls'].values()):.0f} | {dp:.1e} | {dr:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
