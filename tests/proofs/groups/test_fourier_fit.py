"""The untrusted search for the Fourier check's idealised readout (`fourier_fit`): refining the least-squares Φ̂
for the count of certified pairs raises the check's bound on a noise-perturbed trained model, the search's own
count is the check's, the refined bound stays sound (every certified pair correct by brute force), zero steps
leave the fit alone, and an empty readout certifies nothing."""

from __future__ import annotations

import pytest
import torch

from tests.proofs.groups.factories import noisy
from tl_tensorsim.models import group_mlp
from tl_tensorsim.proofs.groups import brute_force
from tl_tensorsim.proofs.groups.explain import model_tables
from tl_tensorsim.proofs.groups.fourier_bound import fourier_slack
from tl_tensorsim.proofs.groups.fourier_fit import fit_centre, fit_phi_hat, refine_phi_hat
from tl_tensorsim.proofs.groups.verify import certified_tables


@pytest.mark.parametrize("scale", [0.1, 0.2])
def test_refined_readout_certifies_more_and_stays_sound(scale):
    # the shipped S4 model with noise: the least-squares Φ̂ certifies 99.1% (scale 0.1) and 0.35% (0.2) of the pairs
    model = noisy(group_mlp.load(group_mlp.shipped("S4")[0]), scale)
    group, wl, wr, wu = model_tables(model)
    tables = certified_tables(model)[1:]
    centre = fit_centre(group, wl, wr)
    fitted = fit_phi_hat(group, wl, wr, wu, ["(1,1,1,1)", "(2,2)", "(3,1)"])
    refined, estimate = refine_phi_hat(group, wl, wr, wu, fitted, centre)
    before = fourier_slack(group, tables, fitted, centre)[0] > 0
    after = fourier_slack(group, tables, refined, centre)[0] > 0
    assert float(after.double().mean()) > float(before.double().mean()) + 0.005
    assert float(after.double().mean()) == pytest.approx(estimate, abs=2 / after.numel())
    assert bool((after <= brute_force(model).certified).all())
    same, _ = refine_phi_hat(group, wl, wr, wu, fitted, centre, steps=0)
    assert all(torch.equal(same[k], fitted[k]) for k in fitted)
    assert refine_phi_hat(group, wl, wr, wu, {}, centre) == ({}, 0.0)  # no irreps: nothing to refine or certify
