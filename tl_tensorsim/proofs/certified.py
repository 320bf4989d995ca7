"""Certified float64 arithmetic: balls (midpoint ± radius) that enclose exact real values, and FLOP counting.

A proof about a model's real-arithmetic function (its float32 weights read exactly) is computed in float64; every
quantity is a `Ball(mid, rad)`, a float64 midpoint tensor and a float64 radius tensor with

    |mid - exact| <= rad        elementwise,

where `exact` is the value the same formula takes in exact real arithmetic. Each operation returns a ball whose
radius adds the propagated radii and a bound on its own rounding error, so that a conclusion drawn from
`upper()` / `lower()` (e.g. "the worst-case logit gap is negative") holds for the exact values: **a class of inputs
is certified only where its worst-case margin exceeds the floating-point error bound of its computation.**

Rounding model (IEEE 754 binary64, round to nearest, unit roundoff u = 2^-53): one operation has relative error at
most u; a sum or dot product of k terms, in any order (blocked BLAS, FMA), has error at most γ_k·Σ|terms| with
γ_k = k·u / (1 - k·u) (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1). `exp` is taken to be
within 4 ulp (torch uses 1-ulp SLEEF / libm / CUDA kernels). Radii are themselves rounded, so every new radius is
scaled up by `1 + (k + 4)·2^-50` (k = terms summed) and increased by `TINY` = 2^-1000, which also absorbs underflow.
`upper()` / `lower()` step one ulp outward (`torch.nextafter`). NaN never certifies anything (comparisons fail).

`count_flops()` counts the arithmetic of a proof check: `value` (the operations on midpoints, what an unchecked
float computation would do; the number reported as a proof's cost) and `bounds` (the extra work on radii).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "EPS",
    "TINY",
    "Ball",
    "FlopCount",
    "add_flops",
    "cat",
    "column_matmul",
    "column_radius",
    "count_flops",
    "gamma",
    "norm_matmul",
    "row_range_bound",
    "spectral_norm_bound",
    "stack",
]

EPS = 2.0**-52  # 2u: the relative error of one rounded float64 operation, with room to spare
TINY = 2.0**-1000  # absolute slack per radius: dominates every underflow error (<= 2^-1075)
EXP_ULPS = 4  # torch.exp in float64 is within this many ulp (1 ulp for SLEEF, glibc, CUDA)


def gamma(k: int) -> float:
    """γ_k = k·u / (1 - k·u), u = 2^-53: the relative error bound of a k-term float64 sum or dot product."""
    ku = k * 2.0**-53
    if ku >= 0.5:
        raise ValueError(f"k: a float64 sum of {k} terms has no useful error bound (k·u >= 1/2)")
    return ku / (1 - ku)


def _up(x: Tensor, k: int = 1) -> Tensor:
    """A radius computed with rounding (up to `k` rounded terms) made safe: scaled up and `TINY` added."""
    return x * (1 + (k + 4) * 2.0**-50) + k * TINY


# ----------------------------------------------------------------------------------------------- FLOP counting
@dataclass(eq=False)  # counters are told apart by identity (two fresh ones compare equal otherwise)
class FlopCount:
    """Floating-point operations executed inside `count_flops()`: `value` on midpoints (the proof's arithmetic:
    additions, multiplications, comparisons, `exp` as one each; a [m, k] @ [k, n] product as 2·m·k·n), `bounds`
    on radii."""

    value: float = 0.0
    bounds: float = 0.0


_COUNTERS: list[FlopCount] = []


@contextmanager
def count_flops() -> Iterator[FlopCount]:
    """`with count_flops() as flops:` counts the `Ball` arithmetic (and `add_flops`) inside the block; nests."""
    counter = FlopCount()
    _COUNTERS.append(counter)
    try:
        yield counter
    finally:
        _COUNTERS.remove(counter)


def add_flops(value: float, bounds: float = 0.0) -> None:
    """Record `value` midpoint and `bounds` radius operations in every active `count_flops()` counter."""
    for counter in _COUNTERS:
        counter.value += float(value)
        counter.bounds += float(bounds)


# ----------------------------------------------------------------------------------------------------- balls
def _f64(x: Tensor | float, like: Tensor | None = None) -> Tensor:
    """`x` as a float64 tensor (exact for float16/bfloat16/float32/float64 inputs and integers below 2^53)."""
    if isinstance(x, Tensor):
        if x.is_complex():
            raise TypeError(f"value: expected a real tensor; got dtype {x.dtype}")
        return x.to(torch.float64)
    return torch.tensor(float(x), dtype=torch.float64, device=None if like is None else like.device)


class Ball:
    """A float64 tensor of midpoints `mid` and radii `rad` (same shape) enclosing exact real values:
    `|mid - exact| <= rad` elementwise (module docstring: rounding model).

    Arithmetic with another `Ball`, or with a plain tensor / float (taken as an exact value), returns a `Ball`:
    `+ - * /` (broadcasting), `@` (matrix product), `exp`, `sum`, `amax`, `amin`, `maximum`, `minimum`, `relu`,
    `abs`, `cummax`, `cummin`. Shape-only operations (indexing, `gather`, `rearrange`) go through `map`, which
    applies them to `mid` and `rad` alike. `Ball.exact(t)` wraps values that are exact in float64 (radius 0).
    """

    __slots__ = ("mid", "rad")

    def __init__(self, mid: Float[Tensor, "*shape"], rad: Float[Tensor, "*shape"] | None = None):
        mid = _f64(mid)
        rad = torch.zeros_like(mid) if rad is None else _f64(rad).expand_as(mid)
        self.mid, self.rad = mid, rad

    @classmethod
    def exact(cls, value: Tensor | float) -> Ball:
        """A ball of radius 0 around `value` (float16/32/64 values and integers below 2^53 convert exactly)."""
        return cls(_f64(value))

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> torch.Size:
        return self.mid.shape

    def map(self, fn: Callable[[Tensor], Tensor]) -> Ball:
        """`fn` (indexing, gather, rearrange, expand, ...: anything that only moves entries) on `mid` and `rad`."""
        return Ball(fn(self.mid), fn(self.rad))

    def __getitem__(self, index) -> Ball:
        return Ball(self.mid[index], self.rad[index])

    @property
    def T(self) -> Ball:
        return Ball(self.mid.transpose(-1, -2), self.rad.transpose(-1, -2))

    def upper(self) -> Float[Tensor, "*shape"]:
        """Upper bounds of the exact values (`mid + rad`, rounded up)."""
        return torch.nextafter(self.mid + self.rad, torch.tensor(math.inf, dtype=torch.float64, device=self.mid.device))

    def lower(self) -> Float[Tensor, "*shape"]:
        """Lower bounds of the exact values (`mid - rad`, rounded down)."""
        return torch.nextafter(
            self.mid - self.rad, torch.tensor(-math.inf, dtype=torch.float64, device=self.mid.device)
        )

    def max_rad(self) -> float:
        """The largest radius (inf where a NaN or inf appears)."""
        if self.rad.numel() == 0:
            return 0.0
        r = float(self.rad.max())
        return r if math.isfinite(r) and not torch.isnan(self.mid).any() else math.inf

    def __repr__(self) -> str:
        return (
            f"Ball(shape={list(self.shape)}, max |mid| {float(self.mid.abs().max()):.4g}, max rad {self.max_rad():.3g})"
        )

    # ------------------------------------------------------------- arithmetic
    def _other(self, other: Ball | Tensor | float) -> Ball:
        return other if isinstance(other, Ball) else Ball(_f64(other, self.mid))

    def __neg__(self) -> Ball:
        return Ball(-self.mid, self.rad)

    def __add__(self, other: Ball | Tensor | float) -> Ball:
        o = self._other(other)
        mid = self.mid + o.mid
        add_flops(mid.numel(), 4 * mid.numel())
        return Ball(mid, _up(self.rad + o.rad + EPS * mid.abs(), 3))

    __radd__ = __add__

    def __sub__(self, other: Ball | Tensor | float) -> Ball:
        return self + (-self._other(other))

    def __rsub__(self, other: Ball | Tensor | float) -> Ball:
        return (-self) + other

    def __mul__(self, other: Ball | Tensor | float) -> Ball:
        o = self._other(other)
        mid = self.mid * o.mid
        rad = self.mid.abs() * o.rad + self.rad * o.mid.abs() + self.rad * o.rad + EPS * mid.abs()
        add_flops(mid.numel(), 10 * mid.numel())
        return Ball(mid, _up(rad, 5))

    __rmul__ = __mul__

    def __truediv__(self, other: Ball | Tensor | float) -> Ball:
        """Division; the radius is inf where the divisor's ball contains 0 or comes within `TINY` of it (there the
        roundings of subnormal numbers are no longer covered)."""
        o = self._other(other)
        mid = self.mid / o.mid
        den = (o.mid.abs() - o.rad) * (1 - 2.0**-50)  # a lower bound of |divisor|
        safe = den >= TINY
        rad = torch.where(safe, (self.rad + mid.abs() * o.rad) / torch.where(safe, den, 1.0), math.inf)
        add_flops(mid.numel(), 8 * mid.numel())
        return Ball(mid, _up(rad + EPS * mid.abs(), 4))

    def __rtruediv__(self, other: Ball | Tensor | float) -> Ball:
        return self._other(other) / self

    def __matmul__(self, other: Ball | Tensor) -> Ball:
        """Matrix product (batched like `torch.matmul`): error γ_k·(|A|@|B|) plus the propagated radii."""
        o = self._other(other)
        k = self.mid.shape[-1]
        mid = self.mid @ o.mid
        a_abs, b_abs = self.mid.abs(), o.mid.abs()
        rad = (k * EPS) * (a_abs @ b_abs)
        products = 1
        if bool(o.rad.any()):
            rad = rad + a_abs @ o.rad
            products += 1
        if bool(self.rad.any()):
            rad = rad + self.rad @ (b_abs + o.rad)
            products += 1
        add_flops(2 * mid.numel() * k, 2 * mid.numel() * k * products)
        return Ball(mid, _up(rad, k + 3))

    def __rmatmul__(self, other: Tensor) -> Ball:
        return Ball(_f64(other)) @ self

    def abs(self) -> Ball:
        """|x|: 1-Lipschitz, so the radius carries over (exact)."""
        add_flops(self.mid.numel())
        return Ball(self.mid.abs(), self.rad)

    def exp(self) -> Ball:
        """exp(x) ∈ exp(mid)·[e^-rad, e^rad], plus `EXP_ULPS` ulp for the computed exp (inf where it overflows)."""
        mid = torch.exp(self.mid)
        rel = torch.expm1(self.rad) * (1 + 4 * EPS) + EXP_ULPS * EPS
        add_flops(mid.numel(), 4 * mid.numel())
        return Ball(mid, _up(mid * rel, 3))

    def sum(self, dim: int, keepdim: bool = False) -> Ball:
        """Sum over `dim` (k terms): error γ_k·Σ|terms| plus the summed radii."""
        k = self.mid.shape[dim]
        mid = self.mid.sum(dim, keepdim=keepdim)
        rad = self.rad.sum(dim, keepdim=keepdim) + (k * EPS) * self.mid.abs().sum(dim, keepdim=keepdim)
        add_flops(self.mid.numel(), 3 * self.mid.numel())
        return Ball(mid, _up(rad, k + 2))

    # --------------------------------------------------------- order statistics (exact in floating point)
    def amax(self, dim: int, keepdim: bool = False) -> Ball:
        """Maximum over `dim`: |max mid - max exact| <= max rad, so the radius is the largest radius."""
        add_flops(self.mid.numel(), self.mid.numel())
        return Ball(self.mid.amax(dim, keepdim=keepdim), self.rad.amax(dim, keepdim=keepdim))

    def amin(self, dim: int, keepdim: bool = False) -> Ball:
        """Minimum over `dim` (radius: the largest radius)."""
        add_flops(self.mid.numel(), self.mid.numel())
        return Ball(self.mid.amin(dim, keepdim=keepdim), self.rad.amax(dim, keepdim=keepdim))

    def maximum(self, other: Ball | Tensor | float) -> Ball:
        o = self._other(other)
        add_flops(torch.broadcast_shapes(self.shape, o.shape).numel(), self.mid.numel())
        return Ball(torch.maximum(self.mid, o.mid), torch.maximum(self.rad, o.rad))

    def minimum(self, other: Ball | Tensor | float) -> Ball:
        o = self._other(other)
        add_flops(torch.broadcast_shapes(self.shape, o.shape).numel(), self.mid.numel())
        return Ball(torch.minimum(self.mid, o.mid), torch.maximum(self.rad, o.rad))

    def relu(self) -> Ball:
        return self.maximum(0.0)

    def cummax(self, dim: int) -> Ball:
        """Running maximum along `dim` (radius: the running maximum of the radii)."""
        add_flops(self.mid.numel(), self.mid.numel())
        return Ball(self.mid.cummax(dim).values, self.rad.cummax(dim).values)

    def cummin(self, dim: int) -> Ball:
        add_flops(self.mid.numel(), self.mid.numel())
        return Ball(self.mid.cummin(dim).values, self.rad.cummax(dim).values)


def column_matmul(mid: Tensor, colrad: Tensor, colabs: Tensor, other: Ball | Tensor) -> Ball:
    """`v @ other` for an exact v `[rows, k]` known only through `mid` with |v - mid| <= colrad and |mid| <= colabs
    per column (`[k]`), and `other` `[k, r]` (a ball or exact): midpoint fl(mid @ other.mid), radius per output
    column colrad·(|other.mid| + other.rad) + colabs·other.rad + γ_k·colabs·|other.mid| (Higham's dot-product
    bound), rounded up. One big product instead of `Ball.__matmul__`'s two or three, at the price of radii that
    hold per column rather than per entry (use it where v's rows are many and its errors uniform)."""
    o = other if isinstance(other, Ball) else Ball(_f64(other))
    out = (o.mid.T @ mid.T).T  # the same product; BLAS runs this orientation ~1.2-1.3x faster for tall `mid`
    add_flops(2 * out.numel() * mid.shape[-1])
    return Ball(out, column_radius(colrad, colabs, o).expand_as(out))


def norm_matmul(a: Tensor, b: Ball) -> Ball:
    """`a @ b` for an exact a `[r, k]` and a ball b `[k, c]`: midpoint fl(a @ b.mid), radius per entry by
    Cauchy–Schwarz on Higham's dot-product bound, ‖a_row‖₂·(‖b.rad_col‖₂ + γ_k·‖b.mid_col‖₂), an outer product of
    norms (each norm's rounding covered by the factor 1 + γ_{k+2}). One big product instead of `Ball.__matmul__`'s
    two or three; radii up to √k looser, so use it where they are far below what is certified."""
    a = _f64(a)
    k = a.shape[-1]
    mid = a @ b.mid
    up = 1 + gamma(k + 2)
    left = a.norm(dim=-1) * up
    right = (b.rad.norm(dim=0) * up + b.mid.norm(dim=0) * up * gamma(k)) * (1 + EPS)
    add_flops(2 * mid.numel() * k, 2 * (a.numel() + 2 * b.mid.numel()) + mid.numel())
    return Ball(mid, _up(left[:, None] * right[None], 2))


def column_radius(colrad: Tensor, colabs: Tensor, other: Ball) -> Tensor:
    """`column_matmul`'s radius `[1, r]` for any rows v (|v - mid| <= colrad, |mid| <= colabs per column `[k]`):
    colrad·(|other.mid| + other.rad) + colabs·other.rad + γ_k·colabs·|other.mid|, rounded up (for products taken
    block by block). Every term is nonnegative, so the float result is within k + 3 roundings of the exact one,
    which `_up` covers."""
    k = colrad.shape[-1]
    absolute = other.mid.abs()
    out = colrad[None] @ (absolute + other.rad) + colabs[None] @ (other.rad + absolute * gamma(k))
    add_flops(0, 4 * out.numel() * k + 3 * absolute.numel())
    return _up(out, k + 4)


def cat(balls: list[Ball], dim: int) -> Ball:
    """Concatenate balls along `dim`."""
    return Ball(torch.cat([b.mid for b in balls], dim), torch.cat([b.rad for b in balls], dim))


def stack(balls: list[Ball], dim: int) -> Ball:
    """Stack balls along a new axis `dim`."""
    return Ball(torch.stack([b.mid for b in balls], dim), torch.stack([b.rad for b in balls], dim))


# ------------------------------------------------------------------------------- bounds on factored matrices
def row_range_bound(left: Ball, right: Ball, center: bool = False) -> Ball:
    """Upper bounds on the range of each row of `left @ right.T`, `max_t R[q, t] - min_t R[q, t]`, in O(V·r).

    `left` `[V, r]`, `right` `[W, r]`; returns `[V]`. The "max_diff" trick of arXiv 2406.11779 (its bounds on the
    attention error terms): `R[q, t] = Σ_j left[q, j]·right[t, j]`, so its range over t is at most
    `Σ_j |left[q, j]|·(max_t right[t, j] - min_t right[t, j])`. `center=True` is "mean+max_diff": the mean row
    `l̄` of `left` is split off and its row `l̄ @ right.T` taken exactly, `range(l̄ R) + Σ_j |left[q, j] - l̄_j|·
    range_j`, which is tighter when the rows of `left` share a common part.
    """
    spread = right.amax(0) - right.amin(0)  # [r]
    if not center:
        return left.abs() @ spread
    mean = left.sum(0) / left.shape[0]  # [r]
    common = right @ mean  # [W]: the exact row of the mean
    return (common.amax(0) - common.amin(0)) + (left - mean).abs() @ spread


def spectral_norm_bound(left: Ball, right: Ball, squarings: int = 12) -> float:
    """A certified upper bound on the spectral norm `σ₁(left @ right.T)`, in O(V·r² + r³·squarings).

    `left` `[V, r]`, `right` `[W, r]`. With N = leftᵀ·left and M = rightᵀ·right, σ₁² is the spectral radius ρ of
    the r x r matrix X = N·M (the nonzero eigenvalues of (L Rᵀ)ᵀ(L Rᵀ) = R N Rᵀ are those of N M), and
    ρ(X)^p <= ‖X^p‖_F for every p. `squarings` = J squarings give p = 2^J; X is similar to a PSD matrix, so the
    bound exceeds σ₁ by a factor that tends to 1 as J grows (at most (κ·r)^(2^-(J+1)), κ the condition number of
    X's eigenvectors). Powers of two rescale exactly between squarings, so nothing overflows.
    """
    x = (left.T @ left) @ (right.T @ right)
    exponent = 0  # the exact X^(2^j) is 2^exponent times the matrix enclosed by x
    for _ in range(squarings):
        biggest = float((x.mid.abs() + x.rad).max())
        if not math.isfinite(biggest):
            return math.inf
        shift = math.frexp(biggest)[1] if biggest > 0 else 0
        x = x * 2.0**-shift
        exponent = 2 * (exponent + shift)
        x = x @ x
    r = x.shape[-1]
    frob = float(_up(((x.mid.abs() + x.rad) ** 2).sum(), r * r + 2).sqrt())
    if frob == 0:
        return 0.0
    if not math.isfinite(frob):
        return math.inf
    log2_sigma = (math.log2(frob) + exponent) / 2 ** (squarings + 1)
    return 2.0**log2_sigma * (1 + 1e-12)
