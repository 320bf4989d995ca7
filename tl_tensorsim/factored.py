"""Exact Frobenius inner products of low-rank (factored) matrices, never materialising what is not needed.

For `M_a = A_a B_a` (`A_a [m_a, r_a]`, `B_a [r_a, n_a]`) and `M_b = A_b B_b`, with an optional left metric
`G [m_a, m_b]` and right metric `H [n_a, n_b]`, the metric Frobenius inner product is

    <M_a, M_b>_{G,H} = sum_{i,j,k,l} M_a[i,j] G[i,k] H[j,l] M_b[k,l] = tr(M_a^T G M_b H^T)
                     = Sum[(A_a^T G A_b) o (B_a H B_b^T)]                    (arXiv 2605.15183, applied to attention heads)

With `G = P_a^T P_b` and `H = Q_a Q_b^T` this is the plain Frobenius product of the sandwiched matrices
`P_a M_a Q_a` and `P_b M_b Q_b` (e.g. the full QK circuit `W_E QK W_E^T`: `P = W_E`, `Q = W_E^T`), computed
from `d x d` Gram matrices without ever forming the `d_vocab x d_vocab` matrix. No metric means identity.

Two exact evaluations give the same number and are chosen by cost (`method="auto"`):

- **factored**: the `r_a x r_b` Gram matrices of the factors, `O(r_a r_b (m + n))` per pair;
- **dense**: materialise `M_a` and `G M_b H^T` (the latter as `(G A_b)(B_b H^T)`), then one `m x n` dot product
  per pair, `O(m n)` per pair plus `O(m n r)` per matrix. For many pairs of GPT-2-sized heads (`d_model` 768,
  `d_head` 64) dense is cheaper; for few pairs or small ranks the factored form is.

All-pairs evaluation is batched. Factored: every head's factors are stacked into one `[m, N r]` matrix, so the work
is a few large matmuls followed by a Hadamard product and a block sum, in chunks bounded by `memory_budget` bytes.
Dense: rows `p0:p1` of every matrix are materialised at once (`A[:, p0:p1] @ B`, one batched matmul) and their
products accumulated (`out += X_a X_b^T`), so no matrix is held whole and the chunk buffers are reused.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange, reduce
from jaxtyping import Float
from torch import Tensor
from transformer_lens import FactoredMatrix

from tl_tensorsim.checks import check_choice
from tl_tensorsim.linalg import chunk_ranges, cosine_from_parts

FactoredLike = FactoredMatrix | tuple[Tensor, Tensor] | Tensor
"""A `FactoredMatrix`, an `(A, B)` pair meaning `A @ B` (`A [..., m, r]`, `B [..., r, n]`), or a dense
`[..., m, n]` tensor. Leading dimensions are batch dimensions."""
MetricLike = Tensor | tuple[Tensor, Tensor, Tensor] | None
Method = Literal["auto", "factored", "dense"]
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of intermediate results held at once
DENSE_CHUNK_BYTES = 192 << 20  # dense path: rows materialised at once (big enough for efficient matmuls, small
# enough that reused buffers beat touching fresh pages; a whole GPT-2 head set materialised fresh is 2x slower)
SYMMETRIC_SPLIT = 64  # dense self-similarity of at least this many heads: only the upper triangle of 2 x 2 blocks


def _factors(x: FactoredLike, argument: str) -> tuple[Tensor, Tensor | None]:
    """`(A, B)` with `B=None` for a dense matrix (then `A` is the matrix itself)."""
    if isinstance(x, FactoredMatrix):
        return x.A, x.B
    if isinstance(x, tuple) and len(x) == 2 and all(isinstance(t, Tensor) for t in x):
        a, b = x
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"{argument}: expected (A [..., m, r], B [..., r, n]); got shapes {tuple(a.shape)}, {tuple(b.shape)}"
            )
        shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        return a.expand(*shape, *a.shape[-2:]), b.expand(*shape, *b.shape[-2:])
    if isinstance(x, Tensor):
        if x.ndim < 2:
            raise ValueError(f"{argument}: expected a matrix [..., m, n]; got shape {tuple(x.shape)}")
        return x, None
    raise TypeError(
        f"{argument}: expected a FactoredMatrix, an (A, B) tuple of tensors or a tensor; got {type(x).__name__}"
    )


def _dims(A: Tensor, B: Tensor | None) -> tuple[int, int, int]:
    """(m, n, rank) of a factored or dense operand."""
    if B is None:
        return A.shape[-2], A.shape[-1], A.shape[-1]
    return A.shape[-2], B.shape[-1], A.shape[-1]


def operation_counts(
    K: int, n_a: int, n_b: int, m: int, n: int, r_a: int, r_b: int, *, dense_operand: bool = False, same: bool = False
) -> dict[str, float]:
    """Multiply-add counts of the two evaluations for `K` independent blocks of `n_a x n_b` pairs of `m x n`
    matrices of ranks `r_a`, `r_b` (metric transforms excluded: both pay them). `same=True`: `b` is `a` and
    no metric, so the dense path materialises once (and, from `SYMMETRIC_SPLIT` heads on, multiplies 3 of the
    4 blocks of head pairs). `dense_operand`: an operand is already dense (factored is then impossible)."""
    factored = math.inf if dense_operand else float(K) * n_a * n_b * r_a * r_b * (m + n + 1)
    materialise = float(K) * (n_a * m * n * r_a + (0 if same else n_b * m * n * r_b))
    half = -(-n_a // 2) if same and n_a >= SYMMETRIC_SPLIT else 0
    pairs = n_a * n_b - half * (n_a - half)  # the skipped lower-left block of head pairs
    return {"factored": factored, "dense": materialise + float(K) * pairs * m * n}


def _left_apply(G: Tensor | None, A: Tensor) -> Tensor:
    """`G @ A` for `A [K, N, m_b, r]` as one matmul: `[m_a, m_b] @ [m_b, K N r]`."""
    if G is None:
        return A
    K, N, _, r = A.shape
    out = G @ rearrange(A, "K N m r -> m (K N r)")
    return rearrange(out, "m (K N r) -> K N m r", K=K, N=N, r=r)


def _right_apply(B: Tensor | None, H: Tensor | None, K: int, N: int) -> Tensor | None:
    """`B @ H^T` (`B [K, N, r, n_b]`, `H [n_a, n_b]`); for a dense operand (`B=None`) the factor is `H^T`."""
    if H is None:
        return B
    if B is None:
        return H.T.expand(K, N, *H.T.shape)
    return B @ H.T


class _Buffers:
    """Reusable matmul outputs, one per slot: a fresh multi-hundred-MB tensor per chunk would page-fault anew
    every time (and that, not the arithmetic, dominates on a CPU)."""

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def matmul(self, slot: str, A: Tensor, B: Tensor | None) -> Tensor:
        """`A @ B` into the slot's buffer (`A` itself for a dense operand, `B=None`)."""
        if B is None:
            return A
        shape = (*torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]), A.shape[-2], B.shape[-1])
        numel = math.prod(shape)
        buf = self._bufs.get(slot)
        if buf is None or buf.numel() < numel:
            buf = self._bufs[slot] = A.new_empty(numel)
        return torch.matmul(A, B, out=buf[:numel].view(shape))


