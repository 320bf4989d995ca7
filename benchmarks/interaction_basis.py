"""Benchmark: the interaction basis's Jacobian accumulation `M' = Σ_x Σ_s Σ_(t,i) J Jᵀ`, vectorised against a loop.

One section of a GPT-2-shaped random model (12 layers, d_model 768, 12 heads, d_mlp 3072, vocabulary 50257, GELU,
LayerNorm; built locally through `ModelView.build`) at a short context: `blocks.L.hook_resid_mid ->
blocks.L.hook_resid_post` (the MLP half of block L, LayerNorm included), its output read through `m_out` random
orthonormal directions (the next node layer's basis), every output position (exact sum, no stochastic sources):

1. `loop`: one `torch.autograd.grad` per output direction `(t, i)` on a retained graph (the `rib` library's approach,
   `jacobians.loop_jacobian_gram`);
2. `vmap`: one `torch.func.vjp`, its pullback `vmap`ed over `chunk` directions at a time (`jacobians.jacobian_gram`,
   what `interaction_basis` runs).

Both accumulate in float64; the script prints seconds for each, the speed-up and the largest relative difference of
the two matrices, measured in one run (one intra-op thread unless `--threads`).

    python benchmarks/interaction_basis.py [--ctx 8] [--batch 1] [--m-out 64] [--chunk 64] [--layer 6]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

GPT2 = dict(
    n_layers=12,
    d_model=768,
    n_heads=12,
    d_head=64,
    d_mlp=3072,
    d_vocab=50257,
    n_ctx=1024,
    act_fn="gelu_new",
    normalization_type="LN",
    model_name="gpt2-shaped-random",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ctx", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--m-out", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tl_tensorsim.adapter import ModelView
    from tl_tensorsim.interaction import jacobians

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = ModelView.build({**GPT2, "seed": 0})
    view.model.eval()
    tokens = torch.randint(0, GPT2["d_vocab"], (args.batch, args.ctx), generator=torch.Generator().manual_seed(1))
    hook_in, hook_out = f"blocks.{args.layer}.hook_resid_mid", f"blocks.{args.layer}.hook_resid_post"
    x = view.run_with_cache(tokens, [hook_in])[1][hook_in]
    F = view.forward_between(hook_in, hook_out, tokens)
    basis = torch.linalg.qr(torch.randn(GPT2["d_model"], args.m_out, dtype=torch.float64)).Q.to(x.dtype)
    h = lambda z: F(z) @ basis  # noqa: E731
    sources, weight = jacobians.position_sources(args.ctx, dtype=x.dtype)
    directions = args.ctx * args.m_out
    print(
        f"{view!r}\nsection {hook_in} -> {hook_out}, batch {args.batch} x ctx {args.ctx}, {directions} output "
        f"directions ({args.ctx} positions x {args.m_out}), {torch.get_num_threads()} thread(s)"
    )

    jacobians.jacobian_gram(h, x, sources[:1], weight, args.chunk)  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    vec = jacobians.jacobian_gram(h, x, sources, weight, args.chunk)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop = jacobians.loop_jacobian_gram(h, x, sources, weight)
    t_loop = time.perf_counter() - t0
    diff = float((vec - loop).abs().max() / loop.abs().max())
    print(f"loop (one VJP per direction): {t_loop:8.2f} s  ({1e3 * t_loop / directions:.2f} ms per direction)")
    print(f"vmap (chunks of {args.chunk}):        {t_vec:8.2f} s  ({1e3 * t_vec / directions:.2f} ms per direction)")
    print(f"speed-up: {t_loop / t_vec:.2f}x; max |M'_vmap - M'_loop| / max |M'_loop| = {diff:.2e}")


if __name__ == "__main__":
    main()
