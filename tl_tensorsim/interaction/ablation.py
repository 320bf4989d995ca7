"""Sparsity probes of an interaction graph (the `rib` library's node and edge ablations, arXiv 2405.10928).

- **Node ablation** (`node_ablation`): at one node layer keep the top-k directions by Λ (index 0, the constant,
  first) and project out the rest, `x -> ([x, 1] C[:, :k] C⁺[:k])[:d]` (`tl_tensorsim.hooks.rotate(basis.node(l),
  keep=k)`), then run the model on; the metric for each k.
- **Edge ablation** (`edge_ablation_metric`, `edge_ablation`): in one section keep the top-k edges (plus every edge
  from the constant node), compute each output node `i` of node layer `l + 1` from the input nodes it keeps (the
  others set to 0, their mean), `f̂^{l+1}_i = F̂_i(f̂^l ⊙ mask_i)`, map back with `C⁺_{l+1}` and run the model on;
  `edge_ablation` bisects, per edge layer, for the smallest k whose metric stays within `tolerance` of the
  unablated value (all edges kept). Cost per evaluation: `m_{l+1}` forward passes of the section (`vmap`ed over
  `chunk_size` output nodes) and one of the rest of the model.

`metric(logits [batch, pos, d_vocab], index [batch]) -> scores [batch]` (e.g. accuracy at the last position against
labels indexed by `index`, the rows of `data`); results are means over `data`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from torch.func import vmap

from tl_tensorsim import hooks
from tl_tensorsim.adapter import ModelLike, as_view
from tl_tensorsim.artifacts import Artifact, Provenance, save_figure
from tl_tensorsim.checks import check_choice, checked_int
from tl_tensorsim.linalg import chunk_ranges

from . import sections
from .basis import InteractionBasis, _check_tokens
from .graph import InteractionGraph, check_basis_model

Metric = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True, repr=False)
class AblationCurve(Artifact):
    """Metric against the number kept, per layer: `curves[name] = [[k, metric], ...]` (sorted by k), `needed[name]`
    (edge ablation: the smallest k within `tolerance` of `baseline[name]`), for basis `basis` (`"ib"`/`"pca"`) and
    `kind` (`"edges"`/`"nodes"`). `clean`: the metric of the unmodified model."""

    kind: str
    basis: str
    clean: float
    baseline: dict[str, float]
    curves: dict[str, list]
    needed: dict[str, int] = field(default_factory=dict)
    tolerance: float | None = None
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    @property
    def total_needed(self) -> int:
        """Edges (or nodes) needed, summed over layers."""
        return int(sum(self.needed.values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}: {v}" for k, v in self.needed.items()) or f"{len(self.curves)} layers"
        return f"AblationCurve({self.kind}, {self.basis}, clean {self.clean:.4g}; {shown})"

    def to_dataframe(self) -> Any:
        """`pandas.DataFrame`, one row per (layer, number kept): `layer`, `kept`, `metric`, and `needed` (True
        at the smallest number within `tolerance` of the baseline, edge ablation only)."""
        import pandas as pd

        rows = [
            {"layer": name, "kept": int(k), "metric": float(v), "needed": self.needed.get(name) == int(k)}
            for name, pts in self.curves.items()
            for k, v in pts
        ]
        return pd.DataFrame(rows, columns=["layer", "kept", "metric", "needed"])

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None, label: str | None = None) -> Any:
        """Metric against the number kept, one line per layer. Saved to `path` when given; returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3.5))
        else:
            fig = ax.figure
        for name, pts in self.curves.items():
            k, v = zip(*sorted(pts)) if pts else ((), ())
            ax.plot(k, v, marker=".", label=f"{label or self.basis}: {name}")
        ax.set_xlabel(f"{self.kind} kept")
        ax.set_ylabel("metric")
        ax.legend(fontsize=7)
        return save_figure(fig, path)


def _check_metric(metric: Any) -> Metric:
    """`metric` if it is a callable that accepts `(logits, index)`, else a `TypeError` naming it (before any work)."""
    if not callable(metric):
        raise TypeError(f"metric: expected a callable metric(logits, index) -> scores [batch]; got {metric!r}")
    try:
        inspect.signature(metric).bind(None, None)
    except TypeError as exc:
        raise TypeError(
            f"metric: expected a callable metric(logits [batch, pos, d_vocab], index [batch]) -> scores [batch] "
            f"(index: the rows of data in the batch, e.g. to look up labels); {metric!r} cannot take two "
            f"arguments ({exc}). Hint: wrap it, `lambda logits, index: f(logits)`"
        ) from None
    except ValueError:  # no signature to read (some builtins): let the call decide
        pass
    return metric


