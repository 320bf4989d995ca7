"""Groups: tables against permutation composition, group axioms, classes, cosets, argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from tl_tensorsim.proofs.groups import alternating, cyclic, dihedral, group_by_name, symmetric

GROUPS = [symmetric(3), symmetric(4), symmetric(5), alternating(4), alternating(5), cyclic(8), dihedral(5)]


@pytest.mark.parametrize("G", GROUPS, ids=lambda g: g.name)
def test_table_is_composition_and_a_group(G):
    n = G.order
    x, y = torch.randint(n, (2, 200), generator=torch.Generator().manual_seed(0))
    for a, b in zip(x.tolist(), y.tolist()):  # (x ⋆ y)[i] = x[y[i]]: apply y first
        assert G.elements[int(G.table[a, b])] == tuple(G.elements[a][i] for i in G.elements[b])
    t = G.table
    assert torch.equal(
        t[t[:, :, None], torch.arange(n)[None, None, :]], t[torch.arange(n)[:, None, None], t[None, :, :]]
    )  # associativity
    assert torch.equal(t[G.identity], torch.arange(n)) and torch.equal(t[:, G.identity], torch.arange(n))
    assert bool((t[torch.arange(n), G.inverse] == G.identity).all())
    assert sorted(G.subgroup(G.generators)) == list(range(n))


def test_orders_and_class_counts():
    want = {"S3": (6, 3), "S4": (24, 5), "S5": (120, 7), "A4": (12, 4), "A5": (60, 5), "C8": (8, 8), "D5": (10, 4)}
    for G in GROUPS:
        assert (G.order, len(G.conjugacy_classes())) == want[G.name]
        assert sum(len(c) for c in G.conjugacy_classes()) == G.order
    assert symmetric(5).order == math.factorial(5) and group_by_name("D6").order == 12


def test_cosets_partition_the_group():
    G = symmetric(4)
    stab = [i for i, p in enumerate(G.elements) if p[3] == 3]  # S3 fixing the point 3
    assert G.is_subgroup(stab) and len(stab) == 6
    left, right = G.left_cosets(stab), G.right_cosets(stab)
    assert len(set(left.tolist())) == 4 == len(set(right.tolist()))
    for g in range(G.order):  # gH = {g ⋆ h}: all of it in g's left coset
        assert set(left[G.table[g, stab]].tolist()) == {int(left[g])}
        assert set(right[G.table[stab, g]].tolist()) == {int(right[g])}
    # the point stabiliser is not normal: some element's left and right cosets differ
    assert any(
        set((left == left[g]).nonzero()[:, 0].tolist()) != set((right == right[g]).nonzero()[:, 0].tolist())
        for g in range(G.order)
    )
    with pytest.raises(ValueError, match="subgroup"):
        G.left_cosets([1, 2])


@pytest.mark.parametrize(
    "call, err",
    [
        (lambda: symmetric(0), ValueError),
        (lambda: symmetric(2.5), TypeError),
        (lambda: dihedral(2), ValueError),
        (lambda: group_by_name("Q8"), ValueError),
        (lambda: symmetric(8), ValueError),
        (lambda: group_by_name("S04"), ValueError),
    ],
)
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()
