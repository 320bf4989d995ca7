"""Certified float64 arithmetic: every ball encloses the exact value (checked against 60-digit mpmath), the
factored-matrix bounds dominate what they bound, and FLOPs are counted."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_tensorsim.proofs.certified import (
    Ball,
    column_matmul,
    count_flops,
    gamma,
    norm_matmul,
    row_range_bound,
    spectral_norm_bound,
)

mp = pytest.importorskip("mpmath")
mp.mp.dps = 60

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False)
positive = st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False)


def encloses(ball: Ball, exact: list) -> bool:
    lo, hi = ball.lower().flatten().tolist(), ball.upper().flatten().tolist()
    return all(mp.mpf(a) <= e <= mp.mpf(b) for a, e, b in zip(lo, exact, hi))


def mpf(t: torch.Tensor) -> list:
    return [mp.mpf(x) for x in t.flatten().tolist()]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(finite, min_size=3, max_size=3),
    st.lists(finite, min_size=3, max_size=3),
    st.lists(positive, min_size=3, max_size=3),
)
def test_elementary_operations_enclose_exact_results(xs, ys, zs):
    x, y, z = (torch.tensor(v, dtype=torch.float64) for v in (xs, ys, zs))
    bx, by, bz = Ball.exact(x), Ball.exact(y), Ball.exact(z)
    X, Y, Z = mpf(x), mpf(y), mpf(z)
    assert encloses(bx + by, [a + b for a, b in zip(X, Y)])
    assert encloses(bx - by, [a - b for a, b in zip(X, Y)])
    assert encloses(bx * by, [a * b for a, b in zip(X, Y)])
    assert encloses(bx / bz, [a / c for a, c in zip(X, Z)])
    # chained: errors propagate through radii
    chained = ((bx * by + bz) / (bz + 1.0) - bx) * 3.0
    assert encloses(chained, [((a * b + c) / (c + 1) - a) * 3 for a, b, c in zip(X, Y, Z)])
    shifted = Ball.exact(x / 1e4) - Ball.exact(y / 1e5)  # exp of values up to ~100 in size
    assert encloses(shifted.exp(), [mp.exp(a - b) for a, b in zip(mpf(x / 1e4), mpf(y / 1e5))])


def test_matmul_sum_and_order_statistics_enclose_exact_results():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 33, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, 33, dtype=torch.float64)
    b = torch.randn(33, 5, generator=g, dtype=torch.float64)
    A, B = Ball.exact(a), Ball.exact(b) * 1.1  # B carries rounding radii, so both error terms are exercised
    prod = A @ B
    Bm = [[mp.mpf(x) * mp.mpf(1.1) for x in row] for row in b.tolist()]
    exact = [sum(mp.mpf(a[i, k].item()) * Bm[k][j] for k in range(33)) for i in range(7) for j in range(5)]
    assert encloses(prod, exact)
    assert encloses(A.sum(1), [sum(mp.mpf(x) for x in row) for row in a.tolist()])
    assert encloses(prod.amax(1), [max(exact[i * 5 : i * 5 + 5]) for i in range(7)])
    assert encloses(prod.cummin(1)[:, -1], [min(exact[i * 5 : i * 5 + 5]) for i in range(7)])


@pytest.mark.parametrize("radius", [1e-9, 0.0])
def test_column_and_norm_products_enclose_every_product_within_their_inputs(radius):
    """`column_matmul` (per-column radii of v, as the group proofs' hidden layer) and `norm_matmul` (an exact left
    factor): the exact product of any inputs within the stated radii (random corners, and the one with every |v| at
    its largest) lies in the ball. Magnitudes over six decades with random signs make the rounding term matter; with
    radius 0 it is the only term."""
    g = torch.Generator().manual_seed(3)
    rows, k, r = 6, 40, 5
    scale = torch.logspace(-3, 3, k, dtype=torch.float64)
    mid = torch.randn(rows, k, generator=g, dtype=torch.float64) * scale
    colrad = torch.rand(k, generator=g, dtype=torch.float64) * radius * scale
    colabs = mid.abs().amax(0)
    other = Ball(
        torch.randn(k, r, generator=g, dtype=torch.float64), torch.rand(k, r, generator=g, dtype=torch.float64)
    )
    other = Ball(other.mid, other.rad * radius / 10)
    col = column_matmul(mid, colrad, colabs, other)
    exact_left = torch.randn(rows, k, generator=g, dtype=torch.float64) * scale
    norm = norm_matmul(exact_left, other)
    L = [[mp.mpf(x) for x in row] for row in exact_left.tolist()]
    for trial in range(4 if radius else 1):
        s1 = torch.sign(mid) if trial == 0 else torch.randint(0, 2, (rows, k), generator=g).double() * 2 - 1
        s2 = torch.randint(0, 2, (k, r), generator=g).double() * 2 - 1
        V = [
            [mp.mpf(a) + mp.mpf(b) * mp.mpf(c) for a, b, c in zip(*t, colrad.tolist())]
            for t in zip(mid.tolist(), s1.tolist())
        ]
        O = [
            [mp.mpf(a) + mp.mpf(b) * mp.mpf(c) for a, b, c in zip(*t)]
            for t in zip(other.mid.tolist(), s2.tolist(), other.rad.tolist())
        ]
        exact = [[sum(row[j] * O[j][c] for j in range(k)) for c in range(r)] for row in V]
        assert encloses(col, [x for row in exact for x in row])
        assert encloses(norm, [sum(row[j] * O[j][c] for j in range(k)) for row in L for c in range(r)])
    if not radius:  # the enclosure is not vacuous: the radii are a few roundings of the sums' sizes
        assert (col.rad <= 1e-10 * (mid.abs() @ other.mid.abs())).all()


def test_division_by_a_ball_containing_zero_certifies_nothing():
    q = Ball.exact(torch.ones(2)) / Ball(torch.tensor([1e-3, 1.0]), torch.tensor([2e-3, 0.0]))
    assert math.isinf(q.rad[0]) and not (q.upper()[0] < math.inf)
    assert q.upper()[1] >= 1.0 >= q.lower()[1]


def test_division_by_a_subnormal_divisor_stays_an_enclosure():
    """A divisor below TINY = 2^-1000: the radius was computed against TINY instead of the divisor, so the ball
    [1024 ± 1e-13] missed the exact range [512, 1536]; it is now infinite there (and exact where it is safe)."""
    a = Ball(torch.tensor([2.0**-1040], dtype=torch.float64), torch.tensor([2.0**-1041], dtype=torch.float64))
    q = a / Ball.exact(torch.tensor([2.0**-1050], dtype=torch.float64))
    assert q.lower() <= 512 and q.upper() >= 1536
    f64 = dict(dtype=torch.float64)
    ok = Ball(torch.tensor([2.0**-900], **f64), torch.tensor([2.0**-902], **f64)) / Ball.exact(
        torch.tensor([2.0**-990], **f64)
    )
    assert ok.lower() <= 0.75 * 2.0**90 and ok.upper() >= 1.25 * 2.0**90 and math.isfinite(ok.rad)


def test_overflow_and_nan_never_certify():
    big = Ball.exact(torch.tensor([800.0, -800.0])).exp()
    assert big.upper()[0] == math.inf and big.lower()[1] <= 0 <= big.upper()[1]
    nan = Ball.exact(torch.tensor([math.inf])) - Ball.exact(torch.tensor([math.inf]))
    assert not bool(nan.upper() < 0) and not bool(nan.lower() > 0)


def test_spectral_norm_bound_is_sound_and_tight():
    g = torch.Generator().manual_seed(1)
    for rank, scale in ((5, 1.0), (17, 1e3), (33, 1e-4)):
        left = torch.randn(64, rank, generator=g, dtype=torch.float64) * scale
        right = torch.randn(48, rank, generator=g, dtype=torch.float64)
        sigma = float(torch.linalg.matrix_norm(left @ right.T, ord=2))
        bound = spectral_norm_bound(Ball.exact(left), Ball.exact(right))
        assert sigma * (1 - 1e-9) <= bound <= sigma * 1.02, (rank, sigma, bound)
    assert 0 <= spectral_norm_bound(Ball.exact(torch.zeros(4, 2)), Ball.exact(torch.ones(3, 2))) < 1e-100


def test_row_range_bounds_dominate_the_true_ranges():
    g = torch.Generator().manual_seed(2)
    left = torch.randn(40, 9, generator=g, dtype=torch.float64) + 3  # rows share a large common part
    right = torch.randn(30, 9, generator=g, dtype=torch.float64)
    full = left @ right.T
    true = full.amax(1) - full.amin(1)
    plain = row_range_bound(Ball.exact(left), Ball.exact(right)).upper()
    centred = row_range_bound(Ball.exact(left), Ball.exact(right), center=True).upper()
    assert (true <= plain).all() and (true <= centred).all()
    assert centred.mean() < plain.mean()  # the mean row helps when rows share a common part


def test_flops_are_counted_and_nested():
    a, b = Ball.exact(torch.ones(4, 3)), Ball.exact(torch.ones(3, 5))
    with count_flops() as outer:
        with count_flops() as inner:
            a @ b
        a + a
    assert inner.value == 2 * 4 * 3 * 5 and outer.value == inner.value + 12
    assert outer.bounds > 0


def test_gamma():
    assert gamma(1) == pytest.approx(2.0**-53)
    with pytest.raises(ValueError, match="k: a float64 sum of"):
        gamma(2**52)
