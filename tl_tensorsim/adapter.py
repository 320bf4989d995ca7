"""One read-only view of a TransformerLens model: config, weights and hook names.

`ModelView` is the only place in tl_tensorsim that knows the difference between
`HookedTransformer` (TransformerLens 2.16+ and 3.x) and `TransformerBridge` (3.x and
4.x, raw or after `enable_compatibility_mode()`). Every analysis reads a model through it,
so a new model family is a change to this file alone.

`HookedTransformer` is never imported here (it does not exist in TransformerLens 4): the
model's class is recognised by the names in its MRO.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens import FactoredMatrix

SUPPORTED_MODELS = (
    "transformer_lens.HookedTransformer (TransformerLens 2.16+ / 3.x) or "
    "transformer_lens.model_bridge.TransformerBridge (TransformerLens 3.x / 4.x, raw or compatibility mode)"
)

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
}
_GLOBAL = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U", "b_U": "unembed.b_U"}
WEIGHT_NAMES = tuple(_PER_LAYER) + tuple(_GLOBAL)
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


_FEATURE_RULES = (
    (re.compile(r"(^|\.)hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)$"), ("d_model",)),
    (re.compile(r"^hook_(embed|pos_embed)$"), ("d_model",)),
    (re.compile(r"\.mlp\.hook_(pre|post|pre_linear)$"), ("d_mlp",)),
    (re.compile(r"\.attn\.hook_(q|k|v|z)$"), ("n_heads", "d_head")),
    (re.compile(r"\.attn\.hook_result$"), ("n_heads", "d_model")),
)


def _feature_rule(name: str) -> tuple[str, ...] | None:
    for pattern, rule in _FEATURE_RULES:
        if pattern.search(name):
            return rule
    return None


def _class_names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__ if c.__module__.startswith("transformer_lens")}


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelView:
    """A read-only view over a HookedTransformer or TransformerBridge.

    Weights come out detached in TransformerLens' layout: `W_Q/W_K/W_V` `[layer, head, d_model, d_head]`,
    `W_O` `[layer, head, d_head, d_model]`, `W_in` `[layer, d_model, d_mlp]`, `W_E` `[d_vocab, d_model]`,
    `W_U` `[d_model, d_vocab]`, in the model's own dtype and device. `QK`/`OV` are `FactoredMatrix`
    objects of shape `[layer, head, d_model, d_model]`.
    """

    def __init__(self, model: Any):
        if isinstance(model, ModelView):
            model = model.model
        names = _class_names(model)
        if "HookedTransformer" in names:
            self.kind = "HookedTransformer"
        elif "TransformerBridge" in names:
            self.kind = "TransformerBridge"
        else:
            raise TypeError(f"model: expected {SUPPORTED_MODELS}; got {type(model).__module__}.{type(model).__name__}")
        self.model = model
        c = model.cfg
        d_mlp = getattr(c, "d_mlp", None)
        self.cfg = ModelConfig(
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
            model_name=str(getattr(c, "model_name", None) or getattr(model, "model_name", None) or "unnamed"),
        )
        self._params: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------- weights
    def _parameters(self) -> dict[str, Tensor]:
        if self._params is None:
            if self.kind == "TransformerBridge":
                raw = self.model.tl_parameters()
            else:
                raw = self.model.state_dict()
            self._params = {k: v.detach() for k, v in raw.items()}
        return self._params

    def refresh(self) -> ModelView:
        """Drop cached weights (call after the model's parameters changed in place)."""
        self._params = None
        return self

    def has_weight(self, name: str) -> bool:
        if name not in WEIGHT_NAMES:
            return False
        p = self._parameters()
        key = _PER_LAYER[name].format(l=0) if name in _PER_LAYER else _GLOBAL[name]
        return key in p

    def weight(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
        """Weight `name` (one of `WEIGHT_NAMES`), stacked over layers for per-layer weights. `dtype`, `device`:
        stack straight into a buffer of that dtype / device (one copy instead of a stack and a conversion)."""
        if name not in WEIGHT_NAMES:
            raise ValueError(f"weight name: expected one of {WEIGHT_NAMES}; got {name!r}")
        p = self._parameters()
        if name in _GLOBAL:
            key = _GLOBAL[name]
            if key not in p:
                raise ValueError(
                    f"{name}: this model has none (positional_embedding_type="
                    f"{self.cfg.positional_embedding_type!r}, attn_only={self.cfg.attn_only})"
                )
            return p[key].to(device=device, dtype=dtype)
        keys = [_PER_LAYER[name].format(l=layer) for layer in range(self.cfg.n_layers)]
        if any(k not in p for k in keys):
            raise ValueError(
                f"{name}: this model has none (attn_only={self.cfg.attn_only}, gated_mlp={self.cfg.gated_mlp})"
            )
        layers = [p[k] for k in keys]
        dtype, device = dtype or layers[0].dtype, torch.device(device) if device is not None else layers[0].device
        if dtype == layers[0].dtype and device == layers[0].device:
            return torch.stack(layers)
        out = torch.empty(len(layers), *layers[0].shape, dtype=dtype, device=device)
        for layer, w in zip(out, layers, strict=True):
            layer.copy_(w)
        return out

    def __getattr__(self, name: str) -> Tensor:
        if name in WEIGHT_NAMES:
            return self.weight(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def QK(self) -> FactoredMatrix:
        """`W_Q @ W_K^T` per head, `[layer, head, d_model, d_model]`, kept factored (rank d_head)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-1, -2))

    @property
    def OV(self) -> FactoredMatrix:
        """`W_V @ W_O` per head, `[layer, head, d_model, d_model]`, kept factored (rank d_head)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def device(self) -> torch.device:
        return self.weight("W_E").device

    @property
    def dtype(self) -> torch.dtype:
        return self.weight("W_E").dtype

    def head_labels(self) -> list[str]:
        """`L0H0, L0H1, ..., L1H0, ...` in the order of a flattened `[layer, head]` axis."""
        return [f"L{layer}H{h}" for layer in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    # ------------------------------------------------------------- processing
    def processing(self) -> dict[str, Any]:
        """The weight processing this model records or shows.

        `fold_ln` is read from the config (`LNPre`/`RMSPre` normalisation, or a bridge in compatibility
        mode with processed weights); `center_writing_weights` and `center_unembed` are read off the
        weights (every `W_O`/`W_out` row, or every `W_U` row, sums to zero over the written axis).
        """
        norm = self.cfg.normalization_type
        processed = bool(getattr(self.model, "_weights_processed", False))
        out: dict[str, Any] = {"fold_ln": bool(norm in ("LNPre", "RMSPre") or processed)}
        out["center_writing_weights"] = _rows_centred(self.W_O)
        out["center_unembed"] = _rows_centred(self.W_U)
        if self.kind == "TransformerBridge":
            out["compatibility_mode"] = bool(getattr(self.model, "compatibility_mode", False))
        return out

    # ------------------------------------------------------------------ hooks
    @property
    def hook_names(self) -> list[str]:
        return list(self.model.hook_dict.keys())

    def check_hook_name(self, name: str, argument: str = "hook_name") -> str:
        """Return `name` if the model has a hook point of that name, else raise a `ValueError`
        listing the nearest valid names."""
        if not isinstance(name, str):
            raise TypeError(f"{argument}: expected a hook name (str); got {type(name).__name__}")
        if name in self.model.hook_dict:
            return name
        near = difflib.get_close_matches(name, self.hook_names, n=5, cutoff=0.5)
        raise ValueError(
            f"{argument}: unknown hook name {name!r} for this {self.kind} "
            f"({self.cfg.n_layers} layers). Nearest valid names: {near or self.hook_names[:5]}"
        )

    def canonical_hook_name(self, name: str) -> str:
        """The HookedTransformer-style name of a hook point (a bridge's `blocks.0.hook_out` ->
        `blocks.0.hook_resid_post`); names already canonical come back unchanged."""
        name = self.check_hook_name(name)
        point = self.model.hook_dict[name]
        for alias, other in self.model.hook_dict.items():
            if other is point and _feature_rule(alias) is not None:
                return alias
        return name

    def feature_shape(self, name: str) -> tuple[int, ...]:
        """Trailing shape of the activation at hook `name` after `[batch, pos]`: `(d_model,)` for the
        residual stream, attn_out and mlp_out, `(d_mlp,)` for `mlp.hook_pre/post`, `(n_heads, d_head)` for
        `hook_q/k/v/z`, `(n_heads, d_model)` for `hook_result`. Raises `ValueError` for hooks without a
        feature axis (patterns, scores, LayerNorm scales)."""
        rule = _feature_rule(self.canonical_hook_name(name))
        if rule is None:
            raise ValueError(
                f"hook_name: {name!r} has no feature axis (supported: resid_pre/mid/post, attn_out, mlp_out, "
                "hook_embed, hook_pos_embed, mlp.hook_pre/post, attn.hook_q/k/v/z/result)"
            )
        c = self.cfg
        sizes = {"d_model": c.d_model, "d_mlp": c.d_mlp or 0, "d_head": c.d_head, "n_heads": c.n_heads}
        return tuple(sizes[k] for k in rule)

    def hook_layer(self, name: str) -> int | None:
        """The block index a hook name lives in (`blocks.4.hook_resid_post` -> 4), None outside blocks."""
        m = _LAYER_RE.match(name)
        return int(m.group(1)) if m else None

    def to_tokens(self, text: str | list[str], **kwargs: Any) -> Tensor:
        if getattr(self.model, "tokenizer", None) is None:
            raise ValueError("text input needs a model with a tokenizer; pass token ids (a LongTensor) instead")
        return self.model.to_tokens(text, **kwargs)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"ModelView({self.kind} {c.model_name!r}: {c.n_layers} layers x {c.n_heads} heads, d_model={c.d_model}, "
            f"d_head={c.d_head}, d_mlp={c.d_mlp}, d_vocab={c.d_vocab})"
        )


def _rows_centred(w: Tensor) -> bool:
    """Every row (last axis) of `w` sums to zero, relative to its largest entry. One pass each for the row means
    and `aminmax` (`w.abs().max()` would write a temporary as large as `w`, e.g. a 150 MB `W_U`)."""
    w = w.float()
    lo, hi = torch.aminmax(w)
    return bool(w.mean(-1).abs().max() <= 1e-6 * torch.maximum(-lo, hi).clamp_min(1e-30))


def as_view(model: Any) -> ModelView:
    """`ModelView` for `model` (returned unchanged when it already is one)."""
    return model if isinstance(model, ModelView) else ModelView(model)
