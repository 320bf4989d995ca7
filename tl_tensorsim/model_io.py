"""Making and loading models of either TransformerLens class: the adapter's half that knows constructors.

Core layer, beside `adapter.py` (which reads a model through `ModelView` and runs it): this module builds a
`HookedTransformer` (TransformerLens 2.16+/3.x) or a `TransformerBridge.boot_native(...)` model (3.x/4.x) from a
config, loads pretrained checkpoints, and moves weights between the two classes. Weights are exchanged in
TransformerLens naming (`embed.W_E`, `blocks.0.attn.W_Q` `[head, d_model, d_head]`, ...), the keys of
`HookedTransformer.state_dict()` and `TransformerBridge.tl_parameters()`; `load_state_dict` also takes a bridge's
own `state_dict()` names (`embed.weight`, `blocks.0.attn.q.weight` `[(head d_head), d_model]`, ...).

`HookedTransformer` is never imported at module level (TransformerLens 4 has none): classes are recognised by
the names in their MRO, and constructors are imported inside the functions that call them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor

BACKENDS = ("hooked", "bridge")
Backend = Literal["hooked", "bridge"]
NamingConvention = Literal["transformer_lens", "bridge"]
# model class name (in the MRO) -> ModelView.kind
_KINDS = {"HookedTransformer": "HookedTransformer", "TransformerBridge": "TransformerBridge"}
_OTHER_TL_MODELS = {"HookedEncoder", "HookedEncoderDecoder", "HookedAudioEncoder"}
# HookedTransformer buffers that ride along in its state_dict (not weights)
_BUFFER_RE = re.compile(r"\.(mask|IGNORE|rotary_sin|rotary_cos|alibi)$")
# bridge state_dict prefix <-> native model parameter prefix (boot_native)
_BRIDGE_TO_NATIVE = (
    ("embed.", "tok_embed."),
    ("pos_embed.", "pos."),
    ("blocks.", "layers."),
    ("ln_final.", "ln_out."),
    ("unembed.", "head."),
)


# ------------------------------------------------------------------------------------------- classes
def _class_names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__ if c.__module__.startswith("transformer_lens")}


def model_kind(obj: Any) -> str | None:
    """`"HookedTransformer"` or `"TransformerBridge"` for a model the adapter covers, else None (recognised by the
    class names in the MRO, so that nothing needs importing)."""
    names = _class_names(obj)
    for cls, kind in _KINDS.items():
        if cls in names:
            return kind
    return None


def is_transformer_lens_model(obj: Any) -> bool:
    """Any TransformerLens model class (including ones the adapter does not cover, e.g. `HookedEncoder`)."""
    return model_kind(obj) is not None or bool(_class_names(obj) & _OTHER_TL_MODELS)


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens still has `HookedTransformer` (it was removed in 4.0)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def is_native_bridge(model: Any) -> bool:
    """A bridge booted by `TransformerBridge.boot_native` (its weights convert to and from TransformerLens names)."""
    original = getattr(model, "original_model", None)
    return type(original).__name__ == "NativeModel"


# ------------------------------------------------------------------------------------------- building
def build_tl_model(
    config: Any,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    backend: Backend | None = None,
) -> Any:
    """A freshly initialised model from `config`: a dict of TransformerLens config fields (n_layers, d_model, ...,
    seed), a `HookedTransformerConfig` (-> HookedTransformer) or a `TransformerBridgeConfig` (-> bridge).

    backend: `"hooked"` (HookedTransformer), `"bridge"` (`TransformerBridge.boot_native`), or None for the
    config object's own class, else HookedTransformer where TransformerLens has it, else the bridge.
    The model has the config's `dtype` (e.g. `"dtype": torch.bfloat16`) with either backend.
    """
    kind = type(config).__name__
    if not isinstance(config, Mapping) and kind not in ("HookedTransformerConfig", "TransformerBridgeConfig"):
        raise TypeError(
            "config: expected a dict of TransformerLens config fields, a HookedTransformerConfig or a "
            f"TransformerBridgeConfig; got {type(config).__module__}.{kind}"
        )
    if backend is None:
        if kind == "HookedTransformerConfig":
            backend = "hooked"
        elif kind == "TransformerBridgeConfig":
            backend = "bridge"
        else:
            backend = "hooked" if has_hooked_transformer() else "bridge"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None; got {backend!r}")
    if backend == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        if device is None and not isinstance(config, Mapping):
            device = getattr(config, "device", None)
        device = torch.device(device or "cpu")
        if isinstance(config, Mapping):
            cfg = HookedTransformerConfig(**config, device=str(device))
        elif kind == "HookedTransformerConfig":
            cfg = config
        else:
            raise ValueError("backend: 'hooked' needs a dict of fields or a HookedTransformerConfig")
        with warnings.catch_warnings():  # TransformerLens 3.x deprecation notice; HookedTransformer is what we want
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        return model.to(device, print_details=False)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    if kind == "HookedTransformerConfig":
        raise ValueError("backend: 'bridge' needs a dict of fields or a TransformerBridgeConfig")
    if isinstance(config, Mapping):
        fields = {k: v for k, v in config.items() if k not in ("model_name", "default_prepend_bos")}
        name = config.get("model_name", "native")
        config = TransformerBridgeConfig(**fields)
    else:
        name = getattr(config, "model_name", None) or "native"
    dtype = getattr(config, "dtype", None)  # boot_native builds float32 weights unless told the config's dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_native(config, tokenizer=tokenizer, device=device, dtype=dtype, model_name=name)


def load_pretrained(name: str, checkpoint_index: int | None = None, backend: Backend | None = None, **kwargs: Any):
    """A pretrained TransformerLens model (optionally one training checkpoint):
    `HookedTransformer.from_pretrained(name, checkpoint_index=..., **kwargs)` where TransformerLens has it (and
    `backend` is not "bridge"), else `TransformerBridge.boot_transformers(name, checkpoint_index=..., **kwargs)`."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a TransformerLens model name (str); got {type(name).__name__}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None; got {backend!r}")
    if backend != "bridge" and has_hooked_transformer():
        from transformer_lens import HookedTransformer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return HookedTransformer.from_pretrained(name, checkpoint_index=checkpoint_index, **kwargs)
    if backend == "hooked":
        raise ValueError("backend: 'hooked' needs HookedTransformer, which this TransformerLens (4.x) no longer has")
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(name, checkpoint_index=checkpoint_index, **kwargs)


