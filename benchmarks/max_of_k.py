"""Benchmark: every Max-of-K proof strategy on the paper's model (arXiv 2406.11779; K = 4, vocabulary 64, d_model 32).

Trains one model with the paper's settings (or loads `--model DIR`, written by `tl-tensorsim train max_of_k`), then
times, best of `--repeats`, on `--threads` torch threads:

1. brute force through the certified path tables (streamed over all 64^4 inputs; the paper: ≈34 s on CPU), and
   with `--forward` through the model's own forward pass (the paper's procedure);
2. the cubic proof (the paper's reference implementation: ≈39 s in Python loops);
3. each subcubic proof: the untrusted search and the certified check separately (the paper: ≈34 s + ≈1.6 s).

Prints wall seconds, FLOPs of the check (values; and with the rounding-error bounds), the bound and its ratio to the
true accuracy, and the process's peak resident memory.

    python benchmarks/max_of_k.py [--seed 0] [--model DIR] [--forward] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import resource
import time
from functools import partial

import torch

from tl_tensorsim.models import max_of_k as model_module
from tl_tensorsim.proofs import max_of_k
from tl_tensorsim.training import limit_threads


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def best_of(repeats: int, fn):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="a folder written by `tl-tensorsim train max_of_k --out DIR`")
    parser.add_argument("--forward", action="store_true", help="also brute-force through the forward pass (slow)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    with limit_threads(args.threads):
        if args.model:
            model = model_module.load(args.model)
        else:
            t0 = time.perf_counter()
            model = model_module.train(model_module.MaxOfKConfig(seed=args.seed), progress=False).model
            print(f"trained seed {args.seed} in {time.perf_counter() - t0:.1f}s")
        rows = []
        seconds, exact = best_of(args.repeats, lambda: max_of_k.brute_force(model, progress=False, check_samples=0))
        rows.append(("brute force (path tables)", seconds, 0.0, exact))
        if args.forward:
            seconds, fwd = best_of(1, lambda: max_of_k.brute_force(model, method="forward", progress=False))
            rows.append(("brute force (forward pass)", seconds, 0.0, fwd))
        seconds, result = best_of(args.repeats, lambda: max_of_k.cubic(model, check_samples=0))
        rows.append(("cubic", result.wall_time, 0.0, result))
        for attention, direct in max_of_k.SUBCUBIC_VARIANTS:
            search = partial(max_of_k.search, model, attention=attention, direct=direct)
            search_s, advice = best_of(args.repeats, search)
            check = partial(
                max_of_k.subcubic, model, attention=attention, direct=direct, advice=advice, check_samples=0
            )
            _, result = best_of(args.repeats, check)
            rows.append((f"subcubic {attention} / {direct}", result.wall_time, search_s, result))

    truth = exact.bound
    print(
        f"\ntrue accuracy {truth:.6f} ({exact.n_certified}/{exact.n_inputs}); float64 error bound of the "
        f"evaluation {exact.settings['error_bound']:.2g}, ambiguous inputs {exact.settings['ambiguous']}"
    )
    print(
        f"{'strategy':40s} {'check s':>9s} {'search s':>9s} {'FLOPs':>10s} {'+bounds':>10s} {'bound':>9s} {'ratio':>7s}"
    )
    for name, seconds, search_s, r in rows:
        print(
            f"{name:40s} {seconds:9.3f} {search_s:9.3f} {r.flops:10.3g} {r.flops + r.flops_bounds:10.3g} "
            f"{r.bound:9.6f} {r.bound / truth:7.4f}"
        )
    print(f"\npeak resident memory {peak_mb():.0f} MB; torch {torch.__version__}, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
