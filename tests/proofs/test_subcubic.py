"""The subcubic proofs: the search is advice the check verifies, never trusts."""

from __future__ import annotations

import torch

from tests.proofs.factories import ideal_state, model_with
from tests.proofs.test_soundness import assert_sound
from tl_tensorsim.proofs import max_of_k
from tl_tensorsim.proofs.max_of_k.subcubic import SubcubicAdvice, _parts, subcubic_bound


def test_searched_gaps_are_the_smallest_certified_ones():
    model = model_with(ideal_state(9, 3, 8, seed=5, noise=0.01))
    for attention in ("exact", "svd"):
        advice = max_of_k.search(model, attention=attention, direct="exact")
        parts = _parts(max_of_k.check_model(model), attention, "exact", advice.u, advice.v, None)
        ok = subcubic_bound(parts, advice.gaps).upper() < 0
        looser = subcubic_bound(parts, (advice.gaps - 1).clamp_min(1)).upper() < 0
        m = torch.arange(9)[None, :, None].expand_as(advice.gaps)
        searched = (advice.gaps <= m) & (torch.arange(3) > 0)
        assert ok[searched].all()
        assert not looser[searched & (advice.gaps > 1)].any()


def test_the_check_rejects_bad_advice_and_stays_sound():
    model = model_with(ideal_state(8, 3, 8, seed=6, noise=0.02))
    honest = max_of_k.subcubic(model, attention="svd", direct="exact", check_samples=0)
    advice = max_of_k.search(model, attention="svd", direct="exact")
    greedy = SubcubicAdvice(advice.u, advice.v, torch.ones_like(advice.gaps))  # claims every non-max token
    g = torch.Generator().manual_seed(0)
    garbage = SubcubicAdvice(
        torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64), advice.gaps
    )
    tokens = max_of_k.all_inputs(8, 3)
    correct = max_of_k.brute_force(model, progress=False).certified.reshape(-1)
    for bad in (greedy, garbage):
        result = max_of_k.subcubic(model, attention="svd", direct="exact", advice=bad, check_samples=0)
        assert result.n_certified <= honest.n_certified
        assert not (max_of_k.certified_inputs(result.certified, tokens) & ~correct).any()
    assert honest.search_time > 0 and honest.wall_time > 0 and honest.flops > 0


def test_bias_folding_keeps_every_strategy_sound():
    assert_sound(model_with(ideal_state(7, 3, 8, seed=7, bias=0.05)))