def _mean_metric(metric: Metric, logits: Tensor, index: Tensor) -> float:
    scores = metric(logits, index)
    if not isinstance(scores, Tensor) or scores.shape != (len(index),):
        got = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"metric: expected scores [batch={len(index)}] from metric(logits, index); got {got}")
    return float(scores.double().sum())


def clean_metric(model: ModelLike, data: Int[Tensor, "batch pos"], metric: Metric, batch_size: int = 256) -> float:
    """The metric of the unmodified model, averaged over `data`."""
    _check_metric(metric)
    view = as_view(model)
    tokens = _check_tokens(view, data, "data")
    total = 0.0
    with torch.no_grad():
        for a, b in chunk_ranges(tokens.shape[0], batch_size):
            logits = view.model(tokens[a:b])
            total += _mean_metric(metric, logits, torch.arange(a, b))
    return total / tokens.shape[0]


def node_ablation(
    basis: InteractionBasis,
    model: ModelLike,
    data: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    node: str | int,
    keep: Sequence[int],
    which: str = "ib",
    batch_size: int = 256,
) -> AblationCurve:
    """The metric with node layer `node` projected on its top-k directions, for each k in `keep` (module
    docstring); runs through `tl_tensorsim.hooks.rotate(basis.node(node, which), keep=k)`."""
    check_choice(which, ("ib", "pca"), "which")
    _check_metric(metric)
    view = as_view(model)
    check_basis_model(basis, view)
    tokens = _check_tokens(view, data, "data")
    l = basis.index(node)
    name = basis.node_layers[l]
    if name == sections.OUTPUT:
        raise ValueError("node: the logits ('output') have no hook point to ablate; pick an earlier node layer")
    nb = basis.node(l, which)
    m = nb.C.shape[1]
    expected = f"ints in [0, {m}] (node layer {name!r} has {m} {which} directions)"
    if isinstance(keep, int):
        raise TypeError(f"keep: expected a sequence of {expected}; got the int {keep}. Hint: keep=[{keep}]")
    ks = [checked_int(k, "keep", 0, expected) for k in keep]
    too_many = [k for k in ks if k > m]
    if too_many:
        raise ValueError(
            f"keep: expected {expected}; got {too_many[0]}. Hint: keep=range({m + 1}) sweeps every number kept"
        )
    positions = -1 if basis.last_position[l] else None
    curve = []
    for k in ks:
        fn = hooks.rotate(nb, keep=k, positions=positions)
        total = 0.0
        with torch.no_grad():
            for a, b in chunk_ranges(tokens.shape[0], batch_size):
                logits = hooks.run_with_hooks(view, tokens[a:b], [(name, fn)])
                total += _mean_metric(metric, logits, torch.arange(a, b))
        curve.append([k, total / tokens.shape[0]])
    return AblationCurve(
        kind="nodes",
        basis=which,
        clean=clean_metric(view, tokens, metric, batch_size),
        baseline={name: curve[-1][1] if curve else float("nan")},
        curves={name: curve},
        provenance=Provenance(models=(view.cfg.model_name,), hooks=(name,), settings=dict(which=which, keep=ks)),
    )


