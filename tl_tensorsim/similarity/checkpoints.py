"""Heads compared across training checkpoints of one run: per-head T x T similarity and similarity-to-final.

For every head `h` and checkpoints `t, s`, `values[h, t, s]` is the cosine between head `h` at `t` and head `h`
at `s` (QK or OV circuit, residual or token level, as in `head_similarity`; or a baseline metric). Head indices
line up across checkpoints of one run, not across runs.

Checkpoints are loaded one at a time. From each, only what the metric needs is kept (the heads' circuit factors,
`2 n_heads d_model d_head` numbers; plus `W_E`/`W_pos`/`W_U` at the token level), in memory or spilled to a
temporary folder past 2 GiB (`store=`). Cost: residual level, per head one `T x T` Gram of the materialised
circuits (`checkpoint_pairs.per_head_gram`: `T d_model^2 d_head` to materialise, one triangle of the products, in cache-sized
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
from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure
from tl_tensorsim.checks import check_choice
from tl_tensorsim.factored import Method
from tl_tensorsim.linalg import cosine_from_parts
from tl_tensorsim.similarity.baselines import check_token_batch, head_outputs, raw_weight_vectors
from tl_tensorsim.similarity.checkpoint_io import SummaryStore, resolve_checkpoints
from tl_tensorsim.similarity.checkpoint_pairs import batched_pairs, token_level_pairs
from tl_tensorsim.similarity.circuit_parts import circuit_factors, resolve_positions, token_parts
from tl_tensorsim.similarity.heads import warn_processing
from tl_tensorsim.similarity.results import Circuit, HeadMetric, Level
from tl_tensorsim.similarity.token_grams import GramPrecision

NOT_COMPUTED = "0.55"  # matplotlib grey for the cells of pairs that were not computed


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
        """Where the head's similarity-to-final rises most between consecutive checkpoints. Needs at least two
        checkpoints (a `ValueError` otherwise: with one there is no step between checkpoints)."""
        i = self.head_index(head)
        if len(self.steps) < 2:
            raise ValueError(
                f"largest_jump: expected a result of at least two checkpoints; got {len(self.steps)} (steps "
                f"{list(self.steps)}), so there is no jump between consecutive checkpoints. Hint: pass two or more "
                "checkpoints to checkpoint_similarity"
            )
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
        matrix of `head` (default: the head with the largest jump; the first head with a single checkpoint); pairs
        not computed (`pairs="final"`) are grey, with a legend entry, never the white of similarity 0. Saved to
        `path` when given."""
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.patches import Patch

        if head is None:
            if len(self.steps) < 2:
                head = 0
            else:
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
        return save_figure(fig, path)

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
        `CheckpointSimilarity` with `.values [n_heads, T, T]`, `.to_final [n_heads, T]`, `.plot()`. A single
        checkpoint (`T = 1`) is allowed: every head's 1 x 1 matrix is its self-similarity (1 unless the head is
        zero), `.plot()` draws the one point, and `.largest_jump(head)` raises a `ValueError` (no consecutive
        checkpoints to compare).
    """
    check_choice(circuit, Circuit, "circuit")
    check_choice(level, Level, "level")
    check_choice(metric, HeadMetric, "metric")
    check_choice(pairs, ("all", "final"), "pairs")
    check_choice(method, Method, "method")
    check_choice(gram_precision, GramPrecision, "gram_precision")
    if metric == "behavioral":
        if tokens is None:
            raise ValueError("tokens: metric='behavioral' needs a token batch [batch, pos]")
        check_token_batch(tokens)  # before any checkpoint is loaded
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
            inner = token_level_pairs(st, T, pairs, dtype, device, kw, progress, gram_precision)
        else:
            inner = batched_pairs(st, T, len(labels), pairs, dtype, device, kw)
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
