"""Tiny float64 models for the interaction-basis tests (TransformerBridge, so every test runs on TransformerLens 3 and 4)."""

from __future__ import annotations

import torch

from tests.conftest import make_bridge
from tl_tensorsim.adapter import ModelView

NODES = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post", "output"]


def tiny(seed: int = 0, **overrides):
    """A 1-layer ReLU bridge without LayerNorm, float64 (d_model 8, d_mlp 12, vocab 13, n_ctx 4)."""
    kw = dict(
        n_layers=1,
        d_model=8,
        d_head=4,
        n_heads=2,
        d_mlp=12,
        n_ctx=4,
        d_vocab=13,
        act_fn="relu",
        normalization_type=None,
    )
    return make_bridge(seed, **{**kw, **overrides}).to(torch.float64)


def tokens(n: int = 48, pos: int = 4, vocab: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, pos), generator=torch.Generator().manual_seed(seed))


def with_weights(model, edit):
    """A copy of `model` whose TransformerLens-named weights are `edit(state)` (a dict, changed in place)."""
    view = ModelView(model).copy()
    state = view.state_dict()
    edit(state)
    view.load_state_dict({k: v.to(torch.float64) for k, v in state.items()})
    return view.model


def match_columns(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| after flipping the sign of each column of `b` to match `a`."""
    sign = torch.sign((a * b).sum(0))
    sign[sign == 0] = 1
    return float((a - b * sign).abs().max())
