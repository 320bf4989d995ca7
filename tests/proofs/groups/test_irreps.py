"""Real orthogonal irreps: homomorphism on the whole table, orthogonality, Σ d²/e = |G|, character orthogonality
⟨χ_i, χ_j⟩ = e_i δ_ij, #irreps = #real classes (C ∪ C⁻¹), Young's form against the commutant splitting."""

from __future__ import annotations

import math

import pytest
import torch

from tl_tensorsim.proofs.groups import (
    alternating,
    cyclic,
    dihedral,
    irrep_by_name,
    irreps,
    permutation_representation,
    split_representation,
    symmetric,
)

GROUPS = [
    symmetric(3),
    symmetric(4),
    symmetric(5),
    alternating(4),
    alternating(5),
    cyclic(7),
    cyclic(8),
    dihedral(6),
    dihedral(3),
]


@pytest.mark.parametrize("G", GROUPS, ids=lambda g: g.name)
def test_irreps_are_orthogonal_homomorphisms_and_complete(G):
    reps = irreps(G)
    assert G.irreps() is reps  # the method and the function are one (cached) list
    for r in reps:
        m = r.matrices
        assert m.dtype == torch.float64
        assert (m[G.table] - m[:, None] @ m[None]).abs().max() < 1e-12  # ρ(x ⋆ y) = ρ(x)ρ(y), every pair
        assert (m @ m.transpose(1, 2) - torch.eye(r.dim, dtype=torch.float64)).abs().max() < 1e-12
    chars = torch.stack([r.character for r in reps])
    gram = chars @ chars.T / G.order
    kinds = torch.tensor([float(r.kind) for r in reps], dtype=torch.float64)
    assert (gram - torch.diag(kinds)).abs().max() < 1e-10  # e = 1 (real type) or 2 (complex type)
    assert sum(r.dim**2 / r.kind for r in reps) == pytest.approx(G.order)
    assert len(reps) == len(G.real_classes())


def test_real_versus_complex_type():
    assert [r.kind for r in irreps(cyclic(7))] == [1, 2, 2, 2]  # 7 complex characters: 1 + 3 conjugate pairs
    assert sorted((r.dim, r.kind) for r in irreps(alternating(4))) == [(1, 1), (2, 2), (3, 1)]
    assert len(alternating(4).conjugacy_classes()) == 4 and len(irreps(alternating(4))) == 3
    assert all(r.kind == 1 for G in (symmetric(5), dihedral(6), alternating(5)) for r in irreps(G))


def test_a5_has_two_icosahedral_3d_irreps():
    G = alternating(5)
    threes = [r for r in irreps(G) if r.dim == 3]
    assert len(threes) == 2
    five_cycle = G.index((1, 2, 3, 4, 0))
    golden = (1 + math.sqrt(5)) / 2
    values = sorted(float(r.character[five_cycle]) for r in threes)
    assert values == pytest.approx([1 - golden, golden])  # χ(5-cycle) = φ and 1 - φ: Galois conjugates
    # the restriction of S5's (3,1,1) is their sum, which Young's form alone does not split
    S5 = symmetric(5)
    chi = irrep_by_name(S5, "(3,1,1)").character[[S5.index(p) for p in G.elements]]
    assert (chi - threes[0].character - threes[1].character).abs().max() < 1e-10


def test_young_form_matches_the_commutant_splitting():
    G = symmetric(4)
    young = sorted(sorted(r.character.round(decimals=8).tolist()) for r in irreps(G))
    split = split_representation(permutation_representation(G))  # natural rep = trivial + standard
    assert sorted(s.shape[-1] for s in split) == [1, 3]
    std = [s for s in split if s.shape[-1] == 3][0].diagonal(dim1=-2, dim2=-1).sum(-1)
    assert (std - irrep_by_name(G, "(3,1)").character).abs().max() < 1e-10
    assert len(young) == 5


def test_unknown_irrep_name():
    with pytest.raises(ValueError, match="name"):
        irrep_by_name(symmetric(3), "(4,1)")
