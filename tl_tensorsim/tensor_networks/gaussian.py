"""Exact Gaussian inner product `E_{x~N(0,Σ)}[f_a(x)ᵀ f_b(x)]` for networks of up to two bilinear layers.

The paper's Gaussian metric (arXiv 2605.15183, §2.2(B)) is exact for one bilinear layer (`inner.py`); its authors'
code takes two layers by Gaussian closure (the first layer's outputs treated as Gaussian), which is approximate.
This module computes two layers exactly, in float64, by a Hermite (Wick-ordered) expansion. Derivation:

**Whitening and the first layer.** Write `x = A w`, `A Aᵀ = Σ`, `w ~ N(0, I_d)`. The embed and the first layer act on
the padded input `u = [1; x]`; hidden unit `h` of the padded first layer (`inner.py`: constant unit, residual
units, the layer's units) reads two affine forms `ℓ_h·u = ℓ⁰_h + ℓ̂_h·w`, `r_h·u = r⁰_h + r̂_h·w` (`ℓ̂_h = Aᵀ ℓ̄_h`,
`ℓ̄_h` the x-part of `L̃₁ M` row h). Its product `p_h = (ℓ_h·u)(r_h·u)` splits into Hermite parts of degree 0, 1, 2:

    p_h = m_h + b_h·w + :wᵀQ_h w:,   m_h = ℓ⁰r⁰ + ℓ̂·r̂,   b_h = r⁰ℓ̂ + ℓ⁰r̂,   Q_h = ½(ℓ̂r̂ᵀ + r̂ℓ̂ᵀ),

where `:·:` is Wick ordering (`:wᵀQw: = wᵀQw − tr Q`). **The second layer** reads `α_g·p` and `β_g·p`
(`α = L̃₂D̃₁`, `β = R̃₂D̃₁`) and output c is `f_c = Σ_g W[c,g](α_g·p)(β_g·p)` (`W = U D̃₂`), i.e.

    f_c = Σ_{h,h'} P_c[h,h'] p_h p_h',   P_c = sym(αᵀ diag(W_c) β)   (H₁ x H₁, symmetric),

a polynomial of degree 4 in x: a sum of products of two quadratic forms of the first layer.

**Products of Wick polynomials** (Isserlis' theorem: contract legs of different factors, never of the same one):
`:Q::Q': = :Q⊗Q': + 4 :wᵀQQ'w: + 2 tr(QQ')`, `:Q:(b·w) = :Q⊗b: + 2(Qb)·w`, `(b·w)(b'·w) = :bb'ᵀ: + b·b'`.
Collecting degrees, `f_c = Σ_k :T_k(w,..,w):` with symmetric coefficient tensors (`Pm = P m`, `V = P B`, rows `v_h`):

    T₀ = mᵀPm + Σ_h b_h·v_h + 2 Σ_{hh'} P[h,h'] tr(Q_hQ_h')
    T₁ = 2 Bᵀ(Pm) + 4 Σ_h Q_h v_h
    T₂ = sym[2 Σ_h (Pm)_h Q_h + BᵀPB + 4 Σ_{hh'} P[h,h'] Q_hQ_h']
    T₃ = Sym(2 Σ_h Q_h ⊗ v_h),   T₄ = Sym(Σ_{hh'} P[h,h'] Q_h ⊗ Q_h').

A one-layer network has `T₀ = Wm`, `T₁ = WB`, `T₂ = Σ_h W[c,h]Q_h` and no `T₃, T₄`; a linear one only `T₀, T₁`.

**Orthogonality.** Wick polynomials of different degree are orthogonal and `E[:T:  :T':] = k!⟨T, T'⟩` for degree k,
so per output c (`⟨Q, Q'⟩ = tr(QQ')`, Grams `Z[h,h'] = tr(Q_hQ'_h')` between the networks' units)

    E[f_a f_b]_c = T₀ᵃT₀ᵇ + T₁ᵃ·T₁ᵇ + 2 tr(T₂ᵃT₂ᵇ) + 6⟨T₃ᵃ,T₃ᵇ⟩ + 24⟨T₄ᵃ,T₄ᵇ⟩,
    6⟨T₃ᵃ,T₃ᵇ⟩  = 8 Σ_{hh'} Z[h,h'] (v_h·v'_h') + 16 Σ_{hh'} (Q_h v'_h')·(Q'_h' v_h),
    24⟨T₄ᵃ,T₄ᵇ⟩ = 8 ⟨Z, P_a Z P_b⟩ + 16 Σ_{h1..h4} P_a[h1,h3] P_b[h2,h4] tr(Q_h1 Q'_h2 Q_h3 Q'_h4),

from `⟨Sym(Q⊗v), Q'⊗v'⟩ = ⅓[tr(QQ')(v·v') + 2(Qv')·(Q'v)]` and `⟨Sym(A⊗B), A'⊗B'⟩ = ⅙[tr(AA')tr(BB') +
tr(AB')tr(BA') + 2tr(AA'BB') + 2tr(AB'BA')]` (the symmetry of `P_b` merges the pairs). The last sum, the 4-cycle
that alternates between the networks, is the only one that does not factor through `H x H` Gram matrices. With
`Ω_a[h3] = Σ_h1 P_a[h1,h3] Q_h1` (a `d x d` form per unit) and `Ω_b` likewise, it is
`Σ_{h2,h3} tr(Ω_a[h3] Q'_h2 Q_h3 Ω_b[h2])`, and since each `Q` has rank 2 (`F_h = [ℓ̂_h, r̂_h]`)

    tr(Ω_a[h3] Q'_h2 Q_h3 Ω_b[h2]) = ¼ Σ_{s,t} (F'_h2[1−s]·F_h3[1−t]) ⟨Ω_b[h2] F_h3[t], Ω_a[h3] F'_h2[s]⟩.

**Cost** per output c and pair: `O(H₁²H₂)` for `P_c`, `O(H₁³ + H₁²d)` for the factored terms, and
`O(H₁² d²)` for the 4-cycle (`Ω` and the two `H_a x H_b x 2 x d` products), with `H₁` the padded first-layer width
(1 + d_model + d_hidden with a residual) and `d = d_in`; memory in chunks of at most `max_elements` numbers. The
order-5 coefficient tensor (`C · (1+d)⁴` entries) is never formed, and no loop runs over hidden units. Measured
against a Gauss-Hermite rule (exact for degree 8) to 1e-10 relative (`tests/tensor_networks/test_gaussian_depth2.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.models.bilinear import TensorChain
from tl_tensorsim.tensor_networks.inner import input_gram
from tl_tensorsim.tensor_networks.montecarlo import sqrt_cov

MAX_DEPTH = 2
DTYPE = torch.float64


@dataclass
class HermiteNet:
    """One network's factors in whitened coordinates (float64), shared by all its pairs.

    `depth` 0: `T0` `(C,)`, `T1` `(C, d)` only. Depth >= 1: first-layer unit forms `Lh, Rh` `(H, d)`, means `m`
    `(H,)`, linear parts `B` `(H, d)`, self Grams `LL, LR, RR` `(H, H)` and `Z = tr(Q_h Q_h')` `(H, H)`; `W`: the
    read-out `(C, H)` (depth 1) or `(C, H₂)` (depth 2, with `alpha`, `beta` `(H₂, H)`).
    """

    depth: int
    d_out: int
    T0: Tensor | None = None
    T1: Tensor | None = None
    Lh: Tensor | None = None
    Rh: Tensor | None = None
    m: Tensor | None = None
    B: Tensor | None = None
    LL: Tensor | None = None
    LR: Tensor | None = None
    RR: Tensor | None = None
    Z: Tensor | None = None
    W: Tensor | None = None
    alpha: Tensor | None = None
    beta: Tensor | None = None

    @property
    def F(self) -> Tensor:
        """`(H, 2, d)`: each unit's two legs `[ℓ̂_h, r̂_h]`."""
        return torch.stack([self.Lh, self.Rh], dim=1)  # type: ignore[list-item]


