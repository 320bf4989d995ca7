"""All-pairs checkpoint matrices and numerics: agreement with pairwise calls, save/load, fp32, zero networks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from tests.tensor_networks.helpers import random_net
from tl_tensorsim.tensor_networks import (
    HookedTensorNetwork,
    TensorNetworkConfig,
    TensorSimilarityMatrix,
    tensor_inner,
    tensor_similarity,
    tensor_similarity_matrix,
)


def _checkpoints(n=5, **kw):
    base = random_net(0, **kw)
    nets = []
    for t in range(n):  # a drifting trajectory: base + growing noise
        net = random_net(0, **kw)
        g = torch.Generator().manual_seed(t)
        with torch.no_grad():
            for p, q in zip(net.parameters(), base.parameters()):
                p.copy_(q + 0.3 * t * torch.randn(p.shape, generator=g, dtype=p.dtype))
        nets.append(net)
    return nets


@pytest.mark.parametrize(
    "metric,kw", [("frobenius", dict(n_layers=2, residual=True, bias=True)), ("gaussian", dict(n_layers=1, bias=True))]
)
def test_matrix_equals_pairwise(metric, kw):
    nets = _checkpoints(**kw)
    m = tensor_similarity_matrix(nets, metric, steps=[0, 10, 20, 30, 40], memory_budget=4096)  # tiny tiles: several
    assert m.values.shape == (5, 5) and m.method == "exact"
    for i in range(5):
        for j in range(5):
            assert abs(float(m.values[i, j]) - float(tensor_similarity(nets[i], nets[j], metric))) < 1e-12
    assert torch.equal(m.values, m.values.T)
    sliced = tensor_similarity_matrix(nets, metric, output=1)
    assert abs(float(sliced.values[0, 3]) - float(tensor_similarity(nets[0], nets[3], metric, output=1))) < 1e-12
    assert torch.allclose(m.to_final(), m.values[:, -1]) and m.index_of_step(19) == 2


def test_mixed_widths_fall_back_to_pairs():
    nets = [random_net(0, d_hidden=3), random_net(1, d_hidden=[4, 2]), random_net(2, d_hidden=3)]
    m = tensor_similarity_matrix(nets)
    assert abs(float(m.values[0, 1]) - float(tensor_similarity(nets[0], nets[1]))) < 1e-12


def test_monte_carlo_matrix():
    nets = _checkpoints(3, n_layers=2, residual=True)
    m = tensor_similarity_matrix(nets, "gaussian", method="monte_carlo", samples=20_000, seed=1)
    assert m.method == "monte_carlo" and m.stderr is not None and m.stderr.shape == (3, 3)
    pair = tensor_similarity(nets[0], nets[2], "gaussian", method="monte_carlo", samples=20_000, seed=1)
    assert abs(float(pair) - float(m.values[0, 2])) < 5 * max(pair.stderr, 1e-6)
    assert torch.allclose(torch.diagonal(m.values), torch.ones(3, dtype=torch.float64))


def test_save_load_and_phases(tmp_path):
    nets = _checkpoints(4, n_layers=1)
    m = tensor_similarity_matrix(nets, steps=[1, 2, 3, 4])
    m.save(tmp_path / "m")
    back = TensorSimilarityMatrix.load(tmp_path / "m")
    assert torch.equal(back.values, m.values) and back.steps == m.steps and back.metric == "frobenius"
    phases = [("early", 0, 1), ("late", 2, 3)]
    pm = m.phase_means(phases)
    assert abs(float(pm[0, 1]) - float(m.values[:2, 2:].mean())) < 1e-12
    assert abs(float(pm[0, 0]) - float(m.values[0, 1])) < 1e-12
    assert "T=4" in repr(m)
    df = m.to_dataframe()
    assert df.shape == (4, 4)


def test_float32_deep_and_large_does_not_overflow():
    """Weights x 30 per layer over 6 layers: the raw inner product is ~1e300 (beyond float32 by far);
    per-layer normalisation keeps the cosine finite and equal to the float64 value."""
    kw = dict(d_in=6, d_model=6, d_hidden=8, n_layers=6, d_out=3, residual=True, bias=True)
    a, b = random_net(0, **kw), random_net(1, **kw)
    with torch.no_grad():
        for net in (a, b):
            for p in net.parameters():
                p.mul_(30)
    inner = tensor_inner(a, b)
    assert inner.log_abs > math.log(torch.finfo(torch.float32).max)
    s64 = float(tensor_similarity(a, b))
    s32 = float(tensor_similarity(a.float(), b.float(), dtype=torch.float32))
    assert math.isfinite(s32) and abs(s32 - s64) < 1e-3
    m32 = tensor_similarity_matrix([a.float(), b.float()], dtype=torch.float32)
    assert torch.isfinite(m32.values).all()


def test_zero_network_is_guarded():
    a = random_net(0, n_layers=1, bias=True)
    z = HookedTensorNetwork(TensorNetworkConfig(**{**a.cfg.to_dict(), "seed": 0}))
    with torch.no_grad():
        for p in z.parameters():
            p.zero_()
    with pytest.warns(UserWarning, match="zero norm"):
        s = tensor_similarity(a, z)
    assert float(s) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = tensor_similarity_matrix([a, z])
        g = tensor_similarity(a, z, "gaussian", method="exact")
    assert not torch.isnan(m.values).any() and float(m.values[0, 1]) == 0 and float(g) == 0


def test_mismatched_models_raise():
    a = random_net(0)
    with pytest.raises(ValueError, match="input dimension"):
        tensor_similarity(a, random_net(0, d_in=5))
    with pytest.raises(ValueError, match="output dimension"):
        tensor_similarity(a, random_net(0, d_out=3))
    with pytest.raises(ValueError, match="different orders"):
        tensor_similarity(a, random_net(0, n_layers=1))
    with pytest.raises(ValueError, match="metric"):
        tensor_similarity(a, a, metric="cka")
    with pytest.raises(ValueError, match="output"):
        tensor_similarity(a, a, output=7)


def test_an_empty_output_selection_is_refused():
    """output=[] selects no output: a ValueError (it returned 0 with a "zero norm" warning, even for a network
    against itself)."""
    a = random_net(0, n_layers=1)
    match = r"output: expected an int or a non-empty sequence of output indices .*got (\[\]|\(\)), which selects no output"
    calls = (
        lambda: tensor_similarity(a, a, output=[]),
        lambda: tensor_similarity(a, a, "gaussian", output=()),
        lambda: tensor_inner(a, a, output=[]),
        lambda: tensor_similarity_matrix([a, a], output=[]),
        lambda: tensor_similarity(a, a, "gaussian", method="monte_carlo", output=[]),
    )
    for call in calls:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no zero-norm warning first
            with pytest.raises(ValueError, match=match):
                call()
    assert float(tensor_similarity(a, a, output=[0])) == pytest.approx(1.0, abs=1e-12)


def test_per_output_matrices_from_one_computation():
    nets = _checkpoints(3, n_layers=1, d_out=3)
    slices = tensor_similarity_matrix(nets, per_output=True)
    assert len(slices) == 3
    for c in range(3):
        single = tensor_similarity_matrix(nets, output=c)
        assert torch.allclose(slices[c].values, single.values, atol=1e-12) and slices[c].output == c
    mc = tensor_similarity_matrix(nets, "gaussian", method="monte_carlo", per_output=True, samples=5000)
    assert len(mc) == 3 and mc[0].stderr is not None
