"""The Gram recursion equals brute-force materialisation of the order-(2^N+1) coefficient tensor (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tensor_networks import brute_force as bf
from tests.tensor_networks.helpers import random_layer, random_net
from tl_tensorsim.tensor_networks import (
    HookedTensorNetwork,
    tensor_inner,
    tensor_similarity,
)

REL = 1e-9


def _close(x: float, y: float, rel: float = REL) -> bool:
    return abs(x - y) <= rel * max(abs(x), abs(y), 1e-300)


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_recursion_equals_brute_force(n_layers, residual, bias):
    a = random_net(0, n_layers=n_layers, residual=residual, bias=bias)
    b = random_net(1, n_layers=n_layers, residual=residual, bias=bias)
    Ta, Tb = bf.network_tensor(a), bf.network_tensor(b)
    assert Ta.dim() == 2**n_layers + 1  # order 2^N + 1
    for x, y in [(a, b), (a, a), (b, b)]:
        want = bf.frobenius(bf.network_tensor(x), bf.network_tensor(y))
        got = tensor_inner(x, y)
        assert _close(float(got), want), (float(got), want)
    cos = bf.frobenius(Ta, Tb) / math.sqrt(bf.frobenius(Ta, Ta) * bf.frobenius(Tb, Tb))
    assert _close(float(tensor_similarity(a, b)), cos)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_token_embedding_and_no_down_proj(n_layers):
    a = random_net(2, d_in=None, d_vocab=4, n_layers=n_layers, bias=True)
    b = random_net(3, d_in=None, d_vocab=4, n_layers=n_layers, bias=True)
    assert _close(float(tensor_inner(a, b)), bf.frobenius(bf.network_tensor(a), bf.network_tensor(b)))
    # the paper's grokking shape: no embed, no down projection, Bilinear(d_in -> h) then Linear(h -> C)
    kw = dict(embed=False, down_proj=False, d_model=None, d_hidden=3, n_layers=n_layers, d_in=3)
    a, b = random_net(4, **kw), random_net(5, **kw)
    assert _close(float(tensor_inner(a, b)), bf.frobenius(bf.network_tensor(a), bf.network_tensor(b)))


@pytest.mark.parametrize("n_layers", [1, 2])
def test_input_covariance(n_layers):
    a = random_net(6, n_layers=n_layers, bias=True, residual=True)
    b = random_net(7, n_layers=n_layers, bias=True, residual=True)
    g = torch.Generator().manual_seed(0)
    Q = torch.randn(4, 4, generator=g, dtype=torch.float64)
    sigma = Q @ Q.T + 0.1 * torch.eye(4, dtype=torch.float64)
    G0 = torch.zeros(5, 5, dtype=torch.float64)
    G0[0, 0], G0[1:, 1:] = 1, sigma
    want = bf.frobenius(bf.network_tensor(a), bf.network_tensor(b), G0)
    assert _close(float(tensor_inner(a, b, sigma=sigma)), want)


def test_per_output_slices_sum_to_total():
    a, b = random_net(8, d_out=3, bias=True), random_net(9, d_out=3, bias=True)
    Ta, Tb = bf.network_tensor(a), bf.network_tensor(b)
    total = 0.0
    for c in range(3):
        want = bf.frobenius(Ta[c : c + 1], Tb[c : c + 1])
        got = float(tensor_inner(a, b, output=c))
        assert _close(got, want)
        total += got
        cos = want / math.sqrt(bf.frobenius(Ta[c : c + 1], Ta[c : c + 1]) * bf.frobenius(Tb[c : c + 1], Tb[c : c + 1]))
        assert _close(float(tensor_similarity(a, b, output=c)), cos)
        assert _close(float(tensor_similarity(a, b, per_output=True).values[c]), cos)
    assert _close(total, float(tensor_inner(a, b)))
    assert _close(
        float(tensor_inner(a, b, output=[0, 2])),
        float(tensor_inner(a, b, output=0)) + float(tensor_inner(a, b, output=2)),
    )


def test_local_symmetrisation_is_not_full_symmetrisation():
    """The metric symmetrises each layer's forms (arXiv 2605.15183, the recursive algorithm); symmetrising all 2^N legs is another number."""
    a, b = random_net(10, n_layers=2), random_net(11, n_layers=2)
    Ta, Tb = bf.network_tensor(a), bf.network_tensor(b)
    local = bf.frobenius(Ta, Tb)
    full = bf.frobenius(bf.fully_symmetrised(Ta), bf.fully_symmetrised(Tb))
    assert _close(float(tensor_inner(a, b)), local)
    assert abs(local - full) > 1e-3 * abs(local)
    # one layer: the two coincide
    a1, b1 = random_net(10, n_layers=1), random_net(11, n_layers=1)
    T1a, T1b = bf.network_tensor(a1), bf.network_tensor(b1)
    assert _close(bf.frobenius(T1a, T1b), bf.frobenius(bf.fully_symmetrised(T1a), bf.fully_symmetrised(T1b)))


def test_bilinear_layer_closed_form_and_interaction_tensor():
    """Paper §2.2(A): ⟨a|b⟩ = Σ B^s_a B^s_b over (o, i, j) for bias-free layers."""
    la, lb = random_layer(seed=0), random_layer(seed=1)
    want = float((la.interaction_tensor() * lb.interaction_tensor()).sum())
    assert _close(float(tensor_inner(la, lb)), want)
    # the interaction tensor reproduces the function: f(x)_o = x^T B_o x
    x = torch.randn(7, la.d_in, dtype=torch.float64)
    assert torch.allclose(torch.einsum("ni,oij,nj->no", x, la.interaction_tensor(), x), la(x))


def test_metric_axioms():
    a, b = random_net(12, bias=True, residual=True), random_net(13, bias=True, residual=True)
    s_ab, s_ba = tensor_similarity(a, b), tensor_similarity(b, a)
    assert float(s_ab) == float(s_ba)  # bit-exact symmetry
    assert abs(float(tensor_similarity(a, a)) - 1) < 1e-12
    assert -1 <= float(s_ab) <= 1
    ch = b.to_chain()
    u = ch.unembed
    for c in (-2.5, 0.3):
        scaled = HookedTensorNetwork.from_layers(ch.embed, ch.layers, type(u)(c * u.W, c * u.b), residual=True)
        assert abs(float(tensor_similarity(a, scaled)) - math.copysign(1, c) * float(s_ab)) < 1e-12