def whitener(d_in: int, sigma: Tensor | None, device: torch.device | str) -> Tensor | None:
    """`A` `(d_in, d_in)` float64 with `A Aᵀ = Σ` (None for `Σ = I`); `ValueError` naming `sigma` for a wrong shape,
    an asymmetric or an indefinite matrix."""
    if sigma is None:
        return None
    input_gram(d_in, sigma, DTYPE, device)  # shape and symmetry checks
    return sqrt_cov(sigma.detach().to(device)).to(device=device, dtype=DTYPE)


def hermite_net(chain: TensorChain, A: Tensor | None, device: torch.device | str) -> HermiteNet:
    """The factors of a chain of depth <= 2 (float64 on `device`); `A` from `whitener`."""
    if chain.depth > MAX_DEPTH:
        raise ValueError(
            f"chain: the exact Gaussian form covers at most {MAX_DEPTH} bilinear layers; got {chain.depth}"
        )
    M, layers, U = chain.to(DTYPE, device).padded()
    n = chain.d_in + 1
    M = torch.eye(n, dtype=DTYPE, device=device) if M is None else M

    def whiten(X: Tensor) -> Tensor:  # rows: x-parts of padded forms -> whitened coefficient vectors
        return X if A is None else X @ A

    if chain.depth == 0:
        W0 = U @ M
        return HermiteNet(0, int(U.shape[0]), T0=W0[:, 0], T1=whiten(W0[:, 1:]))
    L1, R1, D1 = layers[0]
    Lf, Rf = L1 @ M, R1 @ M
    l0, r0, Lh, Rh = Lf[:, 0], Rf[:, 0], whiten(Lf[:, 1:]), whiten(Rf[:, 1:])
    LL, LR, RR = Lh @ Lh.T, Lh @ Rh.T, Rh @ Rh.T
    net = HermiteNet(
        chain.depth,
        int(U.shape[0]),
        Lh=Lh,
        Rh=Rh,
        m=l0 * r0 + (Lh * Rh).sum(1),
        B=r0[:, None] * Lh + l0[:, None] * Rh,
        LL=LL,
        LR=LR,
        RR=RR,
        Z=0.5 * (LL * RR + LR * LR.T),
    )
    if chain.depth == 1:
        net.W = U @ D1
    else:
        L2, R2, D2 = layers[1]
        net.alpha, net.beta, net.W = L2 @ D1, R2 @ D1, U @ D2
    return net


