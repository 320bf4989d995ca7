"""Path decomposition of a 1-layer, 1-head, attention-only transformer, as certified float64 tables.

arXiv 2406.11779 (the path decomposition): with no MLP and no normalisation, the logits at the last
position (query token q = t[n-1]) of a sequence t are exactly

    logit(t)[x] = EUPU[q, x] + Σ_i a_i · (EVOU[t_i, x] + PVOU[i, x]),      a = softmax_i(EQKE[q, t_i] + EQKP[q, i])

where (E = W_E, P = W_pos, s = the attention scale, `Q(q) = ((E[q] + P[n-1]) W_Q + b_Q) / s`)

    EQKE[q, t] = Q(q) · (E[t] W_K)              [V, V]   token part of the attention score
    EQKP[q, i] = Q(q) · (P[i] W_K + b_K)        [V, n]   positional part (the key bias folded in)
    EVOU[t, x] = (E[t] W_V W_O W_U)[x]          [V, V]   OV circuit by token
    PVOU[i, x] = ((P[i] W_V + b_V) W_O W_U)[x]  [n, V]   OV circuit by position (the value bias folded in)
    EUPU[q, x] = ((E[q] + P[n-1] + b_O) W_U + b_U)[x]  [V, V]   direct path (the output biases folded in)

The biases fold in exactly because the attention weights sum to one. Every table is a `Ball` enclosing the exact
product of the model's weights (read through `ModelView` and converted to float64 exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.adapter import ModelLike, ModelView, as_view
from tl_tensorsim.checks import check_finite_weights
from tl_tensorsim.proofs.certified import Ball

__all__ = ["PathTables", "attention_scale", "check_model", "check_against_forward", "path_logits", "path_tables"]

# config flags that would change the forward pass, and the value under which the path formula holds
_FLAGS_OFF = (
    "use_qk_norm",
    "use_attention_sinks",
    "use_local_attn",
    "scale_attn_by_inverse_layer_idx",
    "clip_qkv",
    "post_embedding_ln",  # a LayerNorm on the embeddings, even with normalization_type None
)
_HINT = "the Max-of-K proofs cover 1-layer, 1-head, attention-only models without normalisation (arXiv 2406.11779)"


def check_model(model: ModelLike) -> ModelView:
    """The model's `ModelView` after checking the preconditions of the path decomposition; a `ValueError` naming
    the first violated one (n_layers 1, n_heads 1, attn_only, normalization_type None, standard positional
    embeddings, d_vocab_out = d_vocab, no soft caps, QK norms, post-embedding LayerNorm, attention sinks or local
    attention)."""
    view = as_view(model)
    c = view.cfg
    expected = (
        ("n_layers", c.n_layers, 1),
        ("n_heads", c.n_heads, 1),
        ("attn_only", c.attn_only, True),
        ("normalization_type", c.normalization_type, None),
        ("positional_embedding_type", c.positional_embedding_type, "standard"),
    )
    for name, got, want in expected:
        if got != want:
            raise ValueError(f"model: expected cfg.{name} = {want!r}; got {got!r} ({_HINT})")
    if c.n_ctx < 2 or c.d_vocab < 2:
        raise ValueError(
            f"model: expected n_ctx >= 2 and d_vocab >= 2 (a query plus another position, a wrong output to compare "
            f"with); got n_ctx={c.n_ctx}, d_vocab={c.d_vocab}"
        )
    for name in _FLAGS_OFF:
        if view.config_value(name):
            raise ValueError(f"model: expected cfg.{name} off; got {view.config_value(name)!r} ({_HINT})")
    for name in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        cap = view.config_value(name)
        if cap is not None and cap > 0:
            raise ValueError(f"model: expected no {name} (<= 0); got {cap!r} ({_HINT})")
    kv = view.config_value("n_key_value_heads")
    if kv not in (None, 1):
        raise ValueError(f"model: expected cfg.n_key_value_heads None or 1; got {kv!r} ({_HINT})")
    d_out = tuple(view.W_U.shape)
    if d_out != (c.d_model, c.d_vocab):
        raise ValueError(
            f"model: expected W_U of shape [d_model, d_vocab] = {[c.d_model, c.d_vocab]}; got {list(d_out)}"
        )
    return view


def attention_scale(view: ModelView) -> float:
    """The number the attention scores are divided by (`view.cfg.attn_scale`: √d_head unless the config sets
    another). Checked against the forward pass by `check_against_forward`."""
    return view.cfg.attn_scale


@dataclass
class PathTables:
    """The five path tables of a 1-layer attention-only model as float64 `Ball`s (module docstring): `EQKE`
    `[V, V]`, `EQKP` `[V, n]`, `EVOU` `[V, V]`, `PVOU` `[n, V]`, `EUPU` `[V, V]`."""

    EQKE: Ball
    EQKP: Ball
    EVOU: Ball
    PVOU: Ball
    EUPU: Ball

    @property
    def d_vocab(self) -> int:
        return self.EQKE.shape[0]

    @property
    def n_ctx(self) -> int:
        return self.EQKP.shape[1]


def model_weights(view: ModelView, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The weights of the single head as float64 tensors (exact conversions): W_E [V, d], W_pos [n, d],
    W_Q/W_K/W_V [d, h], W_O [h, d], W_U [d, V], b_Q/b_K/b_V [h], b_O [d], b_U [V], and `scale` (0-dim); a
    ValueError naming the weights that hold NaN or inf."""
    dev = device if device is not None else view.device
    w = {n: view.weight(n, dtype=torch.float64, device=dev) for n in ("W_E", "W_pos", "W_U", "b_U")}
    for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
        w[n] = view.weight(n, dtype=torch.float64, device=dev)[0]
        if n != "b_O":
            w[n] = w[n][0]  # the single head
    check_finite_weights(w)
    w["scale"] = torch.tensor(attention_scale(view), dtype=torch.float64, device=dev)
    return w


