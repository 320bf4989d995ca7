"""Baselines for head similarity, in the same result type as the tensor similarity (for comparison plots).

- **Raw weight cosine**: cosine of each head's concatenated, flattened raw weights `[W_Q, W_K]` (QK) or
  `[W_V, W_O]` (OV). It is *not* invariant to the head-internal GL(d_head) gauges or to a rotation of the residual
  stream, so it moves under reparametrisations that leave the function unchanged: the reason for the tensor
  similarity (arXiv 2605.15183: the invariances and the "matrix cosine" baseline of the backdoor study).
- **Behavioural cosine**: cosine of the heads' outputs (`z @ W_O` per head, i.e. `hook_result` without `b_O`),
  flattened over a token batch's `[batch, pos, d_model]`. Data-dependent, gauge-invariant, but not invariant to
  a rotation of one model's residual stream.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.adapter import ModelLike, ModelView, as_view
from tl_tensorsim.artifacts import Provenance
from tl_tensorsim.checks import as_token_tensor, check_choice, check_token_range
from tl_tensorsim.linalg import cosine_from_parts
from tl_tensorsim.similarity.results import Circuit, HeadSimilarity


def raw_weight_vectors(view: ModelView, circuit: str) -> Float[Tensor, "n_heads n_weights"]:
    """Each head's raw weights, flattened and concatenated: QK `[W_Q, W_K]`, OV `[W_V, W_O]` (model dtype)."""
    check_choice(circuit, Circuit, "circuit")
    first, second = (view.W_Q, view.W_K) if circuit == "QK" else (view.W_V, view.W_O)
    return torch.cat([rearrange(first, "L H a b -> (L H) (a b)"), rearrange(second, "L H a b -> (L H) (a b)")], dim=-1)


def raw_weight_similarity(
    model_a: ModelLike, model_b: ModelLike | None = None, circuit: Circuit = "QK"
) -> HeadSimilarity:
    """Cosine of raw concatenated head weights (not gauge-invariant), float64 `[n_heads_a, n_heads_b]`."""
    va = as_view(model_a)
    vb = va if model_b is None else as_view(model_b)
    xa = raw_weight_vectors(va, circuit).to("cpu", torch.float64)
    xb = raw_weight_vectors(vb, circuit).to("cpu", torch.float64)
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(
            f"model_b: raw weight cosine needs equal d_model and d_head; got {va.cfg.d_model}/{va.cfg.d_head} "
            f"and {vb.cfg.d_model}/{vb.cfg.d_head}"
        )
    inner, na, nb = xa @ xb.T, (xa * xa).sum(-1), (xb * xb).sum(-1)
    return _result(va, vb, inner, na, nb, circuit, "raw_weight", {})


def check_token_batch(tokens: Any) -> Tensor:
    """`tokens` as a non-empty `LongTensor [batch >= 1, pos >= 1]` (a `ValueError` naming `tokens` and its shape
    otherwise: an empty batch has no head outputs, so every cosine would silently be 0)."""
    if not isinstance(tokens, Tensor):
        raise ValueError(f"tokens: expected an integer tensor [batch, pos]; got {type(tokens).__name__}")
    tokens = as_token_tensor(tokens, "tokens", allow_1d=False)
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(
            f"tokens: expected at least one sequence of at least one position [batch >= 1, pos >= 1]; got shape "
            f"{list(tokens.shape)}. Hint: an empty batch has no head outputs to compare (every cosine would be 0)"
        )
    return tokens


def _check_tokens(tokens: Any, view: ModelView) -> Tensor:
    return check_token_range(check_token_batch(tokens), "tokens", view.cfg.d_vocab, view.cfg.n_ctx)


def head_outputs(view: ModelView, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "n_heads batch pos d_model"]:
    """Every head's output `z @ W_O` (no `b_O`), heads in `head_labels()` order, model dtype.

    Reads `blocks.{l}.attn.hook_z` with `ModelView.run_with_cache` (no hooks stay behind; the unembedding is
    skipped)."""
    tokens = _check_tokens(tokens, view)
    names = [view.check_hook_name(f"blocks.{layer}.attn.hook_z") for layer in range(view.cfg.n_layers)]
    with torch.no_grad():
        _, cache = view.run_with_cache(tokens, names=names, stop_at_layer=view.cfg.n_layers)
        W_O = view.W_O
        out = torch.stack([einsum(cache[n], W_O[layer], "b p h r, h r d -> h b p d") for layer, n in enumerate(names)])
    return rearrange(out, "L H b p d -> (L H) b p d")


def behavioral_similarity(
    model_a: ModelLike,
    model_b: ModelLike | None = None,
    *,
    tokens: Int[Tensor, "batch pos"] | None = None,
    batch_size: int = 8,
    device: Any = None,
) -> HeadSimilarity:
    """Cosine of the heads' outputs on `tokens` (flattened over batch, position and d_model), float64.

    `<y_a, y_b> = sum_{batch, pos, d} y_a y_b` accumulated over mini-batches of `batch_size` sequences, so memory
    stays one mini-batch of head outputs. Both models must share d_model and the vocabulary."""
    if tokens is None:
        raise ValueError("tokens: metric='behavioral' needs a token batch [batch, pos]")
    va = as_view(model_a)
    vb = va if model_b is None else as_view(model_b)
    if (va.cfg.d_model, va.cfg.d_vocab) != (vb.cfg.d_model, vb.cfg.d_vocab):
        raise ValueError(
            f"model_b: behavioural cosine needs equal d_model and vocabulary; got {va.cfg.d_model}/{va.cfg.d_vocab} "
            f"and {vb.cfg.d_model}/{vb.cfg.d_vocab}"
        )
    _check_tokens(tokens, vb)
    inner = torch.zeros(va.cfg.n_layers * va.cfg.n_heads, vb.cfg.n_layers * vb.cfg.n_heads, dtype=torch.float64)
    na, nb = torch.zeros(inner.shape[0], dtype=torch.float64), torch.zeros(inner.shape[1], dtype=torch.float64)
    for i in range(0, tokens.shape[0], max(1, batch_size)):
        chunk = tokens[i : i + batch_size]
        ya = head_outputs(va, chunk).flatten(1).to(device or "cpu", torch.float64)
        yb = ya if vb is va else head_outputs(vb, chunk).flatten(1).to(ya.device, torch.float64)
        inner += (ya @ yb.T).cpu()
        na += (ya * ya).sum(-1).cpu()
        nb += (yb * yb).sum(-1).cpu()
    return _result(va, vb, inner, na, nb, "output", "behavioral", {"n_tokens": int(tokens.numel())})


def _result(va, vb, inner, na, nb, circuit, metric, extra) -> HeadSimilarity:
    settings = {"model_a": va.cfg.model_name, "model_b": vb.cfg.model_name, **extra}
    layers = max(va.cfg.n_layers, vb.cfg.n_layers) if metric == "behavioral" else 0
    provenance = Provenance(
        models=(va.cfg.model_name, vb.cfg.model_name),
        hooks=tuple(f"blocks.{layer}.attn.hook_z" for layer in range(layers)),
        settings={"circuit": circuit, "metric": metric, **settings},
    )
    return HeadSimilarity(
        values=cosine_from_parts(inner, na[:, None], nb[None, :]),
        labels_a=va.head_labels(),
        labels_b=vb.head_labels(),
        circuit=circuit,
        level="weights" if metric == "raw_weight" else "outputs",
        metric=metric,
        inner=inner,
        norms_sq_a=na,
        norms_sq_b=nb,
        settings=settings,
        provenance=provenance,
    )