# ------------------------------------------------------------------------------------------- state dicts
def tl_weight_keys(cfg: Any) -> list[str]:
    """The TransformerLens parameter names of a model with config `cfg` (no buffers)."""
    keys = ["embed.W_E"]
    if str(getattr(cfg, "positional_embedding_type", "standard")) == "standard":
        keys.append("pos_embed.W_pos")
    norm = getattr(cfg, "normalization_type", None)
    has_norm_params = norm in ("LN", "RMS")
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        if has_norm_params:
            keys += [p + "ln1.w"] + ([p + "ln1.b"] if norm == "LN" else [])
        keys += [p + f"attn.{n}" for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")]
        if not cfg.attn_only:
            if has_norm_params:
                keys += [p + "ln2.w"] + ([p + "ln2.b"] if norm == "LN" else [])
            gate = ("W_gate",) if bool(getattr(cfg, "gated_mlp", False)) else ()
            keys += [p + f"mlp.{n}" for n in ("W_in", *gate, "b_in", "W_out", "b_out")]
    if has_norm_params:
        keys += ["ln_final.w"] + (["ln_final.b"] if norm == "LN" else [])
    return keys + ["unembed.W_U", "unembed.b_U"]


def tl_state_dict(model: Any) -> dict[str, Tensor]:
    """Detached CPU copies of the model's weights in TransformerLens naming (HookedTransformer or bridge)."""
    kind = _require_kind(model)
    raw = model.tl_parameters() if kind == "TransformerBridge" else model.state_dict()
    keys = tl_weight_keys(model.cfg)
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ValueError(f"model: has no weights named {missing[:5]} (its config: {type(model.cfg).__name__})")
    return {k: raw[k].detach().to("cpu", copy=True).contiguous() for k in keys}


def naming_convention(state: Mapping[str, Any]) -> NamingConvention:
    """`"transformer_lens"` (`embed.W_E`, `blocks.0.attn.W_Q`, ...: HookedTransformer.state_dict /
    TransformerBridge.tl_parameters) or `"bridge"` (a bridge's own `state_dict()`: `embed.weight`,
    `blocks.0.attn.q.weight`, ..., or the native model's `tok_embed.weight`, `layers.0...`)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state: expected a state dict (a mapping of names to tensors); got {type(state).__name__}")
    keys = list(state)
    if any(k.endswith(("W_E", "W_U", "W_Q", "W_in")) for k in keys):
        return "transformer_lens"
    if any(k.endswith(".weight") or k.endswith(".bias") for k in keys):
        return "bridge"
    raise ValueError(
        "state: unrecognised weight names; expected TransformerLens names (embed.W_E, blocks.0.attn.W_Q, ...) or a "
        f"TransformerBridge state_dict (embed.weight, blocks.0.attn.q.weight, ...); got {keys[:5]}"
    )


def to_tl_names(state: Mapping[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """The weights of `state` (either naming convention, see `naming_convention`) in TransformerLens naming,
    without HookedTransformer buffers; the keys are checked against `tl_weight_keys(cfg)`."""
    if naming_convention(state) == "transformer_lens":
        out = {k: v for k, v in state.items() if not _BUFFER_RE.search(k)}
    else:
        out = _tl_from_native(_native_keys(state), cfg)
    expected = tl_weight_keys(cfg)
    if set(out) != set(expected):
        raise ValueError(
            f"state: keys differ from this model's: missing {sorted(set(expected) - set(out))[:5]}, "
            f"unexpected {sorted(set(out) - set(expected))[:5]} (hint: a state dict of a model with another "
            "architecture; compare n_layers, attn_only, normalization_type)"
        )
    return {k: out[k] for k in expected}


def load_tl_state_dict(model: Any, state: Mapping[str, Tensor]) -> Any:
    """Load weights in TransformerLens naming into a HookedTransformer or a `boot_native` bridge, in place
    (the keys must be exactly `tl_weight_keys(model.cfg)`)."""
    expected = set(tl_weight_keys(model.cfg))
    if set(state) != expected:
        raise ValueError(
            f"state: keys differ from this model's: missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]}"
        )
    return load_state_dict(model, state)


def load_state_dict(model: Any, state: Mapping[str, Tensor]) -> Any:
    """Load `state` into `model` in place, converting between naming conventions through the adapter: a
    HookedTransformer takes TransformerLens names or a native bridge's state dict; a `boot_native` bridge takes
    either; a bridge over a Hugging Face model takes its own `state_dict()` names. Returns `model`.

    Raises `ValueError` naming the missing / unexpected keys or the mismatched shapes.
    """
    kind = _require_kind(model)
    convention = naming_convention(state)
    try:
        if kind == "HookedTransformer":
            model.load_state_dict(to_tl_names(state, model.cfg), strict=False)
        elif convention == "bridge":
            model.load_state_dict({k: v for k, v in state.items()}, strict=True)
        elif is_native_bridge(model):
            model.load_state_dict(_native_from_tl(to_tl_names(state, model.cfg), model.cfg), strict=True)
        else:
            raise ValueError(
                "state: TransformerLens-named weights load into a HookedTransformer or a boot_native bridge; this "
                f"bridge wraps {type(getattr(model, 'original_model', None)).__name__} (hint: pass its own "
                "state_dict(), or boot it from its checkpoint)"
            )
    except RuntimeError as exc:  # size mismatches, missing / unexpected keys reported by torch
        raise ValueError(f"state: does not fit this {kind}: {exc}") from exc
    return model


def _require_kind(model: Any) -> str:
    kind = model_kind(model)
    if kind is None:
        raise TypeError(
            "model: expected a transformer_lens HookedTransformer or TransformerBridge; "
            f"got {type(model).__module__}.{type(model).__name__}"
        )
    return kind


def _native_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A bridge's state_dict names (or raw native paths) -> native model parameter names."""
    out = {}
    for key, value in state.items():
        key = key.replace("._original_component", "")
        for bridge, native in _BRIDGE_TO_NATIVE:
            if key.startswith(bridge):
                key = native + key[len(bridge) :]
                break
        out.setdefault(key, value)
    return out


def _native_from_tl(state: Mapping[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """TL-named weights -> the parameter names of TransformerLens' native bridge model (nn.Linear layout)."""
    out = {
        "tok_embed.weight": state["embed.W_E"],
        "head.weight": state["unembed.W_U"].T,
        "head.bias": state["unembed.b_U"],
    }
    if "pos_embed.W_pos" in state:
        out["pos.weight"] = state["pos_embed.W_pos"]
    norm = {"w": "weight", "b": "bias"}
    for k, v in state.items():
        if k.startswith("ln_final."):
            out[f"ln_out.{norm[k.split('.')[-1]]}"] = v
    for layer in range(cfg.n_layers):
        tl, nat = f"blocks.{layer}.", f"layers.{layer}."
        for ln in ("ln1", "ln2"):
            for s in ("w", "b"):
                if f"{tl}{ln}.{s}" in state:
                    out[f"{nat}{ln}.{norm[s]}"] = state[f"{tl}{ln}.{s}"]
        for n in "QKV":
            out[f"{nat}attn.{n.lower()}.weight"] = rearrange(state[f"{tl}attn.W_{n}"], "h m d -> (h d) m")
            out[f"{nat}attn.{n.lower()}.bias"] = rearrange(state[f"{tl}attn.b_{n}"], "h d -> (h d)")
        out[f"{nat}attn.o.weight"] = rearrange(state[f"{tl}attn.W_O"], "h d m -> m (h d)")
        out[f"{nat}attn.o.bias"] = state[f"{tl}attn.b_O"]
        if not cfg.attn_only:
            if f"{tl}mlp.W_gate" in state:
                raise ValueError("state: gated MLPs have no native bridge layout here; load into a HookedTransformer")
            out[f"{nat}mlp.in.weight"] = state[f"{tl}mlp.W_in"].T
            out[f"{nat}mlp.in.bias"] = state[f"{tl}mlp.b_in"]
            out[f"{nat}mlp.out.weight"] = state[f"{tl}mlp.W_out"].T
            out[f"{nat}mlp.out.bias"] = state[f"{tl}mlp.b_out"]
    return {k: v.contiguous() for k, v in out.items()}


def _tl_from_native(state: Mapping[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """Native bridge parameter names (nn.Linear layout) -> TL-named weights (the inverse of `_native_from_tl`).
    Keys it does not know are kept, so that the caller reports them as unexpected."""
    H = int(cfg.n_heads)
    norm = {"weight": "w", "bias": "b"}
    out: dict[str, Tensor] = {}
    for key, v in state.items():
        if key == "tok_embed.weight":
            out["embed.W_E"] = v
        elif key == "pos.weight":
            out["pos_embed.W_pos"] = v
        elif key == "head.weight":
            out["unembed.W_U"] = v.T
        elif key == "head.bias":
            out["unembed.b_U"] = v
        elif key in ("ln_out.weight", "ln_out.bias"):
            out[f"ln_final.{norm[key.split('.')[-1]]}"] = v
        elif m := re.match(r"^layers\.(\d+)\.(.+)$", key):
            out.update(_tl_block_entry(f"blocks.{m.group(1)}.", m.group(2), v, H, norm))
        else:
            out[key] = v
    return {k: v.contiguous() for k, v in out.items()}


def _tl_block_entry(tl: str, rest: str, v: Tensor, n_heads: int, norm: dict[str, str]) -> dict[str, Tensor]:
    if m := re.match(r"^(ln1|ln2)\.(weight|bias)$", rest):
        return {f"{tl}{m.group(1)}.{norm[m.group(2)]}": v}
    if m := re.match(r"^attn\.([qkv])\.(weight|bias)$", rest):
        n = m.group(1).upper()
        if m.group(2) == "weight":
            return {f"{tl}attn.W_{n}": rearrange(v, "(h d) m -> h m d", h=n_heads)}
        return {f"{tl}attn.b_{n}": rearrange(v, "(h d) -> h d", h=n_heads)}
    if rest == "attn.o.weight":
        return {f"{tl}attn.W_O": rearrange(v, "m (h d) -> h d m", h=n_heads)}
    if rest == "attn.o.bias":
        return {f"{tl}attn.b_O": v}
    mlp = {"mlp.in.weight": "W_in", "mlp.in.bias": "b_in", "mlp.out.weight": "W_out", "mlp.out.bias": "b_out"}
    if rest in mlp:
        return {f"{tl}mlp.{mlp[rest]}": v.T if rest.endswith("weight") else v}
    if rest.startswith(("mlp.fc_in.", "mlp.fc_out.")):  # the native model's second path to the same weights
        return {}
    return {tl + rest: v}
