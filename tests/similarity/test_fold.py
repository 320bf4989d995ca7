"""`fold=True`: TransformerLens' fold_ln / center_writing_weights / center_unembed applied to the circuit factors,
so a raw and a processed copy of one model have the same circuits (measured: diagonal 0.90-0.99 without it)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import tl_tensorsim as ts
from tests.conftest import make_bridge, needs_hooked_transformer, skip_without_hooked_transformer
from tests.similarity.conftest import f64_model
from tl_tensorsim.similarity import checkpoint_similarity, head_similarity

CASES = [("QK", "residual", False), ("OV", "residual", False), ("QK", "token", True), ("OV", "token", False)]
FLAGS = {
    "process_weights_": {},
    "fold_ln only": dict(fold_ln=True, center_writing_weights=False, center_unembed=False),
}


def _processed(raw, flags):
    model = copy.deepcopy(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.process_weights_(**flags)
    return model


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def raw():
    skip_without_hooked_transformer()  # the tests that use it process HookedTransformer copies
    return f64_model(5)


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("circuit,level,positions", CASES)
def test_raw_and_processed_copies_agree_with_fold(raw, flags, circuit, level, positions):
    processed = _processed(raw, FLAGS[flags])
    kw = dict(circuit=circuit, level=level, positions=positions)
    unfolded = _quiet(head_similarity, raw, processed, **kw).values.diagonal()
    assert unfolded.max() < 0.995  # LayerNorm gains and centring are missing from the raw model's circuits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no processing warning: fold makes the two comparable
        folded = head_similarity(raw, processed, fold=True, **kw)
    torch.testing.assert_close(folded.values.diagonal(), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-6)
    # the whole matrix is the processed model's own (TransformerLens' float64 processing differs from ours by ~3e-8)
    reference = head_similarity(processed, None, fold=True, **kw).values
    torch.testing.assert_close(folded.values, reference, rtol=0, atol=1e-6)
    if flags == "process_weights_":  # folding a fully processed model changes nothing
        torch.testing.assert_close(head_similarity(processed, None, **kw).values, reference, rtol=0, atol=1e-12)
    assert folded.settings["fold"] is True


@needs_hooked_transformer  # `process_weights_` is HookedTransformer's
def test_rms_norm_gains_are_folded_without_centring():
    raw = f64_model(6, normalization_type="RMS")
    processed = _processed(raw, {})
    assert ts.as_view(processed).cfg.normalization_type == "RMSPre"
    for circuit in ("QK", "OV"):
        folded = head_similarity(raw, processed, circuit, "token", fold=True).values.diagonal()
        torch.testing.assert_close(folded, torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-6)


def test_bridge_raw_and_compatibility_mode_agree_with_fold():
    """TransformerBridge (TransformerLens 3.x and 4.x): raw weights vs `enable_compatibility_mode()` processing."""
    raw = make_bridge(seed=3)
    processed = copy.deepcopy(raw)
    _quiet(processed.enable_compatibility_mode, disable_warnings=True)
    for circuit, level, _ in CASES:
        assert _quiet(head_similarity, raw, processed, circuit, level).values.diagonal().max() < 0.995
        folded = head_similarity(raw, processed, circuit, level, fold=True).values.diagonal()
        torch.testing.assert_close(folded, torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-6)


def test_layer_norm_weights_through_the_adapter(raw):
    processed = _processed(raw, {})
    view, pview = ts.as_view(raw), ts.as_view(processed)
    assert view.weight("ln1_w").shape == (2, 24) and view.ln_final_w.shape == (24,)
    assert torch.equal(view.weight("ln1_w")[1], raw.blocks[1].ln1.w.detach())
    assert not pview.has_weight("ln1_w")  # LNPre has no gain: the adapter gives the identity
    assert torch.equal(pview.weight("ln1_w"), torch.ones(2, 24, dtype=torch.float64))
    assert torch.equal(pview.weight("ln_final_b"), torch.zeros(24, dtype=torch.float64))


def test_checkpoint_similarity_folds_every_checkpoint(raw):
    processed = _processed(raw, {})
    for circuit, level in (("QK", "residual"), ("OV", "token")):
        plain = _quiet(checkpoint_similarity, [raw, processed], circuit, level, progress=False)
        folded = checkpoint_similarity([raw, processed], circuit, level, fold=True, progress=False)
        assert plain.to_final[:, 0].max() < 0.995
        torch.testing.assert_close(folded.to_final[:, 0], torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-6)
        assert folded.settings["fold"] is True
