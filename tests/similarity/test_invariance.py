"""Invariances of the head similarity (gauges, residual rotations, rescaling, head permutations) and the
negative controls: raw weight cosine moves under the gauge; a rotation of one model moves the residual level."""

from __future__ import annotations

import pytest
import torch

import tl_tensorsim as ts
from tests.similarity.conftest import f64_model, gauge, random_invertible, with_weights
from tl_tensorsim.similarity import head_similarity, raw_weight_similarity

CASES = [(c, lvl) for c in ("QK", "OV") for lvl in ("residual", "token")]
ONE = torch.ones(6, dtype=torch.float64)


def _logits(model, seed=3):
    toks = torch.randint(0, model.cfg.d_vocab, (2, model.cfg.n_ctx), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(toks)


@pytest.fixture(scope="module")
def gauged(pair64):
    return gauge(pair64[0], seed=11)


def test_gauge_preserves_the_function(pair64, gauged):
    torch.testing.assert_close(_logits(gauged), _logits(pair64[0]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("circuit,level", CASES)
def test_invariant_to_per_head_gauge(pair64, gauged, circuit, level):
    a, b = pair64
    torch.testing.assert_close(head_similarity(a, gauged, circuit, level).values.diagonal(), ONE, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        head_similarity(gauged, b, circuit, level).values,
        head_similarity(a, b, circuit, level).values,
        rtol=0,
        atol=1e-9,
    )


@pytest.mark.parametrize("circuit", ["QK", "OV"])
def test_raw_weight_cosine_moves_under_the_gauge(pair64, gauged, circuit):
    raw = raw_weight_similarity(pair64[0], gauged, circuit).values.diagonal()
    assert (raw < 0.95).all(), raw  # same function, yet far from 1: why the tensor similarity exists


def _rotate(model, R):
    """Rotate the residual stream of an attention-only, LayerNorm-free model: x -> x R everywhere."""
    v = ts.as_view(model)
    return with_weights(
        model,
        W_E=v.W_E @ R,
        W_pos=v.W_pos @ R,
        W_Q=R.T @ v.W_Q,
        W_K=R.T @ v.W_K,
        W_V=R.T @ v.W_V,
        W_O=v.W_O @ R,
        b_O=v.b_O @ R,
        W_U=R.T @ v.W_U,
    )


@pytest.fixture(scope="module")
def plain_pair():
    kw = dict(attn_only=True, normalization_type=None)
    return f64_model(20, **kw), f64_model(21, **kw)


@pytest.fixture(scope="module")
def rotation():
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    return q


@pytest.mark.parametrize("circuit", ["QK", "OV"])
def test_token_level_invariant_to_rotating_one_models_residual_stream(plain_pair, rotation, circuit):
    a, b = plain_pair
    ra = _rotate(a, rotation)
    torch.testing.assert_close(_logits(ra), _logits(a), rtol=1e-9, atol=1e-9)
    for positions in (False, True):
        base = head_similarity(a, b, circuit, "token", positions=positions).values
        torch.testing.assert_close(
            head_similarity(ra, b, circuit, "token", positions=positions).values, base, rtol=0, atol=1e-9
        )
    # residual level: invariant when both models rotate together, not when one does (negative control)
    res = head_similarity(a, b, circuit, "residual").values
    torch.testing.assert_close(head_similarity(ra, _rotate(b, rotation), circuit).values, res, rtol=0, atol=1e-9)
    assert (head_similarity(ra, b, circuit).values - res).abs().max() > 1e-2


@pytest.mark.parametrize("circuit,level", CASES)
def test_global_rescaling(pair64, circuit, level):
    a, b = pair64
    v = ts.as_view(a)
    base = head_similarity(a, b, circuit, level).values
    scaled = with_weights(a, W_Q=3.0 * v.W_Q, W_V=0.5 * v.W_V, W_E=2.0 * v.W_E, W_U=7.0 * v.W_U)
    torch.testing.assert_close(head_similarity(scaled, b, circuit, level).values, base, rtol=0, atol=1e-9)
    flipped = with_weights(a, W_K=-v.W_K, W_O=-v.W_O)  # sign of every QK and OV circuit
    torch.testing.assert_close(head_similarity(flipped, b, circuit, level).values, -base, rtol=0, atol=1e-9)


@pytest.mark.parametrize("circuit,level", CASES)
def test_permuting_heads_permutes_the_matrix(pair64, circuit, level):
    a, b = pair64
    v = ts.as_view(b)
    perm = torch.tensor([2, 0, 1])
    names = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
    permuted = with_weights(b, **{n: v.weight(n)[:, perm] for n in names})
    base = head_similarity(a, b, circuit, level).values
    order = torch.cat([layer * 3 + perm for layer in range(2)])
    torch.testing.assert_close(head_similarity(a, permuted, circuit, level).values, base[:, order], rtol=0, atol=1e-12)


def test_random_invertible_is_not_orthogonal():
    G = random_invertible(6, torch.Generator().manual_seed(0))
    assert (G @ G.T - torch.eye(6, dtype=torch.float64)).abs().max() > 0.5  # a real GL gauge, not a rotation


def test_self_similarity_of_a_copy_is_one():
    a = f64_model(9)
    for circuit, level in CASES:
        torch.testing.assert_close(
            head_similarity(a, f64_model(9), circuit, level).values.diagonal(), ONE, rtol=0, atol=1e-12
        )