@dataclass
class _Output:
    """Hermite components of one output: `T0` scalar, `T1` `(d,)`, `T2` `(d, d)` or None; `P`, `V` (depth 2)."""

    T0: Tensor
    T1: Tensor
    T2: Tensor | None = None
    P: Tensor | None = None
    V: Tensor | None = None


def _sym(X: Tensor) -> Tensor:
    return 0.5 * (X + X.transpose(-2, -1))


def _output(net: HermiteNet, c: int) -> _Output:
    if net.depth == 0:
        return _Output(net.T0[c], net.T1[c])  # type: ignore[index]
    Lh, Rh, m, B, w = net.Lh, net.Rh, net.m, net.B, net.W[c]  # type: ignore[index]
    if net.depth == 1:
        return _Output(w @ m, w @ B, _sym(Lh.T @ (w[:, None] * Rh)))  # type: ignore[union-attr, operator]
    P = _sym(net.alpha.T @ (w[:, None] * net.beta))  # type: ignore[union-attr, operator]
    Pm, V = P @ m, P @ B
    T0 = m @ Pm + (B * V).sum() + 2 * (P * net.Z).sum()  # type: ignore[operator]
    T1 = 2 * (B.T @ Pm + Lh.T @ (Rh * V).sum(1) + Rh.T @ (Lh * V).sum(1))  # type: ignore[union-attr, operator]
    T2 = (
        2 * Lh.T @ (Pm[:, None] * Rh)  # type: ignore[union-attr, operator]
        + B.T @ V  # type: ignore[union-attr]
        + Lh.T @ ((P * net.LR.T) @ Rh + (P * net.RR) @ Lh)  # type: ignore[union-attr, operator]
        + Rh.T @ ((P * net.LL) @ Rh + (P * net.LR) @ Lh)  # type: ignore[union-attr, operator]
    )
    return _Output(T0, T1, _sym(T2), P, V)


