"""Benchmark: tensor similarity of tensor networks by the Gram recursion (tl_tensorsim.tensor_networks).

In one run:

1. the recursion against brute-force materialisation of the order-(2^N + 1) coefficient tensor at depth 1 and 2
   (random residual networks with biases, float64): time ratio and relative difference of the inner product;
2. the recursion alone (one Gram pass of a pair, float64 and float32) at depths 1, 2, 4, 8 for widths 256, 512,
   1024 (d_in = d_model = d_hidden = width, residual, biases): seconds, seconds per layer, and the memory of its
   largest intermediates (computed from tensor sizes) beside the process's peak resident memory;
3. the T x T checkpoint matrix for T = 90 grokking-shaped networks (Bilinear(226 -> 64) then Linear(64 -> 113)),
   and for T = 90 two-layer residual networks of width 128, against T² independent pairwise calls (sampled).

    python benchmarks/tensor_similarity.py [--quick]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from tl_tensorsim.tensor_networks import HookedTensorNetwork, TensorNetworkConfig, tensor_inner, tensor_similarity
from tl_tensorsim.tensor_networks import tensor_similarity_matrix as matrix
from tl_tensorsim.tensor_networks.inner import cross_pass, input_gram, self_pass, stack_chains


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def net(seed: int, width: int, depth: int, d_in: int | None = None, d_out: int = 10, dtype: str = "float64", **kw):
    cfg = TensorNetworkConfig(
        d_in=d_in or width,
        d_model=width,
        d_hidden=width,
        n_layers=depth,
        d_out=d_out,
        residual=True,
        bias=True,
        seed=seed,
        dtype=dtype,
        **kw,
    )
    model = HookedTensorNetwork(cfg)
    with torch.no_grad():  # non-zero biases
        for name, p in model.named_parameters():
            if ".b_" in name or "b_E" in name or "b_U" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed), dtype=p.dtype))
    return model


def brute_force_inner(a: HookedTensorNetwork, b: HookedTensorNetwork) -> float:
    """Materialise both coefficient tensors (locally symmetrised padded forms, composed leg by leg) and take
    their Frobenius product."""

    def tensor(model):
        M, layers, U = model.to_chain().padded()
        A = M
        for Lp, Rp, Dp in layers:
            S = 0.5 * (torch.einsum("oh,hp,hq->opq", Dp, Lp, Rp) + torch.einsum("oh,hp,hq->oqp", Dp, Lp, Rp))
            flat = A.reshape(A.shape[0], -1)
            A = torch.einsum("opq,pI,qJ->oIJ", S, flat, flat).reshape(S.shape[0], *A.shape[1:], *A.shape[1:])
        return torch.einsum("cp,p...->c...", U, A)

    return float((tensor(a) * tensor(b)).sum())


def part1() -> None:
    print("\n1. Gram recursion vs brute-force materialisation (float64, residual + bias)")
    print(
        f"{'depth':>5} {'d_in':>5} {'width':>5} {'tensor entries':>15} {'brute s':>9} {'recursion s':>12} {'ratio':>8} {'rel diff':>9}"
    )
    for depth, d_in, width in [(1, 256, 128), (2, 20, 16)]:
        a, b = net(0, width, depth, d_in=d_in), net(1, width, depth, d_in=d_in)
        t0 = time.perf_counter()
        want = brute_force_inner(a, b)
        t_brute = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = float(tensor_inner(a, b))
        t_rec = time.perf_counter() - t0
        entries = 10 * (d_in + 1) ** (2**depth)
        print(
            f"{depth:>5} {d_in:>5} {width:>5} {entries:>15,} {t_brute:>9.3f} {t_rec:>12.4f} {t_brute / t_rec:>8.0f} "
            f"{abs(got - want) / abs(want):>9.1e}"
        )


def one_pass(a, b, dtype) -> tuple[float, float]:
    """Seconds of one cross Gram recursion (after the self passes that set its scales) and its intermediate GB."""
    G0 = input_gram(a.cfg.d_in, None, dtype, "cpu")
    A = self_pass(stack_chains([a.to_chain()], dtype, "cpu"), G0, False)
    B = self_pass(stack_chains([b.to_chain()], dtype, "cpu"), G0, False)
    t0 = time.perf_counter()
    cross_pass(A, B, G0, False)
    return time.perf_counter() - t0, A.pair_bytes(B, torch.finfo(dtype).bits // 8) / 2**30


def part2(widths: list[int], depths: list[int], budget_s: float) -> None:
    print(
        "\n2. The recursion alone: one Gram pass of a pair (residual + bias; H = 1 + 2 x width hidden units per layer)"
    )
    print(
        f"{'width':>6} {'depth':>6} {'f64 s':>8} {'f64 s/layer':>12} {'f32 s':>8} {'intermediates GB':>17} {'peak RSS GB':>12}"
    )
    for width in widths:
        per_layer = None
        for depth in depths:
            if per_layer is not None and per_layer * depth > budget_s:
                print(
                    f"{width:>6} {depth:>6}   skipped (predicted {per_layer * depth:.0f} s > --budget {budget_s:.0f} s)"
                )
                continue
            a, b = net(0, width, depth), net(1, width, depth)
            t64, gb = one_pass(a, b, torch.float64)
            t32, _ = one_pass(a.float(), b.float(), torch.float32)
            per_layer = t64 / depth
            print(f"{width:>6} {depth:>6} {t64:>8.2f} {per_layer:>12.3f} {t32:>8.2f} {gb:>17.3f} {peak_gb():>12.2f}")


def part3(T: int) -> None:
    print(f"\n3. T x T checkpoint matrix, T = {T} (float64)")
    cases = [
        (
            "grokking: Bilinear(226->64), Linear(64->113)",
            dict(d_in=226, d_hidden=64, n_layers=1, d_out=113, embed=False, down_proj=False),
        ),
        (
            "2 layers, width 128, residual + bias",
            dict(d_in=128, d_model=128, d_hidden=128, n_layers=2, d_out=10, residual=True, bias=True),
        ),
    ]
    for name, cfg in cases:
        nets = [HookedTensorNetwork(TensorNetworkConfig(**cfg, seed=s, dtype="float64")) for s in range(T)]
        t0 = time.perf_counter()
        m = matrix(nets)
        t_mat = time.perf_counter() - t0
        n_sample = 6
        t0 = time.perf_counter()
        for i in range(n_sample):
            s = float(tensor_similarity(nets[i], nets[T - 1 - i]))
            assert abs(s - float(m.values[i, T - 1 - i])) < 1e-10
        t_pair = (time.perf_counter() - t0) / n_sample
        print(
            f"  {name}: matrix {t_mat:.2f} s; pairwise calls {t_pair * 1e3:.1f} ms each -> {T * (T - 1) / 2} pairs "
            f"would take {t_pair * T * (T - 1) / 2:.1f} s (x{t_pair * T * (T - 1) / 2 / t_mat:.0f}); peak RSS {peak_gb():.2f} GB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="widths 64-256, T = 30")
    parser.add_argument("--budget", type=float, default=120.0, help="skip part-2 configs predicted to take longer (s)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    part1()
    if args.quick:
        part2([64, 128, 256], [1, 2, 4, 8], args.budget)
        part3(30)
    else:
        part2([256, 512, 1024], [1, 2, 4, 8], args.budget)
        part3(90)
    print(f"\nprocess peak RSS {peak_gb():.2f} GB")


if __name__ == "__main__":
    main()
