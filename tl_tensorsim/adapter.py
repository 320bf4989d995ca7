"""One view of a TransformerLens model: config, weights, hook names, and the runs analyses need.

`ModelView` is the only place in tl_tensorsim that knows the difference between
`HookedTransformer` (TransformerLens 2.16+ and 3.x) and `TransformerBridge` (3.x and
4.x, raw or after `enable_compatibility_mode()`). Every analysis reads and runs a model through it,
so a new model family is a change to the adapter alone: this file and its two halves,
`model_io.py` (building models from configs, pretrained checkpoints, state dicts in either naming) and
`model_run.py` (gated hooks, forward order, `run_with_cache`, `forward_between`, `run_from`).

`HookedTransformer` is never imported here (it does not exist in TransformerLens 4): the
model's class is recognised by the names in its MRO.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeAlias, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import FactoredMatrix

from tl_tensorsim import model_io, model_run
from tl_tensorsim.linalg import rows_centred
from tl_tensorsim.model_config import _GLOBAL, _NORM_NAMES, _PER_LAYER, WEIGHT_NAMES, ModelConfig, layer_weight
from tl_tensorsim.model_io import Backend, is_transformer_lens_model, model_kind
from tl_tensorsim.model_run import GATE_FLAGS, gate_flag
from tl_tensorsim.weight_files import open_state_file

if TYPE_CHECKING:  # for the type alias only; never imported at run time (TransformerLens 4 has no HookedTransformer)
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    from tl_tensorsim.models import HookedTensorNetwork

ModelLike: TypeAlias = Union["HookedTransformer", "TransformerBridge", "HookedTensorNetwork", "ModelView"]
"""What public entry points accept as a model: a `HookedTransformer`, a `TransformerBridge`, a
`HookedTensorNetwork` where the analysis reads MLPs only, or an existing `ModelView`."""

__all__ = [
    "GATE_FLAGS",
    "ModelLike",
    "SUPPORTED_MODELS",
    "WEIGHT_NAMES",
    "ModelConfig",
    "ModelView",
    "as_view",
    "gate_flag",
    "is_transformer_lens_model",
    "model_kind",
]

SUPPORTED_MODELS = (
    "transformer_lens.HookedTransformer (TransformerLens 2.16+ / 3.x) or "
    "transformer_lens.model_bridge.TransformerBridge (TransformerLens 3.x / 4.x, raw or compatibility mode)"
)


class ModelView:
    """A view over a HookedTransformer or TransformerBridge.

    Weights come out detached in TransformerLens' layout: `W_Q/W_K/W_V` `[layer, head, d_model, d_head]`,
    `W_O` `[layer, head, d_head, d_model]`, `W_in` `[layer, d_model, d_mlp]`, `W_E` `[d_vocab, d_model]`,
    `W_U` `[d_model, d_vocab]`, in the model's own dtype and device. Normalisation parameters `ln1_w`, `ln1_b`,
    `ln2_w`, `ln2_b` `[layer, d_model]`, `ln_final_w`, `ln_final_b` `[d_model]` are ones / zeros where the
    normalisation has none (`LNPre`, `RMSPre`, no normalisation, or weights processed by `fold_ln`). `QK`/`OV` are `FactoredMatrix`
    objects of shape `[layer, head, d_model, d_model]`.

    Reading never changes the model. Running does only inside a call (gate flags switched on are switched back,
    hooks are removed); `load_state_dict` is the one method that writes weights (use `copy()` first to keep the
    original). `ModelView.build(config)` makes a fresh model of either class.
    """

    def __init__(self, model: Any):
        if isinstance(model, ModelView):
            model = model.model
        kind = model_kind(model)
        if kind is None:
            raise TypeError(f"model: expected {SUPPORTED_MODELS}; got {type(model).__module__}.{type(model).__name__}")
        self.kind = kind
        self.model = model
        c = model.cfg
        self.cfg = ModelConfig.read(kind, c, getattr(model, "model_name", None))
        self._params: Mapping[str, Tensor] | None = None
        self._config = c
        self._flags: tuple[bool, bool] | None = None

    @property
    def takes_tl_weights(self) -> bool:
        """Whether `with_weights` works: a HookedTransformer or a `boot_native` bridge (a bridge over a Hugging
        Face model names its weights its own way; load those into a copy with `load_state_dict`)."""
        return self.kind == "HookedTransformer" or model_io.is_native_bridge(self.model)

    def with_weights(self, weights: Mapping[str, Tensor] | str | os.PathLike, argument: str = "weights") -> ModelView:
        """A read-only view of other weights with this model's config and class: a state dict (TransformerLens names
        or a native bridge's `state_dict()` names) or a state-dict file, opened lazily (`weight_files`), so only
        the tensors an analysis looks up are read. Keys and shapes are checked against this model's first
        (`ValueError` naming `argument`). No model is built, copied or loaded into, this view's model is untouched,
        and running the returned view raises."""
        if not self.takes_tl_weights:
            raise ValueError(f"{argument}: a bridge over a Hugging Face model cannot take weights without loading them")
        shapes = {k: tuple(v.shape) for k, v in self._parameters().items()}
        if isinstance(weights, (str, os.PathLike)):
            params: Mapping[str, Tensor] = open_state_file(weights, self.cfg, argument, shapes)
        else:
            try:
                params = model_io.to_tl_names(weights, self.cfg)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{argument}: {exc}") from exc
            wrong = [k for k, v in params.items() if tuple(v.shape) != shapes.get(k, tuple(v.shape))]
            if wrong:
                raise ValueError(
                    f"{argument}: {wrong[0]} has shape {list(params[wrong[0]].shape)}, this model's is "
                    f"{list(shapes[wrong[0]])} (hint: a state dict of another architecture)"
                )
        view = copy.copy(self)
        view._flags = self._processing_flags()  # this model's, read now
        view.model, view._params = _WeightsOnly(), params
        return view

    def config_value(self, name: str, default: Any = None) -> Any:
        """A TransformerLens config field not in `cfg` (e.g. `use_qk_norm`, `attn_scores_soft_cap`), or `default`
        where this model's config has no such field; analyses read configs through this, never `model.cfg`."""
        return getattr(self._config, name, default)

    # ----------------------------------------------------------------- weights
    def _parameters(self) -> dict[str, Tensor]:
        if self._params is None:
            if self.kind == "TransformerBridge":
                raw = self.model.tl_parameters()
                if self.cfg.attn_only:  # bridges list all-zero MLP weights for attention-only models: it has none
                    raw = {k: v for k, v in raw.items() if ".mlp." not in k}
            else:
                raw = self.model.state_dict()
            self._params = {k: v.detach() for k, v in raw.items()}
        return self._params

    def _processing_flags(self) -> tuple[bool, bool]:
        """(weights processed, bridge in compatibility mode): read off the model, or the flags recorded by
        `with_weights`."""
        if self._flags is not None:
            return self._flags
        return bool(getattr(self.model, "_weights_processed", False)), bool(
            getattr(self.model, "compatibility_mode", False)
        )

    def refresh(self) -> ModelView:
        """Drop cached weights (call after the model's parameters changed in place)."""
        self._params = None
        return self

    def has_weight(self, name: str) -> bool:
        if name not in WEIGHT_NAMES:
            return False
        p = self._parameters()
        if name in _GLOBAL:
            return _GLOBAL[name] in p
        return layer_weight(p, _PER_LAYER[name].format(l=0), self.cfg.n_heads) is not None

    def weight(self, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
        """Weight `name` (one of `WEIGHT_NAMES`), stacked over layers for per-layer weights. `dtype`, `device`:
        stack straight into a buffer of that dtype / device (one copy instead of a stack and a conversion)."""
        if name not in WEIGHT_NAMES:
            raise ValueError(f"weight name: expected one of {WEIGHT_NAMES}; got {name!r}")
        p = self._parameters()
        if name in _NORM_NAMES and not self.has_weight(name):  # LNPre / RMSPre / none / processed: the identity
            shape = (self.cfg.d_model,) if name.startswith("ln_final") else (self.cfg.n_layers, self.cfg.d_model)
            ref = self.weight("W_E")
            fill = torch.ones if name.endswith("_w") else torch.zeros
            return fill(shape, dtype=dtype or ref.dtype, device=device if device is not None else ref.device)
        if name in _GLOBAL:
            key = _GLOBAL[name]
            if key not in p:
                raise ValueError(
                    f"{name}: this model has none (positional_embedding_type="
                    f"{self.cfg.positional_embedding_type!r}, attn_only={self.cfg.attn_only})"
                )
            return p[key].to(device=device, dtype=dtype)
        found = [
            layer_weight(p, _PER_LAYER[name].format(l=layer), self.cfg.n_heads) for layer in range(self.cfg.n_layers)
        ]
        if any(w is None for w in found):
            raise ValueError(
                f"{name}: this model has none (attn_only={self.cfg.attn_only}, gated_mlp={self.cfg.gated_mlp})"
            )
        layers: list[Tensor] = found  # type: ignore[assignment]
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
    def processing(self, unembed: bool = True) -> dict[str, Any]:
        """The weight processing this model records or shows.

        `fold_ln` is read from the config (`LNPre`/`RMSPre` normalisation, or a bridge in compatibility
        mode with processed weights); `center_writing_weights` and `center_unembed` are read off the
        weights (every `W_O`/`W_out` row, or every `W_U` row, sums to zero over the written axis); `unembed=False`
        leaves `center_unembed` out (and `W_U` unread).
        """
        norm = self.cfg.normalization_type
        processed, compatibility = self._processing_flags()
        out: dict[str, Any] = {"fold_ln": bool(norm in ("LNPre", "RMSPre") or processed)}
        out["center_writing_weights"] = rows_centred(self.W_O)
        if unembed:  # reads the whole W_U
            out["center_unembed"] = rows_centred(self.W_U)
        if self.kind == "TransformerBridge":
            out["compatibility_mode"] = compatibility
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
            if other is point and model_run.feature_rule(alias) is not None:
                return alias
        return name

    def feature_shape(self, name: str) -> tuple[int, ...]:
        """Trailing shape of the activation at hook `name` after `[batch, pos]`: `(d_model,)` for the
        residual stream, attn_out and mlp_out, `(d_mlp,)` for `mlp.hook_pre/post`, `(n_heads, d_head)` for
        `hook_q/k/v/z`, `(n_heads, d_model)` for `hook_result`. Raises `ValueError` for hooks without a
        feature axis (patterns, scores, LayerNorm scales)."""
        rule = model_run.feature_rule(self.canonical_hook_name(name))
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
        m = model_run.LAYER_RE.match(name)
        return int(m.group(1)) if m else None

    # --------------------------------------------------------------- build / load
    @classmethod
    def build(
        cls, config: Any, *, backend: Backend | None = None, tokenizer: Any = None, device: Any = None
    ) -> ModelView:
        """A view of a freshly initialised model: `config` is a dict of TransformerLens config fields, a
        `HookedTransformerConfig` or a `TransformerBridgeConfig`; `backend` "hooked" / "bridge" picks the class
        (default: the config's own, else HookedTransformer where TransformerLens has it)."""
        return cls(model_io.build_tl_model(config, tokenizer=tokenizer, device=device, backend=backend))

    @classmethod
    def from_pretrained(
        cls, name: str, checkpoint_index: int | None = None, *, backend: Backend | None = None, **kwargs: Any
    ) -> ModelView:
        """A view of a pretrained TransformerLens model, optionally one training checkpoint (see
        `model_io.load_pretrained`; needs the model hub)."""
        return cls(model_io.load_pretrained(name, checkpoint_index, backend=backend, **kwargs))

    def copy(self) -> ModelView:
        """A view of a deep copy of the model (its weights can be overwritten without touching this one)."""
        return ModelView(copy.deepcopy(self.model))

    def state_dict(self) -> dict[str, Tensor]:
        """Detached CPU copies of the weights in TransformerLens naming (`embed.W_E`, `blocks.0.attn.W_Q`
        `[head, d_model, d_head]`, ...), the same keys for either class."""
        return model_io.tl_state_dict(self.model)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> ModelView:
        """Load weights into the model in place: TransformerLens names (a HookedTransformer's `state_dict()` or a
        bridge's `tl_parameters()`) or a bridge's own `state_dict()` names, converted through the adapter.
        Raises `ValueError` naming missing / unexpected keys or mismatched shapes. Returns `self`."""
        model_io.load_state_dict(self.model, state)
        return self.refresh()

    # ------------------------------------------------------------------- runs
    def gates(self, *hook_names: str, **flags: bool) -> AbstractContextManager[dict[str, bool]]:
        """`with view.gates("blocks.0.attn.hook_result"):` switches on the gate flags those hook points need
        (`use_attn_result`, `use_split_qkv_input`, `use_attn_in`, `use_hook_mlp_in`), and sets any flag given by
        keyword; on exit every changed flag gets its previous value back, exceptions included."""
        for name in hook_names:
            self.check_hook_name(name)
        return model_run.gates(self, hook_names, **flags)

    def check_gate(self, name: str) -> None:
        """`ValueError` if hook point `name` is gated off (its flag is False), naming the setter to call."""
        model_run.check_gate(self, self.check_hook_name(name))

    def hook_order(self, name: str) -> tuple[int, int] | None:
        """Place of hook point `name` in the forward pass, `(stage, step)` (stage -1 before the blocks, `l` in
        block `l`, `n_layers` after them); None where unknown. Equal places run in parallel."""
        return model_run.hook_order(self, self.check_hook_name(name))

    def run_with_cache(
        self,
        tokens: Int[Tensor, "batch pos"],
        names: str | Sequence[str] | None = None,
        stop_at_layer: int | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_out"], dict[str, Tensor]]:
        """Run on `tokens` (`LongTensor [batch, pos]`) and keep the activations at `names` (default: every hook
        point not gated off), detached, keyed by the names as given; gated ones are switched on for the run.
        `stop_at_layer=k` runs blocks `0..k-1` only (negative counts from the end) and returns the residual stream
        `[batch, pos, d_model]` instead of the logits; a name after block `k - 1` is a `ValueError` up front."""
        return model_run.run_with_cache(self, tokens, names, stop_at_layer)

    def forward_between(
        self, hook_in: str, hook_out: str, tokens: Int[Tensor, "batch pos"]
    ) -> Callable[[Float[Tensor, "batch pos *d_in"]], Float[Tensor, "batch pos *d_out"]]:
        """The pure function `f(x) = activation at hook_out` when the activation at `hook_in` is replaced by `x`,
        on fixed `tokens` (everything not downstream of `hook_in` comes from them).

        `x` has the shape and dtype of the activation at `hook_in` for these tokens (`[batch, pos, d_model]` for
        the residual stream, `[batch, pos, n_heads, d_head]` for `attn.hook_z`), `f(x)` the shape at `hook_out`;
        blocks after `hook_out`'s are skipped. No data-dependent shapes: `torch.func.vmap`, `jvp`, `vjp`, `jacrev`
        and `jacfwd` transform `f`. Gated hooks are switched on per call; train/eval mode is left alone.
        `ValueError` up front for unknown names, `hook_out` not strictly after `hook_in`, or bad tokens."""
        return model_run.forward_between(self, hook_in, hook_out, tokens)

    def run_from(
        self, hook_name: str, activation: Float[Tensor, "batch pos *d"], tokens: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """The logits `[batch, pos, d_vocab]` when the activation at `hook_name` is replaced by `activation` (its
        shape at that hook for `tokens`); the rest of the forward pass reads `tokens`. With the cached activation
        of the same tokens this equals the plain forward pass (circuit patching replaces it by another run's)."""
        return model_run.run_from(self, hook_name, activation, tokens)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"ModelView({self.kind} {c.model_name!r}: {c.n_layers} layers x {c.n_heads} heads, d_model={c.d_model}, "
            f"d_head={c.d_head}, d_mlp={c.d_mlp}, d_vocab={c.d_vocab})"
        )


class _WeightsOnly:
    """The `model` of a `ModelView.with_weights` view: there is no model to run."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"this ModelView holds weights only (ModelView.with_weights), so it has no model.{name}; run the model "
            "itself (hint: load the weights into a model with ModelView.load_state_dict on a copy)"
        )


def as_view(model: ModelLike) -> ModelView:
    """`ModelView` for `model` (returned unchanged when it already is one)."""
    return model if isinstance(model, ModelView) else ModelView(model)
