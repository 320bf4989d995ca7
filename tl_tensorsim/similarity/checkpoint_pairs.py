"""The T x T products behind `checkpoint_similarity`: every head's circuits across T checkpoints stacked from the
summaries, their per-head Gram (`per_head_gram`: one triangle, blocked so that it runs near matmul speed) at the
residual level, and the token-level pairs through the vocabulary metrics. Float64 unless the caller's `dtype`
says otherwise.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tl_tensorsim.factored import DEFAULT_MEMORY_BUDGET, operation_counts, pairwise_kernel
from tl_tensorsim.linalg import chunk_ranges
from tl_tensorsim.similarity.checkpoint_io import SummaryStore
from tl_tensorsim.similarity.token_grams import token_metrics

GRAM_CACHE_BYTES = 2 << 20  # per-head T x T products: rows of all T circuits multiplied at once (fits in cache)
MATERIALISE_BYTES = 64 << 20  # per-head T x T products: rows of all T circuits materialised at once (at most)


def stack_factors(st: SummaryStore, T: int, rows: slice, dtype, device) -> tuple[Tensor, Tensor | None]:
    """Factors of heads `rows` across all checkpoints: `A [h, T, m, r]`, `B [h, T, r, n]` (None for baselines),
    converted once into preallocated `dtype` buffers."""
    out: dict[str, Tensor] = {}
    for t in range(T):
        for k, v in st.get(t, rows).items():
            if k in ("A", "B"):
                if k not in out:
                    out[k] = torch.empty(v.shape[0], T, *v.shape[1:], dtype=dtype, device=device)
                out[k][:, t] = v
    return out["A"], out.get("B")


@torch.no_grad()
def per_head_gram(
    A: Float[Tensor, "heads T m r"], B: Float[Tensor, "heads T r n"], memory_budget: float | None = None
) -> Float[Tensor, "heads T T"]:
    """`out[h, t, s] = <A[h,t] B[h,t], A[h,s] B[h,s]>_F` for every head: the `T x T` Gram of each head's circuits
    across checkpoints (exact; the dense evaluation, in the dtype and on the device of `A`).

    Per head, rows `p0:p1` of all `T` circuits are materialised at once (`A[h, :, p0:p1] @ B[h]`, one batched matmul
    into a reused buffer of at most `MATERIALISE_BYTES`) and their Gram accumulated in slices of `GRAM_CACHE_BYTES`,
    small enough to stay in cache while they are multiplied (one large slice makes the `T x K` by `K x T` product
    memory-bound). Only one triangle is multiplied: column blocks `j0:j1` of `T` get `X[:j1] X[j0:j1]^T`, the rest
    is mirrored. Cost: `T m n r` multiply-adds to materialise plus about `(nb + 1) / (2 nb) T^2 m n` for the Gram
    (`nb` column blocks; 3/4 for `T < 32`, 5/8 from 32 on), per head."""
    heads, T, m, r = A.shape
    n = B.shape[-1]
    item = A.element_size()
    out = A.new_zeros(heads, T, T)
    row_bytes = T * n * item  # one row of every checkpoint's circuit
    sub = max(1, int(GRAM_CACHE_BYTES // row_bytes))
    cap = min(MATERIALISE_BYTES, (memory_budget or DEFAULT_MEMORY_BUDGET) / 2)
    rows = min(m, max(sub, int(cap // row_bytes) // sub * sub))
    buf = A.new_empty(T, rows, n)
    width = -(-T // (2 if T < 32 else 4)) if T >= 8 else T
    blocks = list(chunk_ranges(T, width))
    for h in range(heads):
        acc = out[h]
        for p0, p1 in chunk_ranges(m, rows):
            X = torch.matmul(A[h, :, p0:p1], B[h], out=buf[:, : p1 - p0])
            for q0, q1 in chunk_ranges(p1 - p0, sub):
                Xq = X[:, q0:q1].reshape(T, -1)
                for j0, j1 in blocks:  # out= form: an in-place addmm_ escapes torch's FlopCounterMode
                    y = acc[:j1, j0:j1]
                    torch.addmm(y, Xq[:j1], Xq[j0:j1].T, out=y)
    upper = torch.triu_indices(T, T, 1, device=A.device)
    out[:, upper[1], upper[0]] = out[:, upper[0], upper[1]]  # the lower triangle mirrored: exactly symmetric
    return out


def batched_pairs(st, T, n_heads, pairs, dtype, device, kw) -> Tensor:
    """Inner products without a pair-dependent metric: per chunk of heads, one batched T x T evaluation
    (`per_head_gram` when the dense evaluation is the cheaper or asked for, else `pairwise_kernel`).
    A quarter of the memory budget holds the chunk's stacked factors, half goes to the kernel."""
    budget = kw.pop("memory_budget") or DEFAULT_MEMORY_BUDGET
    kw["memory_budget"] = budget / 2
    first = st.get(0, slice(0, 1))
    per_head = T * sum(v[0].numel() for k, v in first.items() if k in ("A", "B")) * torch.finfo(dtype).bits // 8
    inner = torch.full((n_heads, T, T), float("nan"), dtype=torch.float64)
    dense = False
    if pairs == "all" and "B" in first:
        (m, r), n = first["A"].shape[-2:], first["B"].shape[-1]
        costs = operation_counts(n_heads, T, T, m, n, r, r, same=True)
        dense = kw["method"] == "dense" or (kw["method"] == "auto" and costs["dense"] <= costs["factored"])
    for h0, h1 in chunk_ranges(n_heads, budget // (4 * per_head)):
        A, B = stack_factors(st, T, slice(h0, h1), dtype, device)
        if dense:
            inner[h0:h1] = per_head_gram(A, B, budget / 2).cpu().double()
            continue
        if pairs == "all":
            inner[h0:h1] = pairwise_kernel(A, B, **kw).cpu().double()
            continue
        flat = A.reshape(-1, 1, *A.shape[2:]), None if B is None else B.reshape(-1, 1, *B.shape[2:])
        norms = pairwise_kernel(*flat, *flat, **kw).reshape(h1 - h0, T).cpu().double()
        Bf = None if B is None else B[:, -1:]
        to_final = pairwise_kernel(A, B, A[:, -1:], Bf, **kw)[:, :, 0].cpu().double()
        inner[h0:h1, :, -1] = inner[h0:h1, -1, :] = to_final
        inner[h0:h1].diagonal(dim1=1, dim2=2).copy_(norms)
    return inner


def token_level_pairs(st, T, pairs, dtype, device, kw, progress, precision="float64") -> Tensor:
    """Token level: every checkpoint pair has its own metrics (Grams of both checkpoints' embeddings)."""
    final = st.get(T - 1)
    n_heads = final["A"].shape[0]
    inner = torch.full((n_heads, T, T), float("nan"), dtype=torch.float64)
    todo = [(t, s) for t in range(T) for s in (range(t + 1) if pairs == "all" else sorted({t, T - 1}))]
    bar = tqdm(todo, desc="checkpoint pairs", disable=not progress)
    current = (None, None)
    for t, s in bar:
        if current[0] != t:
            current = (t, final if t == T - 1 else st.get(t))
        St = current[1]
        Ss = St if s == t else (final if s == T - 1 else st.get(s))
        G, H = token_metrics(St, Ss, dtype, device, precision)
        At, Bt, As, Bs = (x[k].to(device=device, dtype=dtype)[:, None] for x in (St, Ss) for k in ("A", "B"))
        x = pairwise_kernel(At, Bt, As, Bs, G, H, **kw)[:, 0, 0].cpu().double()
        inner[:, t, s] = inner[:, s, t] = x
    return inner
