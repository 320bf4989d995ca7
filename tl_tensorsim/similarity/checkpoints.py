"""Heads compared across training checkpoints of one run: per-head T x T similarity and similarity-to-final.

For every head `h` and checkpoints `t, s`, `values[h, t, s]` is the cosine between head `h` at `t` and head `h`
at `s` (QK or OV circuit, residual or token level, as in `head_similarity`; or a baseline metric). Head indices
line up across checkpoints of one run, not across runs.

Checkpoints are loaded one at a time. From each, only what the metric needs is kept (the heads' circuit factors,
`2 n_heads d_model d_head` numbers; plus `W_E`/`W_pos`/`W_U` at the token level), in memory or spilled to a
temporary folder past 2 GiB (`store=`). Cost: residual level, per head one `T x T` Gram of the materialised
circuits (`per_head_gram`: `T d_model^2 d_head` to materialise, one triangle of the products, in cache-sized
blocks; or the factored evaluation when it needs fewer operations, for small `T`); token level, one `d_vocab x d_model x d_model` Gram per checkpoint pair, `T (T + 1) / 2` pairs
(`pairs="final"`: `2 T`), which dominates for GPT-2-sized vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_tensorsim.adapter import ModelLike, as_view
from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape
from tl_tensorsim.checks import check_choice
from tl_tensorsim.factored import DEFAULT_MEMORY_BUDGET, Method, operation_counts, pairwise_kernel
from tl_tensorsim.linalg import chunk_ranges, cosine_from_parts
from tl_tensorsim.similarity.baselines import head_outputs, raw_weight_vectors
from tl_tensorsim.similarity.checkpoint_io import SummaryStore, resolve_checkpoints
from tl_tensorsim.similarity.heads import (
    GramPrecision,
    circuit_factors,
    resolve_positions,
    token_metrics,
    token_parts,
    warn_processing,
)
from tl_tensorsim.similarity.results import Circuit, HeadMetric, Level

NOT_COMPUTED = "0.55"  # matplotlib grey for the cells of pairs that were not computed
GRAM_CACHE_BYTES = 2 << 20  # per-head T x T products: rows of all T circuits multiplied at once (fits in cache)
MATERIALISE_BYTES = 64 << 20  # per-head T x T products: rows of all T circuits materialised at once (at most)


@dataclass(repr=False)
class CheckpointSimilarity(Artifact):
    """`values [n_heads, T, T]` float64: cosine of each head with itself across checkpoints (NaN where not
    computed, `pairs="final"`). `steps`: the checkpoints' training steps (x axis). `labels`: L0H0, L0H1, ...

    `save(dir)` stores `values` as a float64 tensor (safetensors) and labels, steps, circuit, level, metric,
    settings and `provenance` as JSON; `tl_tensorsim.load(dir)` reads it back."""

    values: Tensor
    labels: list[str]
    steps: list[Any]
    circuit: str
    level: str
    metric: str = "tensor"
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        T = len(self.steps)
        expect_shape("values", self.values, (len(self.labels), T, T), "[n_heads, T, T] from labels, steps")

    def head_index(self, head: int | str) -> int:
        if isinstance(head, str):
            if head not in self.labels:
                raise ValueError(f"head: expected one of {self.labels[:4]}...; got {head!r}")
            return self.labels.index(head)
        return int(head)

    @property
    def to_final(self) -> Float[Tensor, "n_heads T"]:
        """`[n_heads, T]`: each head's similarity to itself at the final checkpoint."""
        return self.values[:, -1, :]

    def matrix(self, head: int | str) -> Float[Tensor, "T T"]:
        """`[T, T]` similarity matrix of one head (index or label such as "L1H3")."""
        return self.values[self.head_index(head)]

    def largest_jump(self, head: int | str) -> dict[str, Any]:
        """Where the head's similarity-to-final rises most between consecutive checkpoints."""
        i = self.head_index(head)
        curve = self.to_final[i]
        k = int(torch.argmax(curve[1:] - curve[:-1]))
        return {
            "head": self.labels[i],
            "step_before": self.steps[k],
            "step": self.steps[k + 1],
            "before": float(curve[k]),
            "after": float(curve[k + 1]),
            "delta": float(curve[k + 1] - curve[k]),
        }

    def to_dataframe(self):
        """Long format: one row per (head, checkpoint) with the similarity to the final checkpoint."""
        import pandas as pd

        T = len(self.steps)
        return pd.DataFrame(
            {
                "head": [lab for lab in self.labels for _ in range(T)],
                "checkpoint": list(range(T)) * len(self.labels),
                "step": list(self.steps) * len(self.labels),
                "similarity_to_final": self.to_final.reshape(-1).numpy(),
            }
        )

    def plot(self, head: int | str | None = None, highlight: list | None = None, path=None, logx: bool = False):
        """Left: every head's similarity-to-final curve (`highlight`ed heads in colour). Right: the `T x T`
        matrix of `head` (default: the head with the largest jump); pairs not computed (`pairs="final"`) are grey,
        with a legend entry, never the white of similarity 0. Saved to `path` when given."""
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.patches import Patch

        if head is None:
            head = max(range(len(self.labels)), key=lambda i: self.largest_jump(i)["delta"])
        i = self.head_index(head)
        highlight = [self.head_index(h) for h in (highlight if highlight is not None else [i])]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
        x = [float(s) for s in self.steps]
        for j in range(len(self.labels)):
            if j not in highlight:
                ax1.plot(x, self.to_final[j].numpy(), color="0.7", lw=0.7, alpha=0.6)
        for j in highlight:
            ax1.plot(x, self.to_final[j].numpy(), lw=2, marker="o", ms=3, label=self.labels[j])
        ax1.set(
            xlabel="training step", ylabel="similarity to final", title=f"{self.circuit} {self.level} ({self.metric})"
        )
        if logx:
            ax1.set_xscale("symlog")
        ax1.legend(fontsize=8)
        matrix = self.matrix(i).numpy()
        cmap = plt.get_cmap("RdBu_r").copy()
        cmap.set_bad(NOT_COMPUTED)  # NaN: pairs not computed (pairs="final"), never the white of similarity 0
        im = ax2.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        T = len(self.steps)
        ticks = list(range(0, T, max(1, T // 10)))
        ax2.set_xticks(ticks, [str(self.steps[t]) for t in ticks], rotation=90, fontsize=7)
        ax2.set_yticks(ticks, [str(self.steps[t]) for t in ticks], fontsize=7)
        ax2.set(xlabel="checkpoint (training step)", ylabel="checkpoint (training step)")
        ax2.set_title(f"{self.labels[i]}: checkpoint x checkpoint")
        if np.isnan(matrix).any():
            how = f" (pairs={self.settings['pairs']!r})" if "pairs" in self.settings else ""
            missing = Patch(facecolor=NOT_COMPUTED, edgecolor="0.3", label=f"not computed{how}")
            ax2.legend(handles=[missing], loc="upper left", bbox_to_anchor=(0, -0.18), fontsize=7, frameon=False)
        fig.colorbar(im, ax=ax2, fraction=0.046, label="cosine similarity")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110, bbox_inches="tight")
        return fig

    def __repr__(self) -> str:
        n, T, _ = self.values.shape
        first = self.to_final[:, 0]
        return (
            f"CheckpointSimilarity({self.metric}, {self.circuit}, {self.level}: {n} heads x {T} checkpoints "
            f"(steps {self.steps[0]}..{self.steps[-1]}), similarity of first to final: mean {first.nanmean():.3f}, "
            f"min {first.nan_to_num(2.0).min():.3f})"
        )


def _summary(
    view, circuit: str, level: str, metric: str, n_pos: int | None, tokens: Tensor | None, fold: bool = False
) -> dict:
    """What one checkpoint contributes: `A`, `B` factors per head (`A` alone `[n_heads, 1, D]` for baselines)."""
    if metric == "raw_weight":
        return {"A": raw_weight_vectors(view, circuit)[:, None, :]}
    if metric == "behavioral":
        return {"A": head_outputs(view, tokens).flatten(1)[:, None, :]}
    A, B = circuit_factors(view, circuit, fold=fold)
    return {"A": A, "B": B, **(token_parts(view, circuit, n_pos, fold) if level == "token" else {})}


def checkpoint_similarity(
    checkpoints: Any,
    circuit: Circuit = "QK",
    level: Level = "residual",
    *,
    metric: HeadMetric = "tensor",
    checkpoint_indices: list[int] | None = None,
    steps: list | None = None,
    model: ModelLike | None = None,
    tokens: Int[Tensor, "batch pos"] | None = None,
    positions: bool | int = False,
    fold: bool = False,
    pairs: str = "all",
    from_pretrained_kwargs: dict | None = None,
    store: str = "auto",
    method: Method = "auto",
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    memory_budget: float | None = None,
    progress: bool = True,
    gram_precision: GramPrecision = "float64",
) -> CheckpointSimilarity:
    """Per-head similarity across `T` checkpoints of one training run.

    Args:
        checkpoints: a TransformerLens model name (Pythia, stanford-crfm GPT-2) with `checkpoint_indices`; a
            folder of state-dict files (`.safetensors`, `.pt`, `.pth`; ordered and labelled by the step number in
            their names); a training run with `.checkpoints` (`TrainingRun`); or a sequence, oldest first, of
            models / ModelViews / state dicts / state-dict files / zero-argument callables returning a model, or
            of `(step, one of these)` pairs (the steps label the checkpoints). Every file is checked before work.
        circuit, level, metric, positions, fold, method, dtype, memory_budget: as in `head_similarity`
            (`metric="behavioral"` needs `tokens`; `fold` applies to `metric="tensor"`).
        steps: x-axis values (default: the run's step labels for a model name, the pairs' or file names' steps,
            else 0..T-1).
        model: for state dicts / files (either naming convention: TransformerLens names or a bridge's own): a
            model or ModelView, deep-copied once (never modified), or a `HookedTransformerConfig` /
            `TransformerBridgeConfig` / dict of config fields to build one; every checkpoint is loaded into that
            private copy in turn (default for a training run: its model).
        pairs: "all" (full `T x T`) or "final" (only each checkpoint against the last; for costly token levels).
        from_pretrained_kwargs: extra arguments for `from_pretrained` (e.g. `fold_ln=False`).
        store: where per-checkpoint head factors wait: "memory", "disk" (temporary safetensors), "auto".
        device: where to compute (default: the first checkpoint's device).
        progress: tqdm bars.
        gram_precision: token level: "float64" (default) or "float32" Gram products accumulated in float64, as in
            `head_similarity`.

    Returns:
        `CheckpointSimilarity` with `.values [n_heads, T, T]`, `.to_final [n_heads, T]`, `.plot()`.
    """
    check_choice(circuit, Circuit, "circuit")
    check_choice(level, Level, "level")
    check_choice(metric, HeadMetric, "metric")
    check_choice(pairs, ("all", "final"), "pairs")
    check_choice(method, Method, "method")
    check_choice(gram_precision, GramPrecision, "gram_precision")
    if metric == "behavioral" and tokens is None:
        raise ValueError("tokens: metric='behavioral' needs a token batch [batch, pos]")
    token_level = metric == "tensor" and level == "token"
    if positions and not token_level:
        raise ValueError("positions: only used with metric='tensor' and level='token'")
    loaders, default_steps = resolve_checkpoints(
        checkpoints, checkpoint_indices, model, from_pretrained_kwargs, runnable=metric == "behavioral"
    )
    T = len(loaders)
    steps = (
        [s.item() if hasattr(s, "item") else s for s in steps]
        if steps is not None
        else (default_steps or list(range(T)))
    )
    if len(steps) != T:
        raise ValueError(f"steps: expected {T} values (one per checkpoint); got {len(steps)}")
    st, procs, arch, n_pos = SummaryStore(store), {}, None, None
    for t, load in enumerate(tqdm(loaders, desc="checkpoints", disable=not progress)):
        view = as_view(load())
        c = view.cfg
        shape = (c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_vocab, c.n_ctx)
        if arch is None:
            arch, labels, model_name = shape, view.head_labels(), c.model_name
            n_pos = resolve_positions([view], positions) if token_level else None
            device = torch.device(device) if device is not None else view.device
        elif shape != arch:
            raise ValueError(
                f"checkpoints[{t}]: (layers, heads, d_model, d_head, d_vocab, n_ctx) = {shape} differs from checkpoints[0]: {arch}"
            )
        summary = _summary(view, circuit, level, metric, n_pos, tokens, fold and metric == "tensor")
        if t == 0:
            st.plan(summary, T)
        st.add(summary)
        procs[f"checkpoint {steps[t]}"] = view.processing(unembed=token_level and circuit == "OV")
        del view, summary  # the model is freed here unless the caller holds it
    if not (fold and metric == "tensor"):
        warn_processing(procs, circuit, level)
    kw = dict(method=method, memory_budget=memory_budget)
    with torch.no_grad():
        if token_level:
            inner = _token_level_pairs(st, T, pairs, dtype, device, kw, progress, gram_precision)
        else:
            inner = _batched_pairs(st, T, len(labels), pairs, dtype, device, kw)
    st.close()
    d = inner.diagonal(dim1=1, dim2=2)
    settings = {
        "positions": n_pos,
        "fold": bool(fold and metric == "tensor"),
        "pairs": pairs,
        "dtype": str(dtype),
        **({"gram_precision": gram_precision} if token_level and gram_precision != "float64" else {}),
        "processing": next(iter(procs.values())),
        **({"model_name": checkpoints} if isinstance(checkpoints, str) and checkpoint_indices else {}),
        **({"checkpoint_indices": list(checkpoint_indices)} if checkpoint_indices else {}),
    }
    return CheckpointSimilarity(
        values=cosine_from_parts(inner, d[:, :, None], d[:, None, :]),
        labels=labels,
        steps=steps,
        circuit=circuit if metric != "behavioral" else "output",
        level=level if metric == "tensor" else ("weights" if metric == "raw_weight" else "outputs"),
        metric=metric,
        settings=settings,
        provenance=Provenance(
            models=(checkpoints if isinstance(checkpoints, str) else model_name,),
            hooks=tuple(f"blocks.{layer}.attn.hook_z" for layer in range(arch[0])) if metric == "behavioral" else (),
            settings={"circuit": circuit, "level": level, "metric": metric, "method": method, **settings},
        ),
    )


def _stack(st: SummaryStore, T: int, rows: slice, dtype, device) -> tuple[Tensor, Tensor | None]:
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


def _batched_pairs(st, T, n_heads, pairs, dtype, device, kw) -> Tensor:
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
        A, B = _stack(st, T, slice(h0, h1), dtype, device)
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


def _token_level_pairs(st, T, pairs, dtype, device, kw, progress, precision="float64") -> Tensor:
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
