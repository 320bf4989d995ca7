"""Brute-force materialisation of a tensor network's coefficient tensor, independent of `inner.py`.

Each layer's padded, symmetric quadratic forms are read off the layer's *forward function* by evaluating it at
0, ±e_i and ±(e_i + e_j) (polarisation), not from its weights; the embed/unembed likewise. The order-(2^N + 1)
tensor is then composed explicitly (every input leg of layer k replaced by a full copy of the network below),
which is the definition `inner.py` documents: local per-layer symmetrisation in the padded input [1; x].
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor


def padded_quadratic_forms(f: Callable[[Tensor], Tensor], d_in: int) -> Tensor:
    """`S` of shape (1 + d_out, 1 + d_in, 1 + d_in), symmetric in the last two axes, with
    `[1; f(x)] = [u^T S_o u]_o` for `u = [1; x]`, for any f of degree <= 2 (float64)."""
    eye = torch.eye(d_in, dtype=torch.float64)
    f0 = f(torch.zeros(d_in, dtype=torch.float64))
    d_out = f0.shape[0]
    fp = torch.stack([f(eye[i]) for i in range(d_in)])  # (d_in, d_out)
    fm = torch.stack([f(-eye[i]) for i in range(d_in)])
    lin = (fp - fm) / 2
    diag = (fp + fm) / 2 - f0
    S = torch.zeros(d_out + 1, d_in + 1, d_in + 1, dtype=torch.float64)
    S[0, 0, 0] = 1
    S[1:, 0, 0] = f0
    S[1:, 0, 1:] = lin.T / 2
    S[1:, 1:, 0] = lin.T / 2
    for i in range(d_in):
        S[1:, 1 + i, 1 + i] = diag[i]
        for j in range(i + 1, d_in):
            quad = (f(eye[i] + eye[j]) + f(-eye[i] - eye[j])) / 2 - f0
            S[1:, 1 + i, 1 + j] = S[1:, 1 + j, 1 + i] = (quad - diag[i] - diag[j]) / 2
    return S


def padded_affine(f: Callable[[Tensor], Tensor], d_in: int) -> Tensor:
    """`M` (1 + d_out, 1 + d_in) with `[1; f(x)] = M [1; x]` for affine f."""
    eye = torch.eye(d_in, dtype=torch.float64)
    f0 = f(torch.zeros(d_in, dtype=torch.float64))
    M = torch.zeros(f0.shape[0] + 1, d_in + 1, dtype=torch.float64)
    M[0, 0] = 1
    M[1:, 0] = f0
    for i in range(d_in):
        M[1:, 1 + i] = f(eye[i]) - f0
    return M


def compose(M: Tensor | None, forms: list[Tensor], U: Tensor) -> Tensor:
    """The coefficient tensor `(C, n, n, ..., n)` with 2^N legs of size n = 1 + d_in (constant output dropped)."""
    A = M if M is not None else torch.eye(forms[0].shape[1] if forms else U.shape[1], dtype=torch.float64)
    for S in forms:  # A: (p, legs...) -> (o, legs..., legs...)
        k = A.dim() - 1
        flat = A.reshape(A.shape[0], -1)
        B = torch.einsum("opq,pI,qJ->oIJ", S, flat, flat)
        A = B.reshape(S.shape[0], *A.shape[1:], *A.shape[1:])
        assert A.dim() == 2 * k + 1
    return torch.einsum("cp,p...->c...", U[1:], A)


def network_tensor(net) -> Tensor:
    """Materialise a float64 `HookedTensorNetwork`'s coefficient tensor from its forward functions."""
    cfg = net.cfg
    with torch.no_grad():
        if net.embed is None:
            M = None
        elif cfg.d_vocab is not None:
            M = padded_affine(lambda x: x @ net.embed.W_E, cfg.d_vocab)  # one-hot input space
        else:
            M = padded_affine(net.embed, cfg.d_in)
        widths = cfg.stream_widths()
        forms = [padded_quadratic_forms(block, widths[i]) for i, block in enumerate(net.blocks)]
        U = (
            padded_affine(net.unembed, widths[-1])
            if net.unembed is not None
            else torch.eye(widths[-1] + 1, dtype=torch.float64)
        )
    return compose(M, forms, U)


def frobenius(Ta: Tensor, Tb: Tensor, G0: Tensor | None = None) -> float:
    """`Σ T_a[c, i..] T_b[c, j..] Π G0[i_k, j_k]` (G0 = I when None)."""
    if G0 is not None:
        for leg in range(1, Tb.dim()):
            Tb = torch.movedim(torch.tensordot(Tb, G0, dims=([leg], [1])), -1, leg)
    return float((Ta * Tb).sum())


def fully_symmetrised(T: Tensor) -> Tensor:
    """Average over all permutations of the input legs (NOT what the metric uses; for the negative test)."""
    legs = list(range(1, T.dim()))
    perms = list(itertools.permutations(legs))
    return sum(T.permute(0, *p) for p in perms) / len(perms)


def gaussian_one_layer(Ta: Tensor, Tb: Tensor, sigma: Tensor | None = None) -> float:
    """`E[Σ_c (u^T A_c u)(u^T B_c u)]` for `u = [1; x]`, `x ~ N(0, Σ)`, from quadratic-form moments:
    `(tr(AK) + m^T A m)(tr(BK) + m^T B m) + 2 tr(A K B K) + 4 m^T A K B m`, `m = e_0`, `K = blockdiag(0, Σ)`."""
    n = Ta.shape[1]
    K = torch.zeros(n, n, dtype=torch.float64)
    K[1:, 1:] = torch.eye(n - 1, dtype=torch.float64) if sigma is None else sigma.double()
    total = 0.0
    for A, B in zip(Ta, Tb):
        A, B = (A + A.T) / 2, (B + B.T) / 2
        ea = torch.trace(A @ K) + A[0, 0]
        eb = torch.trace(B @ K) + B[0, 0]
        total += float(ea * eb + 2 * torch.trace(A @ K @ B @ K) + 4 * (A @ K @ B)[0, 0])
    return total


def gaussian_quadrature(f: Callable[[Tensor], Tensor], g: Callable[[Tensor], Tensor], d_in: int, degree: int) -> float:
    """`E_{x~N(0, I)}[f(x)ᵀ g(x)]` exactly for polynomial networks, by a tensor-product Gauss-Hermite rule with
    `degree // 2 + 1` points per coordinate (exact when `fᵀg` has degree <= `degree` in each coordinate)."""
    import numpy as np

    nodes, weights = np.polynomial.hermite_e.hermegauss(degree // 2 + 1)
    weights = weights / weights.sum()
    X = torch.tensor(list(itertools.product(nodes, repeat=d_in)), dtype=torch.float64)
    W = torch.tensor([float(np.prod(w)) for w in itertools.product(weights, repeat=d_in)], dtype=torch.float64)
    with torch.no_grad():
        return float((W * (f(X) * g(X)).sum(-1)).sum())
