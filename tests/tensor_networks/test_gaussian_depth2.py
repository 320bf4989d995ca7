"""The exact two-layer Gaussian metric (`tensor_networks/gaussian.py`): against Gauss-Hermite quadrature and Monte
Carlo, invariant under reparametrisations, equal to the one-layer formula when the second layer is the identity."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tensor_networks import brute_force as bf
from tests.tensor_networks.helpers import (
    change_stream_basis,
    permute_hidden,
    random_net,
    rescale_hidden,
    swap_left_right,
)
from tl_tensorsim.tensor_networks import (
    BilinearLayer,
    HookedTensorNetwork,
    TensorChain,
    chain_from_layers,
    tensor_inner,
    tensor_similarity,
    tensor_similarity_matrix,
)
from tl_tensorsim.tensor_networks.gaussian import hermite_parts

REL = 1e-10
f64 = torch.float64


def _rel(x, y) -> float:
    return abs(float(x) - float(y)) / max(abs(float(x)), abs(float(y)), 1e-300)


def _covariance(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random positive definite Σ `(d, d)` and its Cholesky factor C (`Σ = C Cᵀ`)."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(d, d, generator=g, dtype=f64)
    sigma = Q @ Q.T + 0.2 * torch.eye(d, dtype=f64)
    return sigma, torch.linalg.cholesky(sigma)


def _quadrature(a, b, d_in: int, chol: torch.Tensor | None, output: int | None = None) -> float:
    """`E_{x~N(0,Σ)}[f_a(x)·f_b(x)]` by a Gauss-Hermite rule with 5 points per coordinate (exact for degree 8 per
    coordinate), with `x = C w` for `Σ = C Cᵀ`."""
    sel = slice(None) if output is None else slice(output, output + 1)

    def warp(f):
        return lambda w: f(w if chol is None else w @ chol.T)[:, sel]

    return bf.gaussian_quadrature(warp(a), warp(b), d_in, 8)


CASES = [
    dict(bias=False, residual=False),
    dict(bias=True, residual=False),
    dict(bias=False, residual=True),
    dict(bias=True, residual=True),
    dict(bias=True, residual=False, embed=False, d_model=None, d_hidden=[3, 4], down_proj=False, d_in=3),
]


@pytest.mark.parametrize("with_sigma", [False, True])
@pytest.mark.parametrize("kw", CASES)
def test_matches_gauss_hermite_quadrature(kw, with_sigma):
    a, b = random_net(20, n_layers=2, **kw), random_net(21, n_layers=2, **kw)
    d = a.cfg.d_in
    sigma, chol = _covariance(d, 5) if with_sigma else (None, None)
    inner = tensor_inner(a, b, "gaussian", sigma=sigma)
    assert inner.method == "exact" and inner.stderr is None
    want = {(x, y): _quadrature(x, y, d, chol) for x, y in ((a, b), (a, a), (b, b))}
    assert _rel(inner, want[a, b]) < REL
    cos = tensor_similarity(a, b, "gaussian", sigma=sigma)
    assert cos.method == "exact" and cos.stderr is None and cos.samples is None
    assert _rel(cos, want[a, b] / math.sqrt(want[a, a] * want[b, b])) < REL
    per = tensor_similarity(a, b, "gaussian", sigma=sigma, per_output=True)
    assert per.method == "exact" and per.stderr is None
    for c in range(a.cfg.d_out or 0):
        ab, aa, bb = (_quadrature(x, y, d, chol, c) for x, y in ((a, b), (a, a), (b, b)))
        assert _rel(per.values[c], ab / math.sqrt(aa * bb)) < REL
        assert _rel(tensor_inner(a, b, "gaussian", sigma=sigma, output=c), ab) < REL


@pytest.mark.parametrize("depths", [(1, 2), (0, 2), (2, 1)])
def test_unequal_depths_are_exact(depths):
    """A depth-2 network against a one-layer or a linear one: exact too (the deep parts pair with nothing)."""
    a = random_net(22, n_layers=depths[0], bias=True, residual=True)
    b = random_net(23, n_layers=depths[1], bias=True, residual=True)
    sigma, chol = _covariance(4, 6)
    inner = tensor_inner(a, b, "gaussian", sigma=sigma)
    assert inner.method == "exact" and _rel(inner, _quadrature(a, b, 4, chol)) < REL


def test_chunked_contractions_give_the_same_numbers():
    """`max_elements` smaller than one unit's `d x d` form: every chunk has one unit; the values do not move."""
    a, b = random_net(24, n_layers=2, bias=True, residual=True), random_net(25, n_layers=2, bias=True, residual=True)
    whole = hermite_parts(a.to_chain(), b.to_chain(), None, "cpu")
    chunked = hermite_parts(a.to_chain(), b.to_chain(), None, "cpu", max_elements=3)
    for x, y in zip(whole, chunked):
        assert torch.allclose(x, y, rtol=1e-12, atol=0)


