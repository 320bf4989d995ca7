"""The vocabulary Grams of the token-level circuits (`W_E^T W_E'`, `W_U W_U'^T`, with positions), from one pass over
the vocabulary per call, optionally multiplied in float32 chunks accumulated in float64 (`GramPrecision`), and
cached across calls on the same weights (`GRAM_CACHE`). Float64 by default.
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.linalg import chunk_ranges
from tl_tensorsim.similarity.circuit_parts import norm_family, token_parts

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


def cached_triples(va, vb, same, circuit, n_pos, fold, dtype, device, precision):
    """Token-level metric triples `({"aa", "ab", "bb"} -> G, same for H)`, the `W_E`/`W_pos` part and the `W_U`
    part each looked up in `GRAM_CACHE` first."""
    views = [va] if same else [va, vb]
    base = (same, n_pos, fold, tuple(str(norm_family(v)) for v in views), dtype, str(device), precision)
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
