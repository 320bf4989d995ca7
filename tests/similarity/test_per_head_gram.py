"""per_head_gram (the per-head T x T kernel of checkpoint_similarity) against brute force and the general kernel."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.similarity import checkpoint_pairs, pairwise_kernel


def brute(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Materialise every circuit and take all Frobenius products."""
    M = (A @ B).flatten(2)  # [heads, T, m * n]
    return torch.einsum("htk,hsk->hts", M, M)


@pytest.mark.parametrize("T", [1, 3, 8, 9, 33])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_per_head_gram_equals_brute_force_and_pairwise_kernel(T, small_chunks, monkeypatch):
    if small_chunks:  # several materialised row chunks and several cache slices per chunk, uneven last ones
        monkeypatch.setattr(checkpoint_pairs, "GRAM_CACHE_BYTES", 2 * T * 7 * 8)
        monkeypatch.setattr(checkpoint_pairs, "MATERIALISE_BYTES", 5 * T * 7 * 8)
    g = torch.Generator().manual_seed(T)
    A = torch.randn(3, T, 11, 4, generator=g, dtype=torch.float64)
    B = torch.randn(3, T, 4, 7, generator=g, dtype=torch.float64)
    got = checkpoint_pairs.per_head_gram(A, B)
    want = brute(A, B)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-13 * scale
    assert torch.equal(got, got.mT)  # the mirrored triangle is exactly symmetric
    old = pairwise_kernel(A, B, method="dense")
    assert (got - old).abs().max() <= 1e-13 * scale


def test_per_head_gram_float32_and_rank_one():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 6, 1, generator=g), torch.randn(2, 5, 1, 6, generator=g)
    got = checkpoint_pairs.per_head_gram(a, b)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), brute(a.double(), b.double()), rtol=1e-5)
