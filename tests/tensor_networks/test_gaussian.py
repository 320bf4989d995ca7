"""The Gaussian metric: exact one-layer closed form = quadratic-form moments = Monte Carlo (paper §2.2(B))."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tensor_networks import brute_force as bf
from tests.tensor_networks.helpers import random_layer, random_net
from tl_tensorsim.tensor_networks import BilinearLayer, tensor_inner, tensor_similarity

REL = 1e-9


def _close(x, y, rel=REL):
    return abs(float(x) - float(y)) <= rel * max(abs(float(x)), abs(float(y)), 1e-300)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_closed_form_equals_quadratic_form_moments(residual, bias):
    a = random_net(0, n_layers=1, residual=residual, bias=bias)
    b = random_net(1, n_layers=1, residual=residual, bias=bias)
    Ta, Tb = bf.network_tensor(a), bf.network_tensor(b)  # (C, 1+d, 1+d): quadratic forms in [1; x]
    assert _close(tensor_inner(a, b, "gaussian"), bf.gaussian_one_layer(Ta, Tb))
    want = bf.gaussian_one_layer(Ta, Tb) / math.sqrt(bf.gaussian_one_layer(Ta, Ta) * bf.gaussian_one_layer(Tb, Tb))
    assert _close(tensor_similarity(a, b, "gaussian"), want)


def test_closed_form_with_input_covariance():
    a, b = random_net(2, n_layers=1, bias=True), random_net(3, n_layers=1, bias=True)
    g = torch.Generator().manual_seed(0)
    Q = torch.randn(4, 4, generator=g, dtype=torch.float64)
    sigma = Q @ Q.T + 0.1 * torch.eye(4, dtype=torch.float64)
    want = bf.gaussian_one_layer(bf.network_tensor(a), bf.network_tensor(b), sigma)
    assert _close(tensor_inner(a, b, "gaussian", sigma=sigma), want)


def test_trace_plus_two_frobenius():
    """Paper §2.2(B): for one bias-free layer, ⟨f_a, f_b⟩ = Σ_o [tr B_a^o tr B_b^o + 2⟨B^s_a^o, B^s_b^o⟩]."""
    la, lb = random_layer(seed=3), random_layer(seed=4)
    Ba, Bb = la.interaction_tensor(), lb.interaction_tensor()
    trace = (torch.diagonal(Ba, dim1=1, dim2=2).sum(-1) * torch.diagonal(Bb, dim1=1, dim2=2).sum(-1)).sum()
    want = float(trace + 2 * (Ba * Bb).sum())
    assert _close(tensor_inner(la, lb, "gaussian"), want)
    assert _close(tensor_inner(la, lb, "gaussian"), 2 * float(tensor_inner(la, lb)) + float(trace))


def test_traceless_forms_agree_up_to_factor_two():
    """For centred (traceless) forms the Gaussian inner product is exactly 2 x Frobenius: equal cosines."""

    def traceless(seed):
        lay = random_layer(d_in=6, h=5, d_out=3, seed=seed)
        R = lay.R - (lay.R * lay.L).sum(1, keepdim=True) / (lay.L * lay.L).sum(1, keepdim=True) * lay.L  # R_h ⟂ L_h
        return BilinearLayer(lay.L, R, lay.D)

    la, lb = traceless(5), traceless(6)
    assert torch.diagonal(la.interaction_tensor(), dim1=1, dim2=2).sum(-1).abs().max() < 1e-12
    assert _close(tensor_inner(la, lb, "gaussian"), 2 * float(tensor_inner(la, lb)))
    assert _close(tensor_similarity(la, lb, "gaussian"), tensor_similarity(la, lb, "frobenius"))


@pytest.mark.slow
def test_closed_form_against_monte_carlo_million_samples():
    """10^6 samples; tolerance 5 reported standard errors (the SE is the delta-method SE of the cosine)."""
    a = random_net(7, n_layers=1, residual=True, bias=True, d_in=6, d_model=5, d_hidden=6, d_out=3)
    b = random_net(8, n_layers=1, residual=True, bias=True, d_in=6, d_model=5, d_hidden=6, d_out=3)
    exact = tensor_similarity(a, b, "gaussian")
    mc = tensor_similarity(a, b, "gaussian", method="monte_carlo", samples=10**6, seed=0)
    assert exact.method == "exact" and mc.method == "monte_carlo" and mc.stderr > 0
    assert abs(float(mc) - float(exact)) < 5 * mc.stderr, (float(mc), float(exact), mc.stderr)
    inner = tensor_inner(a, b, "gaussian")
    inner_mc = tensor_inner(a, b, "gaussian", method="monte_carlo", samples=10**6, seed=1)
    assert abs(float(inner_mc) - float(inner)) < 5 * inner_mc.stderr
    per = tensor_similarity(a, b, "gaussian", per_output=True, method="monte_carlo", samples=10**6, seed=2)
    per_exact = tensor_similarity(a, b, "gaussian", per_output=True)
    assert ((per.values - per_exact.values).abs() < 5 * per.stderr).all()


def test_monte_carlo_for_deep_networks_is_seeded_and_reports_error():
    a, b = random_net(9, n_layers=3, residual=True), random_net(10, n_layers=3, residual=True)
    s1 = tensor_similarity(a, b, "gaussian", samples=20_000, seed=3)
    s2 = tensor_similarity(a, b, "gaussian", samples=20_000, seed=3)
    s3 = tensor_similarity(a, b, "gaussian", samples=20_000, seed=4)
    assert s1.method == "monte_carlo" and float(s1) == float(s2) and float(s1) != float(s3)
    assert 0 < s1.stderr < 0.1 and abs(float(s1) - float(s3)) < 6 * math.hypot(s1.stderr, s3.stderr)
    assert abs(float(tensor_similarity(a, a, "gaussian", samples=2000)) - 1) < 1e-12
    with pytest.raises(ValueError, match="at most one bilinear layer"):
        tensor_similarity(a, b, "gaussian", method="exact")
    with pytest.raises(ValueError, match="always exact"):
        tensor_similarity(a, b, "frobenius", method="monte_carlo")
