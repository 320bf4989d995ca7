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

import torch
from jaxtyping import Int
from torch import Tensor

from tl_tensorsim.adapter import ModelLike, as_view
from tl_tensorsim.artifacts import Provenance
from tl_tensorsim.checks import check_choice
from tl_tensorsim.factored import Method, pairwise_kernel
from tl_tensorsim.linalg import cosine_from_parts
from tl_tensorsim.similarity import baselines
from tl_tensorsim.similarity.circuit_parts import circuit_factors, resolve_positions
from tl_tensorsim.similarity.results import Circuit, HeadMetric, HeadSimilarity, Level
from tl_tensorsim.similarity.token_grams import GramPrecision, cached_triples


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
            Gs, Hs = cached_triples(va, vb, same, circuit, n_pos, fold, dtype, device, gram_precision)
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
