"""The Gini coefficient of per-subspace patching effects (NDM paper, §2.3 of `shared/papers/ndm.md`).

x_s = |Δ_s| / Σ_t |Δ_t|, optionally divided by the subspace's share of the dimensions (d_s / d, "dim") or of the
variance (v_s / Σ_t v_t, "var"); then

    G = Σ_i Σ_j |x_i − x_j| / (2 · S · Σ_i x_i),

with S the number of subspaces. G = 0 when every subspace has the same (normalised) effect, G = (S − 1) / S when
one subspace carries all of it, and G is invariant to a common scaling of the effects. Computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.checks import check_choice

GiniNorm = Literal["dim", "var"]

__all__ = ["GiniNorm", "gini", "gini_inputs"]


def _as_vector(value, argument: str, n: int | None = None) -> np.ndarray:
    """`value` (tensor, array or sequence of numbers) as a finite float64 vector, length `n` when given."""
    if isinstance(value, Tensor):
        arr = value.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{argument}: expected a 1-D sequence of numbers; got {type(value).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{argument}: expected a 1-D vector [n_subspaces]; got shape {list(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{argument}: expected at least one subspace; got an empty vector")
    if n is not None and arr.size != n:
        raise ValueError(f"{argument}: expected {n} values (one per subspace, as in effects); got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{argument}: expected finite values; got {arr.tolist()}")
    return arr


def gini_inputs(
    effects: Float[Tensor, " S"] | Sequence[float],
    sizes: Sequence[int] | Tensor | None = None,
    variances: Float[Tensor, " S"] | Sequence[float] | None = None,
    normalize: GiniNorm | None = None,
) -> np.ndarray:
    """The vector x that `gini` measures: |effects| / Σ|effects|, divided by each subspace's share of the
    dimensions (`normalize="dim"`, needs `sizes`) or of the variance (`"var"`, needs `variances`).

    Shapes: effects, sizes, variances `[S]`; returns a float64 numpy array `[S]` (NaN everywhere when every
    effect is zero). Cost O(S).
    """
    if normalize is not None:
        check_choice(normalize, GiniNorm, "normalize")
    x = np.abs(_as_vector(effects, "effects"))
    n = x.size
    share = None
    if normalize == "dim":
        if sizes is None:
            raise ValueError('sizes: normalize="dim" needs the subspace sizes d_s; got None')
        d = _as_vector(sizes, "sizes", n)
        if np.any(d <= 0) or np.any(d != np.round(d)):
            raise ValueError(f"sizes: expected positive integer dimensions; got {d.tolist()}")
        share = d / d.sum()
    elif normalize == "var":
        if variances is None:
            raise ValueError('variances: normalize="var" needs the per-subspace variances; got None')
        v = _as_vector(variances, "variances", n)
        if np.any(v <= 0):
            raise ValueError(f"variances: expected positive per-subspace variances; got {v.tolist()}")
        share = v / v.sum()
    else:  # validate unused extras too, so that a wrong length never passes silently
        if sizes is not None:
            _as_vector(sizes, "sizes", n)
        if variances is not None:
            _as_vector(variances, "variances", n)
    total = x.sum()
    if total == 0:
        return np.full(n, np.nan)
    x = x / total
    return x / share if share is not None else x


def gini(
    effects: Float[Tensor, " S"] | Sequence[float],
    sizes: Sequence[int] | Tensor | None = None,
    variances: Float[Tensor, " S"] | Sequence[float] | None = None,
    normalize: GiniNorm | None = None,
) -> float:
    """The paper's Gini coefficient of the per-subspace effects (float64).

    x = `gini_inputs(effects, sizes, variances, normalize)`, then G = Σ_i Σ_j |x_i − x_j| / (2 S Σ_i x_i).
    0 for equal x, (S − 1)/S for one non-zero x; NaN when every effect is zero (no effect to distribute).
    Shapes: effects `[S]` (signed; the absolute value is taken), sizes `[S]` (ints), variances `[S]`.
    Cost O(S log S) (sorted form Σ_i (2i − S − 1) x_(i), equal to the double sum).
    """
    x = gini_inputs(effects, sizes, variances, normalize)
    if math.isnan(x[0]):
        return float("nan")
    s = x.size
    xs = np.sort(x)
    ranks = np.arange(1, s + 1, dtype=np.float64)
    pair_sum = 2.0 * float(np.sum((2 * ranks - s - 1) * xs))  # Σ_i Σ_j |x_i - x_j|
    return pair_sum / (2.0 * s * float(xs.sum()))
