"""The Fourier deviation (`rho_set(..., deviation="fourier")`, `fourier_bound`): its slack is a lower bound of every
pair's exact margin (checked pair by pair against brute force, which evaluates all |G| logits) for trained,
random, noise-perturbed models and wrong idealised readouts, on groups with real- and complex-type irreps; the
irreps' float error constants are tiny and grow when the matrices are not a representation; a bi-equivariant
hand-built network certifies 100%; the residual's centre (untrusted) keeps the bound sound whatever it is, and the
fitted one tightens it; the fitted centre and the pairs read answer by answer against brute force."""

from __future__ import annotations

import pytest
import torch

from tests.proofs.groups.factories import handbuilt, noisy, tetra_circuits
from tl_tensorsim.models import group_mlp
from tl_tensorsim.models.group_mlp import GroupMLP, GroupMLPConfig
from tl_tensorsim.proofs.groups import brute_force, explain, group_by_name, irreps, rho_set
from tl_tensorsim.proofs.groups.explain import model_tables
from tl_tensorsim.proofs.groups.fourier_bound import fourier_slack, irrep_errors
from tl_tensorsim.proofs.groups.fourier_fit import fit_centre, fit_phi_hat
from tl_tensorsim.proofs.groups.irreps import Irrep
from tl_tensorsim.proofs.groups.pairs import answer_index, answer_rows, hidden_rows
from tl_tensorsim.proofs.groups.verify import certified_tables


def _slack(model, names=None, phi_hat=None, centre=None):
    group, wl, wr, wu = model_tables(model)
    if phi_hat is None:
        names = names if names is not None else [r.name for r in irreps(group) if r.name != "trivial"]
        phi_hat = fit_phi_hat(group, wl, wr, wu, names)
    _, bl, br, bu = certified_tables(model)
    return fourier_slack(group, (bl, br, bu), phi_hat, centre)[0]


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


@pytest.mark.parametrize("irrep", ["(3,1)", "(2,1,1)", "(2,2)"])
def test_residual_bound_is_sound_for_any_centre(irrep):
    # one irrep of the shipped S4 model's readout only, so most of it is residual: the fitted centre, none, and
    # random centres at three scales (the centre is untrusted) all keep the slack below every exact margin
    model = group_mlp.load(group_mlp.shipped("S4")[0])
    exact = brute_force(model).margin
    group, wl, wr, _ = model_tables(model)
    gen = torch.Generator().manual_seed(0)
    centres = [fit_centre(group, wl, wr), None]
    centres += [s * torch.randn(wl.shape, generator=gen, dtype=torch.float64) for s in (0.1, 1.0, 100.0)]
    for centre in centres:
        assert bool((_slack(model, [irrep], centre=centre) <= exact + 1e-9).all())


def test_fitted_centre_and_the_pairs_answer_by_answer():
    # a0(z) is the mean of |w_l[x] + w_r[y]| / 2 over the pairs with answer z (brute force over the table); the
    # hidden layer read answer by answer lists every pair once, (x, x⁻¹ ⋆ z) in row j·n + x, as x-blocks do
    model = GroupMLP(GroupMLPConfig(group="A4", d_embed=16, d_hidden=24, seed=1))
    group, wl, wr, _ = model_tables(model)
    a0 = fit_centre(group, wl, wr)
    for z in range(12):
        pairs = [(x, y) for x in range(12) for y in range(12) if group.table[x, y] == z]
        assert len(pairs) == 12
        expected = torch.stack([(wl[x] + wr[y]).abs() / 2 for x, y in pairs]).mean(0)
        assert torch.allclose(a0[z], expected, atol=1e-12)
    y = answer_index(group)
    assert bool((group.table[torch.arange(12)[None], y] == torch.arange(12)[:, None]).all())  # x ⋆ y[z, x] = z
    hidden = (wl[:, None] + wr[None]).clamp_min(0)  # [x, y, m]
    for step in (1, 5, 12):  # 5: a short last block
        blocks = [(zs, h.clone()) for zs, h in answer_rows(group, wl, wr, step)]
        assert [z for zs, _ in blocks for z in range(12)[zs]] == list(range(12))
        rows = torch.cat([h for _, h in blocks]).view(12, 12, -1)  # [z, x, m]
        assert torch.equal(rows, hidden[torch.arange(12)[None], y])
    blocks = [(xs, h.clone()) for xs, h in hidden_rows(wl, wr)]  # every pair once, in order
    assert [x for xs, _ in blocks for x in range(12)[xs]] == list(range(12))
    assert torch.equal(torch.cat([h for _, h in blocks]), hidden.reshape(144, 24))


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
    # S5 (sign and (4,1)): >= 95% certified at under 30% of brute force's FLOPs; S4: sound, certifies something
    model = group_mlp.load(group_mlp.shipped(name)[0])
    expl = explain(model)
    exact = brute_force(model)
    result = rho_set(model, expl, deviation="fourier")
    assert bool((result.certified <= exact.certified).all()) and bool((result.margin <= exact.margin + 1e-9).all())
    assert result.settings["fourier"]["irreps"] == sorted(expl.phi_irreps)
    if name == "S5":
        assert result.bound >= 0.95 and result.flops < 0.3 * exact.flops
        # the centred Cauchy–Schwarz residual bound beats the per-neuron one here, and certifies more than no centre
        terms = result.settings["fourier"]
        assert terms["residual_cs_mean"] < terms["residual_per_neuron_mean"]
        uncentred = float((_slack(model, phi_hat=expl.idealised_readout()) > 0).double().mean())
        assert uncentred < result.bound
    with pytest.raises(ValueError, match="phi"):
        rho_set(model, expl, deviation="fourier", phi="exact")
    bad = {n: torch.zeros(1, 1, dtype=torch.float64) for n in expl.phi_irreps if n != "(1,1,1,1,1)"}
    group, *_ = model_tables(model)
    with pytest.raises(ValueError, match="phi_hat"):
        fourier_slack(group, certified_tables(model)[1:], bad)
    with pytest.raises(ValueError, match="centre"):
        fourier_slack(group, certified_tables(model)[1:], expl.idealised_readout(), expl.hidden_centre()[:-1])
