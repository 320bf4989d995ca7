"""The irrep (Chughtai et al.) and coset (Stander et al.) baselines: soundness as set inclusion (certified ⊆ correct
by the forward pass) on random, the shipped S4 and noise-perturbed models; an exactly irrep-sparse and an exactly
coset-constant network certify every pair whose brute-force margin is not tiny; compare() lists them."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.proofs.groups.factories import handbuilt, noisy, tetra_circuits
from tests.proofs.groups.test_verify import correct
from tl_tensorsim.models import group_mlp
from tl_tensorsim.models.group_mlp import GroupMLP, GroupMLPConfig
from tl_tensorsim.proofs.groups import (
    brute_force,
    certified_tables,
    compare,
    coset,
    explain,
    irrep,
    verify_idealised,
)
from tl_tensorsim.proofs.groups.groups import group_by_name


@pytest.fixture(scope="module")
def s4():
    return group_mlp.load(group_mlp.shipped("S4")[0])


@pytest.mark.parametrize("verifier", [irrep, coset])
def test_sound_on_random_shipped_and_noisy_models(verifier, s4):
    models = [GroupMLP(GroupMLPConfig(group="S4", d_embed=24, d_hidden=24, seed=s)) for s in range(2)]
    models += [s4, noisy(s4, 0.01), noisy(s4, 0.1)]
    for model in models:
        result = verifier(model, explain(model, min_neurons=1))
        assert result.certified.shape == (24, 24) and result.flops > 0 and result.wall_time > 0
        assert bool((result.certified <= correct(model)).all())
        assert result.bound == pytest.approx(float(result.certified.double().mean()))
    # the shipped S4 model (and a 1%-noise copy) is irrep-explained up to a deviation below its idealised margins:
    # the inclusion above is tested on non-empty certificates
    assert irrep(s4, explain(s4)).bound > 0.9 and irrep(models[3], explain(models[3])).bound > 0.9


def test_irrep_sparse_network_certifies_what_brute_force_does():
    model, _ = handbuilt(*tetra_circuits(), pad=2)  # every neuron purely in (3,1), w_l and w_r without offset
    expl = explain(model)
    exact, result = brute_force(model), irrep(model, expl)
    assert "(3,1)" in result.settings["key_irreps"] and result.settings["deviation_mean"] < 1e-4
    assert exact.bound == 1.0 and torch.equal(result.certified, exact.certified)
    assert result.flops > exact.flops  # the idealised margins cost a brute force of their own
    # the idealised network given as the real one: deviation 0 up to rounding, same certificate
    _, wl, wr, wu = certified_tables(model)
    same = verify_idealised(model, (wl.mid, wr.mid, wu.mid), "given")
    assert torch.equal(same.certified, exact.certified) and same.settings["deviation_mean"] < 1e-9


def test_coset_constant_network_certifies_where_the_margin_allows():
    group = group_by_name("S4")
    n = group.order
    H, K = group.subgroup([group.generators[0]]), group.subgroup([group.generators[1]])
    assert 1 < len(H) < n and 1 < len(K) < n
    model = GroupMLP(GroupMLPConfig(group="S4", d_embed=n, d_hidden=20, seed=1))
    with torch.no_grad():
        model.embed_left.copy_(torch.eye(n))
        model.embed_right.copy_(torch.eye(n))
        gen = torch.Generator().manual_seed(0)
        left = torch.randn(n, 20, generator=gen)
        right = torch.randn(n, 20, generator=gen)
        # w_l constant on left cosets xH (value of the coset's smallest element), w_r on right cosets Ky
        rep_l = group.table[:, H].amin(1)
        rep_r = group.table[K, :].amin(0)
        model.W[:n] = left[rep_l]
        model.W[n:] = right[rep_r]
        model.W_U.copy_(torch.randn(20, n, generator=gen))
    expl = explain(model)
    assert bool((expl.coset_left_order >= len(H)).all()) and bool((expl.coset_right_order >= len(K)).all())
    exact, result = brute_force(model), coset(model, expl)
    assert result.settings["neurons_explained"] == 20 and result.settings["deviation_mean"] < 1e-6
    assert bool((result.certified <= exact.certified).all())
    assert bool(((exact.margin > 1e-5) <= result.certified).all()) and exact.bound > 0
    # a perturbation breaks the coset structure: still sound
    perturbed = noisy(model, 0.05)
    assert bool((coset(perturbed, expl).certified <= correct(perturbed)).all())


def test_compare_lists_the_baselines_and_checks_input(s4, monkeypatch):
    (table,) = compare(s4)
    names = [r.strategy for r in table.results]
    assert {"brute_force", "rho_set", "irrep", "coset"} <= set(names)
    with pytest.raises(ValueError, match="models: expected a GroupMLP or a non-empty list"):
        compare([])
    compare_module = sys.modules["tl_tensorsim.proofs.groups.compare"]  # the package's `compare` is the function
    calls = []
    monkeypatch.setattr(compare_module, "brute_force", lambda m: calls.append(m))
    with pytest.raises(TypeError, match="model: expected a GroupMLP"):
        compare([s4, "not a model"])
    assert calls == []  # refused before the first model's proofs
    with pytest.raises(TypeError, match="explanation"):
        coset(s4, "not an explanation")
    with pytest.raises(ValueError, match="explanation"):
        irrep(s4, explain(GroupMLP(GroupMLPConfig(group="A4", d_embed=8, d_hidden=8))))
    with pytest.raises(ValueError, match="ideal"):
        verify_idealised(s4, (torch.zeros(3, 3),) * 3, "bad")
