"""Benchmark: NDM training steps at GPT-2 scale (d = 768, 24 subspaces of 32, batch 128, Adam lr 3e-4).

All implementations train on the same synthetic activations and the same sequence of query batches, every row
both a key and a query (a query is never its own neighbour):

1. `paper`: a straightforward implementation of the reference step (Huang & Hahn, arXiv 2508.01916, Sec. 3;
   written here): torch's orthogonal parametrization (`matrix_exp`) of an identity-initialised `nn.Linear`; every
   step rotates all keys (blocks of 16,384), `torch.cdist` per subspace, argmin, the loss on the winners, Adam.
2. `engine` (`tl_tensorsim.ndm`): the key pool rotated every `refresh_every` steps, batched `|k|² - 2 q.k` search
   returning `rerank` candidates re-scored exactly with the current R; Cayley map. `engine/bf16`: the rotated pool
   and the search in bfloat16. `engine/matrix_exp` (first pool only): the paper's map, to separate the savings.

Reported per key-pool size: seconds per step (all steps after the first, refreshes included; the implementations'
steps interleaved in one process, so a shared machine's load falls on all alike), the speed-up over `paper`, the
peak RSS of a separate process running one step and its growth after the activations were created, the mean
training loss of the last half of the steps, and the exact loss (fresh exhaustive search) of the final R on 256
held queries, relative to `paper`'s.
Agreement: the share of (query, subspace) pairs whose neighbour from the most stale search (refresh_every - 1
steps old) plus re-scoring equals the exact nearest neighbour.

    python benchmarks/ndm.py [--pools 100000 400000] [--steps 9] [--quick] [--device cuda]

With `--device cuda` every implementation trains on the GPU (activations made on the CPU, then moved, so the data
are the same), each step is timed to a synchronised end, and memory is the peak CUDA allocation of the step.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch

D, UNIT, BATCH, LR, BLOCK = 768, 32, 128, 3e-4, 16384
SIZES = (UNIT,) * (D // UNIT)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_gb(device: torch.device) -> float:
    """Peak resident memory (CPU) or peak CUDA allocation since the last reset (GB)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else rss_gb()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_acts(n: int, seed: int = 0) -> torch.Tensor:
    """Correlated Gaussian activations with a decaying spectrum (a stand-in for a residual stream)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, D, generator=g) * torch.logspace(0, -1.5, D)[:, None]
    out = torch.empty(n, D)
    for i in range(0, n, 65536):
        out[i : i + 65536] = torch.randn(min(65536, n - i), D, generator=g) @ mix
    return out


def query_ids(n: int, steps: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(n, (BATCH,), generator=g) for _ in range(steps)]


# --------------------------------------------------------------------------------------------- the paper's step
def paper_step(lin: torch.nn.Module, opt: torch.optim.Optimizer, acts: torch.Tensor, ids: torch.Tensor) -> float:
    """Rotate every key, cdist per subspace (batched), argmin; loss on the winners; Adam (grad clip 100)."""
    s, ds = len(SIZES), UNIT
    rotation = lin.weight  # base @ matrix_exp(A), recomputed on access
    q = acts[ids]
    with torch.no_grad():
        r = rotation.detach()
        qr = (q @ r).view(BATCH, s, ds).transpose(0, 1)
        best = torch.full((s, BATCH), torch.inf, device=acts.device)
        arg = torch.zeros(s, BATCH, dtype=torch.long, device=acts.device)
        for start in range(0, len(acts), BLOCK):
            keys = (acts[start : start + BLOCK] @ r).view(-1, s, ds).transpose(0, 1)
            dist = torch.cdist(qr, keys)
            own = (ids >= start) & (ids < start + keys.shape[1])
            dist[:, own, ids[own] - start] = torch.inf
            val, idx = dist.min(-1)
            better = val < best
            best, arg = torch.where(better, val, best), torch.where(better, idx + start, arg)
    diff = q[None] - acts[arg]  # [s, b, d]
    per = torch.linalg.vector_norm(torch.bmm(diff, rotation.T.reshape(s, ds, D).transpose(1, 2)), dim=-1)
    loss = per.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lin.parameters(), 100.0)
    opt.step()
    return float(loss.detach())


def paper_model(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    lin = torch.nn.Linear(D, D, bias=False, device=device)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(D))
    torch.nn.utils.parametrizations.orthogonal(lin, orthogonal_map="matrix_exp")
    return lin, torch.optim.Adam(lin.parameters(), lr=LR)


# --------------------------------------------------------------------------------------------- implementations
class Paper:
    """The reference step (`paper_step`) with its own parametrized `nn.Linear` and Adam."""

    def __init__(self, acts: torch.Tensor, **_: object):
        self.acts = acts
        self.lin, self.opt = paper_model(acts.device)

    def step(self, ids: torch.Tensor) -> float:
        return paper_step(self.lin, self.opt, self.acts, ids)

    def rotation(self) -> torch.Tensor:
        return self.lin.weight.detach()


class Engine:
    """`tl_tensorsim.ndm`'s training step (`NDMState`), fed the same query batches."""

    def __init__(self, acts: torch.Tensor, parametrization: str, search_dtype: str, refresh_every: int, rerank: int):
        from tl_tensorsim.ndm.trainer import NDMSettings, NDMState

        s = NDMSettings(sizes=SIZES, key_pool=len(acts), refresh_every=refresh_every, rerank=rerank,
                        batch_size=BATCH, lr=LR, parametrization=parametrization, search_dtype=search_dtype)  # fmt: skip
        self.acts, self.rerank, self.state = acts, rerank, NDMState(acts, s, acts.device)
        self.generator = torch.Generator()  # every row is a key, so it would only draw queries: `ids` instead
        self.recent: list[torch.Tensor] = []  # R before each of the last refresh_every steps

    def step(self, ids: torch.Tensor) -> float:
        from tl_tensorsim.ndm.objective import neighbour_distances

        state = self.state
        search = state._search(self.generator)
        queries = self.acts[ids]
        cand = search.candidates(queries, ids, self.rerank)
        dist = neighbour_distances(queries, ids, search.keys, search.key_ids, cand, state.rotation(), SIZES)
        state.since_refresh += 1
        loss = dist.mean(0).mean()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        return float(loss.detach())

    def rotation(self) -> torch.Tensor:
        return self.state.rotation.matrix().float()


