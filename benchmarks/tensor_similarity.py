"""Benchmark: tensor similarity of tensor networks by the Gram recursion (tl_tensorsim.tensor_networks).

In one run:

1. the recursion against brute-force materialisation of the order-(2^N + 1) coefficient tensor at depth 1 and 2
   (random residual networks with biases, float64): time ratio and relative difference of the inner product;
2. the recursion alone (one Gram pass of a pair, float64 and float32) at depths 1, 2, 4, 8 for widths 256, 512,
   1024 (d_in = d_model = d_hidden = width, residual, biases): seconds, seconds per layer, and the memory of its
   largest intermediates (computed from tensor sizes) beside the process's peak resident memory;
3. the T x T checkpoint matrix for T = 90 grokking-shaped networks (Bilinear(226 -> 64) then Linear(64 -> 113)),
   and for T = 90 two-layer residual networks of width 128, against T² independent pairwise calls (sampled);
4. the exact two-layer Gaussian metric (`tensor_networks/gaussian.py`) against Monte Carlo at the sample count
   whose 95% interval (±2 SE) is within ±5e-4, i.e. three decimals of the cosine, at widths 64-512 (d_in 16,
   d_out 10; a network and a perturbed copy, with and without residual + biases): seconds of each;
5. exact vs Monte Carlo (10^6 samples) vs Gaussian closure (the first layer's outputs treated as Gaussian with
   their exact mean and covariance, then the exact one-layer formula; implemented here from that description) on
   three small networks, each also checked against a Gauss-Hermite rule.

Timings of parts 1-3 are reproducible figures, not single cold calls (`benchmarks/timing.py`): each job is warmed up,
then timed in `--repeats` (default 5) samples, each sample of enough back-to-back calls to last >= 50 ms, and
printed as median (min-max); the comparisons of part 1 interleave the two jobs sample by sample and give the
median (min-max) of the per-sample ratios.

    python benchmarks/tensor_similarity.py [--quick] [--only 1,2,3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import math
import resource
import time

import torch
from timing import Timing, compare, measure

from tl_tensorsim.tensor_networks import (
    BilinearLayer,
    HookedTensorNetwork,
    TensorNetworkConfig,
    as_chain,
    chain_from_layers,
    tensor_inner,
    tensor_similarity,
)
from tl_tensorsim.tensor_networks import tensor_similarity_matrix as matrix
from tl_tensorsim.tensor_networks.inner import cross_pass, input_gram, self_pass, stack_chains
from tl_tensorsim.training import limit_threads


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def net(
    seed: int,
    width: int,
    depth: int,
    d_in: int | None = None,
    d_out: int = 10,
    dtype: str = "float64",
    residual: bool = True,
    bias: bool = True,
    **kw,
):
    cfg = TensorNetworkConfig(
        d_in=d_in or width,
        d_model=width,
        d_hidden=width,
        n_layers=depth,
        d_out=d_out,
        residual=residual,
        bias=bias,
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


def part1(repeats: int) -> None:
    print(
        f"\n1. Gram recursion vs brute-force materialisation (float64, residual + bias; per call: median (min-max) of "
        f"{repeats} interleaved samples of >= 50 ms after a warm-up)"
    )
    print(
        f"{'depth':>5} {'d_in':>5} {'width':>5} {'tensor entries':>15} {'brute':>26} {'recursion':>26} {'ratio':>18} {'rel diff':>9}"
    )
    for depth, d_in, width in [(1, 256, 128), (2, 20, 16)]:
        a, b = net(0, width, depth, d_in=d_in), net(1, width, depth, d_in=d_in)
        brute, rec, ratio = compare(
            lambda a=a, b=b: brute_force_inner(a, b), lambda a=a, b=b: float(tensor_inner(a, b)), repeats=repeats
        )
        entries = 10 * (d_in + 1) ** (2**depth)
        diff = abs(rec.result - brute.result) / abs(brute.result)
        print(f"{depth:>5} {d_in:>5} {width:>5} {entries:>15,} {brute!s:>26} {rec!s:>26} {ratio!s:>18} {diff:>9.1e}")


def pass_timer(a, b, dtype, repeats: int) -> tuple[Timing, float]:
    """Timing of one cross Gram recursion (after the self passes that set its scales, done once) and its
    intermediate GB."""
    G0 = input_gram(a.cfg.d_in, None, dtype, "cpu")
    A = self_pass(stack_chains([a.to_chain()], dtype, "cpu"), G0, False)
    B = self_pass(stack_chains([b.to_chain()], dtype, "cpu"), G0, False)
    return measure(lambda: cross_pass(A, B, G0, False), repeats=repeats), A.pair_bytes(
        B, torch.finfo(dtype).bits // 8
    ) / 2**30


def part2(widths: list[int], depths: list[int], budget_s: float, repeats: int) -> None:
    print(
        "\n2. The recursion alone: one Gram pass of a pair (residual + bias; H = 1 + 2 x width hidden units per layer);"
        f" seconds per pass: median (min-max) of {repeats} after a warm-up"
    )
    print(
        f"{'width':>6} {'depth':>6} {'f64':>24} {'f64 s/layer':>12} {'f32':>24} {'intermediates GB':>17} {'peak RSS GB':>12}"
    )
    for width in widths:
        per_layer = None
        for depth in depths:
            predicted = None if per_layer is None else per_layer * depth * (repeats + 1) * 1.5  # f64 + f32
            if predicted is not None and predicted > budget_s:
                print(f"{width:>6} {depth:>6}   skipped (predicted {predicted:.0f} s > --budget {budget_s:.0f} s)")
                continue
            a, b = net(0, width, depth), net(1, width, depth)
            t64, gb = pass_timer(a, b, torch.float64, repeats)
            t32, _ = pass_timer(a.float(), b.float(), torch.float32, repeats)
            per_layer = t64.median / depth
            print(f"{width:>6} {depth:>6} {t64!s:>24} {per_layer:>12.3f} {t32!s:>24} {gb:>17.3f} {peak_gb():>12.2f}")


def part3(T: int, repeats: int) -> None:
    print(
        f"\n3. T x T checkpoint matrix, T = {T} (float64): the matrix against T(T-1)/2 independent tensor_similarity "
        f"calls (per-call time: median (min-max) of {repeats} samples of >= 50 ms over a cycle of pairs, after a warm-up)"
    )
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
        t_mat = measure(lambda nets=nets: matrix(nets), repeats=repeats)
        m = t_mat.result
        pairs = itertools.cycle([(i, T - 1 - i) for i in range(T // 2)])

        def one_pair(nets=nets, m=m, pairs=pairs):
            i, j = next(pairs)
            s = float(tensor_similarity(nets[i], nets[j]))
            assert abs(s - float(m.values[i, j])) < 1e-10
            return s

        t_pair = measure(one_pair, repeats=repeats)
        n_pairs = T * (T - 1) // 2
        print(
            f"  {name}: matrix {t_mat}; one pairwise call {t_pair} -> {n_pairs} pairs would take "
            f"{t_pair.median * n_pairs:.1f} s (x{t_pair.median * n_pairs / t_mat.median:.1f}, "
            f"range x{t_pair.low * n_pairs / t_mat.high:.1f}-x{t_pair.high * n_pairs / t_mat.low:.1f}); "
            f"peak RSS {peak_gb():.2f} GB",
            flush=True,
        )


def perturbed(model: HookedTensorNetwork, scale: float, seed: int) -> HookedTensorNetwork:
    """A copy of `model` with every parameter moved by `scale` x its RMS in a random direction (a later checkpoint)."""
    out = HookedTensorNetwork(model.cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (_, p), (_, q) in zip(out.named_parameters(), model.named_parameters()):
            rms = float(q.pow(2).mean().sqrt()) or 1.0
            p.copy_(q + scale * rms * torch.randn(q.shape, generator=g, dtype=q.dtype))
    return out


def three_digit_run(a, b, target: float = 5e-4, pilot: int = 4000, max_seconds: float = 20.0):
    """Monte Carlo at the sample count whose ±2 SE interval is within ±`target`, set from a pilot run (SE ∝ 1/sqrt(n)).
    Runs of more than `max_seconds` (predicted from the pilot's speed) are run at the count that fits and their time
    is extrapolated linearly to the full count. Returns (estimate at the run count, count run, count needed,
    seconds for the count needed, whether extrapolated)."""
    t0 = time.perf_counter()
    first = tensor_similarity(a, b, "gaussian", method="monte_carlo", samples=pilot, seed=1)
    per_sample = (time.perf_counter() - t0) / pilot
    need = max(pilot, math.ceil(pilot * (2 * first.stderr / target) ** 2))
    run = min(need, max(pilot, int(max_seconds / per_sample)))
    t0 = time.perf_counter()
    est = tensor_similarity(a, b, "gaussian", method="monte_carlo", samples=run, seed=2)
    seconds = time.perf_counter() - t0
    return est, run, need, seconds * need / run, run < need


def part4(widths: list[int], d_in: int = 16) -> None:
    print(f"\n4. Exact depth-2 Gaussian vs Monte Carlo to three decimals (d_in {d_in}, d_out 10, float64)")
    print(
        f"{'network':>17} {'width':>5} {'H1':>5} {'exact':>9} {'exact s':>8} {'MC':>9} {'±SE':>8} {'run':>10} "
        f"{'needed':>10} {'MC s':>9} {'|MC-exact|':>10} {'MC s / exact s':>14}"
    )
    for kind, kw in (("residual + biases", {}), ("plain", dict(residual=False, bias=False))):
        for width in widths:
            a = net(0, width, 2, d_in=d_in, **kw)
            b = perturbed(a, 0.3, seed=1)
            t0 = time.perf_counter()
            exact = tensor_similarity(a, b, "gaussian")
            t_exact = time.perf_counter() - t0
            assert exact.method == "exact" and exact.stderr is None
            est, run, need, t_mc, extrapolated = three_digit_run(a, b)
            H1 = 1 + width + (width if kw.get("residual", True) else 0)
            star = "*" if extrapolated else " "
            print(
                f"{kind:>17} {width:>5} {H1:>5} {float(exact):>9.5f} {t_exact:>8.2f} {float(est):>9.5f} "
                f"{est.stderr:>8.1e} {run:>10,} {need:>10,} {t_mc:>8.2f}{star} {abs(float(est) - float(exact)):>10.1e} "
                f"{t_mc / t_exact:>13.2f}{star}",
                flush=True,
            )
    print("  * run at the count that fits in 20 s; seconds extrapolated linearly to the count needed")


def closure_inner(a, b, sigma: torch.Tensor | None) -> float:
    """Gaussian closure of `E[f_a(x)·f_b(x)]` for two depth-2 networks: the padded first-layer outputs `(y_a, y_b)`
    get their exact joint mean and covariance and are then treated as Gaussian for the second layer and unembed
    (`E[(yᵀAy)(y'ᵀBy')] = (tr AK + μᵀAμ)(tr BK' + μ'ᵀBμ') + 2 tr(A K_ab B K_ba) + 4 μᵀA K_ab B μ'`)."""
    d = as_chain(a).d_in
    G0 = input_gram(d, sigma, torch.float64, "cpu")  # blockdiag(1, Σ): uncentred Gram of u = [1; x]
    parts = []
    for model in (a, b):
        M, layers, U = as_chain(model).to(torch.float64).padded()
        M = torch.eye(d + 1, dtype=torch.float64) if M is None else M
        (L1, R1, D1), (L2, R2, D2) = layers
        parts.append((L1 @ M, R1 @ M, D1, L2, R2, U @ D2))

    def hidden_moment(x, y):  # E[p_h p'_h'] of the first-layer hidden products, exact (Isserlis with means)
        (lx, rx), (ly, ry) = x[:2], y[:2]
        tx, ty = (lx @ G0 * rx).sum(1), (ly @ G0 * ry).sum(1)
        mu = lx[:, 0] * rx[:, 0], ly[:, 0] * ry[:, 0]
        pair = (lx @ G0 @ ly.T) * (rx @ G0 @ ry.T) + (lx @ G0 @ ry.T) * (rx @ G0 @ ly.T)
        return tx[:, None] * ty[None, :] + pair - 2 * mu[0][:, None] * mu[1][None, :]

    means = [D1 @ (lx @ G0 * rx).sum(1) for lx, rx, D1, *_ in parts]
    K = {
        (i, j): parts[i][2] @ hidden_moment(parts[i], parts[j]) @ parts[j][2].T - means[i][:, None] * means[j][None, :]
        for i in range(2)
        for j in range(2)
    }
    total = 0.0
    for c in range(parts[0][5].shape[0]):
        A, B = (0.5 * (L2.T @ (W[c][:, None] * R2) + (L2.T @ (W[c][:, None] * R2)).T) for _, _, _, L2, R2, W in parts)
        ea = torch.trace(A @ K[0, 0]) + means[0] @ A @ means[0]
        eb = torch.trace(B @ K[1, 1]) + means[1] @ B @ means[1]
        total += float(ea * eb + 2 * torch.trace(A @ K[0, 1] @ B @ K[1, 0]) + 4 * means[0] @ A @ K[0, 1] @ B @ means[1])
    return total


def quadrature_inner(a, b, d: int, sigma: torch.Tensor | None) -> float:
    """`E[f_a(x)·f_b(x)]` by a tensor Gauss-Hermite rule, 5 points per coordinate (exact for degree 8 per coordinate)."""
    import numpy as np

    nodes, weights = np.polynomial.hermite_e.hermegauss(5)
    weights = weights / weights.sum()
    X = torch.tensor(list(itertools.product(nodes, repeat=d)), dtype=torch.float64)
    Wt = torch.tensor([float(np.prod(w)) for w in itertools.product(weights, repeat=d)], dtype=torch.float64)
    if sigma is not None:
        X = X @ torch.linalg.cholesky(sigma).T
    with torch.no_grad():
        return float((Wt * (a(X) * b(X)).sum(-1)).sum())


def part5(samples: int = 10**6) -> None:
    print(f"\n5. Exact vs Monte Carlo ({samples:,} samples) vs Gaussian closure, small depth-2 networks (float64)")
    g = torch.Generator().manual_seed(0)
    Q = torch.randn(4, 4, generator=g, dtype=torch.float64)
    sigma4 = Q @ Q.T / 4 + 0.25 * torch.eye(4, dtype=torch.float64)
    cases = [
        ("d_in 3, width 4, plain", dict(d_in=3, d_model=4, d_hidden=4, residual=False, bias=False), None),
        ("d_in 3, width 4, residual + biases", dict(d_in=3, d_model=4, d_hidden=4), None),
        ("d_in 4, width 6, residual + biases, Σ", dict(d_in=4, d_model=6, d_hidden=6), sigma4),
    ]
    eye3 = torch.eye(3, dtype=torch.float64)

    def gaussian_first_layer(seed: int):  # layer 1 = (I x) ⊙ (0 x + 1) = x: Gaussian outputs
        r = torch.Generator().manual_seed(seed)
        second = BilinearLayer(*torch.randn(3, 4, 3, generator=r, dtype=torch.float64)[:2],
                               torch.randn(2, 4, generator=r, dtype=torch.float64))  # fmt: skip
        first = BilinearLayer(eye3, 0 * eye3, eye3, b_right=torch.ones(3, dtype=torch.float64))
        return chain_from_layers([first, second])

    ia, ib = gaussian_first_layer(1), gaussian_first_layer(2)
    check = abs(closure_inner(ia, ib, None) / float(tensor_inner(ia, ib, "gaussian")) - 1)
    print(f"  closure self-check (first layer the identity map, so its outputs are Gaussian): rel. diff {check:.1e}")
    print(
        f"{'network':>38} {'quantity':>9} {'exact':>10} {'quadrature':>10} {'MC':>10} {'±SE':>8} {'closure':>10} "
        f"{'closure err':>11}"
    )
    for name, kw, sigma in cases:
        a = HookedTensorNetwork(
            TensorNetworkConfig(n_layers=2, d_out=2, seed=3, dtype="float64", **{"residual": True, "bias": True, **kw})
        )
        with torch.no_grad():  # non-zero biases
            for pname, p in a.named_parameters():
                if "b_" in pname:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        b = perturbed(a, 0.5, seed=4)
        d = kw["d_in"]
        pairs = {"ab": (a, b), "aa": (a, a), "bb": (b, b)}
        ex = {k: float(tensor_inner(m, n, "gaussian", sigma=sigma)) for k, (m, n) in pairs.items()}
        quad = quadrature_inner(a, b, d, sigma)
        clo = {k: closure_inner(m, n, sigma) for k, (m, n) in pairs.items()}
        mc_inner = tensor_inner(a, b, "gaussian", sigma=sigma, method="monte_carlo", samples=samples, seed=5)
        mc_cos = tensor_similarity(a, b, "gaussian", sigma=sigma, method="monte_carlo", samples=samples, seed=6)
        cos_exact = ex["ab"] / math.sqrt(ex["aa"] * ex["bb"])
        cos_clo = clo["ab"] / math.sqrt(clo["aa"] * clo["bb"])
        print(
            f"{name:>38} {'⟨a,b⟩':>9} {ex['ab']:>10.4g} {quad:>10.4g} {float(mc_inner):>10.4g} {mc_inner.stderr:>8.1e} "
            f"{clo['ab']:>10.4g} {abs(clo['ab'] / ex['ab'] - 1):>10.1%}"
        )
        print(
            f"{'':>38} {'cosine':>9} {cos_exact:>10.5f} {'':>10} {float(mc_cos):>10.5f} {mc_cos.stderr:>8.1e} "
            f"{cos_clo:>10.5f} {abs(cos_clo - cos_exact):>11.4f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="widths 64-256, T = 30")
    parser.add_argument(
        "--budget", type=float, default=300.0, help="skip part-2 configs predicted to take longer, all repeats (s)"
    )
    parser.add_argument("--only", default="1,2,3,4,5", help="comma-separated parts to run (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per figure, after a warm-up (>= 5)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: the machine is shared)")
    args = parser.parse_args()
    parts = {int(p) for p in args.only.split(",")}
    with limit_threads(args.threads):
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if 1 in parts:
            part1(args.repeats)
        if 2 in parts:
            part2([64, 128, 256] if args.quick else [256, 512, 1024], [1, 2, 4, 8], args.budget, args.repeats)
        if 3 in parts:
            part3(30 if args.quick else 90, args.repeats)
        if 4 in parts:
            part4([64, 128] if args.quick else [64, 128, 256, 512])
        if 5 in parts:
            part5(10**5 if args.quick else 10**6)
    print(f"\nprocess peak RSS {peak_gb():.2f} GB")


if __name__ == "__main__":
    main()
