"""What the adapter reads off a TransformerLens config: `ModelConfig` (the architecture facts every analysis needs,
for either model class), the weight names `ModelView.weight` accepts and the keys they map to, and the attention
scale. Core layer; `adapter.py` re-exports the public names."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

# name -> key in HookedTransformer.state_dict() / TransformerBridge.tl_parameters(), with "{l}" per layer
_PER_LAYER = {
    "W_Q": "blocks.{l}.attn.W_Q",
    "W_K": "blocks.{l}.attn.W_K",
    "W_V": "blocks.{l}.attn.W_V",
    "W_O": "blocks.{l}.attn.W_O",
    "b_Q": "blocks.{l}.attn.b_Q",
    "b_K": "blocks.{l}.attn.b_K",
    "b_V": "blocks.{l}.attn.b_V",
    "b_O": "blocks.{l}.attn.b_O",
    "W_in": "blocks.{l}.mlp.W_in",
    "W_gate": "blocks.{l}.mlp.W_gate",
    "W_out": "blocks.{l}.mlp.W_out",
    "b_in": "blocks.{l}.mlp.b_in",
    "b_out": "blocks.{l}.mlp.b_out",
    "ln1_w": "blocks.{l}.ln1.w",  # LayerNorm / RMSNorm gains and biases: ones / zeros where the norm has none
    "ln1_b": "blocks.{l}.ln1.b",
    "ln2_w": "blocks.{l}.ln2.w",
    "ln2_b": "blocks.{l}.ln2.b",
}
_GLOBAL = {
    "W_E": "embed.W_E",
    "W_pos": "pos_embed.W_pos",
    "W_U": "unembed.W_U",
    "b_U": "unembed.b_U",
    "ln_final_w": "ln_final.w",
    "ln_final_b": "ln_final.b",
}
WEIGHT_NAMES = tuple(_PER_LAYER) + tuple(_GLOBAL)
_NORM_NAMES = ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "ln_final_w", "ln_final_b")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts every analysis needs, read from either model class."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int
    attn_only: bool
    normalization_type: str | None
    act_fn: str | None
    positional_embedding_type: str
    gated_mlp: bool
    model_name: str
    attn_scale: float = 1.0  # attention scores are divided by this (√d_head unless the config says otherwise)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, kind: str, c: Any, model_name: str | None = None) -> ModelConfig:
        """The facts of TransformerLens config `c` of a model of class `kind` (`model_name`: the model's own
        attribute, used when the config has none)."""
        d_mlp = getattr(c, "d_mlp", None)
        return cls(
            n_layers=int(c.n_layers),
            n_heads=int(c.n_heads),
            d_model=int(c.d_model),
            d_head=int(c.d_head),
            d_mlp=None if d_mlp is None or bool(getattr(c, "attn_only", False)) else int(d_mlp),
            d_vocab=int(c.d_vocab),
            n_ctx=int(c.n_ctx),
            attn_only=bool(getattr(c, "attn_only", False)),
            normalization_type=getattr(c, "normalization_type", None),
            act_fn=getattr(c, "act_fn", None),
            positional_embedding_type=str(getattr(c, "positional_embedding_type", "standard")),
            gated_mlp=bool(getattr(c, "gated_mlp", False)),
            model_name=str(getattr(c, "model_name", None) or model_name or "unnamed"),
            attn_scale=attention_scale(kind, c),
        )


def attention_scale(kind: str, c: Any) -> float:
    """The number attention scores are divided by: `cfg.attn_scale` when `use_attn_scale` and positive (the bridge's
    native model reads a non-positive value as √d_head), 1 for a HookedTransformer with `use_attn_scale=False`,
    else √d_head."""
    value = getattr(c, "attn_scale", -1.0)
    if getattr(c, "use_attn_scale", True) and value is not None and float(value) > 0:
        return float(value)
    if kind == "HookedTransformer" and not getattr(c, "use_attn_scale", True):
        return 1.0
    return math.sqrt(int(c.d_head))


def layer_weight(params: Mapping[str, Tensor], key: str, n_heads: int) -> Tensor | None:
    """One layer's weight `key`, or None where the model has none. Grouped-query attention in a HookedTransformer
    stores K and V per key-value head (`attn._W_K`, `attn._b_V`: `[n_key_value_heads, ...]`); like TransformerLens'
    own `W_K` property, each is repeated for the query heads that share it, giving `[n_heads, ...]`."""
    if key in params:
        return params[key]
    module, _, leaf = key.rpartition(".")
    grouped = params.get(f"{module}._{leaf}")
    if grouped is None:
        return None
    return grouped.repeat_interleave(n_heads // grouped.shape[0], dim=0)
