"""Group Fourier transform: Parseval, power of irrep entries, projections."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.proofs.groups import (
    alternating,
    fourier_transform,
    irrep_bases,
    irrep_power,
    irreps,
    project,
    symmetric,
)


@pytest.mark.parametrize("G", [symmetric(4), alternating(5)], ids=lambda g: g.name)
def test_parseval_and_pure_irrep_functions(G):
    bases = irrep_bases(G)
    assert sum(b.shape[1] for b in bases.values()) == G.order
    f = torch.randn(G.order, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    power = irrep_power(f, G, normalise=False)
    assert power.sum(0) == pytest.approx((f**2).sum(0))
    for k, rep in enumerate(irreps(G)):
        entry = rep.matrices[:, 0, -1] + 0.5 * rep.matrices[:, -1, 0]  # a function in V_ρ
        if entry.abs().max() == 0:
            continue
        assert irrep_power(entry, G)[k] == pytest.approx(1.0)
        assert torch.allclose(project(entry, G, [rep.name]), entry, atol=1e-12)
    hat = fourier_transform(f[:, 0], G)
    assert set(hat) == {r.name for r in irreps(G)}


def test_bad_function_shape():
    with pytest.raises(ValueError, match="f"):
        irrep_power(torch.zeros(5), symmetric(3))
