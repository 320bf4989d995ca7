"""Soundness as set inclusion: every input a proof certifies is one the brute force classifies correctly, for
random, trained and adversarially scaled models on tiny configurations (Hypothesis draws the cases)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.proofs.factories import ideal_state, model_with, random_state
from tl_tensorsim.models import max_of_k as mok
from tl_tensorsim.proofs import max_of_k


def assert_sound(model) -> dict[str, float]:
    """Brute force, then every strategy: certified set ⊆ correct set, and the combinatorial count equals the size
    of the expanded certified set. Returns the bounds."""
    exact = max_of_k.brute_force(model, progress=False, check_samples=0)
    V, n = exact.certified.shape[0], exact.certified.ndim
    tokens = max_of_k.all_inputs(V, n)
    correct = exact.certified.reshape(-1)
    assert int(correct.sum()) == exact.n_certified
    results = [max_of_k.cubic(model, check_samples=0)]
    results += [max_of_k.subcubic(model, attention=a, direct=d, check_samples=0) for a, d in max_of_k.SUBCUBIC_VARIANTS]
    bounds = {"brute_force": exact.bound}
    for result in results:
        certified = max_of_k.certified_inputs(result.certified, tokens)
        wrong = tokens[certified & ~correct]
        assert len(wrong) == 0, f"{result.strategy} certifies misclassified inputs, e.g. {wrong[:5].tolist()}"
        assert int(certified.sum()) == result.n_certified, result.strategy
        assert result.bound <= exact.bound
        bounds[result.strategy] = result.bound
    return bounds


@st.composite
def tiny_models(draw):
    n = draw(st.integers(2, 4))
    V = draw(st.integers(5, 12 if n < 4 else 9))
    d = draw(st.sampled_from([6, 8]))
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["random", "ideal", "ideal", "adversarial"]))
    if kind == "random":
        state = random_state(V, n, d, seed)
        scale = draw(st.sampled_from([1.0, 5.0]))
        state = {k: v * scale for k, v in state.items()}
    else:
        adversarial = kind == "adversarial"
        state = ideal_state(
            V,
            n,
            d,
            seed,
            qk_scale=draw(st.sampled_from([3.0, 30.0, 3000.0] if adversarial else [10.0, 30.0])),
            ov_scale=draw(st.sampled_from([1e-3, 1.0, 50.0] if adversarial else [5.0, 20.0])),
            noise=draw(st.sampled_from([0.0, 0.003, 0.01, 0.03])),
            flip=adversarial and draw(st.booleans()),
            tie=adversarial and draw(st.booleans()),
            bias=draw(st.sampled_from([0.0, 0.01])),
        )
    return model_with(state)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_models())
def test_every_certified_input_is_correct(model):
    assert_sound(model)


def test_ideal_models_get_tight_bounds():
    """The hand-built model computes the max exactly: the cubic proof certifies every input, and the subcubic
    proofs with exact or SVD attention handling most of them (a check that soundness is not bought by vacuity)."""
    bounds = assert_sound(model_with(ideal_state(8, 3, 8, seed=1)))
    assert bounds["brute_force"] == 1.0 and bounds["cubic"] == 1.0
    assert bounds["subcubic[attention=exact, direct=exact]"] > 0.9
    assert bounds["subcubic[attention=svd, direct=exact]"] > 0.9


def test_exact_ties_are_never_certified():
    """Outputs V-1 and V-2 share one unembedding column, so their logits tie exactly in real arithmetic: no input
    whose max is one of them is correct, and no proof may certify one (rounding could make the margin look
    positive without the error bounds)."""
    model = model_with(ideal_state(8, 3, 8, seed=2, tie=True))
    exact = max_of_k.brute_force(model, progress=False, check_samples=0)
    assert exact.settings["ambiguous"] > 0
    tokens = max_of_k.all_inputs(8, 3)
    tied = tokens.max(1).values >= 6
    assert not exact.certified.reshape(-1)[tied].any()
    assert_sound(model)


@pytest.fixture(scope="module", params=[(10, 3, 8), (6, 4, 8)], ids=["V10n3", "V6n4"])
def trained(request):
    V, n, d = request.param
    config = mok.MaxOfKConfig(d_vocab=V, n_ctx=n, d_model=d, d_head=d, steps=400, eval_every=400, seed=1)
    return mok.train(config, progress=False).model


def test_trained_models_are_proven_soundly(trained):
    bounds = assert_sound(trained)
    assert bounds["brute_force"] > 0.8
    assert bounds["cubic"] > 0.3  # not vacuous on a trained model


def test_bridge_models_get_the_same_certificates():
    state = ideal_state(7, 3, 6, seed=3, noise=0.01)
    hooked = model_with(state)
    bridge = model_with(state, backend="bridge")
    for fn in (max_of_k.cubic, max_of_k.subcubic):
        a, b = fn(hooked, check_samples=0), fn(bridge, check_samples=64)
        assert torch.equal(a.certified, b.certified) and a.n_certified == b.n_certified
