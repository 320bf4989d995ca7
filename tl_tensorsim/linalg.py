"""Shared numerics of the core layer: Gram products, cosines from inner products, chunk ranges, orthonormality.

Every analysis imports these from here (never from another analysis). Gram matrices are accumulated in the
requested dtype (float64 by default); the orthonormality check is computed in float64.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor

ORTHONORMAL_ATOL = 1e-5


def chunk_ranges(n: int, step: int) -> Iterator[tuple[int, int]]:
    """`(start, stop)` pairs covering `range(n)` in steps of `step` (at least 1)."""
    step = max(1, int(step))
    for i in range(0, n, step):
        yield i, min(n, i + step)


def cosine_from_parts(
    inner: Float[Tensor, "*shape"],
    norm_sq_a: Float[Tensor, "*shape_a"],
    norm_sq_b: Float[Tensor, "*shape_b"],
    eps: float = 1e-300,
) -> Float[Tensor, "*shape"]:
    """`inner / (sqrt(|a|^2) sqrt(|b|^2))`, broadcasting; 0 where either norm is (numerically) zero, never NaN."""
    na, nb = norm_sq_a.clamp_min(0).sqrt(), norm_sq_b.clamp_min(0).sqrt()
    denom = na * nb
    return torch.where(denom > eps, inner / denom.clamp_min(eps), torch.zeros_like(inner))


def gram(
    x: Float[Tensor, "rows d_x"],
    y: Float[Tensor, "rows d_y"] | None = None,
    *,
    dim: int = 0,
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 8192,
) -> Float[Tensor, "d_x d_y"]:
    """Gram matrix contracting axis `dim` of two 2-D tensors, in `dtype`, converting `chunk_size` slices at a
    time (no full-precision copy of a `[d_vocab, d_model]` matrix). `dim=0`: `x^T y` (embeddings `W_E`);
    `dim=1`: `x y^T` (unembeddings `W_U`). `y=None` means `y = x`."""
    same = y is None or y is x
    y = x if y is None else y
    if x.ndim != 2 or y.ndim != 2 or x.shape[dim] != y.shape[dim]:
        raise ValueError(f"x, y: expected 2-D tensors sharing axis {dim}; got {tuple(x.shape)} and {tuple(y.shape)}")
    if dim == 1:
        x, y = x.T, y.T
    out = torch.zeros(x.shape[1], y.shape[1], dtype=dtype, device=x.device)
    for i0, i1 in chunk_ranges(x.shape[0], chunk_size):
        xc = x[i0:i1].to(dtype)
        yc = xc if same else y[i0:i1].to(device=x.device, dtype=dtype)
        out += xc.T @ yc
    return out


def default_atol(dtype: torch.dtype) -> float:
    """The orthonormality tolerance used for a matrix of `dtype` when `atol` is not given: `max(1e-5, 16 eps)`."""
    return max(ORTHONORMAL_ATOL, 16 * torch.finfo(dtype).eps)


def orthonormality_error(matrix: Float[Tensor, "d k"]) -> float:
    """`max |MᵀM - I|` computed in float64 (0 for a matrix with no columns). Cost `O(d k²)`."""
    k = matrix.shape[-1]
    if not k:
        return 0.0
    with torch.no_grad():
        m64 = matrix.detach().to(torch.float64)
        return float((m64.T @ m64 - torch.eye(k, dtype=torch.float64, device=m64.device)).abs().max())


def is_orthonormal(matrix: Float[Tensor, "d k"], atol: float | None = None) -> bool:
    """Whether the columns of `matrix` are orthonormal to `atol` (default `default_atol(matrix.dtype)`)."""
    tol = default_atol(matrix.dtype) if atol is None else float(atol)
    return orthonormality_error(matrix) <= tol


def check_orthonormal(
    matrix: Float[Tensor, "d k"], atol: float | None = None, argument: str = "basis", symbol: str = "B"
) -> None:
    """Raise a `ValueError` naming `argument` unless `max |BᵀB - I| <= atol` (float64; default `default_atol`);
    `symbol` is the matrix's name in the message."""
    tol = default_atol(matrix.dtype) if atol is None else float(atol)
    err = orthonormality_error(matrix)
    if err > tol:
        raise ValueError(
            f"{argument}: columns are not orthonormal (max |{symbol}ᵀ{symbol} - I| = {err:.3g} > atol={tol:.3g}); "
            f"orthonormalise it first, e.g. torch.linalg.qr({symbol}).Q, or raise atol="
        )


def rows_centred(w: Tensor) -> bool:
    """Every row (last axis) of `w` sums to zero, relative to its largest entry. One pass each for the row means
    and `aminmax` (`w.abs().max()` would write a temporary as large as `w`, e.g. a 150 MB `W_U`)."""
    w = w.float()
    lo, hi = torch.aminmax(w)
    return bool(w.mean(-1).abs().max() <= 1e-6 * torch.maximum(-lo, hi).clamp_min(1e-30))
