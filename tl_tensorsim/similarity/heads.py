"""Symmetry-invariant weight similarity of attention heads: QK and OV circuits, all pairs, exact.

Each head's QK circuit `W_Q W_K^T` (a bilinear form on the residual stream) and OV circuit `W_V W_O` are kept
factored (rank `d_head`); the cosine between two heads is the Frobenius cosine of these `d_model x d_model`
matrices (`level="residual"`), or of the full circuits through the embedding and unembedding
(`level="token"`: `W_E QK W_E^T`, `W_E OV W_U`, `d_vocab x d_vocab`, never materialised; arXiv 2605.15183 applied to heads):

    <W_E,a QK_a W_E,a^T, W_E,b QK_b W_E,b^T> = Sum[(W_Q,a^T G W_Q,b) o (W_K,a^T G W_K,b)],   G = W_E,a^T W_E,b
    <W_E,a OV_a W_U,a,  W_E,b OV_b W_U,b>    = Sum[(W_V,a^T G W_V,b) o (W_O,a H W_O,b^T)],   H = W_U,a W_U,b^T

The Gram matrices `G`, `H` are computed once per model pair in float64 (`d_model_a x d_model_b`), so the token
level also compares models of different widths that share a vocabulary. All of a call's Grams (`aa`, `ab`, `bb`) come
from one pass over the vocabulary (each chunk of `W_E` / `W_U` converted once), are cached for the next call on the
same weights (a QK then an OV call computes the `W_E` Grams once), and can be multiplied in float32 chunks
accumulated in float64 (`gram_precision="float32"`; measured error in `head_similarity`).

**Invariances.** The value depends only on the circuit matrices, so it is unchanged by the head-internal
GL(d_head) gauges (`W_Q -> W_Q G, W_K -> W_K G^-T`; `W_V -> W_V G, W_O -> G^-1 W_O`) and by rescaling; the token
level is also unchanged by any rotation of one model's residual stream applied consistently to all its weights.
Raw weight cosines (`metric="raw_weight"`) are not. Softmax heads: equal circuits do not certify equal function
through the softmax and LayerNorm.

**What enters.** `W_Q`, `W_K`, `W_V`, `W_O` (and `W_E`, `W_pos`, `W_U` at the token level) only: biases are
ignored, and LayerNorm gains are too unless `fold=True`.

**Positions** (`positions=True` or a number of positions `n`): the circuits' input side runs over all
(token, position) pairs, rows `W_E[t] + W_pos[p]`, for QK (every query (t, p) and key (t', p')) and for OV (every
source (t, p) the head reads from). Its Gram is exact and cheap:
`X_a^T X_b = n W_E,a^T W_E,b + d_vocab W_pos,a^T W_pos,b + e_a p_b^T + p_a e_b^T` (`e`, `p`: column sums).

**Weight processing.** `fold_ln` folds LayerNorm gains into `W_Q, W_K, W_V` (changes QK and OV);
`center_writing_weights` centres `W_O` (OV) and `W_E`, `W_pos` (token level); `center_unembed` centres `W_U`
(token-level OV); `refactor_factored_attn_matrices` keeps QK and OV. Compare models processed the same way (a
warning is raised when the models record different processing), or pass `fold=True`: the same algebra is then
applied to the factors of both models on the fly (idempotent, so raw and processed copies agree to float
precision).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Literal

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.adapter import ModelLike, ModelView, as_view
from tl_tensorsim.artifacts import Provenance
from tl_tensorsim.checks import check_choice
from tl_tensorsim.factored import Method, pairwise_kernel
from tl_tensorsim.linalg import chunk_ranges, cosine_from_parts
from tl_tensorsim.similarity import baselines
from tl_tensorsim.similarity.results import Circuit, HeadMetric, HeadSimilarity, Level


def _norm_family(view: ModelView) -> str | None:
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
        family, gain = _norm_family(view), view.weight("ln1_w", dtype, device)  # [L, d_model]
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
    family = _norm_family(view) if fold else None
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


GramPrecision = Literal["float64", "float32"]
"""Precision of the vocabulary Gram products at the token level: "float64" (default: every chunk converted to and
multiplied in `dtype`), or "float32" (chunks of `FLOAT32_CHUNK` vocabulary rows multiplied in float32, each chunk's
product accumulated into a float64 sum; on GPT-2-small-shaped random models every head-pair cosine moved by at most
5.5e-11, `head_similarity`'s docstring)."""
FLOAT32_CHUNK = 2048  # vocabulary rows per float32 Gram product (its rounding grows with the rows summed in float32)
FLOAT64_CHUNK = 8192


def vocab_grams(
    xa: Float[Tensor, "rows d_a"],
    xb: Float[Tensor, "rows d_b"] | None,
    dtype: torch.dtype,
    device,
    precision: GramPrecision = "float64",
    pairs: tuple[str, ...] = ("aa", "ab", "bb"),
) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
    """Grams `x_a^T x_a`, `x_a^T x_b`, `x_b^T x_b` (those named in `pairs`; `xb=None`: only `aa`) and the column
    sums of `x_a`, `x_b`, in one pass over chunks of rows: each chunk of each matrix is converted once (to `dtype`,
    or to float32 for `precision="float32"`, whose chunk products are accumulated in `dtype`). Cost
    `rows d_a d_b` multiply-adds per Gram."""
    work = torch.float32 if precision == "float32" else dtype
    step = FLOAT32_CHUNK if precision == "float32" else FLOAT64_CHUNK
    pairs = pairs if xb is not None else ("aa",)
    sides = {"a": xa, "b": xb}
    out = {k: torch.zeros(sides[k[0]].shape[1], sides[k[1]].shape[1], dtype=dtype, device=device) for k in pairs}
    sums = {k: torch.zeros(x.shape[1], dtype=dtype, device=device) for k, x in sides.items() if x is not None}
    for i0, i1 in chunk_ranges(xa.shape[0], step):
        c = {k: x[i0:i1].to(device=device, dtype=work) for k, x in sides.items() if x is not None}
        for k in pairs:
            out[k] += (c[k[0]].T @ c[k[1]]).to(dtype)
        for k, x in c.items():
            sums[k] += x.sum(0, dtype=dtype)
    return out, sums["a"], sums.get("b")


def token_metric_triples(
    pa: dict[str, Tensor],
    pb: dict[str, Tensor] | None,
    dtype: torch.dtype,
    device,
    precision: GramPrecision = "float64",
    pairs: tuple[str, ...] = ("aa", "ab", "bb"),
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Left and right metrics of the token-level circuits for the model pairs in `pairs` ("aa", "ab", "bb"; `pb=None`:
    `a` with itself, "aa" only) from the models' `token_parts`, all `[d_model, d_model]` in `dtype`:
    `G = X^T X'` with `X = W_E` or rows `W_E[t] + W_pos[p]`
    (`n W_E^T W_E' + d_vocab W_pos^T W_pos' + e p'^T + p e'^T`, `e`, `p` column sums); `H = G` for QK and
    `W_U W_U'^T` for OV. Each `W_E` / `W_U` chunk is converted once for all pairs."""
    pb_e = None if pb is None else pb["E"]
    Gs, e_a, e_b = vocab_grams(pa["E"], pb_e, dtype, device, precision, pairs)
    if "P" in pa:
        Ps, p_a, p_b = vocab_grams(pa["P"], None if pb is None else pb["P"], dtype, device, "float64", tuple(Gs))
        n, V = pa["P"].shape[0], pa["E"].shape[0]
        e, p = {"a": e_a, "b": e_b}, {"a": p_a, "b": p_b}
        Gs = {
            k: n * G + V * Ps[k] + torch.outer(e[k[0]], p[k[1]]) + torch.outer(p[k[0]], e[k[1]]) for k, G in Gs.items()
        }
    return Gs, (_unembed_grams(pa, pb, dtype, device, precision) if "U" in pa else Gs)


def _unembed_grams(pa, pb, dtype, device, precision) -> dict[str, Tensor]:
    """`W_U W_U'^T` for the pairs "aa", "ab", "bb" ("aa" alone for `pb=None`), one pass over the vocabulary."""
    return vocab_grams(pa["U"].T, None if pb is None else pb["U"].T, dtype, device, precision)[0]


def token_metrics(
    pa: dict[str, Tensor], pb: dict[str, Tensor], dtype: torch.dtype, device, precision: GramPrecision = "float64"
) -> tuple[Tensor, Tensor]:
    """Left and right metrics `(G, H)` of the token-level circuits between two models' `token_parts`, both
    `[d_model_a, d_model_b]` in `dtype` (`token_metric_triples` for the pair "ab")."""
    if pa is pb:
        Gs, Hs = token_metric_triples(pa, None, dtype, device, precision)
        return Gs["aa"], Hs["aa"]
    Gs, Hs = token_metric_triples(pa, pb, dtype, device, precision, ("ab",))
    return Gs["ab"], Hs["ab"]


class _GramCache:
    """The last few token-level metric triples, keyed by the source weights and the settings: a QK and an OV call on
    the same models share the `W_E` (and `W_pos`) Grams, and a repeated call shares all. A weight is matched by its
    storage (held by weak reference: a freed storage never matches, and its memory cannot be reused by another
    tensor while it is referenced), offset, shape, strides, dtype, in-place version and float64 sum and norm (a modified weight never
    matches)."""

    def __init__(self, size: int = 4) -> None:
        self.size, self._entries = size, []

    @staticmethod
    def _id(t: Tensor) -> tuple:
        # the sum and norm also catch writes that bypass the version counter (`t.data.copy_(...)`); two O(numel)
        # reductions, small beside the O(d_vocab d_model^2) Grams they guard
        sums = (float(t.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(t, dtype=torch.float64)))
        return (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t._version, sums)

    def _alive(self, refs, tensors) -> bool:
        return all(r() is t.untyped_storage() and i == self._id(t) for (r, i), t in zip(refs, tensors, strict=True))

    def clear(self) -> None:
        self._entries = []

    def get(self, tensors: list[Tensor], settings: tuple):
        for refs, key, value in self._entries:
            if key == settings and len(refs) == len(tensors) and self._alive(refs, tensors):
                return value
        return None

    def put(self, tensors: list[Tensor], settings: tuple, value) -> None:
        refs = [(weakref.ref(t.untyped_storage()), self._id(t)) for t in tensors]
        self._entries = [e for e in self._entries if all(r() is not None for r, _ in e[0])][-(self.size - 1) :]
        self._entries.append((refs, settings, value))


GRAM_CACHE = _GramCache()


def _cached_triples(va, vb, same, circuit, n_pos, fold, dtype, device, precision):
    """Token-level metric triples `({"aa", "ab", "bb"} -> G, same for H)`, the `W_E`/`W_pos` part and the `W_U`
    part each looked up in `GRAM_CACHE` first."""
    views = [va] if same else [va, vb]
    base = (same, n_pos, fold, tuple(str(_norm_family(v)) for v in views), dtype, str(device), precision)
    e_src = [t for v in views for t in [v.W_E] + ([v.W_pos] if n_pos else [])]
    u_src = [t for v in views for t in [v.W_U] + ([v.weight("ln_final_w")] if fold else [])]
    Gs = GRAM_CACHE.get(e_src, ("E",) + base)
    Hs = GRAM_CACHE.get(u_src, ("U",) + base) if circuit == "OV" else None
    if Gs is None or (circuit == "OV" and Hs is None):
        pa = token_parts(va, circuit, n_pos, fold)
        pb = None if same else token_parts(vb, circuit, n_pos, fold)
        if Gs is not None:  # only W_U is new: its Grams alone
            Hs = _unembed_grams(pa, pb, dtype, device, precision)
        else:
            Gs, H_new = token_metric_triples(pa, pb, dtype, device, precision)
            GRAM_CACHE.put(e_src, ("E",) + base, Gs)
            Hs = H_new if circuit == "OV" else Hs
        if circuit == "OV":
            GRAM_CACHE.put(u_src, ("U",) + base, Hs)
    Hs = Hs if circuit == "OV" else Gs
    if same:
        Gs, Hs = [{k: X["aa"] for k in ("aa", "ab", "bb")} for X in (Gs, Hs)]
    return Gs, Hs


def warn_processing(procs: dict[str, dict], circuit: str, level: str, stacklevel: int = 3) -> None:
    """Warn when compared models (name -> `ModelView.processing()`) record different weight processing."""
    keys = ["fold_ln", "center_writing_weights"] + (["center_unembed"] if level == "token" and circuit == "OV" else [])
    ref_name, ref = next(iter(procs.items()))
    for name, p in procs.items():
        diff = [k for k in keys if p.get(k) != ref.get(k)]
        if diff:
            warnings.warn(
                f"{ref_name} and {name} were processed differently "
                f"({', '.join(f'{k}: {ref.get(k)} vs {p.get(k)}' for k in diff)}). fold_ln changes W_Q/W_K/W_V and "
                "center_writing_weights changes W_O/W_E, so the similarity mixes processing with learning; load all "
                "models with the same processing flags, or pass fold=True.",
                UserWarning,
                stacklevel=stacklevel,
            )
            return


def head_similarity(
    model_a: ModelLike,
    model_b: ModelLike | None = None,
    circuit: Circuit = "QK",
    level: Level = "residual",
    *,
    metric: HeadMetric = "tensor",
    positions: bool | int = False,
    fold: bool = False,
    tokens: Int[Tensor, "batch pos"] | None = None,
    method: Method = "auto",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    memory_budget: float | None = None,
    gram_precision: GramPrecision = "float64",
) -> HeadSimilarity:
    """Cosine similarity of every head of `model_a` with every head of `model_b` (default: `model_a` itself).

    Args:
        model_a, model_b: HookedTransformer, TransformerBridge or ModelView.
        circuit: "QK" (`W_Q W_K^T`) or "OV" (`W_V W_O`).
        level: "residual" (`d_model x d_model` circuits; d_model must match) or "token" (full circuits through
            `W_E` / `W_U`; the vocabulary must match).
        metric: "tensor" (this method), or a baseline: "raw_weight" (cosine of the concatenated raw weights,
            not gauge-invariant) or "behavioral" (cosine of the heads' outputs on `tokens`); baselines ignore
            `level`.
        positions: token level only: include `W_pos` in the circuits' input side, for QK and OV alike (True: all
            n_ctx positions; an int: the first n).
        fold: apply TransformerLens' `fold_ln` and `center_writing_weights` (and, at the token level,
            `center_unembed`) to the factors on the fly, so that the LayerNorm gains count and a raw and a processed
            copy of one model give the same circuits (self-similarity 1 to float precision); no processing warning
            is then needed. Default False: the circuits as the model's weights show them.
        method: "auto" (by operation count), "factored" or "dense"; identical numbers.
        dtype: computation dtype (float64 default; float32 is faster on CPU and still returns float64).
        device: where to compute (default: model_a's device); results are float64 on the CPU.
        memory_budget: bytes of intermediate results held at once (default 1 GiB).
        gram_precision: token level: "float64" (default) or "float32": the `d_vocab`-long Gram products
            (`W_E^T W_E`, `W_U W_U^T`) multiplied in float32 in chunks of 2,048 vocabulary rows, each chunk's product
            accumulated in float64 (everything else stays in `dtype`). Measured on two GPT-2-small-shaped random
            models (d_vocab 50257, d_model 768, 144 x 144 heads; QK and OV, QK with positions): every cosine within
            5.5e-11 of "float64" (largest change 3.0e-11 QK, 3.4e-11 OV, 5.5e-11 QK with positions), and the call
            1.3-1.6x faster on one CPU thread (`python benchmarks/head_similarity.py --grams-only`).

    The vocabulary Grams are cached (the last 4; weights matched by storage, held by weak reference, and in-place
    version): a QK and an OV call on the same models compute the `W_E` Grams once.

    Returns:
        `HeadSimilarity` with `.values [n_heads_a, n_heads_b]` (rows/columns L0H0, L0H1, ...).

    Only `W_Q`, `W_K`, `W_V`, `W_O` (and `W_E`, `W_pos`, `W_U` at the token level) enter: biases (`b_Q`, `b_K`,
    `b_V`, `b_O`, the LayerNorm bias that `fold_ln` moves into them) are ignored, and so are LayerNorm gains unless
    `fold=True`. Without it, a head of a raw and of a processed (`process_weights_`) copy of one model scores below 1
    with itself (0.90-0.99 on the random LayerNorm models of the tests), with a warning.
    """
    check_choice(circuit, Circuit, "circuit")
    check_choice(metric, HeadMetric, "metric")
    if metric != "tensor":
        if metric == "raw_weight":
            return baselines.raw_weight_similarity(model_a, model_b, circuit=circuit)
        return baselines.behavioral_similarity(model_a, model_b, tokens=tokens, device=device)
    check_choice(level, Level, "level")
    check_choice(gram_precision, GramPrecision, "gram_precision")
    same = model_b is None or model_b is model_a
    va = as_view(model_a)
    vb = va if same else as_view(model_b)
    if level == "residual" and va.cfg.d_model != vb.cfg.d_model:
        raise ValueError(
            f"model_b: level='residual' needs equal d_model; got {va.cfg.d_model} and {vb.cfg.d_model} "
            "(use level='token', which compares models sharing a vocabulary)"
        )
    if level == "token" and va.cfg.d_vocab != vb.cfg.d_vocab:
        raise ValueError(
            f"model_b: level='token' needs the same vocabulary; got d_vocab {va.cfg.d_vocab} and {vb.cfg.d_vocab}"
        )
    if level == "residual" and positions:
        raise ValueError("positions: only used with level='token'")
    n_pos = resolve_positions([va, vb], positions) if level == "token" else None
    proc_a = va.processing()
    procs = {"model_a": proc_a, "model_b": proc_a if same else vb.processing()}
    if not fold:
        warn_processing(procs, circuit, level)
    device = torch.device(device) if device is not None else va.device
    Aa, Ba = (t[None] for t in circuit_factors(va, circuit, dtype, device, fold))
    Ab, Bb = (None, None) if same else (t[None] for t in circuit_factors(vb, circuit, dtype, device, fold))
    kw = dict(method=method, memory_budget=memory_budget)
    with torch.no_grad():
        if level == "residual":
            Gaa = Gab = Gbb = Haa = Hab = Hbb = None
        else:
            Gs, Hs = _cached_triples(va, vb, same, circuit, n_pos, fold, dtype, device, gram_precision)
            (Gaa, Gab, Gbb), (Haa, Hab, Hbb) = ([X[k] for k in ("aa", "ab", "bb")] for X in (Gs, Hs))
        if level == "residual" and not same:  # the norms from the chunks the pairs are computed from
            inner, na, nb = (t[0] for t in pairwise_kernel(Aa, Ba, Ab, Bb, with_norms=True, **kw))
        else:
            inner = pairwise_kernel(Aa, Ba, Ab, Bb, Gab, Hab, **kw)[0]
        if same:
            na = nb = inner.diagonal()
        elif level != "residual":
            na = pairwise_kernel(Aa[0, :, None], Ba[0, :, None], Aa[0, :, None], Ba[0, :, None], Gaa, Haa, **kw)[
                :, 0, 0
            ]
            nb = pairwise_kernel(Ab[0, :, None], Bb[0, :, None], Ab[0, :, None], Bb[0, :, None], Gbb, Hbb, **kw)[
                :, 0, 0
            ]
    inner, na, nb = (t.to("cpu", torch.float64) for t in (inner, na, nb))
    settings = {
        "model_a": va.cfg.model_name,
        "model_b": vb.cfg.model_name,
        "positions": n_pos,
        "fold": fold,
        "dtype": str(dtype),
        **({"gram_precision": gram_precision} if level == "token" and gram_precision != "float64" else {}),
        "processing_a": procs["model_a"],
        "processing_b": procs["model_b"],
    }
    return HeadSimilarity(
        values=cosine_from_parts(inner, na[:, None], nb[None, :]),
        labels_a=va.head_labels(),
        labels_b=vb.head_labels(),
        circuit=circuit,
        level=level,
        metric="tensor",
        inner=inner,
        norms_sq_a=na.clone(),
        norms_sq_b=nb.clone(),
        settings=settings,
        provenance=Provenance(
            models=(va.cfg.model_name, vb.cfg.model_name),
            settings={"circuit": circuit, "level": level, "metric": "tensor", "method": method, **settings},
        ),
    )
