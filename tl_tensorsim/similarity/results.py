"""The result of comparing attention heads: `HeadSimilarity`, and the option types of the head analyses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure

Circuit = Literal["QK", "OV"]
Level = Literal["residual", "token"]
HeadMetric = Literal["tensor", "raw_weight", "behavioral"]


@dataclass(repr=False)
class HeadSimilarity(Artifact):
    """Cosine similarities between every head of model a (rows) and of model b (columns).

    `values` `[n_heads_a, n_heads_b]` float64; rows and columns ordered L0H0, L0H1, ..., L1H0, ...
    `inner`, `norms_sq_a`, `norms_sq_b`: the raw inner products and squared norms behind the cosines.

    `save(dir)` stores `values`, `inner`, `norms_sq_a`, `norms_sq_b` as float64 tensors (safetensors) and the
    labels, circuit, level, metric, settings and `provenance` as JSON; `tl_tensorsim.load(dir)` reads it back.
    """

    values: Tensor
    labels_a: list[str]
    labels_b: list[str]
    circuit: str
    level: str
    metric: str = "tensor"
    inner: Tensor | None = None
    norms_sq_a: Tensor | None = None
    norms_sq_b: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        n_a, n_b = len(self.labels_a), len(self.labels_b)
        expect_shape("values", self.values, (n_a, n_b), "[n_heads_a, n_heads_b] from labels_a, labels_b")
        if self.inner is not None:
            expect_shape("inner", self.inner, (n_a, n_b), "[n_heads_a, n_heads_b] from labels_a, labels_b")
        for name, n in (("norms_sq_a", n_a), ("norms_sq_b", n_b)):
            if getattr(self, name) is not None:
                expect_shape(name, getattr(self, name), (n,), "one per head")

    def to_dataframe(self):
        """`pandas.DataFrame` of `values`, index `labels_a`, columns `labels_b`."""
        import pandas as pd

        return pd.DataFrame(self.values.numpy(), index=self.labels_a, columns=self.labels_b)

    def best_matches(self):
        """For every head of model a, the most similar head of model b (DataFrame: head_a, head_b, similarity)."""
        import pandas as pd

        best = self.values.max(dim=1)
        return pd.DataFrame(
            {
                "head_a": self.labels_a,
                "head_b": [self.labels_b[i] for i in best.indices],
                "similarity": best.values.numpy(),
            }
        )

    def plot(self, path=None, ax=None, title: str | None = None):
        """Heatmap of `values` (diverging, [-1, 1]), layer boundaries marked; saved to `path` when given."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6.5, 5.5))
        im = ax.imshow(self.values.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        for labels, lines, ticks in (
            (self.labels_b, ax.axvline, ax.set_xticks),
            (self.labels_a, ax.axhline, ax.set_yticks),
        ):
            layers = [lab.split("H")[0] for lab in labels]
            starts = [i for i in range(len(layers)) if i == 0 or layers[i] != layers[i - 1]]
            for s in starts[1:]:
                lines(s - 0.5, color="k", lw=0.4)
            if len(labels) <= 32:
                ticks(range(len(labels)), labels, fontsize=6, **({"rotation": 90} if ticks == ax.set_xticks else {}))
            else:
                ticks(starts, [layers[s] for s in starts], fontsize=7)
        ax.set_xlabel(self.settings.get("model_b", "model b"))
        ax.set_ylabel(self.settings.get("model_a", "model a"))
        ax.set_title(title or f"{self.circuit} {self.level} similarity ({self.metric})")
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
        return save_figure(ax.figure, path)

    def __repr__(self) -> str:
        v = self.values
        head = f"HeadSimilarity({self.metric}, {self.circuit}, {self.level}: {v.shape[0]} x {v.shape[1]}"
        if v.shape[0] == v.shape[1]:
            off = v[~torch.eye(v.shape[0], dtype=torch.bool)]
            head += (
                f", diagonal mean {v.diagonal().mean():.4f}, off-diagonal mean |x| {off.abs().mean():.4f}"
                if off.numel()
                else ""
            )
        return head + f", range [{v.min():.3f}, {v.max():.3f}])"