def test_against_monte_carlo_at_larger_widths():
    """d_in 8, width 16, residual and biases: the Monte Carlo estimate lies within 4 of its standard errors."""
    kw = dict(n_layers=2, bias=True, residual=True, d_in=8, d_model=16, d_hidden=16, d_out=3)
    a, b = random_net(26, **kw), random_net(27, **kw)
    exact = tensor_similarity(a, b, "gaussian")
    mc = tensor_similarity(a, b, "gaussian", method="monte_carlo", samples=60_000, seed=0)
    assert mc.method == "monte_carlo" and mc.stderr > 0
    assert abs(float(mc) - float(exact)) < 4 * mc.stderr, (float(mc), float(exact), mc.stderr)
    inner, inner_mc = tensor_inner(a, b, "gaussian"), tensor_inner(a, b, "gaussian", method="monte_carlo",
                                                                    samples=60_000, seed=1)  # fmt: skip
    assert abs(float(inner_mc) - float(inner)) < 4 * inner_mc.stderr, (float(inner_mc), float(inner), inner_mc.stderr)


def _rebuild(net: HookedTensorNetwork, transform) -> HookedTensorNetwork:
    ch = net.to_chain()
    layers = [transform(i, layer) for i, layer in enumerate(ch.layers)]
    return HookedTensorNetwork.from_layers(ch.embed, layers, ch.unembed, residual=net.cfg.residual)


def _same(a, b, b2):
    x = torch.randn(7, a.cfg.d_in, dtype=f64)
    assert torch.allclose(b(x), b2(x), atol=1e-10), "the reparametrisation must preserve the function"
    assert _rel(tensor_similarity(a, b, "gaussian"), tensor_similarity(a, b2, "gaussian")) < REL
    assert abs(float(tensor_similarity(b, b2, "gaussian")) - 1) < REL


@pytest.mark.parametrize("kw", [dict(residual=True, bias=True), dict(residual=False, bias=False)])
def test_invariances(kw):
    """Hidden permutation, per-unit rescaling with sign flips, L<->R swap and a change of stream basis (paper §2.5)."""
    a, b = random_net(28, n_layers=2, **kw), random_net(29, n_layers=2, **kw)
    g = torch.Generator().manual_seed(7)
    _same(a, b, _rebuild(b, lambda i, layer: permute_hidden(layer, torch.randperm(layer.d_hidden, generator=g))))
    signs = torch.tensor([1.0, -1.0, 1.0], dtype=f64)
    scale = lambda: torch.exp(torch.randn(3, generator=g, dtype=f64)) * signs  # noqa: E731
    _same(a, b, _rebuild(b, lambda i, layer: rescale_hidden(layer, scale(), scale().flip(0))))
    _same(a, b, _rebuild(b, lambda i, layer: swap_left_right(layer, torch.tensor([True, False, i == 0]))))
    A = torch.randn(3, 3, generator=g, dtype=f64) + 2 * torch.eye(3, dtype=f64)
    _same(a, b, change_stream_basis(b, A))


def _append_identity(net: HookedTensorNetwork, residual: bool) -> TensorChain:
    """`net` with a second bilinear layer that is the identity map: `x + D(Lx ⊙ Rx)` with D = 0 (residual), or
    `(I x) ⊙ (0 x + 1)` through the biases (no residual)."""
    ch = net.to_chain()
    d, h = ch.layers[0].d_out, 5
    g = torch.Generator().manual_seed(8)
    if residual:
        ident = BilinearLayer(torch.randn(h, d, generator=g, dtype=f64), torch.randn(h, d, generator=g, dtype=f64),
                              torch.zeros(d, h, dtype=f64))  # fmt: skip
    else:
        eye, zero = torch.eye(d, dtype=f64), torch.zeros(d, d, dtype=f64)
        ident = BilinearLayer(eye, zero, eye, b_right=torch.ones(d, dtype=f64))
    return chain_from_layers([ch.layers[0], ident], ch.embed, ch.unembed, residual=[ch.residual[0], residual])


