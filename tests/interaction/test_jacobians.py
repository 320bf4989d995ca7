"""The vectorised Jacobian sums against the one-VJP-per-direction loop and dense `jacrev` (float64)."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.interaction import jacobians

F64 = torch.float64


def section(W, V):
    """A nonlinear position-mixing map `[b, s, d] -> [b, t, m]`: `tanh(x W)` mixed over positions by `V [t, s]`."""
    return lambda x: torch.einsum("ts,bsm->btm", V, torch.tanh(x @ W))


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 7, generator=g, dtype=F64)
    V = torch.randn(3, 4, generator=g, dtype=F64)
    x = torch.randn(6, 4, 5, generator=g, dtype=F64)
    return section(W, V), x


def dense(h, x):
    J = torch.func.jacrev(h)(x)  # [b, t, m, b', s, d]
    return torch.einsum("btmbsd->btmsd", J)


def test_jacobian_gram_matches_dense_and_loop(case):
    h, x = case
    J = dense(h, x)
    expected = torch.einsum("btmsj,btmsk->jk", J, J)
    src, w = jacobians.position_sources(3, dtype=F64)
    for chunk in (5, 64):
        assert torch.allclose(jacobians.jacobian_gram(h, x, src, w, chunk), expected, rtol=1e-12)
    assert torch.allclose(jacobians.loop_jacobian_gram(h, x, src, w), expected, rtol=1e-12)


def test_squared_edges_match_dense(case):
    h, x = case
    J = dense(h, x)
    A = torch.einsum("btmsj,bsj->btmj", J, x)
    expected = (A * A).sum((0, 1))
    src, w = jacobians.position_sources(3, dtype=F64)
    got = jacobians.squared_edges(h, x, src, w, chunk_size=4)
    assert got.shape == (7, 5) and torch.allclose(got, expected, rtol=1e-12)


def test_stochastic_sources_exact_for_one_position_and_converge(case):
    h, x = case
    one = lambda z: h(z)[:, :1]  # noqa: E731
    exact = jacobians.jacobian_gram(one, x, *jacobians.position_sources(1, dtype=F64))
    g = torch.Generator().manual_seed(1)
    est = jacobians.jacobian_gram(one, x, *jacobians.position_sources(1, 3, generator=g, dtype=F64))
    assert torch.allclose(est, exact, rtol=1e-12)
    exact3 = jacobians.jacobian_gram(h, x, *jacobians.position_sources(3, dtype=F64))
    few = jacobians.jacobian_gram(h, x, *jacobians.position_sources(3, 2, generator=g, dtype=F64))
    many = jacobians.jacobian_gram(h, x, *jacobians.position_sources(3, 800, generator=g, dtype=F64), chunk_size=4096)
    err = lambda m: float((m - exact3).norm() / exact3.norm())  # noqa: E731
    assert err(many) < 0.1 and err(many) < err(few)


def test_bad_section_output(case):
    _, x = case
    src, w = jacobians.position_sources(3, dtype=F64)
    with pytest.raises(ValueError, match="section"):
        jacobians.jacobian_gram(lambda z: z.sum(-1), x, src, w)
