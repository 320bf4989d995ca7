"""A5's icosahedral ρ-sets: `explain` reads them off the shipped model (12 vectors in each 3-d irrep, closed
under ρ, the icosahedron's angles), the proof keeps them and stays sound; `plot_rho_sets` draws the 3-d ρ-sets
and refuses an explanation that has none."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from tl_tensorsim.models import group_mlp
from tl_tensorsim.models.group_mlp import all_pairs
from tl_tensorsim.proofs.groups import explain, plot_rho_sets, rho_set

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def a5():
    model = group_mlp.load(group_mlp.shipped("A5")[0])
    return model, explain(model)


def test_explain_finds_the_icosahedra_of_a5(a5):
    model, expl = a5
    found = {}
    for c, name in enumerate(expl.circuit_irrep):
        left, right = expl.rho_sets(c)
        if left.shape[1] == 3:
            found[name] = int((expl.assign[:, 0] == c).sum())
            for vectors in (left, right):
                assert len(vectors) == 12
                angles = (vectors @ vectors.T).flatten()
                # an icosahedron's vertices: each other vertex at cos ±1/√5, or the antipode
                icosahedral = [1.0, -1.0, 1 / math.sqrt(5), -1 / math.sqrt(5)]
                assert bool((torch.stack([(angles - a).abs() for a in icosahedral]).amin(0) < 1e-6).all())
    assert set(found) == {"3a", "3b"} and min(found.values()) >= 10
    assert max(expl.closure_error) < 1e-9
    proof = rho_set(model, expl)
    assert {expl.circuit_irrep[c] for c in proof.settings["circuits_kept"]} >= {"3a", "3b"}
    with torch.no_grad():
        right = model(all_pairs(model.order)).argmax(-1) == model.table.flatten()
    assert bool((proof.certified.flatten() <= right).all())


def test_plot_rho_sets_draws_each_distinct_3d_set(a5, tmp_path):
    _, expl = a5
    fig = plot_rho_sets(expl, tmp_path / "a5.png")
    assert (tmp_path / "a5.png").stat().st_size > 0
    assert len(fig.axes) == 2  # 3a and 3b: each circuit's right set is its left set up to sign
    s5 = explain(group_mlp.load(group_mlp.shipped("S5")[0]))  # circuits in the sign and (4,1) irreps only
    with pytest.raises(ValueError, match="no circuit has a 3-d ρ-set"):
        plot_rho_sets(s5)
