"""Result types of tensor similarity: a scalar with provenance, per-output values, and the T x T checkpoint matrix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure


def chain_provenance(chains: Sequence[Any], sigma: Tensor | None = None, **settings: Any) -> Provenance:
    """The `Provenance` of a comparison of tensor networks: their names as models, `settings` (dtypes as strings;
    `sigma` recorded only as given or not)."""
    names = tuple(getattr(c, "name", None) for c in chains)
    return Provenance(models=names, settings={**settings, "sigma": None if sigma is None else "given"})


@dataclass(init=False, repr=False, eq=False)  # a float: float's equality, hash and constructor
class TensorValue(float, Artifact):
    """A similarity (cosine) or inner product: a plain float that also carries how it was computed.

    Attributes: `value` (the float itself), `stderr` (Monte Carlo standard error, None when exact), `metric`
    ('frobenius' | 'gaussian'), `method` ('exact' | 'monte_carlo' | 'factored'), `kind` ('cosine' | 'inner'),
    `samples` (Monte Carlo), `log_abs` (natural log of |inner| for exact inner products, finite even when the
    float overflows), `provenance`. `save(dir)` stores all of them as JSON (no tensors).
    """

    value: float
    metric: str
    method: str
    kind: str = "cosine"
    stderr: float | None = None
    samples: int | None = None
    log_abs: float | None = None
    provenance: Provenance | None = None

    def __new__(
        cls,
        value: float,
        *,
        metric: str,
        method: str,
        kind: str = "cosine",
        stderr: float | None = None,
        samples: int | None = None,
        log_abs: float | None = None,
        provenance: Provenance | None = None,
    ) -> TensorValue:
        obj = super().__new__(cls, float(value))
        obj.value, obj.stderr, obj.metric, obj.method, obj.kind = float(value), stderr, metric, method, kind
        obj.samples, obj.log_abs = samples, log_abs
        obj.provenance = provenance if provenance is not None else Provenance()
        return obj

    def __reduce__(self) -> Any:
        return (float, (float(self),))

    def __repr__(self) -> str:
        err = f" ± {self.stderr:.2g}" if self.stderr is not None else ""
        extra = f", samples={self.samples}" if self.samples else ""
        return (
            f"TensorValue({float(self):.6g}{err}, {self.kind}, metric={self.metric!r}, method={self.method!r}{extra})"
        )


@dataclass
class PerOutputSimilarity(Artifact):
    """Similarity of each output slice (the class-c slice of the paper's backdoor study), `values`: `(d_out,)`.

    `save(dir)` stores `values` and `stderr` (Monte Carlo only) as float64 tensors and metric, method, samples
    and `provenance` as JSON."""

    values: Tensor
    metric: str
    method: str
    stderr: Tensor | None = None
    samples: int | None = None
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        if not isinstance(self.values, Tensor) or self.values.ndim != 1:
            got = list(self.values.shape) if isinstance(self.values, Tensor) else type(self.values).__name__
            raise ValueError(f"values: expected a vector [d_out]; got {got}")
        if self.stderr is not None:
            expect_shape("stderr", self.stderr, tuple(self.values.shape), "[d_out], as values")

    def __getitem__(self, c: int) -> TensorValue:
        err = None if self.stderr is None else float(self.stderr[c])
        return TensorValue(
            float(self.values[c]),
            metric=self.metric,
            method=self.method,
            stderr=err,
            samples=self.samples,
            provenance=self.provenance,
        )

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __repr__(self) -> str:
        v = ", ".join(f"{float(x):.3f}" for x in self.values[:12])
        more = ", ..." if len(self) > 12 else ""
        return f"PerOutputSimilarity([{v}{more}], d_out={len(self)}, metric={self.metric!r}, method={self.method!r})"


@dataclass
class TensorSimilarityMatrix(Artifact):
    """T x T similarity between checkpoints (or any list of networks), with optional Monte Carlo errors.

    `values[i, j]` is the cosine between networks i and j; `steps`/`labels` name them. `phases` are
    `(name, first_index, last_index)` triples (inclusive) used by `phase_means` and `plot`.

    `save(dir)` stores `values` and `stderr` (Monte Carlo only) as float64 tensors and metric, method, steps,
    labels, output, samples and `provenance` as JSON; `tl_tensorsim.load(dir)` reads it back.
    """

    values: Tensor
    metric: str = "frobenius"
    method: str = "exact"
    steps: list[int] | None = None
    labels: list[str] = field(default_factory=list)
    stderr: Tensor | None = None
    output: int | list[int] | None = None
    samples: int | None = None
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        if self.stderr is not None:
            expect_shape("stderr", self.stderr, (self.T, self.T), "[T, T], as values")

    def __post_init__(self) -> None:
        T = self.values.shape[0]
        if self.values.shape != (T, T):
            raise ValueError(f"values: expected a square (T, T) matrix; got {tuple(self.values.shape)}")
        if not self.labels:
            self.labels = [str(s) for s in self.steps] if self.steps is not None else [str(i) for i in range(T)]
        if len(self.labels) != T or (self.steps is not None and len(self.steps) != T):
            raise ValueError(f"steps/labels: expected {T} entries (one per checkpoint)")

    @property
    def T(self) -> int:
        return int(self.values.shape[0])

    def to_final(self) -> Float[Tensor, " T"]:
        """Similarity of every checkpoint to the last one, `(T,)`."""
        return self.values[:, -1].clone()

    def index_of_step(self, step: int) -> int:
        """Index of the checkpoint whose step is closest to `step`."""
        if self.steps is None:
            raise ValueError("steps: this matrix was built without steps")
        return min(range(self.T), key=lambda i: abs(self.steps[i] - step))  # type: ignore[index]

    def block_mean(self, rows: Sequence[int], cols: Sequence[int], exclude_diagonal: bool = True) -> float:
        """Mean of `values[rows][:, cols]` (the diagonal left out when the blocks overlap)."""
        r, c = torch.as_tensor(list(rows)), torch.as_tensor(list(cols))
        block = self.values[r][:, c].double()
        mask = torch.ones_like(block, dtype=torch.bool)
        if exclude_diagonal:
            mask &= r[:, None] != c[None, :]
        return float(block[mask].mean()) if mask.any() else float("nan")

    def phase_means(self, phases: Sequence[tuple[str, int, int]]) -> Float[Tensor, "n_phases n_phases"]:
        """`(P, P)` mean similarity between phase blocks (diagonal blocks exclude self-pairs)."""
        out = torch.zeros(len(phases), len(phases), dtype=torch.float64)
        for i, (_, a0, a1) in enumerate(phases):
            for j, (_, b0, b1) in enumerate(phases):
                out[i, j] = self.block_mean(range(a0, a1 + 1), range(b0, b1 + 1))
        return out

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.values.double().numpy(), index=self.labels, columns=self.labels)

    def plot(
        self,
        path: str | os.PathLike | None = None,
        ax: Any = None,
        phases: Sequence[tuple[str, int, int]] | None = None,
        title: str | None = None,
        vmin: float | None = None,
        vmax: float = 1.0,
    ) -> Any:
        """Heatmap of the matrix, with phase boundaries and names (white on a dark box: readable on any colour);
        saved to `path` when given; returns the matplotlib Axes. `vmin` (default `min(0, smallest value)`) and
        `vmax`: the colour scale; pass the same to every panel of a figure so that one colour means one
        similarity."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 4.8))
        vmin = min(0.0, float(self.values.min())) if vmin is None else vmin
        im = ax.imshow(self.values.double().numpy(), cmap="viridis", vmin=vmin, vmax=vmax)
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="similarity")
        ticks = list(range(0, self.T, max(1, self.T // 8)))
        ax.set_xticks(ticks, [self.labels[i] for i in ticks], rotation=60, fontsize=7)
        ax.set_yticks(ticks, [self.labels[i] for i in ticks], fontsize=7)
        box = dict(boxstyle="round,pad=0.2", facecolor="black", alpha=0.65, linewidth=0)
        for name, a0, a1 in phases or []:
            for edge in (a0 - 0.5, a1 + 0.5):
                ax.axhline(edge, color="white", lw=0.6)
                ax.axvline(edge, color="white", lw=0.6)
            ax.text((a0 + a1) / 2, a0, name, color="white", ha="center", va="top", fontsize=7, bbox=box)
        ax.set_title(title or f"tensor similarity ({self.metric})")
        axis = "checkpoint" + (" (step)" if self.steps is not None else "")
        ax.set(xlabel=axis, ylabel=axis)
        save_figure(ax.figure, path)
        return ax

    def __repr__(self) -> str:
        off = self.values[~torch.eye(self.T, dtype=torch.bool)] if self.T > 1 else self.values.flatten()
        return (
            f"TensorSimilarityMatrix(T={self.T}, metric={self.metric!r}, method={self.method!r}, output={self.output}, "
            f"off-diagonal mean={float(off.double().mean()):.3f}, similarity first->final={float(self.values[0, -1]):.3f})"
        )
