"""Tiny Max-of-K models for the proof tests: TransformerLens initialisation, a hand-built model that computes the
maximum (attention on the largest key, an OV circuit that copies), and adversarial versions of it."""

from __future__ import annotations

from functools import lru_cache

import torch

from tl_tensorsim.adapter import ModelView
from tl_tensorsim.models import max_of_k as mok


@lru_cache(maxsize=64)
def _shell(d_vocab: int, n_ctx: int, d_model: int, backend: str | None):
    return mok.build_model(
        mok.MaxOfKConfig(d_vocab=d_vocab, n_ctx=n_ctx, d_model=d_model, d_head=d_model), backend=backend
    )


def model_with(state: dict[str, torch.Tensor], backend: str | None = None):
    """A model (cached shell per shape, weights replaced) holding `state` (TransformerLens names, float32)."""
    V, d = state["embed.W_E"].shape
    n = state["pos_embed.W_pos"].shape[0]
    model = _shell(V, n, d, backend)
    ModelView(model).load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval()


def random_state(d_vocab: int, n_ctx: int, d_model: int, seed: int) -> dict[str, torch.Tensor]:
    """TransformerLens-style initialisation (normal, std 1/sqrt(d_model)), biases zero."""
    g = torch.Generator().manual_seed(seed)
    V, n, d = d_vocab, n_ctx, d_model
    s = d**-0.5

    def r(*shape):
        return torch.randn(*shape, generator=g) * s

    return {
        "embed.W_E": r(V, d),
        "pos_embed.W_pos": r(n, d),
        "blocks.0.attn.W_Q": r(1, d, d),
        "blocks.0.attn.W_K": r(1, d, d),
        "blocks.0.attn.W_V": r(1, d, d),
        "blocks.0.attn.W_O": r(1, d, d),
        "blocks.0.attn.b_Q": torch.zeros(1, d),
        "blocks.0.attn.b_K": torch.zeros(1, d),
        "blocks.0.attn.b_V": torch.zeros(1, d),
        "blocks.0.attn.b_O": torch.zeros(d),
        "unembed.W_U": r(d, V),
        "unembed.b_U": torch.zeros(V),
    }


def ideal_state(
    d_vocab: int,
    n_ctx: int,
    d_model: int = 8,
    seed: int = 0,
    qk_scale: float = 30.0,
    ov_scale: float = 20.0,
    noise: float = 0.0,
    flip: bool = False,
    tie: bool = False,
    bias: float = 0.0,
) -> dict[str, torch.Tensor]:
    """A model that computes the max: residual dims 0, 1, 2 carry (1, t/(V-1), (t/(V-1))²); the query reads dim 0
    and the key dim 1 (score qk_scale·t/(V-1), so attention goes to the largest token); V/O copy dims 0-2 to dims
    3-5, which W_U reads as ov_scale·(2·t·x - x²) (largest at x = t). `noise`: Gaussian noise of that std on every
    weight; `flip`: a random third of the tokens get a negated OV row (negative EVOU diagonal); `tie`: output V-1
    duplicates output V-2's unembedding (exact ties); `bias`: random biases of that scale. Needs d_model >= 6."""
    assert d_model >= 6
    g = torch.Generator().manual_seed(seed)
    V, n, d = d_vocab, n_ctx, d_model
    t = torch.arange(V, dtype=torch.float64) / (V - 1)
    state = {k: v.double() for k, v in random_state(V, n, d, seed).items()}
    for k in state:
        state[k] = state[k] * noise
    state["embed.W_E"][:, 0] += 1
    state["embed.W_E"][:, 1] += t
    state["embed.W_E"][:, 2] += t**2
    state["blocks.0.attn.W_Q"][0, 0, 0] += qk_scale * d**0.5
    state["blocks.0.attn.W_K"][0, 1, 0] += 1
    for i in range(3):
        state["blocks.0.attn.W_V"][0, i, i] += 1
        state["blocks.0.attn.W_O"][0, i, 3 + i] += 1
    state["unembed.W_U"][3] += -ov_scale * t**2
    state["unembed.W_U"][4] += 2 * ov_scale * t
    if flip:
        rows = torch.randperm(V, generator=g)[: V // 3]
        state["embed.W_E"][rows, 1:3] *= -1
    if tie:
        state["unembed.W_U"][:, V - 1] = state["unembed.W_U"][:, V - 2]
    if bias:
        for k in state:
            if ".b_" in k or k.endswith("b_U"):
                state[k] = state[k] + bias * torch.randn(state[k].shape, generator=g, dtype=torch.float64)
    return {k: v.float() for k, v in state.items()}
