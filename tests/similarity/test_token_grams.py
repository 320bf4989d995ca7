"""Token-level vocabulary Grams: one pass per chunk, cached across QK / OV calls, float32 products as an option."""

from __future__ import annotations

import pytest
import torch

from tests.similarity.conftest import brute_cosine, circuits, f64_model
from tl_tensorsim.similarity import head_similarity, token_grams


@pytest.fixture
def counted(monkeypatch):
    """Counts of vocab_grams calls (each is one pass over the vocabulary); the cache starts empty."""
    monkeypatch.setattr(token_grams, "GRAM_CACHE", token_grams._GramCache())
    calls = []
    real = token_grams.vocab_grams

    def spy(*args, **kwargs):
        calls.append(tuple(args[0].shape))
        return real(*args, **kwargs)

    monkeypatch.setattr(token_grams, "vocab_grams", spy)
    return calls


def test_qk_then_ov_reuse_the_embedding_grams_and_match_brute_force(counted):
    a, b = f64_model(1), f64_model(2)
    for circuit in ("QK", "OV"):
        got = head_similarity(a, b, circuit, "token").values
        want = brute_cosine(circuits(a, circuit, "token"), circuits(b, circuit, "token"))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert len(counted) == 2  # W_E once (QK), W_U once (OV): the OV call found the W_E Grams cached
    head_similarity(a, b, "OV", "token")
    assert len(counted) == 2


def test_an_in_place_change_of_the_embedding_is_never_served_from_the_cache(counted):
    a, b = f64_model(1), f64_model(2)
    head_similarity(a, b, "QK", "token")
    with torch.no_grad():
        a.embed.W_E.mul_(torch.linspace(0.5, 2.0, a.cfg.d_model, dtype=torch.float64))
    got = head_similarity(a, b, "QK", "token").values
    torch.testing.assert_close(
        got, brute_cosine(circuits(a, "QK", "token"), circuits(b, "QK", "token")), rtol=0, atol=1e-12
    )
    assert len(counted) == 2


@pytest.mark.parametrize("circuit", ["QK", "OV"])
def test_float32_grams_accumulated_in_float64(circuit):
    a, b = f64_model(1), f64_model(2)
    exact = head_similarity(a, b, circuit, "token", positions=True)
    fast = head_similarity(a, b, circuit, "token", positions=True, gram_precision="float32")
    assert fast.values.dtype == torch.float64 and fast.settings["gram_precision"] == "float32"
    err = (fast.values - exact.values).abs().max()
    assert 0 < err < 1e-5  # float32 rounding shows, and stays small
    with pytest.raises(ValueError, match="gram_precision"):
        head_similarity(a, b, circuit, "token", gram_precision="float16")


def test_cache_sees_writes_that_bypass_the_version_counter():
    from tl_tensorsim.similarity.token_grams import _GramCache

    cache = _GramCache()
    w = torch.randn(50, 8)
    cache.put([w], ("k",), "value")
    assert cache.get([w], ("k",)) == "value"
    w.data.copy_(torch.randn(50, 8))  # .data writes do not bump w._version
    assert cache.get([w], ("k",)) is None
