"""Benchmark: tensor similarity of attention heads on GPT-2-small-shaped random models.

Two random attention-only HookedTransformers shaped like GPT-2 small (12 layers x 12 heads, d_model 768,
d_head 64, d_vocab 50257, n_ctx 1024). In one run:

1. a plain `torch` matmul (float64 and float32), the throughput reference;
2. all 144 x 144 head pairs, QK and OV, residual and token level (float64; token QK also in float32);
3. a naive per-pair loop on a sample of pairs (TransformerLens' `(M1.AB * M2.AB).sum()` at the residual level,
   the per-pair factored formula with precomputed Grams at the token level), extrapolated to all pairs;
4. 20 checkpoints' per-head T x T similarity (residual level, QK and OV), checkpoints produced one at a time, and
   its kernel alone: `per_head_gram` (one triangle, cache-sized blocks) against the general `pairwise_kernel`;
5. checkpoints as files: 10 state dicts of a 6-layer x 8-head model (d_model 512, d_mlp 2048, d_vocab 50257)
   written by the benchmark as `.pt` and as `.safetensors` into a temporary folder; `checkpoint_similarity(folder)`
   against a direct batched computation written here (read only the attention weights: `safe_open` /
   `torch.load(mmap=True)`, float64 Grams, one einsum), same files, same process, interleaved, median of 3;
6. token level with `gram_precision="float32"` against "float64": the largest cosine change and the time ratio.

Prints wall time, executed GFLOP (torch's FlopCounterMode), achieved GFLOP/s and its fraction of the matmul
throughput, the speed-up over the naive loop, and the process's peak resident memory. Every figure is warmed up
and repeated (`--repeats`, default 3; `benchmarks/timing.py`) and given as median (min-max); each timed sample of
an all-pairs call follows its own matmul reference measurement, so the fraction of matmul speed is a ratio taken
under the same load; comparisons are interleaved sample by sample. One intra-op thread by default (`--threads`).

    python benchmarks/head_similarity.py [--quick] [--files-only] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from timing import Timing, compare, measure
from torch.utils.flop_counter import FlopCounterMode

import tl_tensorsim as ts
from tl_tensorsim.similarity import checkpoint_similarity, gram, head_similarity, pairwise_kernel
from tl_tensorsim.similarity.checkpoint_pairs import per_head_gram
from tl_tensorsim.similarity.circuit_parts import circuit_factors
from tl_tensorsim.similarity.token_grams import GRAM_CACHE
from tl_tensorsim.training import limit_threads

GPT2 = dict(
    n_layers=12, n_heads=12, d_model=768, d_head=64, d_vocab=50257, n_ctx=1024, attn_only=True, act_fn="gelu_new"
)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def flops(fn, *args, **kwargs) -> tuple[object, float]:
    """(result, executed GFLOP of one call, counted by torch's FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return out, counter.get_total_flops() / 1e9


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    """Best of `reps` plain `n x n` matmuls (the throughput reference)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def against_matmul(fn, gflop: float, dtype: torch.dtype, repeats: int) -> tuple[Timing, list[float], list[float]]:
    """`fn` (already warmed up) timed `repeats` times, each sample right after a matmul reference measurement:
    (timing, achieved GFLOP/s per sample, fraction of that sample's matmul rate)."""
    times, rates, fractions = [], [], []
    for _ in range(repeats):
        ref = matmul_gflops(dtype)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        rates.append(gflop / times[-1])
        fractions.append(rates[-1] / ref)
    return Timing(times, 1), rates, fractions


def spread(values: list[float], fmt: str = ".0%") -> str:
    """median (min-max) of `values`."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def build(seed: int, cfg: dict):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformer(HookedTransformerConfig(**cfg, seed=seed)).eval()


def naive_loop_seconds(va, vb, circuit: str, level: str, n_pairs: int = 64) -> float:
    """The same cosine matrix from a per-pair Python loop of the same exact formula,
    `Sum[(A_i^T G A_j) o (B_i H B_j^T)]`: 144 x 144 cross pairs and 2 x 144 norms, extrapolated from the median
    of `n_pairs` timed pairs. Favourable to the loop: the Grams and the metric transforms `G A_j`, `B_j H^T` are
    computed once (and timed once), and the loop runs on one thread, the fastest setting for its small matmuls
    (with two, OpenMP barriers dominate on a busy machine)."""
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    Aa, Ba = (t.double() for t in circuit_factors(va, circuit))
    Ab, Bb = (t.double() for t in circuit_factors(vb, circuit))
    if level == "token":  # Grams and transforms for the cross pairs and for both sets of norms
        transformed = {}
        for key, (x, y, A, B) in {"ab": (va, vb, Ab, Bb), "aa": (va, va, Aa, Ba), "bb": (vb, vb, Ab, Bb)}.items():
            G = gram(x.W_E, y.W_E)
            H = G if circuit == "QK" else gram(x.W_U, y.W_U, dim=1)
            transformed[key] = (G @ A, B @ H.T)
        Ab, Bb = transformed["ab"]
    setup = time.perf_counter() - t0
    torch.set_num_threads(1)
    pairs = torch.randint(0, 144, (n_pairs + 4, 2), generator=torch.Generator().manual_seed(0)).tolist()
    times = []
    for i, j in pairs:
        t0 = time.perf_counter()
        ((Aa[i].T @ Ab[j]) * (Ba[i] @ Bb[j].T)).sum().item()
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return setup + float(torch.tensor(times[4:]).median()) * (144 * 144 + 2 * 144)


def tl_idiom(va, vb, circuit: str, repeats: int) -> Timing:
    """TransformerLens' `(M1.AB * M2.AB).sum()` per pair (materialises both 768 x 768 circuits), on one thread:
    seconds per pair, median (min-max) of `repeats` samples of >= 50 ms over a fixed cycle of pairs, after a
    warm-up. (A single cold timing of a few pairs, run at the default thread count on a shared machine, swung
    40x between runs.)"""
    Fa, Fb = (va.QK, vb.QK) if circuit == "QK" else (va.OV, vb.OV)
    pairs = itertools.cycle(torch.randint(0, 144, (64, 2), generator=torch.Generator().manual_seed(1)).tolist())

    def one_pair():
        i, j = next(pairs)
        return (Fa[i // 12, i % 12].AB.double() * Fb[j // 12, j % 12].AB.double()).sum().item()

    with limit_threads(1):
        return measure(one_pair, repeats=repeats)


def main(quick: bool, repeats: int) -> None:
    torch.manual_seed(0)
    cfg = dict(GPT2, d_vocab=5000) if quick else GPT2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; models: {cfg}")
    ref = {dt: matmul_gflops(dt) for dt in (torch.float64, torch.float32)}
    print(
        f"plain torch matmul 2048^3, best of 3: float64 {ref[torch.float64]:.1f}, float32 {ref[torch.float32]:.1f} "
        "GFLOP/s (re-measured before every timed sample below)"
    )
    t0 = time.perf_counter()
    a, b = build(0, cfg), build(1, cfg)
    va, vb = ts.as_view(a), ts.as_view(b)
    print(f"built two models in {time.perf_counter() - t0:.1f} s; peak RSS {peak_gb():.2f} GB\n")

    print(
        f"all pairs (144 x 144): warm-up call (FLOPs counted), then {repeats} samples each right after a matmul "
        "reference; median (min-max)"
    )
    print(
        f"{'':20s} | {'wall s':>22s} | GFLOP | {'GFLOP/s':>18s} | {'matmul GFLOP/s':>18s} | {'% of matmul':>16s} | "
        "naive loop s | speed-up | peak GB"
    )
    runs = [(c, lvl, torch.float64) for lvl in ("residual", "token") for c in ("QK", "OV")]
    runs.append(("QK", "token", torch.float32))
    for circuit, level, dtype in runs:
        GRAM_CACHE.clear()
        res, gf = flops(head_similarity, a, b, circuit, level, dtype=dtype)

        def uncached(c=circuit, lv=level, d=dtype):  # every sample computes its vocabulary Grams
            GRAM_CACHE.clear()
            return head_similarity(a, b, c, lv, dtype=d)

        timing, rates, fractions = against_matmul(uncached, gf, dtype, repeats)
        naive = naive_loop_seconds(va, vb, circuit, level)
        refs = [r / f for r, f in zip(rates, fractions, strict=True)]
        name = f"{circuit} {level} {str(dtype)[6:]}"
        print(
            f"{name:20s} | {timing!s:>22s} | {gf:5.1f} | {spread(rates, '.1f'):>18s} | {spread(refs, '.1f'):>18s} | "
            f"{spread(fractions):>16s} | {naive:12.1f} | {naive / timing.median:7.1f}x | {peak_gb():7.2f}",
            flush=True,
        )
        assert res.values.shape == (144, 144) and torch.isfinite(res.values).all()
    b = vb = None  # free model b before the checkpoint run

    T = 20
    params = {n: p for n, p in a.named_parameters() if ".attn.W_" in n}
    final = {n: p.detach().clone() for n, p in params.items()}
    drift = {n: torch.randn_like(p) * p.std() for n, p in params.items()}

    def checkpoint(t: int):  # a stand-in for loading checkpoint t: attention weights drift towards the final ones
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(final[n]).add_(drift[n], alpha=2.0 * (1 - t / (T - 1)) ** 2)
        return a

    print(
        f"\n{T} checkpoints, per-head {T} x {T} (144 heads), residual float64: checkpoint_similarity; then its kernel "
        "alone on the stacked factors, per_head_gram (one triangle, cache-sized blocks) against the general "
        f"pairwise_kernel (the previous path), interleaved; median (min-max) of {repeats} after a warm-up"
    )
    for circuit in ("QK", "OV"):
        loaders = [lambda t=t: checkpoint(t) for t in range(T)]
        whole = measure(lambda lo=loaders, c=circuit: checkpoint_similarity(lo, c, progress=False), repeats=repeats)
        res = whole.result
        assert torch.allclose(res.to_final[:, -1], torch.ones(144, dtype=torch.float64))
        stacked = [circuit_factors(ts.as_view(checkpoint(t)), circuit, torch.float64) for t in range(T)]
        A = torch.stack([x[0] for x in stacked], 1)  # [heads, T, d_model, d_head]
        B = torch.stack([x[1] for x in stacked], 1).contiguous()
        new, gf_new = flops(per_head_gram, A, B)
        old, gf_old = flops(pairwise_kernel, A, B, method="dense")
        t_old, t_new, ratio = compare(
            lambda A=A, B=B: pairwise_kernel(A, B, method="dense"),
            lambda A=A, B=B: per_head_gram(A, B),
            repeats=repeats,
        )
        diff = ((new - old).abs().max() / old.abs().max()).item()
        _, rates, fractions = against_matmul(lambda A=A, B=B: per_head_gram(A, B), gf_new, torch.float64, repeats)
        print(
            f"{circuit}: checkpoint_similarity {whole} | kernel: previous {t_old} ({gf_old:.0f} GFLOP), new {t_new} "
            f"({gf_new:.0f} GFLOP), {ratio} faster, relative difference {diff:.0e}; new kernel "
            f"{spread(rates, '.1f')} GFLOP/s = {spread(fractions)} of matmul | peak {peak_gb():.2f} GB",
            flush=True,
        )
    first = res.to_final[:, 0]
    print(f"similarity of checkpoint 0 to final (OV): mean {first.mean():.3f}, min {first.min():.3f}")
    for circuit in ("QK", "OV"):
        idiom = tl_idiom(va, va, circuit, repeats)
        print(
            f"TransformerLens idiom (M1.AB * M2.AB).sum() per pair, {circuit}, 1 thread: {idiom} per pair -> all "
            f"144 x 144 pairs {idiom.median * 144 * 144:.0f} s ({idiom.low * 144 * 144:.0f}-{idiom.high * 144 * 144:.0f})"
        )
    print(f"\npeak resident memory of the whole run: {peak_gb():.2f} GB")


def float32_grams(repeats: int, quick: bool = False) -> None:
    """`gram_precision="float32"` against "float64" at the token level on GPT-2-small-shaped random models: the
    largest change of any cosine, and the wall time of each (interleaved, Grams recomputed every call)."""
    cfg = dict(GPT2, d_vocab=5000) if quick else GPT2
    a, b = build(0, cfg), build(1, cfg)
    print(f"\ntoken level, gram_precision float32 vs float64 (144 x 144 heads, d_vocab {cfg['d_vocab']}):")
    for circuit, positions in (("QK", False), ("OV", False), ("QK", True)):
        if True:
            res = {}

            def call(p, c=circuit, pos=positions, res=res):
                GRAM_CACHE.clear()
                res[p] = head_similarity(a, b, c, "token", positions=pos, gram_precision=p).values

            t64, t32, ratio = compare(lambda: call("float64"), lambda: call("float32"), repeats=repeats)
            err = (res["float32"] - res["float64"]).abs().max().item()
            print(
                f"{circuit} positions={positions!s:5s}: max |cosine change| {err:.1e}; float64 {t64}, float32 {t32}, "
                f"float64/float32 {ratio}",
                flush=True,
            )


FILES = dict(n_layers=6, n_heads=8, d_model=512, d_head=64, d_mlp=2048, d_vocab=50257, n_ctx=1024, act_fn="gelu_new")


def direct_from_files(paths: list[Path], circuit: str, n_layers: int) -> torch.Tensor:
    """The reference: per-head T x T inner products `<A_t B_t, A_s B_s>_F` from the attention weights alone,
    read with `safe_open` / `torch.load(mmap=True)` (TransformerLens names), stacked in float64, one Gram einsum."""
    from safetensors import safe_open

    names = ("W_Q", "W_K") if circuit == "QK" else ("W_V", "W_O")
    stacks = []
    for path in paths:
        keys = [f"blocks.{layer}.attn.{n}" for n in names for layer in range(n_layers)]
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                w = {k: f.get_tensor(k) for k in keys}
        else:
            state = torch.load(path, mmap=True, weights_only=True)
            w = {k: state[k] for k in keys}
        stacks.append([torch.cat([w[f"blocks.{layer}.attn.{n}"] for layer in range(n_layers)]) for n in names])
    A = torch.stack([a for a, _ in stacks], 1).double()  # [heads, T, d_model, d_head]
    B = torch.stack([b for _, b in stacks], 1).double()  # QK: W_K [heads, T, d_model, d_head]; OV: W_O [h, T, r, m]
    GA = torch.einsum("htmr,hsmq->htsrq", A, A)
    GB = torch.einsum("htmr,hsmq->htsrq", B, B) if circuit == "QK" else torch.einsum("htrm,hsqm->htsrq", B, B)
    return torch.einsum("htsrq,htsrq->hts", GA, GB)


def file_checkpoints(T: int = 10, reps: int = 3) -> None:
    from safetensors.torch import save_file

    template = ts.ModelView.build(FILES).model
    params = ts.ModelView(template).state_dict()
    gen = torch.Generator().manual_seed(0)
    print(
        f"\n{T} checkpoint files of {FILES}: checkpoint_similarity(folder) vs direct batched reading (median of {reps})"
    )
    print(
        "format        circuit | package s | direct s | ratio: median (min-max) of the rounds | max |difference| of cosines"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folders = {fmt: Path(tmp, fmt) for fmt in (".pt", ".safetensors")}
        for folder in folders.values():
            folder.mkdir()
        for t in range(T):
            state = {k: (v + 0.3 * (1 - t / (T - 1)) * torch.randn(v.shape, generator=gen) * v.std()).contiguous()
                     for k, v in params.items()}  # fmt: skip
            torch.save(state, folders[".pt"] / f"step_{t}.pt")
            save_file(state, str(folders[".safetensors"] / f"step_{t}.safetensors"))
        for fmt, folder in folders.items():
            paths = sorted(folder.iterdir(), key=lambda p: int(p.stem.split("_")[1]))
            for circuit in ("QK", "OV"):
                ours, direct = [], []
                for _ in range(reps):  # interleaved: load on a shared machine falls on both alike
                    t0 = time.perf_counter()
                    res = checkpoint_similarity(folder, circuit, model=template, progress=False)
                    ours.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    inner = direct_from_files(paths, circuit, FILES["n_layers"])
                    direct.append(time.perf_counter() - t0)
                d = inner.diagonal(dim1=1, dim2=2)
                cos = inner / (d[:, :, None] * d[:, None, :]).sqrt()
                a, b = statistics.median(ours), statistics.median(direct)
                ratios = [x / y for x, y in zip(ours, direct, strict=True)]
                diff = (cos - res.values).abs().max().item()
                print(
                    f"{fmt:13s} {circuit:7s} | {a:9.2f} | {b:8.2f} | {spread(ratios, '.2f'):>35s} | {diff:.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="vocabulary of 5000 instead of 50257 (a smoke run)")
    parser.add_argument("--files-only", action="store_true", help="only the checkpoint-file rows (5.)")
    parser.add_argument("--grams-only", action="store_true", help="only the float32-Gram error and time rows")
    parser.add_argument("--repeats", type=int, default=3, help="timed samples per figure after a warm-up (>= 3)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: the machine is shared)")
    args = parser.parse_args()
    with limit_threads(args.threads):
        if not (args.files_only or args.grams_only):
            main(args.quick, args.repeats)
        if not args.grams_only:
            file_checkpoints(reps=max(3, args.repeats))
        if not args.files_only:
            float32_grams(args.repeats, args.quick)
