"""Bilinear MLPs inside a HookedTransformer (identity activation in TransformerLens' registry) and the scope guard."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.conftest import HAS_HOOKED_TRANSFORMER, skip_without_hooked_transformer
from tl_tensorsim.tensor_networks import (
    IDENTITY_ACT_FN,
    HookedTensorNetwork,
    NotPolynomialError,
    bilinear_config,
    extract_mlp,
    extract_mlps,
    register_identity_activation,
    tensor_similarity,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SMALL = dict(n_layers=2, d_model=8, n_ctx=5, d_head=4, n_heads=2, d_mlp=12, d_vocab=11, dtype=torch.float64)


def _bilinear_transformer(seed: int, **kw):
    skip_without_hooked_transformer()
    from transformer_lens import HookedTransformer

    model = HookedTransformer(bilinear_config(**{**SMALL, "seed": seed, **kw}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero MLP biases, so that their handling is tested
        for name, p in model.named_parameters():
            if name.endswith(("mlp.b_in", "mlp.b_out")):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def test_identity_activation_is_registered():
    from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

    assert register_identity_activation() == IDENTITY_ACT_FN
    x = torch.randn(5)
    assert torch.equal(SUPPORTED_ACTIVATIONS[IDENTITY_ACT_FN](x), x)
    with pytest.raises(ValueError, match="gated_mlp"):
        bilinear_config(**SMALL, gated_mlp=False)


def test_bilinear_config_classes():
    from transformer_lens.config import TransformerBridgeConfig

    cfg = bilinear_config(bridge=True, **SMALL)
    assert isinstance(cfg, TransformerBridgeConfig) and cfg.gated_mlp and cfg.act_fn == IDENTITY_ACT_FN
    default = bilinear_config(**SMALL)
    assert default.gated_mlp and default.act_fn == IDENTITY_ACT_FN
    if HAS_HOOKED_TRANSFORMER:
        from transformer_lens import HookedTransformerConfig

        assert type(default) is HookedTransformerConfig
        assert type(bilinear_config(bridge=False, **SMALL)) is HookedTransformerConfig
    else:  # TransformerLens 4: the bridge config is the default, and the removed class is named in the error
        assert isinstance(default, TransformerBridgeConfig)
        with pytest.raises(ImportError, match=r"bridge=False.*TransformerLens 2.x/3.x.*bridge=True"):
            bilinear_config(bridge=False, **SMALL)
    with pytest.raises(ValueError, match="act_fn"):
        bilinear_config(bridge=True, **SMALL, act_fn="gelu")


def test_bilinear_config_boots_a_bridge_with_bilinear_mlps():
    """The TransformerLens 4 path: `TransformerBridge.boot_native(bilinear_config(bridge=True, ...), dtype=...)`."""
    from transformer_lens.model_bridge import TransformerBridge

    cfg = {k: v for k, v in SMALL.items() if k != "dtype"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_native(bilinear_config(bridge=True, **cfg), dtype=torch.float64).eval()
    x = torch.randn(2, 3, SMALL["d_model"], dtype=torch.float64)
    for layer in range(SMALL["n_layers"]):
        bil = extract_mlp(bridge, layer)
        assert bil.L.dtype == torch.float64
        with torch.no_grad():
            assert torch.allclose(bil(x), bridge.blocks[layer].mlp(x), atol=1e-10)


@pytest.mark.parametrize("normalization_type", [None, "LN"])
def test_extracted_mlp_matches_the_transformer_block(normalization_type):
    model = _bilinear_transformer(0, normalization_type=normalization_type)
    tokens = torch.randint(0, SMALL["d_vocab"], (3, 5))
    _, cache = model.run_with_cache(tokens)
    for layer in range(SMALL["n_layers"]):
        bil = extract_mlp(model, layer)
        mlp_in = (
            cache[f"blocks.{layer}.ln2.hook_normalized"]
            if normalization_type
            else cache[f"blocks.{layer}.hook_resid_mid"]
        )
        assert torch.allclose(bil(mlp_in), cache[f"blocks.{layer}.hook_mlp_out"], atol=1e-12)
        # gradients with respect to the MLP input agree too
        x = mlp_in.detach().clone().requires_grad_(True)
        y = x.detach().clone().requires_grad_(True)
        w = torch.randn_like(x)
        (model.blocks[layer].mlp(x) * w).sum().backward()
        (bil(y) * w).sum().backward()
        assert torch.allclose(x.grad, y.grad, atol=1e-12)


def test_extract_mlp_is_a_function_of_ln2_normalized_not_hook_mlp_in():
    """The docstring named `hook_mlp_in` as the input (it now names `ln2.hook_normalized`); that hook fires before
    `ln2`, so with LayerNorm the extracted layer applied there misses `hook_mlp_out`."""
    from transformer_lens.model_bridge import TransformerBridge

    from tl_tensorsim.adapter import ModelView

    cfg = bilinear_config(bridge=True, normalization_type="LN", **{k: v for k, v in SMALL.items() if k != "dtype"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = ModelView(TransformerBridge.boot_native(cfg, dtype=torch.float64).eval())  # TransformerLens 3 and 4
    names = ["blocks.0.hook_mlp_in", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"]
    with view.gates("blocks.0.hook_mlp_in"):
        _, cache = view.run_with_cache(torch.randint(0, SMALL["d_vocab"], (2, 5)), names=names)
    bil, out = extract_mlp(view.model, 0), cache["blocks.0.hook_mlp_out"]
    assert torch.allclose(bil(cache["blocks.0.ln2.hook_normalized"]), out, atol=1e-12)
    assert not torch.allclose(bil(cache["blocks.0.hook_mlp_in"]), out, atol=1e-3)


def test_transformer_and_tensor_network_give_the_same_number():
    a, b = _bilinear_transformer(1), _bilinear_transformer(2)
    for metric in ("frobenius", "gaussian"):
        for layer in range(SMALL["n_layers"]):
            la, lb = extract_mlp(a, layer), extract_mlp(b, layer)
            net_a = HookedTensorNetwork.from_layers(None, [la], None)
            net_b = HookedTensorNetwork.from_layers(None, [lb], None)
            s_ht = float(tensor_similarity(la, lb, metric))
            s_tn = float(tensor_similarity(net_a, net_b, metric))
            assert abs(s_ht - s_tn) < 1e-12 and abs(s_ht) < 1
            x = torch.randn(4, SMALL["d_model"], dtype=torch.float64)
            assert torch.allclose(net_a(x), a.blocks[layer].mlp(x), atol=1e-12)
    assert len(extract_mlps(a)) == SMALL["n_layers"]


def test_bridge_with_bilinear_mlp():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = {k: v for k, v in SMALL.items() if k != "dtype"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg, gated_mlp=True, act_fn=IDENTITY_ACT_FN))
    layer = extract_mlp(bridge, 0)
    x = torch.randn(2, 3, SMALL["d_model"])
    with torch.no_grad():
        assert torch.allclose(layer(x), bridge.blocks[0].mlp(x), atol=1e-5)


def test_non_polynomial_models_are_rejected():
    a = _bilinear_transformer(3)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with pytest.raises(NotPolynomialError, match="softmax attention"):
        tensor_similarity(a, a)
    gelu = HookedTransformer(HookedTransformerConfig(**{**SMALL, "act_fn": "gelu", "normalization_type": "LN"}))
    with pytest.raises(NotPolynomialError, match="LayerNorm"):
        tensor_similarity(gelu, gelu)
    with pytest.raises(NotPolynomialError, match="not bilinear"):
        extract_mlp(gelu, 0)
    with pytest.raises(TypeError, match="expected a HookedTensorNetwork"):
        tensor_similarity(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="layer"):
        extract_mlp(a, 5)


def test_non_polynomial_bridges_are_rejected():
    """The same scope guard on TransformerBridges (the only class TransformerLens 4.x has)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = {k: v for k, v in SMALL.items() if k != "dtype"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bilinear = TransformerBridge.boot_native(bilinear_config(bridge=True, **cfg))
        gelu = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg, act_fn="gelu", normalization_type="LN"))
    with pytest.raises(NotPolynomialError, match="softmax attention"):
        tensor_similarity(bilinear, bilinear)
    with pytest.raises(NotPolynomialError, match="LayerNorm"):
        tensor_similarity(gelu, gelu)
    with pytest.raises(NotPolynomialError, match="not bilinear"):
        extract_mlp(gelu, 0)
    with pytest.raises(ValueError, match="layer"):
        extract_mlp(bilinear, 5)