def _blocks(K: int, N: int, unit_bytes: float, budget: float):
    """(k0, k1, i0, i1) covering K x N so that each block's (k1-k0)*(i1-i0)*unit_bytes fits in budget."""
    if N * unit_bytes <= budget:
        for k0, k1 in chunk_ranges(K, budget // max(1.0, N * unit_bytes)):
            yield k0, k1, 0, N
    else:
        for k in range(K):
            for i0, i1 in chunk_ranges(N, budget // max(1.0, unit_bytes)):
                yield k, k + 1, i0, i1


def _dense_pairs(
    Aa: Tensor,
    Ba: Tensor | None,
    Ab: Tensor,
    Bb: Tensor | None,
    reuse: bool,
    limit: float,
    buf: _Buffers,
    norms: list[Tensor | None] | None = None,
) -> Tensor:
    """`out[k] = M_a[k] M_b[k]^T` over the flattened matrices (`M = A @ B`, or `A` when `B` is None), accumulated
    over chunks of rows: a chunk materialises rows `p0:p1` of every matrix (`A[..., p0:p1, :] @ B`), at most
    `limit` bytes, into reused buffers, so no matrix is held whole and no fresh memory is touched per chunk.
    `reuse`: `b` is `a`; each chunk is materialised once and only the upper triangle of head blocks multiplied.
    `norms`: `[K, Na]` and `[K, Nb]` tensors (or None) into which `||M_a[k]||_F^2`, `||M_b[k]||_F^2` are added from
    the chunks as they are materialised (no extra pass over the factors)."""
    K, Na, m, _ = Aa.shape
    Nb = Ab.shape[1]
    n, item = _dims(Aa, Ba)[1], Aa.element_size()
    row = (Na if reuse else Na + Nb) * n * item  # one row of every matrix, one k
    if row > limit and Na + Nb > 2:  # too many heads for one row of each: split the heads, then the rows
        out = Aa.new_empty(K, Na, Nb)
        step = max(1, int(limit // (2 * n * item)))
        for i0, i1 in chunk_ranges(Na, step):
            for j0, j1 in chunk_ranges(Nb, step):
                if reuse and j1 <= i0:
                    out[:, i0:i1, j0:j1] = out[:, j0:j1, i0:i1].mT
                    continue
                cut = [None if X is None else X[:, i0:i1] for X in (Aa, Ba)]
                other = cut if reuse and i0 == j0 else [None if X is None else X[:, j0:j1] for X in (Ab, Bb)]
                sub = None  # each head's norm accumulated once: a's in the first column of blocks, b's in the first row
                if norms is not None:
                    sub = [None if n is None or c else n[:, a:b] for n, c, a, b in ((norms[0], j0, i0, i1),
                                                                                     (norms[1], i0, j0, j1))]  # fmt: skip
                out[:, i0:i1, j0:j1] = _dense_pairs(*cut, *other, reuse and i0 == j0, limit, buf, sub)
        return out
    rows = int(max(1, min(m, limit // row)))
    kk = int(max(1, min(K, limit // (row * m)))) if rows == m else 1
    half = -(-Na // 2) if reuse and Na >= SYMMETRIC_SPLIT else max(Na, Nb)  # 2 x 2 blocks: 3 of 4 products
    tiles = [(i, j) for i in chunk_ranges(Na, half) for j in chunk_ranges(Nb, half) if j[0] >= i[0]]
    acc = {t: Aa.new_zeros(K, t[0][1] - t[0][0], t[1][1] - t[1][0]) for t in tiles}

    def chunk(slot: str, A: Tensor, B: Tensor | None, k0: int, k1: int, p0: int, p1: int) -> Tensor:
        X = buf.matmul(slot, A[k0:k1, :, p0:p1], None if B is None else B[k0:k1])
        return X.reshape(k1 - k0, X.shape[1], -1)

    for k0, k1 in chunk_ranges(K, kk):
        for p0, p1 in chunk_ranges(m, rows):
            Xa = chunk("a", Aa, Ba, k0, k1, p0, p1)
            Xb = Xa if reuse else chunk("b", Ab, Bb, k0, k1, p0, p1)
            for X, acc_n in zip((Xa, Xb), norms or ()):
                if acc_n is not None:
                    acc_n[k0:k1] += torch.einsum("kir,kir->ki", X, X)
            for (i0, i1), (j0, j1) in tiles:  # out= form: in-place `baddbmm_` escapes torch's FlopCounterMode
                y = acc[(i0, i1), (j0, j1)][k0:k1]
                torch.baddbmm(y, Xa[:, i0:i1], Xb[:, j0:j1].mT, out=y)
    if len(tiles) == 1:
        return acc[tiles[0]]
    out = Aa.new_empty(K, Na, Nb)
    for ((i0, i1), (j0, j1)), x in acc.items():
        out[:, i0:i1, j0:j1] = x
        if j0 != i0:
            out[:, j0:j1, i0:i1] = x.mT
    return out


@torch.no_grad()
def pairwise_kernel(
    Aa: Float[Tensor, "K Na ma ra"],
    Ba: Float[Tensor, "K Na ra na"] | None,
    Ab: Float[Tensor, "K Nb mb rb"] | None = None,
    Bb: Float[Tensor, "K Nb rb nb"] | None = None,
    G: Float[Tensor, "ma mb"] | None = None,
    H: Float[Tensor, "na nb"] | None = None,
    *,
    method: Method = "auto",
    memory_budget: float | None = None,
    with_norms: bool = False,
) -> Float[Tensor, "K Na Nb"] | tuple[Tensor, Tensor, Tensor]:
    """`out[k, i, j] = <A_a[k,i] B_a[k,i], A_b[k,j] B_b[k,j]>_{G,H}` for all pairs within each of `K` blocks.

    `B=None` marks a dense operand (`A` is the matrix). `Ab=None` compares `a` with itself. Computes in the
    dtype and on the device of the inputs (callers cast; the public functions use float64).
    `with_norms` (two different operands, no metrics): also return the squared norms `||M_a[k,i]||_F^2` `[K, Na]`
    and `||M_b[k,j]||_F^2` `[K, Nb]`, summed from the chunks the dense evaluation materialises anyway (the factored
    evaluation computes them as `Sum[(A^T A) o (B B^T)]` per matrix).
    """
    same = Ab is None
    if with_norms and (same or G is not None or H is not None):
        raise ValueError("with_norms: only for two different operands without metrics (G and H None)")
    if same:
        Ab, Bb = Aa, Ba
    K, Na, ma, _ = Aa.shape
    Nb = Ab.shape[1]
    m, n, ra = _dims(Aa, Ba)
    rb = _dims(Ab, Bb)[2]
    costs = operation_counts(
        K, Na, Nb, m, n, ra, rb, dense_operand=Ba is None or Bb is None, same=same and G is None and H is None
    )
    if method == "auto":
        method = min(costs, key=costs.get)
    if method not in ("factored", "dense") or costs[method] == math.inf:
        raise ValueError(
            f"method: expected 'auto', 'factored' or 'dense' (factored needs factored operands); got {method!r}"
        )
    budget = float(memory_budget or DEFAULT_MEMORY_BUDGET)
    item = Aa.element_size()
    reuse = same and G is None and H is None
    Ab = _left_apply(G, Ab)
    Bb = _right_apply(Bb, H, K, Nb)
    buf = _Buffers()
    if method == "factored":
        out = Aa.new_empty(K, Na, Nb)
        Pb = rearrange(Ab, "K N m r -> K m (N r)")
        Qb = rearrange(Bb, "K N r n -> K n (N r)")
        for k0, k1, i0, i1 in _blocks(K, Na, 2 * ra * Nb * rb * item, budget):
            S = buf.matmul("left", rearrange(Aa[k0:k1, i0:i1], "K N m r -> K (N r) m"), Pb[k0:k1])
            S.mul_(buf.matmul("right", rearrange(Ba[k0:k1, i0:i1], "K N r n -> K (N r) n"), Qb[k0:k1]))
            out[k0:k1, i0:i1] = reduce(S, "K (Na ra) (Nb rb) -> K Na Nb", "sum", ra=ra, rb=rb)
        if not with_norms:
            return out
        return out, *(_self_norms(A, B, memory_budget) for A, B in ((Aa, Ba), (Ab, Bb)))
    if not with_norms:
        return _dense_pairs(Aa, Ba, Ab, Bb, reuse, min(budget, DENSE_CHUNK_BYTES), buf)
    norms = [Aa.new_zeros(K, Na), Aa.new_zeros(K, Nb)]
    out = _dense_pairs(Aa, Ba, Ab, Bb, reuse, min(budget, DENSE_CHUNK_BYTES), buf, norms)
    return out, norms[0], norms[1]


def _self_norms(A: Tensor, B: Tensor | None, memory_budget: float | None) -> Tensor:
    """`||A[k,i] B[k,i]||_F^2` `[K, N]`: each matrix against itself as a block of its own."""
    K, N = A.shape[:2]
    one = [None if X is None else rearrange(X, "K N a b -> (K N) 1 a b") for X in (A, B)]
    return pairwise_kernel(*one, *one, memory_budget=memory_budget)[:, 0, 0].reshape(K, N)


def _prepare(x: FactoredLike, argument: str, dtype: torch.dtype, device) -> tuple[Tensor, Tensor | None, tuple]:
    A, B = _factors(x, argument)
    batch = tuple(A.shape[:-2]) if B is None else tuple(torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]))
    A = A.to(device=device, dtype=dtype)
    B = None if B is None else B.to(device=device, dtype=dtype)
    return A, B, batch


def _check_metric(metric: Tensor | None, rows: int, cols: int, argument: str, dtype, device) -> Tensor | None:
    if metric is None:
        if rows != cols:
            raise ValueError(f"{argument}: required when the matrices' dimensions differ ({rows} vs {cols})")
        return None
    if not isinstance(metric, Tensor) or tuple(metric.shape) != (rows, cols):
        got = tuple(metric.shape) if isinstance(metric, Tensor) else type(metric).__name__
        raise ValueError(f"{argument}: expected a [{rows}, {cols}] tensor (or None); got {got}")
    return metric.to(device=device, dtype=dtype)


def factored_inner(
    a: FactoredLike,
    b: FactoredLike,
    left_metric: Float[Tensor, "m_a m_b"] | None = None,
    right_metric: Float[Tensor, "n_a n_b"] | None = None,
    *,
    pairwise: bool = False,
    method: Method = "auto",
    dtype: torch.dtype = torch.float64,
    memory_budget: float | None = None,
) -> Float[Tensor, "*batch"]:
    """Exact Frobenius inner product `<M_a, M_b>_{G,H} = Sum[(A_a^T G A_b) o (B_a H B_b^T)]`.

    Args:
        a, b: `FactoredMatrix`, `(A, B)` pair, or dense tensor; shapes `[*batch_a, m_a, n_a]`, `[*batch_b, m_b, n_b]`.
        left_metric: `G [m_a, m_b]`, e.g. `W_E_a^T W_E_b` (None: identity, needs `m_a == m_b`).
        right_metric: `H [n_a, n_b]`, e.g. `W_U_a W_U_b^T` (None: identity, needs `n_a == n_b`).
        pairwise: False: batch dimensions broadcast, result `[*broadcast]`; True: every element of `a` against
            every element of `b`, result `[*batch_a, *batch_b]`.
        method: "auto" (cheaper of the two by `operation_counts`), "factored" or "dense"; all give the same number.
        dtype: computation dtype (default float64); the result is float64.
        memory_budget: bytes of intermediate results held at once (default 1 GiB).

    Returns:
        float64 tensor on the inputs' device, computed under `torch.no_grad()` (weights that require grad, such as
        a live `model.QK`, are fine; the result carries no gradient).
    """
    check_choice(method, Method, "method")
    A0, _ = _factors(a, "a")
    device = A0.device
    Aa, Ba, batch_a = _prepare(a, "a", dtype, device)
    Ab, Bb, batch_b = _prepare(b, "b", dtype, device)
    (ma, na, _), (mb, nb, _) = _dims(Aa, Ba), _dims(Ab, Bb)
    G = _check_metric(left_metric, ma, mb, "left_metric", dtype, device)
    H = _check_metric(right_metric, na, nb, "right_metric", dtype, device)
    if pairwise:
        Aa, Ab = Aa.reshape(1, -1, *Aa.shape[-2:]), Ab.reshape(1, -1, *Ab.shape[-2:])
        Ba = None if Ba is None else Ba.reshape(1, -1, *Ba.shape[-2:])
        Bb = None if Bb is None else Bb.reshape(1, -1, *Bb.shape[-2:])
        out = pairwise_kernel(Aa, Ba, Ab, Bb, G, H, method=method, memory_budget=memory_budget)
        return out.reshape(*batch_a, *batch_b).to(torch.float64)
    try:
        batch = torch.broadcast_shapes(batch_a, batch_b)
    except RuntimeError as e:
        raise ValueError(f"a, b: batch shapes {batch_a} and {batch_b} do not broadcast (pass pairwise=True?)") from e

    def flat(A: Tensor | None) -> Tensor | None:
        return None if A is None else A.expand(*batch, *A.shape[-2:]).reshape(-1, 1, *A.shape[-2:])

    out = pairwise_kernel(flat(Aa), flat(Ba), flat(Ab), flat(Bb), G, H, method=method, memory_budget=memory_budget)
    return out.reshape(batch).to(torch.float64)


def _metric_triple(metric: MetricLike, argument: str) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    if metric is None or isinstance(metric, Tensor):
        return metric, metric, metric
    if isinstance(metric, tuple) and len(metric) == 3:
        return metric
    raise TypeError(f"{argument}: expected None, a tensor, or a tuple (M_aa, M_ab, M_bb); got {type(metric).__name__}")


def factored_cosine(
    a: FactoredLike,
    b: FactoredLike,
    left_metric: MetricLike = None,
    right_metric: MetricLike = None,
    *,
    pairwise: bool = False,
    method: Method = "auto",
    dtype: torch.dtype = torch.float64,
    memory_budget: float | None = None,
) -> Float[Tensor, "*batch"]:
    """Cosine `<a, b> / (|a| |b|)` of `factored_inner` (same arguments and shapes), float64 in [-1, 1].

    A metric is None (identity), one square tensor used for all three products (a shared input covariance,
    `m_a == m_b`), or a triple `(G_aa, G_ab, G_bb)`, e.g. `gram(E_a, E_a), gram(E_a, E_b), gram(E_b, E_b)`.
    Pairs where either side has zero norm get 0.
    """
    Gaa, Gab, Gbb = _metric_triple(left_metric, "left_metric")
    Haa, Hab, Hbb = _metric_triple(right_metric, "right_metric")
    kw = dict(method=method, dtype=dtype, memory_budget=memory_budget)
    inner = factored_inner(a, b, Gab, Hab, pairwise=pairwise, **kw)
    na = factored_inner(a, a, Gaa, Haa, **kw)
    nb = factored_inner(b, b, Gbb, Hbb, **kw)
    if pairwise:
        na = na.reshape(*na.shape, *([1] * nb.ndim))
    return cosine_from_parts(inner, na, nb)
