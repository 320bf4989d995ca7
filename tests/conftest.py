"""Shared fixtures: the same random weights as a HookedTransformer and as a TransformerBridge.

Every analysis test reuses `model_pair` (raw weights) or `compat_pair` (HookedTransformer
processing vs bridge compatibility mode). Models are built locally; nothing is downloaded.
"""

from __future__ import annotations

import warnings

import pytest
import torch

SMALL = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, act_fn="gelu_new")


def make_model_pair(seed: int = 0, **overrides):
    """(HookedTransformer, TransformerBridge) holding identical random weights, LayerNorm randomised."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    kw = {**SMALL, **overrides}
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_native(TransformerBridgeConfig(**kw))
        with torch.no_grad():  # non-trivial LayerNorm parameters, so that fold_ln matters
            for name, p in bridge.named_parameters():
                if "ln" in name:
                    p.add_(0.1 * torch.randn_like(p))
        params = {k: v.detach().clone() for k, v in bridge.tl_parameters().items()}
        ht = HookedTransformer(HookedTransformerConfig(**kw, seed=seed))
    ht.load_state_dict(params, strict=False)
    ht.eval()
    bridge.eval()
    return ht, bridge


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def model_pair():
    return make_model_pair()


@pytest.fixture(params=["HookedTransformer", "TransformerBridge"])
def model(request, model_pair):
    """Each model class in turn, holding the same weights (tests parametrised over both classes)."""
    return model_pair[request.param == "TransformerBridge"]


@pytest.fixture(scope="session")
def compat_pair():
    ht, bridge = make_model_pair(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ht.process_weights_()
        bridge.enable_compatibility_mode(disable_warnings=True)
    return ht, bridge
