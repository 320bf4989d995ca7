"""Benchmark: tensor similarity of attention heads on GPT-2-small-shaped random models.

Two random attention-only HookedTransformers shaped like GPT-2 small (12 layers x 12 heads, d_model 768,
d_head 64, d_vocab 50257, n_ctx 1024). In one run:

1. a plain `torch` matmul (float64 and float32), the throughput reference;
2. all 144 x 144 head pairs, QK and OV, residual and token level (float64; token QK also in float32);
3. a naive per-pair loop on a sample of pairs (TransformerLens' `(M1.AB * M2.AB).sum()` at the residual level,
   the per-pair factored formula with precomputed Grams at the token level), extrapolated to all pairs;
4. 20 checkpoints' per-head T x T similarity (residual level, QK and OV), checkpoints produced one at a time;
5. checkpoints as files: 10 state dicts of a 6-layer x 8-head model (d_model 512, d_mlp 2048, d_vocab 50257)
   written by the benchmark as `.pt` and as `.safetensors` into a temporary folder; `checkpoint_similarity(folder)`
   against a direct batched computation written here (read only the attention weights: `safe_open` /
   `torch.load(mmap=True)`, float64 Grams, one einsum), same files, same process, interleaved, median of 3.

Prints wall time, executed GFLOP (torch's FlopCounterMode), achieved GFLOP/s and its fraction of the matmul
throughput, the speed-up over the naive loop, and the process's peak resident memory.

    python benchmarks/head_similarity.py [--quick] [--files-only]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import tl_tensorsim as ts
from tl_tensorsim.similarity import checkpoint_similarity, gram, head_similarity
from tl_tensorsim.similarity.heads import circuit_factors

GPT2 = dict(
    n_layers=12, n_heads=12, d_model=768, d_head=64, d_vocab=50257, n_ctx=1024, attn_only=True, act_fn="gelu_new"
)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def timed(fn, *args, **kwargs):
    with FlopCounterMode(display=False) as counter:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
    return out, dt, counter.get_total_flops() / 1e9


def matmul_gflops(dtype: torch.dtype, n: int = 3072, reps: int = 3) -> float:
    """Best of `reps` plain `n x n` matmuls (the throughput reference)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


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


def tl_idiom_seconds(va, vb, circuit: str, n_pairs: int = 16) -> float:
    """TransformerLens' `(M1.AB * M2.AB).sum()` per pair (materialises both 768 x 768 circuits), extrapolated."""
    Fa, Fb = (va.QK, vb.QK) if circuit == "QK" else (va.OV, vb.OV)
    pairs = torch.randint(0, 144, (n_pairs + 2, 2), generator=torch.Generator().manual_seed(1)).tolist()
    times = []
    for i, j in pairs:
        t0 = time.perf_counter()
        (Fa[i // 12, i % 12].AB.double() * Fb[j // 12, j % 12].AB.double()).sum().item()
        times.append(time.perf_counter() - t0)
    return float(torch.tensor(times[2:]).median()) * 144 * 144


def main(quick: bool = False) -> None:
    torch.manual_seed(0)
    cfg = dict(GPT2, d_vocab=5000) if quick else GPT2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; models: {cfg}")
    ref = {dt: matmul_gflops(dt) for dt in (torch.float64, torch.float32)}
    print(
        f"plain torch matmul 3072^3, best of 3 (re-measured before each row below): float64 {ref[torch.float64]:.1f}, "
        f"float32 {ref[torch.float32]:.1f} GFLOP/s"
    )
    t0 = time.perf_counter()
    a, b = build(0, cfg), build(1, cfg)
    va, vb = ts.as_view(a), ts.as_view(b)
    print(f"built two models in {time.perf_counter() - t0:.1f} s; peak RSS {peak_gb():.2f} GB\n")

    print("all pairs (144 x 144)      |  wall s |  GFLOP | GFLOP/s | % matmul | naive loop s | speed-up | peak GB")
    runs = [(c, lvl, torch.float64) for lvl in ("residual", "token") for c in ("QK", "OV")]
    runs.append(("QK", "token", torch.float32))
    for circuit, level, dtype in runs:
        ref[dtype] = matmul_gflops(dtype)  # re-measured beside each row: the machine is shared
        res, dt, gf = timed(head_similarity, a, b, circuit, level, dtype=dtype)
        naive = naive_loop_seconds(va, vb, circuit, level)
        name = f"{circuit} {level} {str(dtype)[6:]}"
        pct = 100 * gf / dt / ref[dtype]
        print(
            f"{name:26s} | {dt:7.2f} | {gf:6.0f} | {gf / dt:7.1f} | {pct:7.0f}% | {naive:12.1f} | {naive / dt:7.1f}x | {peak_gb():7.2f}"
        )
        assert res.values.shape == (144, 144) and torch.isfinite(res.values).all()
    b = vb = None  # free model b before the checkpoint run

    T = 20
    params = {n: p for n, p in a.named_parameters() if ".attn.W_" in n}
    final = {n: p.detach().clone() for n, p in params.items()}
    drift = {n: torch.randn_like(p) * p.std() for n, p in params.items()}

    load_s = [0.0]

    def checkpoint(t: int):  # a stand-in for loading checkpoint t: attention weights drift towards the final ones
        t0 = time.perf_counter()
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(final[n]).add_(drift[n], alpha=2.0 * (1 - t / (T - 1)) ** 2)
        load_s[0] += time.perf_counter() - t0
        return a

    loaders = [lambda t=t: checkpoint(t) for t in range(T)]
    print(
        f"\n{T} checkpoints, per-head {T} x {T} (144 heads) | wall s | of which loading | GFLOP | GFLOP/s | % matmul | peak GB"
    )
    for circuit in ("QK", "OV"):
        load_s[0] = 0.0
        ref[torch.float64] = matmul_gflops(torch.float64)
        res, dt, gf = timed(checkpoint_similarity, loaders, circuit, progress=False)
        rate = gf / (dt - load_s[0])
        pct = 100 * rate / ref[torch.float64]
        print(
            f"{circuit} residual float64{'':25s} | {dt:6.2f} | {load_s[0]:15.2f} | {gf:5.0f} | {rate:8.1f} | {pct:8.0f}% | {peak_gb():7.2f}"
        )
        first = res.to_final[:, 0]
        assert torch.allclose(res.to_final[:, -1], torch.ones(144, dtype=torch.float64))
    print("* excluding the time spent producing ('loading') the checkpoints")
    print(f"similarity of checkpoint 0 to final (OV): mean {first.mean():.3f}, min {first.min():.3f}")
    for circuit in ("QK", "OV"):
        idiom = tl_idiom_seconds(va, va, circuit)
        print(
            f"TransformerLens idiom (M1.AB * M2.AB).sum() per pair, {circuit} all pairs (extrapolated): {idiom:.0f} s"
        )
    print(f"\npeak resident memory of the whole run: {peak_gb():.2f} GB")


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
    print("format        circuit | package s | direct s | ratio | max |difference| of cosines")
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
                diff = (cos - res.values).abs().max().item()
                print(f"{fmt:13s} {circuit:7s} | {a:9.2f} | {b:8.2f} | {a / b:5.2f} | {diff:.1e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="vocabulary of 5000 instead of 50257 (a smoke run)")
    parser.add_argument("--files-only", action="store_true", help="only the checkpoint-file rows (5.)")
    args = parser.parse_args()
    if not args.files_only:
        main(args.quick)
    file_checkpoints()
