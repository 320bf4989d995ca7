"""The Gaussian metric: exact one-layer closed form = quadratic-form moments = Monte Carlo (paper §2.2(B))."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tensor_networks import brute_force as bf
from tests.tensor_networks.helpers import random_layer, random_net
from tl_tensorsim.tensor_networks import BilinearLayer, tensor_inner, tensor_similarity
from tl_tensorsim.tensor_networks.montecarlo import radial_rule

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


def test_monte_carlo_interval_covers_for_a_heavy_tailed_deep_network():
    """A bias-free depth-3 network is a homogeneous degree-8 polynomial: f_aᵀf_b has degree 16 and very heavy
    tails. The exact value comes from a Gauss-Hermite rule (exact to degree 17 per coordinate). Over 100 seeds
    at 2000 samples, the reported interval ±2 SE must cover the exact cosine for at least 88 (the nominal rate is
    95%; 88 is three binomial standard deviations below it). Measured: 96/100 (plain Monte Carlo with its
    delta-method SE, before the radial rule: 66/100)."""
    kw = dict(n_layers=3, residual=False, bias=False, d_in=3)
    a, b = random_net(1, **kw), random_net(2, **kw)
    exact = [bf.gaussian_quadrature(f, g, 3, 16) for f, g in ((a, b), (a, a), (b, b))]
    want = exact[0] / math.sqrt(exact[1] * exact[2])
    covered = 0
    for seed in range(100):
        est = tensor_similarity(a, b, "gaussian", samples=2000, seed=seed)
        covered += abs(float(est) - want) < 2 * est.stderr
    assert covered >= 88, covered


@pytest.mark.parametrize("d_in,depth", [(1, 1), (3, 2), (8, 3), (64, 4)])
def test_radial_rule_integrates_every_power_of_the_radius_exactly(d_in, depth):
    """`Σ_k w_k s_k^(2j) = E|x|^(2j) = 2^j Γ(d/2 + j) / Γ(d/2)` for every power up to the rule's degree
    `2^(depth+1)`; odd powers vanish (the rule is symmetric)."""
    s, w = radial_rule(d_in, depth)
    assert abs(float(w.sum()) - 1) < 1e-14
    for j in range(2**depth + 1):
        want = math.exp(j * math.log(2) + math.lgamma(d_in / 2 + j) - math.lgamma(d_in / 2))
        assert abs(float((w * s ** (2 * j)).sum()) / want - 1) < 1e-10, j
        assert abs(float((w * s ** (2 * j + 1)).sum())) < 1e-9 * want


def test_frames_split_across_forward_passes_give_the_same_estimate():
    """`batch_size` smaller than one frame's points splits the frame over several forward passes: same numbers."""
    a, b = random_net(11, n_layers=2, residual=True, bias=True), random_net(12, n_layers=2, residual=True, bias=True)
    s, _ = radial_rule(4, 2)
    one_frame = 4 * len(s)  # d_in 4 directions x 6 points: one frame per forward pass
    whole = tensor_similarity(a, b, "gaussian", method="monte_carlo", samples=6000, seed=5, batch_size=one_frame)
    split = tensor_similarity(a, b, "gaussian", method="monte_carlo", samples=6000, seed=5, batch_size=5)
    assert abs(float(whole) - float(split)) < 1e-12 and abs(whole.stderr - split.stderr) < 1e-12