class _Section:
    """Edge-masked evaluation of one section of a basis on `data` (clean activations collected once)."""

    def __init__(self, basis, view, tokens, layer, which, batch_size, chunk_size):
        self.view, self.tokens, self.l, self.chunk = view, tokens, layer, chunk_size
        self.layers = sections.NodeLayers(basis.node_layers, basis.last_position)
        self.fold = basis.fold_bias
        self.nb, self.nb_next = basis.node(layer, which), basis.node(layer + 1, which)
        self.batches = []
        names, last = self.layers.names, self.layers.last
        for a, b in chunk_ranges(tokens.shape[0], batch_size):
            toks = tokens[a:b]
            x = sections.collect(view, self.layers, toks)[layer]
            clean = sections.full_activation(view, names[layer], toks) if last[layer] else None
            later = last[layer + 1] and names[layer + 1] != sections.OUTPUT
            nxt = sections.full_activation(view, names[layer + 1], toks) if later else None
            F = sections.section(view, self.layers, layer, toks, clean, self.fold)
            self.batches.append((a, b, x, F, nxt))

    def metric(self, mask: Tensor, metric: Metric) -> float:
        view, l, names = self.view, self.l, self.layers.names
        total = 0.0
        for a, b, x, F, full in self.batches:
            toks_b = self.tokens[a:b]
            c, cp, c_next = (t.to(x) for t in (self.nb.C, self.nb.C_pinv, self.nb_next.C))
            fh = x @ c
            h = vmap(lambda z, F=F, cp=cp, c_next=c_next: F(z @ cp) @ c_next)
            m_out = c_next.shape[1]
            out = []
            with torch.no_grad():
                for i0, i1 in chunk_ranges(m_out, self.chunk):
                    masked = fh[None] * mask[i0:i1, None, None, :].to(fh)
                    y = h(masked)  # [n, batch, pos_out, m_out]
                    out.append(y[torch.arange(i1 - i0), :, :, torch.arange(i0, i1)])  # [n, batch, pos_out]
                f_next = torch.stack([o for chunk in out for o in chunk], -1)
                x_next = (f_next @ self.nb_next.C_pinv.to(x))[..., :-1]
                if names[l + 1] == sections.OUTPUT:
                    logits = x_next
                else:
                    if self.layers.last[l + 1]:
                        x_next = torch.cat([full[:, :-1], x_next], 1)
                    logits = view.run_from(names[l + 1], x_next, toks_b)
            total += _mean_metric(metric, logits, torch.arange(a, b))
        return total / self.tokens.shape[0]


def edge_ablation(
    graph: InteractionGraph,
    basis: InteractionBasis,
    model: ModelLike,
    data: Int[Tensor, "batch pos"],
    metric: Metric,
    *,
    tolerance: float = 0.001,
    layers: Sequence[int] | None = None,
    batch_size: int = 256,
    chunk_size: int = 32,
) -> AblationCurve:
    """Per edge layer (all, or `layers`), bisection for the smallest number of kept edges (top-k by edge value,
    edges from the constant node free) whose metric is within `tolerance` of the metric with every edge kept; the
    other sections unablated. Returns the evaluated points and `needed` per edge layer (`total_needed`: the sum)."""
    if not isinstance(graph, InteractionGraph):
        raise TypeError(f"graph: expected an InteractionGraph; got {type(graph).__name__}")
    view = as_view(model)
    check_basis_model(basis, view)
    if tuple(graph.node_layers) != tuple(basis.node_layers) or graph.sizes != tuple(
        basis.node(i, graph.basis).C.shape[1] for i in range(len(basis.node_layers))
    ):
        raise ValueError("graph: was not computed from this basis (node layers or sizes differ)")
    if not float(tolerance) >= 0:
        raise ValueError(f"tolerance: expected a float >= 0; got {tolerance!r}")
    _check_metric(metric)
    tokens = _check_tokens(view, data, "data")
    todo = list(range(len(graph.edges))) if layers is None else [int(x) for x in layers]
    curves, needed, baseline = {}, {}, {}
    for l in todo:
        sec = _Section(basis, view, tokens, l, graph.basis, batch_size, chunk_size)
        total = graph.edges[l][:, 1:].numel()
        seen: dict[int, float] = {}

        def value(k: int, l: int = l, sec: _Section = sec, seen: dict[int, float] = seen) -> float:
            if k not in seen:
                seen[k] = sec.metric(graph.top_k_mask(l, k), metric)
            return seen[k]

        base = value(total)
        lo, hi = 0, total
        while lo < hi:
            mid = (lo + hi) // 2
            if abs(value(mid) - base) <= tolerance:
                hi = mid
            else:
                lo = mid + 1
        key = f"{graph.node_layers[l]} -> {graph.node_layers[l + 1]}"
        curves[key] = sorted([k, v] for k, v in seen.items())
        needed[key], baseline[key] = lo, base
    return AblationCurve(
        kind="edges",
        basis=graph.basis,
        clean=clean_metric(view, tokens, metric, batch_size),
        baseline=baseline,
        curves=curves,
        needed=needed,
        tolerance=float(tolerance),
        provenance=Provenance(
            models=(view.cfg.model_name,), hooks=graph.node_layers, settings=dict(tolerance=tolerance, layers=todo)
        ),
    )
