"""Bilinear MLPs inside a `HookedTransformer`, and the scope guard for whole-model analyses.

TransformerLens' gated MLP computes `(act(x @ W_gate) * (x @ W_in) + b_in) @ W_out + b_out`; with the identity
activation that is exactly a bilinear layer `D[(L x) ⊙ (R x)] + b` with `L = W_gateᵀ`, `R = W_inᵀ`,
`D = W_outᵀ`, `b = b_out + W_outᵀ b_in` (paper §2.1). TransformerLens resolves `cfg.act_fn` through the dict
`transformer_lens.utilities.activation_functions.SUPPORTED_ACTIVATIONS` (checked by `HookedTransformerConfig`
and looked up by `ActivationFunctionFactory`; its comment documents adding a name there as the way to extend
it). `register_identity_activation()` adds `"identity"` to it, explicitly: importing tl_tensorsim changes no
TransformerLens state; `bilinear_config` calls it, and code that builds such a config by hand calls it first.
After it, `HookedTransformerConfig(..., gated_mlp=True, act_fn="identity")` builds bilinear MLPs.
`extract_mlp(model, layer)` reads a block's MLP through `ModelView` as a `BilinearLayer`.

Softmax attention and LayerNorm are not polynomial, so a `HookedTransformer` as a whole is never a tensor
network: `check_polynomial` raises `NotPolynomialError` naming the offending parts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tl_tensorsim.adapter import ModelLike, as_view
from tl_tensorsim.models.bilinear import BilinearLayer
from tl_tensorsim.models.tensor_network import HookedTensorNetwork

IDENTITY_ACT_FN = "identity"


class NotPolynomialError(ValueError):
    """The model has a non-polynomial part (softmax attention, LayerNorm, a non-identity activation)."""


def _identity(x: Tensor) -> Tensor:
    return x


def register_identity_activation(name: str = IDENTITY_ACT_FN) -> str:
    """Register the identity activation in TransformerLens' activation registry (idempotent); returns `name`.

    Importing tl_tensorsim does not do this (no import-time change to TransformerLens): `bilinear_config` calls it,
    and code that builds a `gated_mlp=True, act_fn="identity"` config by hand calls it first. Also registers it with the native `TransformerBridge` backend when that (private) table exists, so
    `TransformerBridge.boot_native(cfg)` accepts it too.
    """
    from transformer_lens.utilities import activation_functions as af

    existing = af.SUPPORTED_ACTIVATIONS.get(name)
    if existing is not None and existing is not _identity:
        probe = torch.linspace(-2, 2, 5)
        if not torch.equal(existing(probe), probe):
            raise ValueError(f"name: TransformerLens already registers a different activation as {name!r}")
    af.SUPPORTED_ACTIVATIONS[name] = _identity
    try:  # best effort: TransformerLens 3.x native bridge keeps its own (private) table
        from transformer_lens.model_bridge.sources.native import model as native

        table = getattr(native, "_ACTIVATIONS", None)
        if isinstance(table, dict):
            table.setdefault(name, _identity)
    except ImportError:  # pragma: no cover - older TransformerLens
        pass
    return name


def bilinear_config(*, bridge: bool | None = None, **kwargs: Any) -> Any:
    """A TransformerLens config whose MLPs are bilinear (`gated_mlp=True`, `act_fn='identity'`).

    `kwargs` are the config's fields (`n_layers`, `d_model`, ...). Which config class comes back:

    - `bridge=False`: a `HookedTransformerConfig`, for `HookedTransformer(cfg)`. TransformerLens 2.x/3.x only:
      TransformerLens 4 removed both classes, and this raises an `ImportError` saying so there.
    - `bridge=True`: a `TransformerBridgeConfig`, for `TransformerBridge.boot_native(cfg, dtype=...)`
      (TransformerLens 3.x and 4.x; `boot_native` takes the dtype as its own argument, not from the config).
    - `bridge=None` (default): `HookedTransformerConfig` where TransformerLens still has it, else
      `TransformerBridgeConfig`.

    Registers the identity activation first (see `register_identity_activation`).
    """
    register_identity_activation()
    for key, want in (("gated_mlp", True), ("act_fn", IDENTITY_ACT_FN)):
        if key in kwargs and kwargs[key] != want:
            raise ValueError(f"{key}: a bilinear-MLP config needs {key}={want!r}; got {kwargs[key]!r}")
    fields = {**kwargs, "gated_mlp": True, "act_fn": IDENTITY_ACT_FN}
    if not bridge:
        try:
            from transformer_lens import HookedTransformerConfig
        except ImportError as e:  # TransformerLens 4.x: HookedTransformer and its config were removed
            if bridge is False:
                raise ImportError(
                    "bridge: bilinear_config(bridge=False) builds a HookedTransformerConfig, which exists only in "
                    "TransformerLens 2.x/3.x (the installed TransformerLens removed it); use bilinear_config("
                    "bridge=True) and TransformerBridge.boot_native(cfg) instead"
                ) from e
        else:
            return HookedTransformerConfig(**fields)
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig(**fields)


def extract_mlp(model: ModelLike, layer: int) -> BilinearLayer:
    """Block `layer`'s MLP of a `HookedTransformer` / `TransformerBridge` as a `BilinearLayer`, as a function of
    the MLP's own input: the activation after `ln2`, `blocks.{layer}.ln2.hook_normalized` (with
    `normalization_type=None` there is no `ln2`: `blocks.{layer}.hook_resid_mid`). Applied to it, the layer gives
    `blocks.{layer}.hook_mlp_out`. Not `blocks.{layer}.hook_mlp_in`: that hook fires before `ln2`.

    Needs `gated_mlp=True` and `act_fn='identity'`; raises `NotPolynomialError` otherwise.
    """
    view = as_view(model)
    c = view.cfg
    if c.attn_only or c.d_mlp is None:
        raise ValueError(f"model: {c.model_name!r} is attention-only; it has no MLP to extract")
    if not 0 <= layer < c.n_layers:
        raise ValueError(f"layer: expected 0 <= layer < n_layers={c.n_layers}; got {layer}")
    if not c.gated_mlp or c.act_fn != IDENTITY_ACT_FN:
        raise NotPolynomialError(
            f"model: block {layer}'s MLP is not bilinear (gated_mlp={c.gated_mlp}, act_fn={c.act_fn!r}); a bilinear "
            f"MLP needs gated_mlp=True and act_fn={IDENTITY_ACT_FN!r} (see tl_tensorsim.tensor_networks.bilinear_config)"
        )
    W_gate, W_in, W_out = view.W_gate[layer], view.W_in[layer], view.W_out[layer]
    b_out = (
        view.b_out[layer]
        if view.has_weight("b_out")
        else torch.zeros(c.d_model, dtype=W_out.dtype, device=W_out.device)
    )
    if view.has_weight("b_in"):
        b_out = b_out + view.b_in[layer] @ W_out  # b_in is added after the product: a constant hidden offset
    return BilinearLayer(L=W_gate.T.clone(), R=W_in.T.clone(), D=W_out.T.clone(), b_out=b_out.clone())


def extract_mlps(model: ModelLike) -> list[BilinearLayer]:
    """Every block's MLP as a `BilinearLayer` (see `extract_mlp`)."""
    return [extract_mlp(model, layer) for layer in range(as_view(model).cfg.n_layers)]