@pytest.mark.parametrize("residual", [True, False])
def test_identity_second_layer_equals_the_one_layer_formula(residual):
    """Depth 2 (Hermite expansion, `gaussian.py`) with an identity second layer = depth 1 (Gram recursion, `inner.py`)."""
    sigma, _ = _covariance(4, 9)
    kw = dict(n_layers=1, bias=True, residual=True)
    a, c = random_net(30, **kw), random_net(31, **kw)
    a2 = _append_identity(a, residual)
    x = torch.randn(9, 4, dtype=f64)
    assert a2.depth == 2 and torch.allclose(a2(x), a(x), atol=1e-12)
    for other in (a, c):
        one, two = tensor_inner(a, other, "gaussian", sigma=sigma), tensor_inner(a2, other, "gaussian", sigma=sigma)
        assert one.method == two.method == "exact" and _rel(one, two) < REL
    assert _rel(tensor_inner(a, a, "gaussian"), tensor_inner(a2, a2, "gaussian")) < REL
    assert abs(float(tensor_similarity(a, a2, "gaussian")) - 1) < REL


def test_same_function_different_factorisation_scores_one():
    """x₁²x₂² through (x₁², x₂²) and through (x₁x₂, x₁x₂): frobenius 0, the exact Gaussian metric 1."""
    e1, e2 = torch.eye(2, dtype=f64)
    first = [BilinearLayer(torch.stack([e1, e2]), torch.stack([e1, e2])), BilinearLayer(e1[None], e2[None])]
    second = [BilinearLayer(torch.stack([e1, e1]), torch.stack([e2, e2])), BilinearLayer(e1[None], e2[None])]
    a, b = (HookedTensorNetwork.from_layers(None, layers, None) for layers in (first, second))
    s = tensor_similarity(a, b, "gaussian")
    assert s.method == "exact" and abs(float(s) - 1) < 1e-12
    assert abs(float(tensor_inner(a, b, "gaussian")) - 9) < 1e-12  # E[x₁⁴ x₂⁴] = 3 · 3


def test_symmetry_matrix_and_dispatch():
    kw = dict(n_layers=2, bias=True, residual=True, d_out=3)
    nets = [random_net(s, **kw) for s in (32, 33, 34)]
    a, b = nets[0], nets[1]
    assert float(tensor_similarity(a, b, "gaussian")) == float(tensor_similarity(b, a, "gaussian"))
    m = tensor_similarity_matrix(nets, "gaussian")
    assert m.method == "exact" and m.stderr is None and torch.equal(m.values, m.values.T)
    for i in range(3):
        for j in range(3):
            assert abs(float(m.values[i, j]) - float(tensor_similarity(nets[i], nets[j], "gaussian"))) < 1e-12
    per = tensor_similarity_matrix(nets, "gaussian", per_output=True)
    assert abs(float(per[2].values[0, 1]) - float(tensor_similarity(a, b, "gaussian", output=2))) < 1e-12
    total = float(tensor_inner(a, b, "gaussian"))
    assert _rel(sum(float(tensor_inner(a, b, "gaussian", output=c)) for c in range(3)), total) < 1e-12
    deep = random_net(35, n_layers=3, residual=True)
    assert tensor_similarity(deep, deep, "gaussian", samples=500).method == "monte_carlo"
    with pytest.raises(ValueError, match="at most one bilinear layer"):
        tensor_similarity(deep, random_net(36, n_layers=3, residual=True), "gaussian", method="exact")


def test_bad_covariance_raises_before_work():
    a, b = random_net(37, n_layers=2), random_net(38, n_layers=2)
    with pytest.raises(ValueError, match="sigma"):
        tensor_similarity(a, b, "gaussian", sigma=torch.eye(3, dtype=f64))
    with pytest.raises(ValueError, match="sigma"):
        tensor_similarity(a, b, "gaussian", sigma=torch.triu(torch.ones(4, 4, dtype=f64)))
    with pytest.raises(ValueError, match="sigma"):
        tensor_similarity(a, b, "gaussian", sigma=-torch.eye(4, dtype=f64))


def test_zero_network_scores_zero_not_nan():
    a = random_net(39, n_layers=2, bias=True, residual=False)
    z = random_net(40, n_layers=2, bias=True, residual=False)
    with torch.no_grad():
        for p in z.parameters():
            p.zero_()
    with pytest.warns(UserWarning, match="zero norm"):
        s = tensor_similarity(a, z, "gaussian")
    assert s.method == "exact" and float(s) == 0.0