def path_tables(model: ModelLike, device: torch.device | str | None = None) -> PathTables:
    """The certified path tables of `model` (preconditions checked first; module docstring). Cost
    O(V·d² + V²·d) float64 operations. `device`: where to compute (default: the model's)."""
    view = check_model(model)
    w = model_weights(view, device)
    E, P, n = Ball.exact(w["W_E"]), Ball.exact(w["W_pos"]), w["W_pos"].shape[0]
    last = P[n - 1]
    query = ((E + last) @ w["W_Q"] + w["b_Q"]) / w["scale"]
    key_pos = P @ w["W_K"] + w["b_K"]
    return PathTables(
        EQKE=query @ (E @ w["W_K"]).T,
        EQKP=query @ key_pos.T,
        EVOU=((E @ w["W_V"]) @ w["W_O"]) @ w["W_U"],
        PVOU=((P @ w["W_V"] + w["b_V"]) @ w["W_O"]) @ w["W_U"],
        EUPU=(E + last + w["b_O"]) @ w["W_U"] + w["b_U"],
    )


def path_logits(tables: PathTables, tokens: Int[Tensor, "batch n_ctx"]) -> Float[Tensor, "batch d_vocab"]:
    """The last position's logits by the path formula (float64, the tables' midpoints)."""
    tokens = tokens.to(tables.EQKE.mid.device)
    q = tokens[:, -1]
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    scores = tables.EQKE.mid[q[:, None], tokens] + tables.EQKP.mid[q]  # [batch, n]
    attn = torch.softmax(scores, dim=-1)
    values = tables.EVOU.mid[tokens] + tables.PVOU.mid[positions]  # [batch, n, V]
    return tables.EUPU.mid[q] + torch.einsum("bi,bix->bx", attn, values)


def sample_tokens(d_vocab: int, n_ctx: int, n: int, seed: int = 0) -> Int[Tensor, "batch n_ctx"]:
    """`n` uniform sequences plus the edge cases (every constant sequence, and the sorted ramps)."""
    g = torch.Generator().manual_seed(seed)
    constant = torch.arange(d_vocab)[:, None].expand(d_vocab, n_ctx)
    ramp = torch.arange(n_ctx)[None, :] * max(1, (d_vocab - 1) // max(1, n_ctx - 1))
    ramps = torch.cat([ramp, ramp.flip(-1)]).clamp_max(d_vocab - 1)
    return torch.cat([torch.randint(0, d_vocab, (n, n_ctx), generator=g), constant, ramps])


@torch.no_grad()
def check_against_forward(model: ModelLike, tables: PathTables, n_samples: int = 256, seed: int = 0) -> float:
    """Compare `path_logits` with the model's own forward pass (last position) on `n_samples` uniform sequences and
    the edge cases; return the largest difference, or raise a `ValueError` when it exceeds 1000 ulp of the model's
    dtype times the logits' scale (the path formula then does not describe this model: an unsupported setting)."""
    view = as_view(model)
    tokens = sample_tokens(tables.d_vocab, tables.n_ctx, n_samples, seed).to(view.device)
    logits, _ = view.run_with_cache(tokens, names=[])
    got = logits[:, -1].to(torch.float64).to(tables.EQKE.mid.device)
    want = path_logits(tables, tokens)
    scale = float(want.abs().max()) + 1.0
    diff = float((got - want).abs().max())
    tol = 1000 * torch.finfo(logits.dtype).eps * scale
    if not diff <= tol:
        raise ValueError(
            f"model: its forward pass differs from the path decomposition by {diff:.3g} (tolerance {tol:.3g}) on "
            f"{len(tokens)} sequences; some setting of its config changes the computation ({_HINT})"
        )
    return diff
