"""Exact inner products of tensor networks: the layer-by-layer Gram recursion (arXiv 2605.15183, the recursive algorithm).

**What is computed.** A network `TensorChain` acts on the padded input `x̃ = [1; x]` (biases are weight
columns, paper §2.1). Each bilinear layer's outputs are quadratic forms `B̃_o` in its padded input; they are
symmetrised *locally*, `B̃_o -> (B̃_o + B̃_oᵀ)/2` (which changes no function), and composed: substituting every
input leg of layer k by a full copy of the network below gives the coefficient tensor `T` of order `2^N + 1`
(`2^N` padded input legs, one output leg; the constant output coordinate is dropped). The **frobenius** inner
product is `⟨T_a, T_b⟩ = Σ T_a[c, i_1..i_{2^N}] T_b[c, j_1..j_{2^N}] Π_k G_0[i_k, j_k]` with `G_0 = blockdiag(1, Σ)`
(`Σ = I` by default). Local symmetrisation is *not* full symmetrisation over the `2^N` legs (arXiv 2605.15183, the recursive algorithm);
this is the definition implemented, and `tests/tensor_networks/brute_force.py` materialises exactly it.

**How.** `G` is the `(1 + d_a) x (1 + d_b)` Gram matrix between the two networks' padded activations:
`G <- M_a G M_bᵀ` for an embed, and for a bilinear layer with padded factors `(L̃, R̃, D̃)`

    G <- D̃_a · ½[(L̃_a G L̃_bᵀ) ∘ (R̃_a G R̃_bᵀ) + (L̃_a G R̃_bᵀ) ∘ (R̃_a G L̃_bᵀ)] · D̃_bᵀ,

then `⟨T_a, T_b⟩_c = (U_a G U_bᵀ)[c, c]` per output `c`. Cost `O(H d² + H² d)` per layer, linear in depth; the
order-`2^N + 1` tensor is never formed.

**gaussian** (`E_{x~N(0,Σ)}[f_a(x)ᵀ f_b(x)]`, paper §2.2(B)) is exact for one bilinear layer: by Isserlis'
theorem with means, the layer's Hadamard term becomes `2·core(G) + t_a t_bᵀ - 2 m_a m_bᵀ`, where
`t[h] = E[l_h r_h] = (L̃ G_aa R̃ᵀ)[h, h]` and `m[h] = E[l_h] E[r_h]`. Without biases and embed this is
`Σ_o tr B_a^o tr B_b^o + 2 ⟨B^s_a{}^o, B^s_b{}^o⟩`: trace term + 2 x Frobenius.

**Numerics.** The recursion is homogeneous of degree 2 in `G`, so after every stage `G_aa` is divided by
`α = max|G_aa|`, `G_bb` by `β`, and `G_ab` by `sqrt(αβ)`; the logs of the factors are kept in float64, and the
cosine needs none of them. By Cauchy-Schwarz every normalised entry is at most 1: float32 does not overflow.

Pairs are batched two ways: `self_pass` runs a stack of T same-shaped networks against themselves (one batch
index `p`), `cross_pass` runs a tile of `A x B` pairs (indices `a`, `b`), reusing the self pass's per-stage
scales and Gaussian vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tl_tensorsim.checks import output_indices
from tl_tensorsim.linalg import cosine_from_parts
from tl_tensorsim.models.bilinear import TensorChain


@dataclass
class PaddedStack:
    """Padded factors of T networks of identical shapes, stacked on a leading axis.

    `M`: `(T, 1+d_0, 1+d_in)` or None (identity embed); `X[k]`: `(T, 2H_k, 1+d_k)` = `[L̃; R̃]` of layer k;
    `D[k]`: `(T, 1+d_{k+1}, H_k)`; `U`: `(T, C, 1+d_N)`; `mu`: `(T, 1+d_0)`, the padded embed applied to `e_0`.
    Filled in by `self_pass`: `scales` `(T, N+1)`, `log_c` `(T,)`, `t`/`m` `(T, H_last)` (one-layer Gaussian).
    """

    M: Tensor | None
    X: list[Tensor]
    D: list[Tensor]
    U: Tensor
    mu: Tensor
    d_in: int
    scales: Tensor | None = None
    log_c: Tensor | None = None
    t: Tensor | None = None
    m: Tensor | None = None
    values: Tensor | None = None  # (T, C): normalised per-output self inner products

    @property
    def T(self) -> int:
        return int(self.U.shape[0])

    @property
    def depth(self) -> int:
        return len(self.X)

    def pair_bytes(self, other: PaddedStack, itemsize: int) -> int:
        """Approximate bytes of intermediates per (a, b) pair at the widest stage."""
        n = (self.U.shape[-1]) * (other.U.shape[-1]) + self.U.shape[1] * other.U.shape[-1]
        for Xa, Da, Xb in zip(self.X, self.D, other.X):
            two_ha, da = Xa.shape[1:]
            two_hb, db = Xb.shape[1:]
            n = max(n, two_ha * db + 2 * two_ha * two_hb + Da.shape[1] * two_hb + da * db)
        return int(n * itemsize)


def stack_chains(chains: Sequence[TensorChain], dtype: torch.dtype, device: torch.device | str) -> PaddedStack:
    """Pad and stack same-shaped chains (raises `ValueError` naming the first mismatch)."""
    parts = []
    for i, ch in enumerate(chains):
        M, layers, U = ch.to(dtype, device).padded()
        X = [torch.cat([Lp, Rp], 0) for Lp, Rp, _ in layers]
        D = [Dp for _, _, Dp in layers]
        key = (
            None if M is None else tuple(M.shape),
            [tuple(x.shape) for x in X],
            [tuple(d.shape) for d in D],
            tuple(U.shape),
        )
        if parts and key != parts[0][0]:
            raise ValueError(
                f"checkpoints[{i}]: padded shapes {key} differ from checkpoints[0]'s {parts[0][0]}; "
                "batched computation needs one architecture (compare different ones pair by pair)"
            )
        parts.append((key, M, X, D, U, ch.d_in))
    _, M0, X0, D0, _, d_in = parts[0]
    M = None if M0 is None else torch.stack([p[1] for p in parts])
    mu = M[:, :, 0] if M is not None else torch.zeros(len(parts), d_in + 1, dtype=dtype, device=device)
    if M is None:
        mu[:, 0] = 1
    return PaddedStack(
        M=M,
        X=[torch.stack([p[2][k] for p in parts]) for k in range(len(X0))],
        D=[torch.stack([p[3][k] for p in parts]) for k in range(len(D0))],
        U=torch.stack([p[4] for p in parts]),
        mu=mu,
        d_in=d_in,
    )


def input_gram(d_in: int, sigma: Tensor | None, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """`G_0 = blockdiag(1, Σ)` on the padded input (`Σ = I` when None)."""
    G0 = torch.zeros(d_in + 1, d_in + 1, dtype=dtype, device=device)
    G0[0, 0] = 1
    if sigma is None:
        G0[1:, 1:] = torch.eye(d_in, dtype=dtype, device=device)
    else:
        if tuple(sigma.shape) != (d_in, d_in):
            raise ValueError(f"sigma: expected an input covariance of shape ({d_in}, {d_in}); got {tuple(sigma.shape)}")
        if not torch.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-8 * float(sigma.abs().max())):
            raise ValueError("sigma: expected a symmetric (positive semi-definite) covariance matrix")
        G0[1:, 1:] = sigma.to(dtype=dtype, device=device)
    return G0


def _core(P: Tensor, Ha: int, Hb: int) -> Tensor:
    """½[(L̃_a G L̃_bᵀ)∘(R̃_a G R̃_bᵀ) + (L̃_a G R̃_bᵀ)∘(R̃_a G L̃_bᵀ)] from `P = [L̃_a; R̃_a] G [L̃_b; R̃_b]ᵀ`."""
    ll, lr = P[..., :Ha, :Hb], P[..., :Ha, Hb:]
    rl, rr = P[..., Ha:, :Hb], P[..., Ha:, Hb:]
    return 0.5 * (ll * rr + lr * rl)


def _safe(s: Tensor) -> Tensor:
    return torch.where(s > 0, s, torch.ones_like(s))


def _first_gram(A: PaddedStack, B: PaddedStack, G0: Tensor, pa: str, pb: str, pg: str) -> Tensor:
    """Stage 0: `M_a G_0 M_bᵀ` per pair; just `G_0` (2-D, shared by every pair) when neither side has an embed."""
    if A.M is None and B.M is None:
        return G0
    n = G0.shape[0]
    eye = torch.eye(n, dtype=G0.dtype, device=G0.device)
    Ma = A.M if A.M is not None else eye.expand(A.T, n, n)
    Mb = B.M if B.M is not None else eye.expand(B.T, n, n)
    return torch.einsum(f"{pa}iv,vw,{pb}jw->{pg}ij", Ma, G0, Mb)


def _run(
    A: PaddedStack, B: PaddedStack, G0: Tensor, gaussian: bool, mode: str
) -> tuple[Tensor, list[Tensor], Tensor | None]:
    """Shared recursion. `mode='self'`: pairs (p, p), scales computed as max |G|; `mode='cross'`: an A x B tile,
    scaled by the stacks' self-pass scales. Returns (per-output values `(..., C)`, per-stage scales, the self
    pass's Gaussian `t`)."""
    pa, pb, pg = ("p", "p", "p") if mode == "self" else ("a", "b", "ab")
    batch = (A.T,) if mode == "self" else (A.T, B.T)

    def scale(G: Tensor, k: int) -> Tensor:
        if mode == "self":
            return _safe(G.abs().amax(dim=(-2, -1)))
        return torch.sqrt(A.scales[:, k][:, None] * B.scales[:, k][None, :])  # type: ignore[index]

    G = _first_gram(A, B, G0, pa, pb, pg)
    if G.dim() == 2:  # shared by every pair: one scale
        s0 = _safe(G.abs().amax())
        scales, G = [s0.expand(*batch)], G / s0
    else:
        s = scale(G, 0)
        scales, G = [s], G / s[..., None, None]
    t_self = None
    n = A.depth
    for k in range(n):
        Xa, Da, Xb, Db = A.X[k], A.D[k], B.X[k], B.D[k]
        Ha, Hb = Xa.shape[1] // 2, Xb.shape[1] // 2
        if G.dim() == 2:
            XG = torch.einsum(f"{pa}xi,ij->{pa}xj", Xa, G)
        else:
            XG = torch.einsum(f"{pa}xi,{pg}ij->{pg}xj", Xa, G)
        P = torch.einsum(f"{pg if G.dim() > 2 else pa}xj,{pb}yj->{pg}xy", XG, Xb)
        del XG
        core = _core(P, Ha, Hb)
        if gaussian and k == n - 1:
            if mode == "self":
                t = torch.diagonal(P[..., :Ha, Ha:], dim1=-2, dim2=-1)  # E[l_h r_h], normalised
                t_self = t
                m = _gauss_mean_term(A, k, scales[0])
                core = 2 * core + t[:, :, None] * t[:, None, :] - 2 * m[:, :, None] * m[:, None, :]
            else:
                ta, tb, ma, mb = A.t, B.t, A.m, B.m
                core = (
                    2 * core
                    + ta[:, None, :, None] * tb[None, :, None, :]
                    - 2 * ma[:, None, :, None] * mb[None, :, None, :]
                )
        del P
        G = torch.einsum(f"{pa}oh,{pg}hk->{pg}ok", Da, core)
        G = torch.einsum(f"{pg}ok,{pb}qk->{pg}oq", G, Db)
        s = scale(G, k + 1)
        scales.append(s)
        G = G / s[..., None, None]
    if G.dim() == 2:
        UG = torch.einsum(f"{pa}ci,ij->{pa}cj", A.U, G)
        values = torch.einsum(f"{pa}cj,{pb}cj->{pg}c", UG, B.U)
    else:
        UG = torch.einsum(f"{pa}ci,{pg}ij->{pg}cj", A.U, G)
        values = torch.einsum(f"{pg}cj,{pb}cj->{pg}c", UG, B.U)
    return values, scales, t_self