def non_polynomial_parts(model: ModelLike) -> list[str]:
    """Human-readable list of the model's parts that are not polynomial (empty for a tensor network)."""
    if isinstance(model, HookedTensorNetwork):
        return []
    try:
        view = as_view(model)
    except TypeError:  # a TransformerLens model the adapter does not cover (e.g. HookedEncoder)
        return [f"{type(model).__name__}: softmax attention and LayerNorm"]
    c = view.cfg
    parts = [f"softmax attention ({c.n_layers} layers x {c.n_heads} heads)"]
    if c.normalization_type is not None:
        parts.append(f"normalization_type={c.normalization_type!r} (LayerNorm/RMSNorm divides by a norm)")
    if not c.attn_only and not (c.gated_mlp and c.act_fn == IDENTITY_ACT_FN):
        parts.append(f"MLP activation act_fn={c.act_fn!r} (gated_mlp={c.gated_mlp})")
    return parts


def check_polynomial(model: ModelLike, argument: str = "model") -> None:
    """Raise `NotPolynomialError` unless `model` is a pure tensor network."""
    parts = non_polynomial_parts(model)
    if parts:
        raise NotPolynomialError(
            f"{argument}: {type(model).__name__} is not a tensor network (not a polynomial of its input): "
            + "; ".join(parts)
            + ". Exact tensor similarity needs every layer multilinear. Compare its bilinear MLPs with "
            "tensor_similarity(extract_mlp(a, l), extract_mlp(b, l)), or its heads with the QK/OV factored metrics."
        )