# name -> (parametrization, search dtype); engine/matrix_exp (the paper's map) runs at the first pool only
IMPLS = {
    "paper": ("matrix_exp", "float32"),
    "engine": ("cayley", "float32"),
    "engine/bf16": ("cayley", "bfloat16"),
    "engine/matrix_exp": ("matrix_exp", "float32"),
}


def build(name: str, acts: torch.Tensor, refresh_every: int, rerank: int) -> Paper | Engine:
    cls = Paper if name == "paper" else Engine
    parametrization, search_dtype = IMPLS[name]
    return cls(acts, parametrization=parametrization, search_dtype=search_dtype, refresh_every=refresh_every,
               rerank=rerank)  # fmt: skip


# --------------------------------------------------------------------------------------------- processes
def timing(
    pool: int, steps: int, refresh_every: int, rerank: int, names: list[str], device: str, out: mp.Queue
) -> None:
    """All implementations in one process, their steps interleaved (rotating order), so that the load of a shared
    machine falls on all of them alike; then the losses and the neighbour agreement."""
    from tl_tensorsim.ndm.objective import NeighbourSearch, ndm_loss, neighbour_distances

    device = torch.device(device)
    acts = make_acts(pool + 256).to(device)
    held, acts = acts[pool:], acts[:pool]
    held_ids, key_ids = torch.arange(pool, pool + 256, device=device), torch.arange(pool, device=device)
    impls = {name: build(name, acts, refresh_every, rerank) for name in names}
    times: dict[str, list[float]] = {name: [] for name in impls}
    losses: dict[str, list[float]] = {name: [] for name in impls}
    for i, ids in enumerate(query_ids(pool, steps)):
        names = list(impls)[i % len(impls) :] + list(impls)[: i % len(impls)]
        for name in names:
            impl = impls[name]
            if isinstance(impl, Engine):
                impl.recent = (impl.recent + [impl.state.rotation.matrix().float()])[-refresh_every:]
            sync(device)
            t0 = time.perf_counter()
            losses[name].append(impl.step(ids.to(device)))
            sync(device)
            times[name].append(time.perf_counter() - t0)

    def nearest(search_rotation: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        search = NeighbourSearch(acts, key_ids, SIZES)
        search.refresh(search_rotation)
        return neighbour_distances(
            held, held_ids, acts, key_ids, search.candidates(held, held_ids, rerank), final, SIZES
        )

    rows = []
    for name, impl in impls.items():
        final = impl.rotation()
        with torch.no_grad():
            eval_loss = float(ndm_loss(held, acts, final, SIZES, query_ids=held_ids, key_ids=key_ids)[0])
            # the most stale search (keys rotated refresh_every - 1 steps before the final R) against a fresh one
            agreement = None
            if isinstance(impl, Engine):
                agreement = float(
                    (nearest(impl.recent[1 - refresh_every], final) == nearest(final, final)).float().mean()
                )
        half = losses[name][steps // 2 :]
        rows.append({"impl": name, "pool": pool, "s_per_step": sum(times[name][1:]) / (steps - 1),
                     "train_loss": sum(half) / len(half), "eval_loss": eval_loss, "agreement": agreement})  # fmt: skip
    out.put(rows)


def memory(name: str, pool: int, refresh_every: int, rerank: int, device: str, out: mp.Queue) -> None:
    """Peak memory of one implementation's first step (the engine rotates its pool in it): resident (CPU) or
    allocated (CUDA), and its growth after the activations were created."""
    device = torch.device(device)
    acts = make_acts(pool).to(device)
    sync(device)
    before = peak_gb(device)
    build(name, acts, refresh_every, rerank).step(query_ids(pool, 1)[0].to(device))
    sync(device)
    out.put({"peak": peak_gb(device), "growth": peak_gb(device) - before})


def in_process(target, *args):
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pools", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--refresh-every", type=int, default=8)
    parser.add_argument("--rerank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default refresh_every + 1)")
    parser.add_argument("--quick", action="store_true", help="pool 20,000 only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU times and peak CUDA memory)")
    args = parser.parse_args()
    steps = args.steps or args.refresh_every + 1  # the first is not timed; the rest hold one refresh
    pools = [20_000] if args.quick else args.pools
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"d={D}, {len(SIZES)} subspaces of {UNIT}, batch {BATCH}, {where}, torch threads {torch.get_num_threads()}, "
          f"refresh_every={args.refresh_every}, rerank={args.rerank}, {steps} steps (first not timed)")  # fmt: skip
    rows = []
    for pool in pools:
        names = [n for n in IMPLS if n != "engine/matrix_exp" or pool == pools[0]]
        found = in_process(timing, pool, steps, args.refresh_every, args.rerank, names, args.device)
        for r in found:
            r.update(in_process(memory, r["impl"], pool, args.refresh_every, args.rerank, args.device))
            print(
                f"  pool {pool:>7,} {r['impl']:18s} {r['s_per_step']:.2f} s/step, peak {r['peak']:.2f} GB", flush=True
            )
        rows += found
    print(
        f"\n| pool | implementation | s/step | steps/s | speed-up | peak {'CUDA' if args.device != 'cpu' else 'RSS'} GB "
        "| growth GB | train loss | eval loss "
        "| vs paper | NN agreement |"
    )
    print("|" + "---|" * 11)
    for r in rows:
        ref = next(p for p in rows if p["pool"] == r["pool"] and p["impl"] == "paper")
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.4f}"
        print(f"| {r['pool']:,} | {r['impl']} | {r['s_per_step']:.2f} | {1 / r['s_per_step']:.2f} | "
              f"{ref['s_per_step'] / r['s_per_step']:.1f}x | {r['peak']:.2f} | {r['growth']:.2f} | "
              f"{r['train_loss']:.4f} | {r['eval_loss']:.4f} | {r['eval_loss'] / ref['eval_loss'] - 1:+.3%} | {agree} |")  # fmt: skip


if __name__ == "__main__":
    main()
