"""FactoredMatrix inputs go through tl_tensorsim.similarity.factored (one implementation of the low-rank identity)."""

from __future__ import annotations

import torch
from transformer_lens import FactoredMatrix

from tl_tensorsim.tensor_networks import tensor_inner, tensor_similarity


def test_factored_matrices_match_materialised_frobenius():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    a, b = FactoredMatrix(r(6, 2), r(2, 5)), FactoredMatrix(r(6, 3), r(3, 5))
    Ma, Mb = a.AB, b.AB
    assert abs(float(tensor_inner(a, b)) - float((Ma * Mb).sum())) < 1e-12
    want = float((Ma * Mb).sum() / (Ma.norm() * Mb.norm()))
    s = tensor_similarity(a, b)
    assert abs(float(s) - want) < 1e-12 and s.method == "factored"
    # gaussian = frobenius for a linear map; with an input covariance Σ on the left leg
    Q = r(6, 6)
    sigma = Q @ Q.T
    assert abs(float(tensor_inner(a, b, "gaussian", sigma=sigma)) - float(torch.trace(Ma.T @ sigma @ Mb))) < 1e-9
    # batched factored matrices give one value per element
    A = FactoredMatrix(r(2, 3, 6, 2), r(2, 3, 2, 5))
    out = tensor_similarity(A, A)
    assert out.shape == (2, 3) and torch.allclose(out, torch.ones(2, 3, dtype=torch.float64))
