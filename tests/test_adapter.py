"""The adapter returns identical tensors for a HookedTransformer and a TransformerBridge with the same weights."""

from __future__ import annotations

import warnings

import pytest
import torch

import tl_tensorsim as ts
from tests.conftest import SMALL, make_bridge, needs_hooked_transformer
from tl_tensorsim.adapter import WEIGHT_NAMES

NAMES = [n for n in WEIGHT_NAMES if n != "W_gate"]


@pytest.mark.parametrize("pair", ["model_pair", "compat_pair"])
def test_weights_identical_on_both_classes(pair, request):
    ht, bridge = request.getfixturevalue(pair)
    a, b = ts.ModelView(ht), ts.ModelView(bridge)
    assert a.kind == "HookedTransformer" and b.kind == "TransformerBridge"
    for name in NAMES:
        wa, wb = a.weight(name), b.weight(name)
        assert wa.shape == wb.shape, name
        tol = 0.0 if pair == "model_pair" else 1e-6
        assert torch.allclose(wa, wb, atol=tol, rtol=0), (name, (wa - wb).abs().max())
    assert torch.allclose(a.OV.AB, b.OV.AB, atol=1e-6)
    assert torch.allclose(a.QK.AB, b.QK.AB, atol=1e-6)


def test_weight_stacks_straight_into_a_dtype(model):
    view = ts.ModelView(model)
    for name in ("W_Q", "W_O", "W_E"):
        w = view.weight(name, torch.float64)
        assert w.dtype == torch.float64 and torch.equal(w, view.weight(name).double()), name


def test_config_identical_on_both_classes(model_pair):
    a, b = (ts.ModelView(m) for m in model_pair)
    keys = ["n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx", "attn_only", "act_fn"]
    assert {k: getattr(a.cfg, k) for k in keys} == {k: getattr(b.cfg, k) for k in keys}


def test_weight_shapes_in_transformer_lens_layout(model):
    a = ts.ModelView(model)
    c = a.cfg
    assert a.W_Q.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    assert a.W_O.shape == (c.n_layers, c.n_heads, c.d_head, c.d_model)
    assert a.W_in.shape == (c.n_layers, c.d_model, c.d_mlp)
    assert a.W_E.shape == (c.d_vocab, c.d_model) and a.W_U.shape == (c.d_model, c.d_vocab)
    assert a.W_pos.shape == (c.n_ctx, c.d_model)
    assert a.OV.AB.shape == (c.n_layers, c.n_heads, c.d_model, c.d_model)
    assert a.head_labels()[:2] == ["L0H0", "L0H1"] and len(a.head_labels()) == c.n_layers * c.n_heads


def test_processing_is_read_off_the_model(model_pair, compat_pair):
    for m in model_pair:
        p = ts.ModelView(m).processing()
        assert not p["fold_ln"] and not p["center_writing_weights"]
    for m in compat_pair:
        p = ts.ModelView(m).processing()
        assert p["fold_ln"] and p["center_writing_weights"] and p["center_unembed"], p


def test_processing_is_read_off_a_bridge():
    """The same on a bridge alone (TransformerLens 4.x has no HookedTransformer to pair it with)."""
    bridge = make_bridge(1)
    p = ts.ModelView(bridge).processing()
    assert not p["fold_ln"] and not p["center_writing_weights"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge.enable_compatibility_mode(disable_warnings=True)
    p = ts.ModelView(bridge).processing()
    assert p["fold_ln"] and p["center_writing_weights"] and p["center_unembed"], p


def test_unsupported_object_names_what_is_supported():
    with pytest.raises(TypeError, match="HookedTransformer.*TransformerBridge"):
        ts.ModelView(torch.nn.Linear(3, 3))


def test_unknown_hook_name_lists_nearest(model):
    view = ts.ModelView(model)
    assert view.check_hook_name("blocks.1.hook_resid_post") == "blocks.1.hook_resid_post"
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_post"):
        view.check_hook_name("blocks.1.hook_resid_pots")
    assert view.hook_layer("blocks.1.attn.hook_z") == 1 and view.hook_layer("hook_embed") is None


BACKENDS = [pytest.param("hooked", marks=needs_hooked_transformer), "bridge"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_weight_and_missing_mlp(backend):
    view = ts.ModelView.build({**SMALL, "attn_only": True, "n_layers": 1}, backend=backend)
    with pytest.raises(ValueError, match="W_in"):
        _ = view.W_in
    with pytest.raises(ValueError, match="weight name"):
        view.weight("W_nope")


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_query_attention_keys_and_values_repeat_per_head(backend):
    """Grouped-query attention (2 key-value heads for 4 query heads): `W_K`, `W_V`, `b_K`, `b_V` come out per query
    head (each key-value head repeated for the query heads that share it), and they give the model's own keys and
    values (`hook_k`, `hook_v`: one per key-value head)."""
    view = ts.ModelView.build({**SMALL, "n_layers": 1, "n_key_value_heads": 2}, backend=backend)
    shapes = {name: tuple(view.weight(name).shape) for name in ("W_K", "W_V", "b_K", "b_V")}
    assert shapes == {"W_K": (1, 4, 32, 8), "W_V": (1, 4, 32, 8), "b_K": (1, 4, 8), "b_V": (1, 4, 8)}
    assert torch.equal(view.W_K[0, 0], view.W_K[0, 1]) and not torch.equal(view.W_K[0, 1], view.W_K[0, 2])
    assert view.has_weight("W_V")
    tokens = torch.randint(0, SMALL["d_vocab"], (2, 5), generator=torch.Generator().manual_seed(0))
    _, cache = view.run_with_cache(
        tokens, ["blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v"]
    )
    x = cache["blocks.0.ln1.hook_normalized"]
    for w, b, hook in (("W_K", "b_K", "hook_k"), ("W_V", "b_V", "hook_v")):
        mine = torch.einsum("bpd,hde->bphe", x, view.weight(w)[0]) + view.weight(b)[0]
        theirs = cache[f"blocks.0.attn.{hook}"].repeat_interleave(2, dim=2)
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_no_module_imports_hookedtransformer_at_module_level():
    """TransformerLens 4 has no HookedTransformer: no top-level import of it anywhere in the package."""
    import pathlib
    import re

    root = pathlib.Path(ts.__file__).resolve().parent.parent
    pattern = re.compile(
        r"^(from transformer_lens\S* import .*\bHookedTransformer\b(?!Config)|import transformer_lens\.HookedTransformer)"
    )
    offenders = [
        f"{path}:{i + 1}"
        for folder in ("tl_tensorsim", "hooks", "circuits", "demos")
        for path in (root / folder).rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines())
        if pattern.match(line)
    ]
    assert not offenders, offenders


def test_feature_shape_matches_the_cache(model):
    view = ts.ModelView(model)
    names = [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_post",
        "blocks.0.hook_attn_out",
        "blocks.1.hook_mlp_out",
        "blocks.0.mlp.hook_post",
        "blocks.1.attn.hook_z",
        "blocks.0.attn.hook_q",
        "hook_embed",
    ]
    _, cache = model.run_with_cache(torch.randint(0, 50, (2, 5)), names_filter=names)
    for n in names:
        assert tuple(cache[n].shape[2:]) == view.feature_shape(n), n
    if view.kind == "TransformerBridge":
        assert view.canonical_hook_name("blocks.0.hook_out") == "blocks.0.hook_resid_post"
        assert view.feature_shape("blocks.0.hook_out") == (32,)
    with pytest.raises(ValueError, match="no feature axis"):
        view.feature_shape("blocks.0.attn.hook_pattern")
