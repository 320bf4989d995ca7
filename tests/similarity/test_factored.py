"""The factored (metric) Frobenius primitives against materialised matrices, float64."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import FactoredMatrix

from tl_tensorsim.similarity import factored_cosine, factored_inner, gram, operation_counts, pairwise_kernel

DT = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def brute(Ma, Mb, G=None, H=None):
    """sum_{ijkl} Ma[i,j] G[i,k] H[j,l] Mb[k,l], broadcasting leading dims."""
    G = torch.eye(Ma.shape[-2], dtype=DT) if G is None else G
    H = torch.eye(Ma.shape[-1], dtype=DT) if H is None else H
    return (Ma * (G @ Mb @ H.T)).sum((-1, -2))


@pytest.mark.parametrize("method", ["auto", "factored", "dense"])
@pytest.mark.parametrize("metric", [False, True])
def test_pairwise_equals_materialised(method, metric):
    A, B = rand(3, 4, 10, 3, seed=1), rand(3, 4, 3, 7, seed=2)
    C, D = rand(5, 12, 2, seed=3), rand(5, 2, 9, seed=4)
    G, H = (rand(10, 12, seed=5), rand(7, 9, seed=6)) if metric else (None, None)
    if not metric:
        C, D = rand(5, 10, 2, seed=3), rand(5, 2, 7, seed=4)
    ref = brute((A @ B)[:, :, None], (C @ D)[None, None], G, H)
    for budget in (None, 500):  # 500 bytes forces one-element chunks
        out = factored_inner((A, B), FactoredMatrix(C, D), G, H, pairwise=True, method=method, memory_budget=budget)
        assert out.shape == (3, 4, 5) and out.dtype == DT
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("method", ["factored", "dense"])
def test_broadcast_and_factored_matrix_identity(method):
    """Matches TransformerLens' (M1.AB * M2.AB).sum() with broadcast leading dimensions."""
    M1 = FactoredMatrix(rand(2, 3, 8, 4, seed=1), rand(2, 3, 4, 8, seed=2))
    M2 = FactoredMatrix(rand(3, 8, 5, seed=3), rand(3, 5, 8, seed=4))
    out = factored_inner(M1, M2, method=method)
    torch.testing.assert_close(out, (M1.AB * M2.AB).sum((-1, -2)), rtol=1e-12, atol=1e-10)
    dense = factored_inner(M1.AB, M2)  # a dense operand is accepted (and forces the dense path)
    torch.testing.assert_close(dense, out, rtol=1e-12, atol=1e-10)


def test_self_pairs_kernel_matches_explicit_b():
    A, B = rand(2, 5, 9, 3, seed=1), rand(2, 5, 3, 9, seed=2)
    ref = pairwise_kernel(A, B, A, B, method="factored")
    for method in ("factored", "dense"):
        for budget in (None, 9 * 9 * 8 * 5, 100):  # all at once; one block of K at a time; one matrix at a time
            torch.testing.assert_close(pairwise_kernel(A, B, method=method, memory_budget=budget), ref)


