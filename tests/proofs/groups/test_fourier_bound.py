"""The Fourier deviation (`rho_set(..., deviation="fourier")`, `fourier_bound`): its slack is a lower bound of every
pair's exact margin (checked pair by pair against brute force, which evaluates all |G| logits) for trained,
random, noise-perturbed models and wrong idealised readouts, on groups with real- and complex-type irreps; the
irreps' float error constants are tiny and grow when the matrices are not a representation; a bi-equivariant
hand-built network certifies 100%."""

from __future__ import annotations

import pytest
import torch

from tests.proofs.groups.factories import handbuilt, noisy, tetra_circuits
from tl_tensorsim.models import group_mlp
from tl_tensorsim.models.group_mlp import GroupMLP, GroupMLPConfig
from tl_tensorsim.proofs.groups import brute_force, explain, group_by_name, irreps, rho_set
from tl_tensorsim.proofs.groups.explain import model_tables
from tl_tensorsim.proofs.groups.fourier_bound import fit_phi_hat, fourier_slack, irrep_errors
from tl_tensorsim.proofs.groups.irreps import Irrep
from tl_tensorsim.proofs.groups.verify import certified_tables


def _slack(model, names=None, phi_hat=None):
    group, wl, wr, wu = model_tables(model)
    if phi_hat is None:
        names = names if names is not None else [r.name for r in irreps(group) if r.name != "trivial"]
        phi_hat = fit_phi_hat(group, wl, wr, wu, names)
    _, bl, br, bu = certified_tables(model)
    return fourier_slack(group, (bl, br, bu), phi_hat)[0]


@pytest.mark.parametrize("group", ["S3", "S4", "A4", "C7", "D5"])
def test_irrep_error_constants_are_tiny_and_detect_a_non_representation(group):
    g = group_by_name(group)
    for rep in irreps(g):
        nu, o, o2, w, iota = irrep_errors(g, rep)
        assert max(nu, o, o2, iota) < 1e-12 and w == pytest.approx(rep.dim**0.5, rel=1e-12)
    rep = irreps(g)[-1]
    bent = rep.matrices.clone()
    bent[1] = bent[1] * 1.01  # one matrix off: neither orthogonal nor a homomorphism
    nu, o, o2, _, _ = irrep_errors(g, Irrep(rep.name + "-bent", bent))
    assert nu > 1e-3 and o > 1e-3 and o2 > 1e-3


@pytest.mark.parametrize("group", ["S4", "C7", "D5", "A4"])
def test_slack_is_below_every_exact_margin(group):
    # brute force evaluates all |G| logits of every pair; the Fourier slack may never exceed its margin, for the
    # fitted readout in all irreps, in one irrep, and for wrong readouts (zero, random, scaled up)
    for seed in range(2):
        model = GroupMLP(GroupMLPConfig(group=group, d_embed=16, d_hidden=24, seed=seed))
        exact = brute_force(model).margin
        g, *_ = model_tables(model)
        reps = [r for r in irreps(g) if r.name != "trivial"]
        names = [r.name for r in reps]
        gen = torch.Generator().manual_seed(seed)
        readouts = [
            None,
            {r.name: torch.randn(r.dim, r.dim, generator=gen, dtype=torch.float64) for r in reps},
            {reps[-1].name: torch.zeros(reps[-1].dim, reps[-1].dim, dtype=torch.float64)},
        ]
        for phi_hat in readouts:
            slack = _slack(model, phi_hat=phi_hat)
            assert bool((slack <= exact + 1e-9).all())
        assert bool((_slack(model, names[-1:]) <= exact + 1e-9).all())


def test_sound_and_tight_on_a_trained_model_under_noise():
    model = group_mlp.load(group_mlp.shipped("S4")[0])
    for scale in (0.0, 0.01, 0.1, 0.3):
        perturbed = noisy(model, scale)
        exact = brute_force(perturbed)
        slack = _slack(perturbed)  # every irrep: no residual, only the Cauchy–Schwarz and rounding terms
        assert bool((slack <= exact.margin + 1e-9).all())
        if scale == 0.0:
            assert float((slack > 0).double().mean()) > 0.95
        result = rho_set(perturbed, explain(perturbed), deviation="fourier")
        assert bool((result.certified <= exact.certified).all())
        assert bool((result.margin <= exact.margin + 1e-9).all())


def test_handbuilt_network_certifies_fully_and_cheaply():
    group, circuits = tetra_circuits()
    model, expl = handbuilt(group, circuits, pad=3)
    result = rho_set(model, expl, deviation="fourier", phi="rho_set")  # Φ from the verified ρ-set network
    assert result.bound == 1.0
    assert result.flops < brute_force(model).flops


@pytest.mark.parametrize("name", ["S4", "S5"])
def test_shipped_models(name):
    # S5 (sign and (4,1)): >= 95% certified at a fifth of brute force's FLOPs; S4: sound, certifies something
    model = group_mlp.load(group_mlp.shipped(name)[0])
    expl = explain(model)
    exact = brute_force(model)
    result = rho_set(model, expl, deviation="fourier")
    assert bool((result.certified <= exact.certified).all()) and bool((result.margin <= exact.margin + 1e-9).all())
    assert result.settings["fourier"]["irreps"] == sorted(expl.phi_irreps)
    if name == "S5":
        assert result.bound >= 0.95 and result.flops < 0.25 * exact.flops
    with pytest.raises(ValueError, match="phi"):
        rho_set(model, expl, deviation="fourier", phi="exact")
    bad = {n: torch.zeros(1, 1, dtype=torch.float64) for n in expl.phi_irreps if n != "(1,1,1,1,1)"}
    with pytest.raises(ValueError, match="phi_hat"):
        group, *_ = model_tables(model)
        fourier_slack(group, certified_tables(model)[1:], bad)