def _gauss_mean_term(A: PaddedStack, k: int, s0: Tensor) -> Tensor:
    """`m[h] = E[l_h] E[r_h] / s_0` for the (only) bilinear layer, from the padded embed's constant column."""
    if k != 0:
        raise ValueError("metric='gaussian': the exact form covers networks with at most one bilinear layer")
    X = A.X[0]
    H = X.shape[1] // 2
    mean = torch.einsum("pxi,pi->px", X, A.mu)
    return mean[:, :H] * mean[:, H:] / s0[:, None]


def self_pass(A: PaddedStack, G0: Tensor, gaussian: bool) -> PaddedStack:
    """Run every network of the stack against itself; stores scales, log-scale, Gaussian vectors and values."""
    values, scales, t = _run(A, A, G0, gaussian, "self")
    A.scales = torch.stack(scales, dim=1)
    logs = torch.log(A.scales.double())
    log_c = logs[:, 0].clone()
    for k in range(1, logs.shape[1]):
        log_c = 2 * log_c + logs[:, k]
    A.log_c = log_c
    A.values = values
    if gaussian and A.depth == 1:
        A.t = t
        A.m = _gauss_mean_term(A, 0, A.scales[:, 0])
    return A


def cross_pass(A: PaddedStack, B: PaddedStack, G0: Tensor, gaussian: bool) -> tuple[Tensor, Tensor]:
    """Normalised per-output inner products `(a, b, C)` for every pair of the tile, and their log-scale `(a, b)`."""
    values, _, _ = _run(A, B, G0, gaussian, "cross")
    log_c = 0.5 * (A.log_c[:, None] + B.log_c[None, :])  # type: ignore[index]
    return values, log_c


def select_outputs(values: Tensor, output: int | Sequence[int] | None, d_out: int) -> Tensor:
    """Sum the per-output values over the selected outputs (all when None; an empty selection is refused)."""
    idx = output_indices(output, d_out)
    return values.sum(-1) if idx is None else values[..., idx].sum(-1)


def cosine(ab: Tensor, aa: Tensor, bb: Tensor, eps: float = 1e-30) -> tuple[Tensor, bool]:
    """`ab / (sqrt(aa) sqrt(bb))` (the product of square roots, so float32 does not overflow), 0 where a norm
    vanishes (`similarity.factored.cosine_from_parts`), clamped to [-1, 1]; second value: whether the guard fired."""
    used = bool((torch.sqrt(aa.clamp_min(0)) * torch.sqrt(bb.clamp_min(0)) <= eps).any())
    return cosine_from_parts(ab, aa, bb, eps).clamp(-1.0, 1.0), used


def tile_size(A: PaddedStack, budget_bytes: int, itemsize: int) -> int:
    """Side of a square tile of pairs whose intermediates fit in `budget_bytes`."""
    per_pair = max(1, A.pair_bytes(A, itemsize))
    return max(1, int(math.isqrt(max(1, budget_bytes // per_pair))))
