"""What the head circuits are made of, read through the `ModelView`: the QK / OV factors of every head
(`circuit_factors`: `[layer, head, d_model, d_head]` pairs, optionally with the normalisation gain folded in),
the token-level parts (`token_parts`: `W_E`, `W_pos`, `W_U`) and the positions a token-level call uses.
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.adapter import ModelView
from tl_tensorsim.checks import check_choice
from tl_tensorsim.similarity.results import Circuit


def norm_family(view: ModelView) -> str | None:
    """ "LN" (LayerNorm, LNPre), "RMS" (RMSNorm, RMSPre) or None: what the residual stream is read through."""
    norm = str(view.cfg.normalization_type or "")
    return "LN" if norm.startswith("LN") else "RMS" if norm.startswith("RMS") else None


def _fold_read(W: Tensor, gain: Tensor, family: str | None, axis: int) -> Tensor:
    """TransformerLens' `fold_ln` on weights that read the normalised stream along `axis` (`d_model`): scale by
    the gain (broadcast against `W`), then (LayerNorm only) remove the mean over `d_model`, which the centred input
    never sees."""
    if family is None:
        return W
    W = W * gain
    return W - W.mean(axis, keepdim=True) if family == "LN" else W


def circuit_factors(
    view: ModelView,
    circuit: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    fold: bool = False,
) -> tuple[Float[Tensor, "n_heads d_model d_head"], Float[Tensor, "n_heads d_head d_model"]]:
    """`(A, B)` with `A @ B` the circuit of every head, heads flattened in `head_labels()` order:
    QK: `(W_Q, W_K^T)` (`B` a transposed view); OV: `(W_V, W_O)`. Model dtype and device unless given (then
    stacked straight into `dtype` / `device`, one copy).

    `fold=True` applies TransformerLens' weight processing to the factors, not the model: `fold_ln` (each layer's
    `ln1` gain folded into `W_Q`, `W_K`, `W_V`, which are then centred over `d_model` for LayerNorm) and
    `center_writing_weights` (`W_O` centred over `d_model`, LayerNorm only). Idempotent: a processed model's factors
    come back unchanged (its gains are ones), so a raw and a processed copy give the same circuits."""
    check_choice(circuit, Circuit, "circuit")
    if circuit == "QK":
        A, B = view.weight("W_Q", dtype, device), view.weight("W_K", dtype, device).transpose(-1, -2)
    else:
        A, B = view.weight("W_V", dtype, device), view.weight("W_O", dtype, device)
    if fold:
        family, gain = norm_family(view), view.weight("ln1_w", dtype, device)  # [L, d_model]
        A = _fold_read(A, gain[:, None, :, None], family, -2)
        if circuit == "QK":
            B = _fold_read(B, gain[:, None, None, :], family, -1)
        elif family == "LN":
            B = B - B.mean(-1, keepdim=True)
    return rearrange(A, "L H m r -> (L H) m r"), rearrange(B, "L H r n -> (L H) r n")


def resolve_positions(views: list[ModelView], positions: bool | int) -> int | None:
    """Number of positions for the token-level input side (None: embeddings only); checks every model has it."""
    if positions is False or positions is None or positions == 0:
        return None
    for v in views:
        if not v.has_weight("W_pos"):
            raise ValueError(
                f"positions: model {v.cfg.model_name!r} has no learned W_pos "
                f"(positional_embedding_type={v.cfg.positional_embedding_type!r}); use positions=False"
            )
    n_ctx = {v.cfg.n_ctx for v in views}
    if positions is True:
        if len(n_ctx) > 1:
            raise ValueError(f"positions=True: models have different n_ctx {sorted(n_ctx)}; pass a number of positions")
        return n_ctx.pop()
    if not isinstance(positions, int) or not 0 < positions <= min(n_ctx):
        raise ValueError(f"positions: expected a bool or an int in [1, {min(n_ctx)}]; got {positions!r}")
    return positions


def token_parts(view: ModelView, circuit: str, n_pos: int | None, fold: bool = False) -> dict[str, Tensor]:
    """The weights a token-level circuit reads besides the head: `E = W_E`, `P = W_pos[:n_pos]` (positions),
    `U = W_U` (OV only). Model dtype and device.

    `fold=True`: as TransformerLens' processing, `W_E`, `W_pos` centred over `d_model` (`center_writing_weights`,
    LayerNorm only), the `ln_final` gain folded into `W_U` (centred over `d_model` for LayerNorm), and `W_U` centred
    over the vocabulary (`center_unembed`)."""
    family = norm_family(view) if fold else None
    centre = (lambda W: W - W.mean(-1, keepdim=True)) if family == "LN" else (lambda W: W)  # noqa: E731
    parts = {"E": centre(view.W_E)}
    if n_pos is not None:
        parts["P"] = centre(view.W_pos[:n_pos])
    if circuit == "OV":
        U = view.W_U
        if fold:
            U = _fold_read(U, view.weight("ln_final_w", U.dtype, U.device)[:, None], family, 0)
            U = U - U.mean(-1, keepdim=True)
        parts["U"] = U
    return parts
