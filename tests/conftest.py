"""Shared fixtures: the same random weights as a HookedTransformer and as a TransformerBridge.

Every analysis test reuses `model_pair` (raw weights) or `compat_pair` (HookedTransformer
processing vs bridge compatibility mode). Models are built locally; nothing is downloaded.
"""

from __future__ import annotations

import warnings

import pytest
import torch

SMALL = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, act_fn="gelu_new")


def _has_hooked_transformer() -> bool:
    try:  # TransformerLens 4 removed it: its module __getattr__ raises ImportError (so no hasattr here)
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


HAS_HOOKED_TRANSFORMER = _has_hooked_transformer()
NO_HOOKED_TRANSFORMER = (
    "needs HookedTransformer, which the installed TransformerLens (4.x, bridge only) no longer has; "
    "CI runs it in the TransformerLens 3.9 leg"
)
needs_hooked_transformer = pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason=NO_HOOKED_TRANSFORMER)


def skip_without_hooked_transformer() -> None:
    """Skip the calling test (or fixture) where TransformerLens has no HookedTransformer."""
    if not HAS_HOOKED_TRANSFORMER:
        pytest.skip(NO_HOOKED_TRANSFORMER)


def make_bridge(seed: int = 0, **overrides):
    """A native TransformerBridge with random weights, LayerNorm randomised (TransformerLens 3.x and 4.x)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_native(TransformerBridgeConfig(**{**SMALL, **overrides}))
        with torch.no_grad():  # non-trivial LayerNorm parameters, so that fold_ln matters
            for name, p in bridge.named_parameters():
                if "ln" in name:
                    p.add_(0.1 * torch.randn_like(p))
    return bridge.eval()


def make_model_pair(seed: int = 0, **overrides):
    """(HookedTransformer, TransformerBridge) holding identical random weights, LayerNorm randomised.

    Skips the calling test where TransformerLens has no HookedTransformer (4.x)."""
    skip_without_hooked_transformer()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = {**SMALL, **overrides}
    bridge = make_bridge(seed, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = {k: v.detach().clone() for k, v in bridge.tl_parameters().items()}
        ht = HookedTransformer(HookedTransformerConfig(**kw, seed=seed))
    ht.load_state_dict(params, strict=False)
    ht.eval()
    bridge.eval()
    return ht, bridge


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection raises in this test: the model hub and dataset hub are unreachable in CI, so a test
    that crosses the loading boundary proves it stays local."""
    import socket

    def refuse(*args, **kwargs):
        raise RuntimeError("network blocked in tests (the model hub is unreachable in CI)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def model_pair():
    return make_model_pair()


@pytest.fixture(scope="session")
def bridge_model():
    """The TransformerBridge of `model_pair` (same weights), built without needing HookedTransformer."""
    return make_bridge()


@pytest.fixture(params=[pytest.param("HookedTransformer", marks=needs_hooked_transformer), "TransformerBridge"])
def model(request):
    """Each model class in turn, holding the same weights (tests parametrised over both classes)."""
    if request.param == "TransformerBridge":
        return request.getfixturevalue("bridge_model")
    return request.getfixturevalue("model_pair")[0]


@pytest.fixture(scope="session")
def compat_pair():
    ht, bridge = make_model_pair(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ht.process_weights_()
        bridge.enable_compatibility_mode(disable_warnings=True)
    return ht, bridge
