"""Offline construction of the small models the project trains: toy tokenizer, model class, weights in TL naming.

Every model under `tl_tensorsim.models` is built here, so that one place knows how to make a
`HookedTransformer` (TransformerLens 2.16+/3.x) or, where TransformerLens has none (4.x), a
`TransformerBridge.boot_native(...)` model with the same weights. Weights are always stored and exchanged
in TransformerLens naming (`embed.W_E`, `blocks.0.attn.W_Q` `[head, d_model, d_head]`, ...), the keys of
`HookedTransformer.state_dict()` and of `TransformerBridge.tl_parameters()`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

BOS = "<|endoftext|>"
BACKENDS = ("hooked", "bridge")


def toy_tokenizer(words: list[str]) -> Any:
    """A whitespace word-level tokenizer over `words` (ids 0..len-1) plus `<|endoftext|>` (id len(words)).

    `<|endoftext|>` serves as BOS, EOS, PAD and UNK. `name_or_path` and `add_bos_token=True` are set, without
    which TransformerLens' `to_tokens` falls back to the model hub.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(words)) != len(words) or BOS in words or any(not w or w.split() != [w] for w in words):
        raise ValueError(f"words: expected distinct non-empty words without whitespace or {BOS!r}")
    vocab = {w: i for i, w in enumerate(words)}
    vocab[BOS] = len(words)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=BOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=BOS,
        unk_token=BOS,
        name_or_path="toy",
        add_bos_token=True,
    )


def has_hooked_transformer() -> bool:
    """Whether the installed TransformerLens still has `HookedTransformer` (it was removed in 4.0)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def build_tl_model(
    fields: dict[str, Any], tokenizer: Any = None, device: str | torch.device | None = None, backend: str | None = None
) -> Any:
    """A freshly initialised model from TransformerLens config `fields` (n_layers, d_model, ..., seed).

    backend: `"hooked"` (HookedTransformer), `"bridge"` (`TransformerBridge.boot_native`), or None for
    HookedTransformer where TransformerLens has it, else the bridge.
    """
    if backend is None:
        backend = "hooked" if has_hooked_transformer() else "bridge"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS} or None; got {backend!r}")
    if backend == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        device = torch.device(device or "cpu")
        cfg = HookedTransformerConfig(**fields, device=str(device))
        with warnings.catch_warnings():  # TransformerLens 3.x deprecation notice; HookedTransformer is what we want
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        return model.to(device, print_details=False)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    bridge_fields = {k: v for k, v in fields.items() if k not in ("model_name", "default_prepend_bos")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransformerBridge.boot_native(
            TransformerBridgeConfig(**bridge_fields),
            tokenizer=tokenizer,
            device=device,
            model_name=fields.get("model_name", "native"),
        )
    return model


def _is_bridge(model: Any) -> bool:
    return any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)


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
            keys += [p + f"mlp.{n}" for n in ("W_in", "b_in", "W_out", "b_out")]
    if has_norm_params:
        keys += ["ln_final.w"] + (["ln_final.b"] if norm == "LN" else [])
    return keys + ["unembed.W_U", "unembed.b_U"]


def tl_state_dict(model: Any) -> dict[str, Tensor]:
    """Detached CPU copies of the model's weights in TransformerLens naming (HookedTransformer or bridge)."""
    raw = model.tl_parameters() if _is_bridge(model) else model.state_dict()
    missing = [k for k in tl_weight_keys(model.cfg) if k not in raw]
    if missing:
        raise ValueError(f"model: has no weights named {missing[:5]}")
    return {k: raw[k].detach().to("cpu", copy=True).contiguous() for k in tl_weight_keys(model.cfg)}


def load_tl_state_dict(model: Any, state: dict[str, Tensor]) -> Any:
    """Load weights in TransformerLens naming into a HookedTransformer or a `boot_native` bridge, in place."""
    expected = set(tl_weight_keys(model.cfg))
    if set(state) != expected:
        raise ValueError(
            f"state: keys differ from this model's: missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]}"
        )
    if not _is_bridge(model):
        model.load_state_dict(state, strict=False)
        return model
    model.load_state_dict(_native_from_tl(state, model.cfg), strict=True)
    return model


def _native_from_tl(state: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
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
            w = state[f"{tl}attn.W_{n}"]  # [head, d_model, d_head] -> Linear weight [(head d_head), d_model]
            out[f"{nat}attn.{n.lower()}.weight"] = w.permute(0, 2, 1).reshape(-1, w.shape[1])
            out[f"{nat}attn.{n.lower()}.bias"] = state[f"{tl}attn.b_{n}"].reshape(-1)
        w_o = state[f"{tl}attn.W_O"]  # [head, d_head, d_model] -> [d_model, (head d_head)]
        out[f"{nat}attn.o.weight"] = w_o.reshape(-1, w_o.shape[-1]).T
        out[f"{nat}attn.o.bias"] = state[f"{tl}attn.b_O"]
        if not cfg.attn_only:
            out[f"{nat}mlp.in.weight"] = state[f"{tl}mlp.W_in"].T
            out[f"{nat}mlp.in.bias"] = state[f"{tl}mlp.b_in"]
            out[f"{nat}mlp.out.weight"] = state[f"{tl}mlp.W_out"].T
            out[f"{nat}mlp.out.bias"] = state[f"{tl}mlp.b_out"]
    return {k: v.contiguous() for k, v in out.items()}
