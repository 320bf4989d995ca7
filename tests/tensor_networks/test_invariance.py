"""Function-preserving reparametrisations leave both metrics unchanged (paper §2.5); basis changes of the input
or output of one model alone do not."""

from __future__ import annotations

import pytest
import torch

from tests.tensor_networks.helpers import (
    change_stream_basis,
    permute_hidden,
    random_net,
    rescale_hidden,
    swap_left_right,
)
from tl_tensorsim.tensor_networks import BilinearLayer, HookedTensorNetwork, LinearLayer, tensor_similarity

TOL = 1e-10
CASES = [
    ("frobenius", dict(n_layers=2, residual=True, bias=True)),
    ("frobenius", dict(n_layers=2, residual=False, bias=False)),
    ("gaussian", dict(n_layers=1, residual=True, bias=True)),
    ("gaussian", dict(n_layers=1, residual=False, bias=False)),
]


def _rebuild(net: HookedTensorNetwork, transform) -> HookedTensorNetwork:
    ch = net.to_chain()
    layers = [transform(i, layer) for i, layer in enumerate(ch.layers)]
    return HookedTensorNetwork.from_layers(ch.embed, layers, ch.unembed, residual=net.cfg.residual)


def _check(metric, a, b, b2):
    x = torch.randn(11, a.cfg.d_in, dtype=torch.float64)
    assert torch.allclose(b(x), b2(x), atol=1e-10), "the reparametrisation must preserve the function"
    s, s2 = float(tensor_similarity(a, b, metric)), float(tensor_similarity(a, b2, metric))
    assert abs(s - s2) < TOL, (s, s2)
    assert abs(float(tensor_similarity(b, b2, metric)) - 1) < TOL


@pytest.mark.parametrize("metric,kw", CASES)
def test_hidden_permutation(metric, kw):
    a, b = random_net(0, **kw), random_net(1, **kw)
    g = torch.Generator().manual_seed(0)
    b2 = _rebuild(b, lambda i, layer: permute_hidden(layer, torch.randperm(layer.d_hidden, generator=g)))
    _check(metric, a, b, b2)


@pytest.mark.parametrize("metric,kw", CASES)
def test_per_unit_rescaling_with_sign_flips(metric, kw):
    a, b = random_net(2, **kw), random_net(3, **kw)
    g = torch.Generator().manual_seed(1)

    def t(i, layer):
        h = layer.d_hidden
        alpha = torch.exp(torch.randn(h, generator=g, dtype=torch.float64)) * torch.tensor(
            [1.0, -1.0, 1.0][:h], dtype=torch.float64
        )
        beta = torch.exp(torch.randn(h, generator=g, dtype=torch.float64)) * torch.tensor(
            [-1.0, -1.0, 1.0][:h], dtype=torch.float64
        )
        return rescale_hidden(layer, alpha, beta)

    _check(metric, a, b, _rebuild(b, t))


@pytest.mark.parametrize("metric,kw", CASES)
def test_left_right_swap(metric, kw):
    a, b = random_net(4, **kw), random_net(5, **kw)
    mask = torch.tensor([True, False, True])
    _check(metric, a, b, _rebuild(b, lambda i, layer: swap_left_right(layer, mask)))


@pytest.mark.parametrize("metric,kw", CASES)
def test_change_of_stream_basis(metric, kw):
    a, b = random_net(6, **kw), random_net(7, **kw)
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    _check(metric, a, b, change_stream_basis(b, A))


@pytest.mark.parametrize("metric", ["frobenius", "gaussian"])
def test_change_of_hidden_space_between_layers(metric):
    """Without a down projection the hidden space itself is the stream: an invertible map there (D -> A D of the
    previous layer, L, R -> L A^-1, R A^-1 of the next) is a reparametrisation too."""
    n = 2 if metric == "frobenius" else 1
    kw = dict(embed=False, d_model=None, d_in=3, n_layers=n, d_hidden=3)
    a, b = random_net(8, **kw), random_net(9, **kw)
    g = torch.Generator().manual_seed(3)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    ch = b.to_chain()
    layers = list(ch.layers)
    last = layers[-1]
    layers[-1] = type(last)(last.L, last.R, A @ last.D_matrix(), last.b_left, last.b_right, None)
    unembed = LinearLayer(ch.unembed.W @ torch.linalg.inv(A))
    _check(metric, a, b, HookedTensorNetwork.from_layers(None, layers, unembed))


@pytest.mark.parametrize("metric", ["frobenius", "gaussian"])
def test_negative_control_input_and_output_basis(metric):
    """Changing the input or output basis of one model alone is not a reparametrisation: the value moves."""
    kw = dict(n_layers=1, residual=True, bias=True)
    a = random_net(10, **kw)
    b = random_net(10, **kw)  # b == a
    assert abs(float(tensor_similarity(a, b, metric)) - 1) < TOL
    ch = b.to_chain()
    g = torch.Generator().manual_seed(4)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    rotated_in = HookedTensorNetwork.from_layers(
        LinearLayer(ch.embed.W @ Q, ch.embed.b), ch.layers, ch.unembed, residual=True
    )
    P = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    swapped_out = HookedTensorNetwork.from_layers(
        ch.embed, ch.layers, LinearLayer(P @ ch.unembed.W, P @ ch.unembed.b), residual=True
    )
    assert float(tensor_similarity(a, rotated_in, metric)) < 0.999
    assert float(tensor_similarity(a, swapped_out, metric)) < 0.999


def test_frobenius_at_depth_two_is_not_a_function_of_the_polynomial():
    """Two depth-2 networks computing the same polynomial x1² x2²: (x1², x2²) -> h1 h2 and (x1 x2, x1 x2) -> h1 h2.
    Frobenius symmetrises each layer separately, and the first layers' forms (diagonal vs off-diagonal) are
    orthogonal: it scores exactly 0. The Gaussian metric compares functions: exactly 1 (every sample agrees)."""
    e1, e2 = torch.eye(2, dtype=torch.float64)
    square_then_product = [
        BilinearLayer(torch.stack([e1, e2]), torch.stack([e1, e2])),
        BilinearLayer(e1[None], e2[None]),
    ]
    cross_then_product = [
        BilinearLayer(torch.stack([e1, e1]), torch.stack([e2, e2])),
        BilinearLayer(e1[None], e2[None]),
    ]
    a, b = (HookedTensorNetwork.from_layers(None, layers, None) for layers in (square_then_product, cross_then_product))
    x = torch.randn(64, 2, dtype=torch.float64)
    want = (x[:, 0] ** 2 * x[:, 1] ** 2)[:, None]
    torch.testing.assert_close(a(x), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(b(x), want, rtol=0, atol=1e-12)
    assert abs(float(tensor_similarity(a, b, "frobenius"))) < 1e-12
    gaussian = tensor_similarity(a, b, "gaussian", method="monte_carlo", samples=4000, seed=0)
    assert gaussian.method == "monte_carlo" and abs(float(gaussian) - 1) < 1e-9