@pytest.mark.parametrize("limit", [None, 6000, 300])  # default; row chunks; head blocks (and row chunks)
def test_dense_row_chunks_head_blocks_and_symmetric_blocks(limit, monkeypatch):
    """The dense path accumulates row chunks of every matrix; self-similarity of many heads multiplies only the
    upper triangle of head blocks; tiny limits split the heads too. All exact against the materialised Gram."""
    import tl_tensorsim.factored as factored

    if limit is not None:
        monkeypatch.setattr(factored, "DENSE_CHUNK_BYTES", limit)
    N = factored.SYMMETRIC_SPLIT + 5
    A, B, C, D = rand(2, N, 6, 2, seed=1), rand(2, N, 2, 5, seed=2), rand(2, 7, 6, 3, seed=3), rand(2, 7, 3, 5, seed=4)
    Ma, Mb = (A @ B).flatten(2), (C @ D).flatten(2)
    tol = dict(rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(pairwise_kernel(A, B, method="dense"), Ma @ Ma.mT, **tol)
    torch.testing.assert_close(pairwise_kernel(A, B, C, D, method="dense"), Ma @ Mb.mT, **tol)
    torch.testing.assert_close(pairwise_kernel(A @ B, None, C @ D, None), Ma @ Mb.mT, **tol)
    torch.testing.assert_close(pairwise_kernel(A @ B, None), Ma @ Ma.mT, **tol)


def test_dense_operands_with_metrics():
    Ma, Mb = rand(3, 6, 5, seed=1), rand(4, 7, 8, seed=2)
    G, H = rand(6, 7, seed=3), rand(5, 8, seed=4)
    out = factored_inner(Ma, Mb, G, H, pairwise=True, memory_budget=300)
    torch.testing.assert_close(out, brute(Ma[:, None], Mb[None], G, H), rtol=1e-12, atol=1e-10)


def test_cosine_with_metric_triples_is_sandwiched_frobenius_cosine():
    """Gram metrics G = P_a^T P_b, H = Q_a Q_b^T reproduce the cosine of P M Q (no V x V matrix formed)."""
    A, B = rand(4, 6, 2, seed=1), rand(4, 2, 6, seed=2)
    C, D = rand(3, 5, 2, seed=3), rand(3, 2, 5, seed=4)
    Pa, Pb, Qa, Qb = rand(30, 6, seed=5), rand(30, 5, seed=6), rand(6, 20, seed=7), rand(5, 20, seed=8)
    left = (gram(Pa), gram(Pa, Pb), gram(Pb))
    right = (gram(Qa, dim=1), gram(Qa, Qb, dim=1), gram(Qb, dim=1))
    cos = factored_cosine((A, B), (C, D), left, right, pairwise=True)
    Xa, Xb = (Pa @ A @ B @ Qa).flatten(1), (Pb @ C @ D @ Qb).flatten(1)
    ref = Xa @ Xb.T / (Xa.norm(dim=1)[:, None] * Xb.norm(dim=1)[None])
    torch.testing.assert_close(cos, ref, rtol=1e-12, atol=1e-12)
    assert cos.abs().max() <= 1 + 1e-12


def test_cosine_axioms_and_zero_norm():
    A, B = rand(4, 7, 3, seed=1), rand(4, 3, 7, seed=2)
    cos = factored_cosine((A, B), (A, B), pairwise=True)
    torch.testing.assert_close(cos.diagonal(), torch.ones(4, dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(cos, cos.T, rtol=0, atol=1e-12)
    scaled = factored_cosine((A, B), (-2.5 * A, B), pairwise=True)
    torch.testing.assert_close(scaled, -cos, rtol=0, atol=1e-12)
    zero = factored_cosine((A, B), (torch.zeros_like(A), B), pairwise=True)
    assert torch.equal(zero, torch.zeros_like(zero))  # defined value, never NaN


def test_gram_chunks_and_sides():
    X, Y = rand(101, 6, seed=1), rand(101, 4, seed=2)
    torch.testing.assert_close(gram(X, Y, chunk_size=7), X.T @ Y)
    torch.testing.assert_close(gram(X.T.float(), dim=1, chunk_size=10), (X.T @ X).to(DT), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="sharing axis"):
        gram(X, rand(100, 4))


def test_cost_model_prefers_dense_for_many_wide_heads_and_factored_for_few_pairs():
    gpt2 = operation_counts(1, 144, 144, 768, 768, 64, 64)
    assert gpt2["dense"] < gpt2["factored"]  # 2 r^2 > d: materialising once pays off over 144 x 144 pairs
    diag = operation_counts(144, 1, 1, 768, 768, 64, 64)
    assert diag["factored"] < diag["dense"]  # one pair per head: O(d r^2) beats O(d^2 r)
    assert operation_counts(1, 2, 2, 8, 8, 8, 8, dense_operand=True)["factored"] == float("inf")
    self_pairs = operation_counts(1, 144, 144, 768, 768, 64, 64, same=True)["dense"]
    assert self_pairs == 144 * 768 * 768 * 64 + (144 * 144 - 72 * 72) * 768 * 768  # 3 of 4 blocks of head pairs


def test_errors_name_the_argument():
    A, B = rand(5, 2, seed=1), rand(2, 5, seed=2)
    with pytest.raises(ValueError, match="left_metric"):
        factored_inner((A, B), (rand(6, 2), rand(2, 5)))
    with pytest.raises(ValueError, match="right_metric"):
        factored_inner((A, B), (A, B), right_metric=rand(4, 4))
    with pytest.raises(ValueError, match="method"):
        factored_inner((A, B), (A, B), method="fast")
    with pytest.raises(ValueError, match="method"):
        factored_inner(A @ B, (A, B), method="factored")
    with pytest.raises(ValueError, match="a: expected"):
        factored_inner((A, rand(3, 5)), (A, B))
    with pytest.raises(TypeError, match="b: expected"):
        factored_inner((A, B), [A, B])
    with pytest.raises(ValueError, match="broadcast"):
        factored_inner((rand(2, 5, 2), rand(2, 2, 5)), (rand(3, 5, 2), rand(3, 2, 5)))


def test_live_model_circuits_that_require_grad(model_pair):
    """`model.QK` of a trainable model holds parameters with requires_grad=True: still computable, no gradient."""
    from tl_tensorsim.similarity import factored_cosine

    ht = model_pair[0]
    assert ht.QK.A.requires_grad
    cos = factored_cosine(ht.QK[0], ht.QK[1])
    dense = torch.nn.functional.cosine_similarity(
        ht.QK[0].AB.detach().double().flatten(1), ht.QK[1].AB.detach().double().flatten(1)
    )
    assert not cos.requires_grad and torch.allclose(cos, dense, atol=1e-9)


@pytest.mark.parametrize("method", ["dense", "factored"])
@pytest.mark.parametrize("budget", [None, 2_000, 200])  # 2 kB: chunks of rows; 200 B: the heads split too
def test_pairwise_norms_from_the_chunks(method, budget):
    K, Na, Nb, m, r, n = 2, 5, 3, 7, 2, 6
    Aa, Ba, Ab, Bb = (
        rand(K, Na, m, r, seed=1),
        rand(K, Na, r, n, seed=2),
        rand(K, Nb, m, r, seed=3),
        rand(K, Nb, r, n, seed=4),
    )
    out, na, nb = pairwise_kernel(Aa, Ba, Ab, Bb, method=method, memory_budget=budget, with_norms=True)
    Ma, Mb = Aa @ Ba, Ab @ Bb
    torch.testing.assert_close(out, torch.einsum("kimn,kjmn->kij", Ma, Mb), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(na, Ma.pow(2).sum((-2, -1)), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(nb, Mb.pow(2).sum((-2, -1)), atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="with_norms"):
        pairwise_kernel(Aa, Ba, with_norms=True)
