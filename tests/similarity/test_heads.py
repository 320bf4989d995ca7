"""head_similarity equals the materialised Frobenius cosine; model classes, processing, errors, result object."""

from __future__ import annotations

import warnings

import pytest
import torch

import tl_tensorsim as ts
from tests.conftest import needs_hooked_transformer
from tests.similarity.conftest import CFG, brute_cosine, circuits, f64_model
from tl_tensorsim.similarity import HeadSimilarity, head_similarity


@pytest.mark.parametrize("circuit", ["QK", "OV"])
@pytest.mark.parametrize("level,positions", [("residual", False), ("token", False), ("token", True), ("token", 4)])
@pytest.mark.parametrize("method", ["factored", "dense"])
def test_equals_materialised_cosine(pair64, circuit, level, positions, method):
    a, b = pair64
    n_pos = CFG["n_ctx"] if positions is True else (positions or None)
    Ma, Mb = circuits(a, circuit, level, n_pos), circuits(b, circuit, level, n_pos)
    sim = head_similarity(a, b, circuit, level, positions=positions, method=method)
    assert sim.values.dtype == torch.float64 and sim.values.shape == (6, 6)
    torch.testing.assert_close(sim.values, brute_cosine(Ma, Mb), rtol=0, atol=1e-9)
    torch.testing.assert_close(sim.inner, Ma @ Mb.T, rtol=1e-10, atol=1e-9)
    self_sim = head_similarity(a, None, circuit, level, positions=positions, method=method)
    torch.testing.assert_close(self_sim.values, brute_cosine(Ma, Ma), rtol=0, atol=1e-9)
    torch.testing.assert_close(self_sim.values.diagonal(), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_token_level_across_widths_sharing_a_vocabulary(pair64):
    a = pair64[0]
    wide = f64_model(3, d_model=40, d_head=5, n_heads=4)
    for circuit in ("QK", "OV"):
        sim = head_similarity(a, wide, circuit, "token")
        ref = brute_cosine(circuits(a, circuit, "token"), circuits(wide, circuit, "token"))
        assert sim.values.shape == (6, 8)
        torch.testing.assert_close(sim.values, ref, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="d_model"):
        head_similarity(a, wide, "QK", "residual")
    with pytest.raises(ValueError, match="vocabulary"):
        head_similarity(a, f64_model(4, d_vocab=41), "OV", "token")


@pytest.mark.parametrize("pair", ["model_pair", "compat_pair"])
def test_hooked_transformer_and_bridge_give_the_same_numbers(pair, request):
    ht, bridge = request.getfixturevalue(pair)
    tol = 1e-12 if pair == "model_pair" else 1e-5
    for circuit in ("QK", "OV"):
        for level in ("residual", "token"):
            s_ht, s_br = head_similarity(ht, None, circuit, level), head_similarity(bridge, None, circuit, level)
            torch.testing.assert_close(s_ht.values, s_br.values, rtol=0, atol=tol)
            cross = head_similarity(ht, bridge, circuit, level)
            torch.testing.assert_close(cross.values.diagonal(), torch.ones(8, dtype=torch.float64), rtol=0, atol=tol)
    assert s_ht.labels_a == s_br.labels_a == ts.as_view(ht).head_labels()


def _processing_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if "processed differently" in str(w.message)]


def test_warns_when_models_were_processed_differently(model_pair, compat_pair):
    raw_ht, processed_ht = model_pair[0], compat_pair[0]
    assert _processing_warnings(lambda: head_similarity(raw_ht, processed_ht, "OV"))
    assert not _processing_warnings(lambda: head_similarity(raw_ht, model_pair[1], "OV"))
    assert not _processing_warnings(lambda: head_similarity(processed_ht, compat_pair[1], "OV", "token"))


@needs_hooked_transformer  # `process_weights_` with these options is HookedTransformer's
def test_processing_changes_the_circuits_and_refactor_keeps_them():
    """fold_ln / center_writing_weights change OV; refactor_factored_attn_matrices keeps QK and OV."""
    import copy

    raw = f64_model(5)
    folded = copy.deepcopy(raw)
    refactored = copy.deepcopy(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folded.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
        refactored.process_weights_(
            fold_ln=False, center_writing_weights=False, center_unembed=False, refactor_factored_attn_matrices=True
        )
        moved = head_similarity(raw, folded, "OV").values.diagonal()
        kept = head_similarity(raw, refactored, "OV").values.diagonal()
    assert (moved < 1 - 1e-4).all()
    torch.testing.assert_close(kept, torch.ones_like(kept), rtol=0, atol=1e-9)


def test_argument_errors(pair64):
    a, b = pair64
    with pytest.raises(ValueError, match="circuit"):
        head_similarity(a, b, "QV")
    with pytest.raises(ValueError, match="level"):
        head_similarity(a, b, "QK", "logit")
    with pytest.raises(ValueError, match="metric"):
        head_similarity(a, b, metric="cka")
    with pytest.raises(ValueError, match="positions"):
        head_similarity(a, b, "QK", "residual", positions=True)
    with pytest.raises(ValueError, match="positions"):
        head_similarity(a, b, "QK", "token", positions=CFG["n_ctx"] + 1)
    with pytest.raises(ValueError, match="W_pos"):
        head_similarity(f64_model(2, positional_embedding_type="rotary"), None, "QK", "token", positions=True)
    with pytest.raises(TypeError, match="model"):
        head_similarity(torch.nn.Linear(2, 2))


def test_result_object_dataframe_plot_save_load(pair64, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    sim = head_similarity(*pair64, "OV", "token", positions=True)
    df = sim.to_dataframe()
    assert list(df.index) == sim.labels_a == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    assert list(df.columns) == sim.labels_b and df.loc["L1H0", "L0H2"] == sim.values[3, 2].item()
    assert len(sim.best_matches()) == 6
    assert "HeadSimilarity(tensor, OV, token: 6 x 6" in repr(sim)
    sim.plot(path=tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    back = HeadSimilarity.load(sim.save(tmp_path / "sim"))
    assert torch.equal(back.values, sim.values) and torch.equal(back.inner, sim.inner)
    assert back.labels_b == sim.labels_b and back.settings == sim.settings and back.level == "token"