def _omega(P: Tensor, Lh: Tensor, Rh: Tensor, max_elements: int) -> Tensor:
    """`Ω[k] = Σ_h P[h, k] Q_h` `(k, d, d)` for the columns of `P` `(H, k)`, summing over units in chunks."""
    H, d = Lh.shape
    out = P.new_zeros(P.shape[1], d * d)
    step = max(1, max_elements // max(1, d * d))
    for h0 in range(0, H, step):
        outer = (Lh[h0 : h0 + step, :, None] * Rh[h0 : h0 + step, None, :]).reshape(-1, d * d)
        out += P[h0 : h0 + step].T @ outer
    return _sym(out.reshape(-1, d, d))


def _cycle(a: HermiteNet, b: HermiteNet, Pa: Tensor, Pb: Tensor, G: Tensor, max_elements: int) -> Tensor:
    """`Σ_{h1..h4} P_a[h1,h3] P_b[h2,h4] tr(Q_h1 Q'_h2 Q_h3 Q'_h4)`, the alternating 4-cycle.

    `G[i, t, j, s] = F_a[i, t]·F_b[j, s]` `(H_a, 2, H_b, 2)`. Chunks of a-units `I` and b-units `J` keep `Ω` and the
    `(|I|, |J|, 2, d)` products under `max_elements` numbers each."""
    Fa, Fb = a.F, b.F
    Ha, Hb, d = Fa.shape[0], Fb.shape[0], Fa.shape[2]
    ci = min(Ha, max(1, max_elements // max(1, d * d)))
    cj = min(Hb, max(1, max_elements // max(1, 2 * ci * d + d * d)))
    Gsw = G.flip(1).flip(3).permute(0, 2, 3, 1)  # [i, j, s, t] = F_a[i, 1-t]·F_b[j, 1-s]
    total = Pa.new_zeros(())
    for i0 in range(0, Ha, ci):
        I = slice(i0, i0 + ci)  # noqa: E741
        Oa = _omega(Pa[:, I], a.Lh, a.Rh, max_elements)  # type: ignore[arg-type]
        ni = Oa.shape[0]
        for j0 in range(0, Hb, cj):
            J = slice(j0, j0 + cj)
            same = a is b and Pa is Pb and (i0, ci) == (j0, cj)
            Ob = Oa if same else _omega(Pb[:, J], b.Lh, b.Rh, max_elements)  # type: ignore[arg-type]
            nj = Ob.shape[0]
            # two GEMMs (Ω symmetric): Ya[j, s, i] = Ω_a[i] F_b[j, s] and Yb[j, t, i] = Ω_b[j] F_a[i, t], (.., d)
            Ya = (Fb[J].reshape(nj * 2, d) @ Oa.transpose(0, 1).reshape(d, ni * d)).view(nj, 2, ni, d)
            Yb = (Fa[I].reshape(ni * 2, d) @ Ob.transpose(0, 1).reshape(d, nj * d)).view(ni, 2, nj, d)
            Yb = Yb.permute(2, 1, 0, 3)
            g = Gsw[I, J]  # (i, j, s, t)
            for s_, t_ in ((0, 0), (0, 1), (1, 0), (1, 1)):
                total = total + (g[:, :, s_, t_].T * (Ya[:, s_] * Yb[:, t_]).sum(-1)).sum()
    return 0.25 * total


def hermite_inner(a: HermiteNet, b: HermiteNet, max_elements: int = 2**24) -> Float[Tensor, " d_out"]:
    """`E_w[f_a(w)_c f_b(w)_c]` for every output c `(d_out,)`, float64 (module docstring for the formula)."""
    deep = a.depth == MAX_DEPTH and b.depth == MAX_DEPTH
    if deep:
        LaLb, LaRb, RaLb, RaRb = a.Lh @ b.Lh.T, a.Lh @ b.Rh.T, a.Rh @ b.Lh.T, a.Rh @ b.Rh.T  # type: ignore[union-attr]
        Z = 0.5 * (LaLb * RaRb + LaRb * RaLb)  # tr(Q_h Q'_h')
        G = torch.stack([torch.stack([LaLb, LaRb], -1), torch.stack([RaLb, RaRb], -1)], 1)  # (H_a, 2, H_b, 2)
    out = []
    for c in range(a.d_out):
        oa, ob = _output(a, c), _output(b, c)
        v = oa.T0 * ob.T0 + oa.T1 @ ob.T1
        if oa.T2 is not None and ob.T2 is not None:
            v = v + 2 * (oa.T2 * ob.T2).sum()
        if deep:
            Va, Vb, Pa, Pb = oa.V, ob.V, oa.P, ob.P
            RaVb, VaRb, LaVb, VaLb = a.Rh @ Vb.T, Va @ b.Rh.T, a.Lh @ Vb.T, Va @ b.Lh.T  # type: ignore[union-attr]
            cross3 = 0.25 * (LaLb * RaVb * VaRb + LaRb * RaVb * VaLb + RaLb * LaVb * VaRb + RaRb * LaVb * VaLb).sum()
            v = v + 8 * (Z * (Va @ Vb.T)).sum() + 16 * cross3  # type: ignore[union-attr]
            v = v + 8 * (Z * (Pa @ Z @ Pb)).sum() + 16 * _cycle(a, b, Pa, Pb, G, max_elements)  # type: ignore[arg-type, operator]
        out.append(v)
    return torch.stack(out)


def needs_hermite(depths: Sequence[int]) -> bool:
    """Whether the exact Gaussian form of these depths is this module's (the Gram recursion takes equal depths <= 1)."""
    return max(depths) <= MAX_DEPTH and not (len(set(depths)) == 1 and depths[0] <= 1)


def _ordered_inner(a: HermiteNet, b: HermiteNet, ka: float, kb: float, max_elements: int) -> Tensor:
    """`hermite_inner` in a canonical order (by the self values), so that `⟨a|b⟩ == ⟨b|a⟩` bit for bit."""
    if ka < kb:
        return hermite_inner(a, b, max_elements)
    if ka > kb:
        return hermite_inner(b, a, max_elements)
    return 0.5 * (hermite_inner(a, b, max_elements) + hermite_inner(b, a, max_elements))


def hermite_parts(
    ca: TensorChain, cb: TensorChain, sigma: Tensor | None, device: torch.device | str, max_elements: int = 2**24
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-output `(⟨a|b⟩, ⟨a|a⟩, ⟨b|b⟩)`, each `(d_out,)` float64, for two chains of depth <= 2."""
    A = whitener(ca.d_in, sigma, device)
    na, nb = hermite_net(ca, A, device), hermite_net(cb, A, device)
    with torch.no_grad():
        aa, bb = hermite_inner(na, na, max_elements), hermite_inner(nb, nb, max_elements)
        ab = _ordered_inner(na, nb, float(aa.sum()), float(bb.sum()), max_elements)
    return ab, aa, bb


def hermite_matrix(
    chains: Sequence[TensorChain], sigma: Tensor | None, device: torch.device | str, max_elements: int = 2**24
) -> tuple[Tensor, Tensor]:
    """Per-output inner products of all pairs `(T, T, d_out)` and of each chain with itself `(T, d_out)`; every
    chain's factors are built once."""
    A = whitener(chains[0].d_in, sigma, device)
    nets = [hermite_net(c, A, device) for c in chains]
    T, C = len(nets), nets[0].d_out
    ab = torch.zeros(T, T, C, dtype=DTYPE, device=device)
    with torch.no_grad():
        diag = torch.stack([hermite_inner(n, n, max_elements) for n in nets])
        keys = [float(v.sum()) for v in diag]
        for i in range(T):
            ab[i, i] = diag[i]
            for j in range(i + 1, T):
                ab[i, j] = ab[j, i] = _ordered_inner(nets[i], nets[j], keys[i], keys[j], max_elements)
    return ab, diag
