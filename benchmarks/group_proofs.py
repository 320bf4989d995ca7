"""Benchmark: brute force against the ρ-set proof on the shipped group-operation models (arXiv 2410.07476: the
ρ-set proof in 30% of brute-force time on S5; brute force 2.2 s per model).

Times, best of `--repeats`, on `--threads` torch threads, for each shipped model (or `--model DIR`): the certified
brute force over all |G|² pairs, the untrusted search (`explain`) and the ρ-set check; prints seconds, FLOPs, the
bound and the ratios ρ-set / brute force measured in this run (split, pairwise, low-rank and Fourier deviations,
and the irrep and coset baselines; the Fourier check also against the model's own float32 forward pass over all
pairs, the paper's brute force), then the hand-built bi-equivariant S4 network.

`--floor` times instead what any check of the Fourier kind must do per pair, against brute force in the same run
(medians of `--repeats` interleaved runs): form the hidden layer h(x, y) of every pair (`hidden_rows`, as brute
force reads it), then one product h · [Ŵ_ρ ...] with the Σ d² + 1 columns of the model's Fourier check; then the
check's own per-pair work (`answer_rows`, answer by answer, and its one product with 2 more columns per answer of
a block, for h · Res_{x⋆y} and the centre) and the whole check. Its setup, the deviation arithmetic and the rounding
bounds are the difference between the last two.

    python benchmarks/group_proofs.py [--groups S4 A5 S5] [--model DIR] [--repeats 3] [--threads 1] [--floor]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from max_of_k import best_of, peak_mb  # the sibling benchmark's timing helpers (benchmarks/ is on sys.path)

from tl_tensorsim.models import group_mlp
from tl_tensorsim.proofs import groups
from tl_tensorsim.proofs.groups.experiment import forward_pass
from tl_tensorsim.proofs.groups.fourier_bound import ANSWER_BLOCK
from tl_tensorsim.proofs.groups.irreps import irrep_by_name
from tl_tensorsim.proofs.groups.pairs import answer_rows, hidden_rows
from tl_tensorsim.proofs.groups.verify import certified_tables
from tl_tensorsim.training import limit_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="+", default=["S4", "A5", "S5"])
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--floor", action="store_true", help="time the Fourier check's per-pair floor instead")
    args = parser.parse_args()
    models = (
        [group_mlp.load(args.model)]
        if args.model
        else [group_mlp.load(p) for g in args.groups for p in group_mlp.shipped(g)]
    )
    if args.floor:
        with limit_threads(args.threads):
            for m in models:
                floor(m, args.repeats)
        return
    model, expl = groups.handbuilt(*groups.tetra_circuits())
    named = [(m.cfg.model_name, m, None) for m in models] + [("handbuilt_S4_tetrahedra", model, expl)]
    print(
        f"{'model':26s} {'brute s':>8s} {'search s':>9s} {'rho s':>7s} {'s ratio':>8s} {'FLOP ratio':>10s} "
        f"{'accuracy':>9s} {'bound':>7s} {'margin':>7s} {'deviation':>9s}"
    )
    with limit_threads(args.threads):
        for name, m, given in named:
            brute_s, exact = best_of(args.repeats, lambda m=m: groups.brute_force(m))
            forward_s, _ = best_of(args.repeats, lambda m=m: forward_pass(m))
            search_s, e = best_of(args.repeats, lambda m=m: groups.explain(m))
            e = given if given is not None else e
            rho_s, proof = best_of(args.repeats, lambda m=m, e=e: groups.rho_set(m, e))
            st = proof.settings
            pw_s, pw = best_of(args.repeats, lambda m=m, e=e: groups.rho_set(m, e, deviation="pairwise"))
            lr_s, lr = best_of(args.repeats, lambda m=m, e=e: groups.rho_set(m, e, deviation="lowrank"))
            phi = "rho_set" if given is not None else "fit"  # the hand-built explanation has no fitted readout
            fo_s, fo = best_of(args.repeats, lambda m=m, e=e, p=phi: groups.rho_set(m, e, deviation="fourier", phi=p))
            baselines = (groups.irrep, groups.coset) if given is None else ()  # they need explain's irrep power
            base = {b.__name__: best_of(args.repeats, lambda m=m, e=e, b=b: b(m, e)) for b in baselines}
            print(
                f"{name:26s} {brute_s:8.3f} {search_s:9.3f} {rho_s:7.3f} {rho_s / brute_s:8.3f} "
                f"{proof.flops / exact.flops:10.4f} {exact.bound:9.4f} {proof.bound:7.4f} {st['ideal_margin']:7.2f} "
                f"{st['K'] + st['L_mean'] + st['R_mean']:9.2f} | pairwise {pw_s:.3f} s, ratio {pw_s / brute_s:.3f}, "
                f"FLOPs {pw.flops / exact.flops:.4f}, bound {pw.bound:.4f}, best slack {float(pw.margin.max()):.2f}"
                f" | low-rank (rank {lr.settings['lowrank']['rank']}) {lr_s:.3f} s, ratio {lr_s / brute_s:.3f}, "
                f"FLOPs {lr.flops / exact.flops:.4f}, bound {lr.bound:.4f}, worst slack {float(lr.margin.min()):.2f}"
                f" | Fourier ({'+'.join(fo.settings['fourier']['irreps'])}) {fo_s:.4f} s, ratio {fo_s / brute_s:.3f}, "
                f"FLOPs {fo.flops / exact.flops:.4f}, bound {fo.bound:.4f}, ratio to the forward pass ({forward_s:.4f} s) "
                f"{fo_s / forward_s:.3f}"
                + "".join(
                    f" | {k} bound {r.bound:.2f}, ratio {t / brute_s:.2f}, FLOPs {r.flops / exact.flops:.2f}"
                    for k, (t, r) in base.items()
                )
            )
    print(f"peak resident memory {peak_mb():.0f} MB, {args.threads} thread(s)")


def floor(model, repeats: int) -> None:
    """Print the medians of brute force, the hidden layer, + the Fourier product, the check's own per-pair work and
    the whole check (module docstring), interleaved `repeats` times, as seconds and as ratios to brute force."""
    expl = groups.explain(model)
    names = sorted(expl.idealised_readout())
    group, wl, wr, wu = certified_tables(model)
    n, m = wl.mid.shape
    flat = torch.cat([irrep_by_name(group, k).matrices.reshape(n, -1) for k in names], 1)  # [n, Σ d²]
    readout_t = torch.cat([flat.T @ wu.mid.T, wu.mid.amax(1)[None]]).contiguous()  # [Σ d² + 1, m]
    step = min(ANSWER_BLOCK, n)
    own = torch.cat([readout_t, wu.mid.T[:step], wu.mid.T[:step]])  # [Σ d² + 1 + 2·step, m]: the check's shape

    def hidden() -> None:
        for _ in hidden_rows(wl.mid, wr.mid):
            pass

    def product() -> None:
        for _, h in hidden_rows(wl.mid, wr.mid):
            readout_t @ h.T

    def answers() -> None:
        for _, h in answer_rows(group, wl.mid, wr.mid, step):
            own @ h.T

    steps = {"brute force": lambda: groups.brute_force(model), "hidden layer": hidden, "+ product": product}
    steps |= {"the check's per-pair work": answers, "the whole check": lambda: groups.rho_set(model, expl, "fourier")}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(max(1, repeats)):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{model.cfg.model_name}: {' + '.join(names)}, {readout_t.shape[0]} product columns ({len(own)} in the "
        "check); " + ", ".join(f"{k} {t * 1e3:.2f} ms ({t / med['brute force']:.2f})" for k, t in med.items())
    )


if __name__ == "__main__":
    main()
