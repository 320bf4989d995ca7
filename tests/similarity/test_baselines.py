"""Baselines: raw weight cosine and behavioural (head output) cosine, against direct computations."""

from __future__ import annotations

import pytest
import torch

import tl_tensorsim as ts
from tests.conftest import needs_hooked_transformer
from tests.similarity.conftest import gauge
from tl_tensorsim.similarity import behavioral_similarity, head_outputs, head_similarity, raw_weight_similarity


def _cos(x, y):
    return x @ y.T / (x.norm(dim=1)[:, None] * y.norm(dim=1)[None])


@pytest.mark.parametrize("circuit", ["QK", "OV"])
def test_raw_weight_cosine_is_cosine_of_concatenated_weights(pair64, circuit):
    a, b = pair64
    va, vb = ts.as_view(a), ts.as_view(b)
    names = ("W_Q", "W_K") if circuit == "QK" else ("W_V", "W_O")

    def flat(v):
        return torch.cat([v.weight(n).flatten(2).flatten(0, 1) for n in names], dim=1)

    res = head_similarity(a, b, circuit, metric="raw_weight")
    assert res.metric == "raw_weight" and res.values.shape == (6, 6)
    torch.testing.assert_close(res.values, _cos(flat(va), flat(vb)), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        raw_weight_similarity(a, None, circuit).values.diagonal(), torch.ones(6, dtype=torch.float64)
    )


@needs_hooked_transformer  # a native bridge's AttentionBridge has no per-head hook_result
def test_head_outputs_match_hook_result(pair64, tokens):
    a = pair64[0]
    a.set_use_attn_result(True)
    try:
        _, cache = a.run_with_cache(tokens)
        ref = torch.stack([cache["result", layer] for layer in range(2)])  # [L, b, p, H, d]
    finally:
        a.set_use_attn_result(False)
    out = head_outputs(ts.as_view(a), tokens)
    torch.testing.assert_close(out, ref.permute(0, 3, 1, 2, 4).flatten(0, 1), rtol=1e-10, atol=1e-12)
    assert not any(hp.fwd_hooks for hp in a.hook_dict.values())  # no hook left behind


def test_behavioral_cosine_and_gauge_invariance(pair64, tokens):
    a, b = pair64
    ya, yb = (head_outputs(ts.as_view(m), tokens).flatten(1) for m in (a, b))
    res = head_similarity(a, b, metric="behavioral", tokens=tokens)
    torch.testing.assert_close(res.values, _cos(ya, yb), rtol=0, atol=1e-12)
    chunked = behavioral_similarity(a, b, tokens=tokens, batch_size=1)
    torch.testing.assert_close(chunked.values, res.values, rtol=0, atol=1e-12)
    same_function = behavioral_similarity(a, gauge(a, seed=2), tokens=tokens).values.diagonal()
    torch.testing.assert_close(same_function, torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-9)


def test_behavioral_same_numbers_on_hooked_transformer_and_bridge(model_pair):
    ht, bridge = model_pair
    toks = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    s_ht = behavioral_similarity(ht, tokens=toks).values
    s_br = behavioral_similarity(bridge, tokens=toks).values
    torch.testing.assert_close(s_ht, s_br, rtol=0, atol=1e-5)


def test_baseline_errors(pair64, tokens):
    a, b = pair64
    with pytest.raises(ValueError, match="tokens"):
        head_similarity(a, b, metric="behavioral")
    with pytest.raises(ValueError, match="tokens"):
        behavioral_similarity(a, tokens=torch.randn(2, 3))
    with pytest.raises(ValueError, match="tokens"):
        behavioral_similarity(a, tokens=torch.full((1, 3), 40))


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)])
def test_behavioral_refuses_an_empty_token_batch(pair64, shape):
    """No sequences or no positions: a ValueError naming tokens and its shape (was an all-zero result, so even a
    model's self-similarity read 0)."""
    a, b = pair64
    empty = torch.zeros(shape, dtype=torch.long)
    match = rf"tokens: expected at least one sequence of at least one position .*got shape \[{shape[0]}, {shape[1]}\]"
    with pytest.raises(ValueError, match=match):
        head_similarity(a, a, metric="behavioral", tokens=empty)
    with pytest.raises(ValueError, match=match):
        behavioral_similarity(a, b, tokens=empty)
    with pytest.raises(ValueError, match=match):
        head_outputs(ts.as_view(a), empty)
    with pytest.raises(ValueError, match=match):  # before any checkpoint is loaded
        ts.checkpoint_similarity([lambda: pytest.fail("loaded"), a], metric="behavioral", tokens=empty, progress=False)
