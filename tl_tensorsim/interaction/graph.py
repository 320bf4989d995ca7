"""The interaction graph between consecutive node layers of an `InteractionBasis` (arXiv 2405.10928; the `rib`
library's `squared` edges with `gradient` integration), and module finding.

`E^l_{ij} = 1/(N · P_in) Σ_x Σ_t (Σ_s ∂f̂^{l+1}_{t,i}/∂f̂^l_{s,j} · f̂^l_{s,j})²` (`[m_{l+1}, m_l]`, float64, >= 0):
gradient x activation of output node `i` on input node `j`, squared and summed over output positions, with the
section `f̂^l -> f̂^l C⁺_l -> F -> · C_{l+1}` (`jacobians.squared_edges`: one `vjp` per batch, `vmap` over output
nodes; `n_stochastic_sources` random ±1 sources replace the sum over output positions). The same for the PCA basis
with `basis="pca"`. `modules(graph)` runs networkx's Louvain community detection on the graph (edges to or from the
constant node left out) and reports the modularity Q.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_tensorsim.adapter import ModelLike, as_view
from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure
from tl_tensorsim.checks import check_choice
from tl_tensorsim.linalg import chunk_ranges

from . import jacobians, sections
from .basis import InteractionBasis, _check_sizes, _check_tokens, _pad

F64 = torch.float64


@dataclass(frozen=True, repr=False)
class InteractionGraph(Artifact):
    """Squared edges `edges[l]` `[m_{l+1}, m_l]` (float64) between node layers `l` and `l + 1` of `node_layers`,
    in basis `basis` (`"ib"` or `"pca"`); `sizes[l] = m_l`. Node 0 of every layer but the last is the constant
    direction. `save(dir)` / `tl_tensorsim.load(dir)`."""

    node_layers: tuple[str, ...]
    basis: str
    sizes: tuple[int, ...]
    edges: Any
    constant: tuple[bool, ...] = ()
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_layers", tuple(self.node_layers))
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        object.__setattr__(self, "constant", tuple(bool(c) for c in self.constant) or (False,) * len(self.sizes))
        if isinstance(self.edges, Tensor):  # padded, as stored
            cut = [self.edges[l, : self.sizes[l + 1], : self.sizes[l]] for l in range(len(self.sizes) - 1)]
            object.__setattr__(self, "edges", cut)
        object.__setattr__(self, "edges", tuple(e.detach().cpu().to(F64) for e in self.edges))

    def _encode_field(self, name: str, value: Any) -> Any:
        return _pad(value) if name == "edges" else value

    def _check(self) -> None:
        if len(self.edges) != len(self.node_layers) - 1 or len(self.sizes) != len(self.node_layers):
            raise ValueError(f"edges: expected {len(self.node_layers) - 1} edge layers; got {len(self.edges)}")
        for l, e in enumerate(self.edges):
            expect_shape(f"edges[{l}]", e, (self.sizes[l + 1], self.sizes[l]))

    def __repr__(self) -> str:
        shown = ", ".join(f"{list(e.shape)} (sum {float(e.sum()):.3g})" for e in self.edges)
        return f"InteractionGraph({self.basis}: {shown})"

    def top_k_mask(self, layer: int, k: int) -> Tensor:
        """Bool mask `[m_{l+1}, m_l]` of the `k` largest edges of edge layer `layer`, plus every edge from the
        constant node (input node 0, free as in the `rib` library's edge ablation)."""
        e = self.edges[layer]
        mask = torch.zeros_like(e, dtype=torch.bool)
        mask[:, 0] = True
        rest = e[:, 1:].flatten()
        k = max(0, min(int(k), rest.numel()))
        if k:
            chosen = torch.zeros(rest.numel(), dtype=torch.bool)
            chosen[torch.topk(rest, k).indices] = True
            mask[:, 1:] = chosen.view(e.shape[0], -1)
        return mask

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None, top: int = 200) -> Any:
        """The graph as a layered picture: nodes per node layer (constant node left out), the `top` largest edges
        per edge layer, line width proportional to the edge's share of its layer's largest. Saved to `path` when
        given; returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(8, 4.5))
        else:
            fig = ax.figure
        n = len(self.node_layers)
        ys = [torch.linspace(0, 1, max(1, s - (1 if l < n - 1 else 0))) for l, s in enumerate(self.sizes)]
        for l, e in enumerate(self.edges):
            w = e[:, 1:]  # edges from the constant node left out
            flat = w.flatten()
            k = min(top, flat.numel())
            vals, idx = torch.topk(flat, k)
            vmax = float(vals.max()) if k else 1.0
            off_out = 1 if l + 1 < n - 1 else 0
            for v, f in zip(vals.tolist(), idx.tolist()):
                i, j = divmod(f, w.shape[1])
                if i < off_out:
                    continue
                ax.plot(
                    [l, l + 1],
                    [float(ys[l][j]), float(ys[l + 1][i - off_out])],
                    color="C0",
                    lw=2.5 * v / max(vmax, 1e-300),
                    alpha=0.6,
                )
        for l in range(n):
            ax.scatter([l] * len(ys[l]), ys[l].numpy(), s=6, color="k", zorder=3)
        ax.set_xticks(range(n))
        ax.set_xticklabels([name.replace("blocks.", "") for name in self.node_layers], fontsize=8, rotation=15)
        ax.set_yticks([])
        ax.set_title(f"interaction graph ({self.basis}), top {top} edges per layer", fontsize=10)
        return save_figure(fig, path)


def interaction_graph(
    basis: InteractionBasis,
    model: ModelLike,
    data: Int[Tensor, "batch pos"],
    *,
    which: str = "ib",
    n_stochastic_sources: int | None = None,
    batch_size: int = 64,
    chunk_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> InteractionGraph:
    """Squared edges between every pair of consecutive node layers of `basis` (module docstring), in the
    interaction basis (`which="ib"`) or the PCA baseline (`"pca"`). Cost per edge layer: one forward pass and
    `P_out · m_{l+1}` (or `R · m_{l+1}`) VJPs per batch of `batch_size` sequences, `chunk_size` at a time."""
    if not isinstance(basis, InteractionBasis):
        raise TypeError(f"basis: expected an InteractionBasis; got {type(basis).__name__}")
    check_choice(which, ("ib", "pca"), "which")
    view = as_view(model)
    layers = check_basis_model(basis, view)
    tokens = _check_tokens(view, data, "data")
    batch_size, chunk_size, n_stochastic_sources = _check_sizes(batch_size, chunk_size, n_stochastic_sources)
    n = len(layers)
    nodes = [basis.node(l, which) for l in range(n)]
    gen = torch.Generator().manual_seed(seed)
    batches = list(chunk_ranges(tokens.shape[0], batch_size))
    edges = [torch.zeros(nodes[l + 1].C.shape[1], nodes[l].C.shape[1], dtype=F64) for l in range(n - 1)]
    rows = [0] * (n - 1)
    bar = tqdm(total=len(batches) * (n - 1), desc=f"edges ({which})", disable=not progress)
    for a, b in batches:
        acts = sections.collect(view, layers, tokens[a:b])
        for l in range(n - 1):
            x = acts[l]
            c, cp = nodes[l].C.to(x), nodes[l].C_pinv.to(x)
            c_next = nodes[l + 1].C.to(x)
            clean = sections.full_activation(view, layers.names[l], tokens[a:b]) if layers.last[l] else None
            F = sections.section(view, layers, l, tokens[a:b], clean, basis.fold_bias)
            src, weight = jacobians.position_sources(acts[l + 1].shape[1], n_stochastic_sources, generator=gen)
            h = lambda fh, F=F, cp=cp, c_next=c_next: F(fh @ cp) @ c_next  # noqa: E731
            edges[l] += jacobians.squared_edges(h, x @ c, src.to(x), weight, chunk_size).cpu()
            rows[l] += x.shape[0] * x.shape[1]
            bar.update(1)
    bar.close()
    settings = dict(
        which=which,
        n_stochastic_sources=n_stochastic_sources,
        batch_size=batch_size,
        seed=seed,
        n_data=int(tokens.shape[0]),
    )
    return InteractionGraph(
        node_layers=layers.names,
        basis=which,
        sizes=tuple(nd.C.shape[1] for nd in nodes),
        constant=tuple(_has_constant(nd.C) for nd in nodes),
        edges=[e / r for e, r in zip(edges, rows)],
        provenance=Provenance(models=(view.cfg.model_name,), hooks=layers.names, settings=settings),
    )


@dataclass(frozen=True, repr=False)
class Modules(Artifact):
    """Communities of an interaction graph (networkx Louvain): `communities`, lists of `[layer, node]` pairs;
    `modularity` (Newman's Q of that partition on the same weighted graph); `resolution`, `normalise`, `seed`."""

    basis: str
    communities: list
    modularity: float
    resolution: float = 1.0
    normalise: str = "sqrt"
    seed: int = 0
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def __repr__(self) -> str:
        sizes = sorted((len(c) for c in self.communities), reverse=True)
        return f"Modules({self.basis}: {len(sizes)} communities, sizes {sizes[:8]}, Q = {self.modularity:.3f})"

    def to_dataframe(self) -> Any:
        """`pandas.DataFrame`, one row per node: `community` (index into `communities`), `layer` (node layer index)
        and `node` (its direction in that layer's basis), sorted by layer and node."""
        import pandas as pd

        rows = [{"community": c, "layer": int(l), "node": int(n)} for c, nodes in enumerate(self.communities)
                for l, n in nodes]  # fmt: skip
        return pd.DataFrame(rows, columns=["community", "layer", "node"]).sort_values(
            ["layer", "node"], ignore_index=True
        )


def modules(graph: InteractionGraph, *, resolution: float = 1.0, normalise: str = "sqrt", seed: int = 0) -> Modules:
    """Louvain communities (`networkx.community.louvain_communities`, weighted, `resolution` γ, `seed`) of the
    undirected graph over every non-constant node, edge weights `normalise(E)` (`"none"`, `"sqrt"`, `"max"`: divided
    by its edge layer's largest), and their modularity Q (`networkx.community.modularity`)."""
    import networkx as nx

    check_choice(normalise, ("none", "sqrt", "max"), "normalise")
    if not isinstance(graph, InteractionGraph):
        raise TypeError(f"graph: expected an InteractionGraph; got {type(graph).__name__}")
    G = nx.Graph()
    for l, size in enumerate(graph.sizes):
        G.add_nodes_from((l, j) for j in range(1 if graph.constant[l] else 0, size))
    for l, e in enumerate(graph.edges):
        w = e.sqrt() if normalise == "sqrt" else e / e.max().clamp_min(1e-300) if normalise == "max" else e
        i0, j0 = (1 if graph.constant[l + 1] else 0), (1 if graph.constant[l] else 0)
        sub = w[i0:, j0:]
        idx = (sub > 0).nonzero().tolist()
        G.add_weighted_edges_from(((l, j + j0), (l + 1, i + i0), float(sub[i, j])) for i, j in idx)
    comms = nx.community.louvain_communities(G, weight="weight", resolution=resolution, seed=seed)
    q = nx.community.modularity(G, comms, weight="weight", resolution=resolution)
    return Modules(
        basis=graph.basis,
        communities=[sorted([int(a), int(b)] for a, b in c) for c in comms],
        modularity=float(q),
        resolution=float(resolution),
        normalise=normalise,
        seed=int(seed),
        provenance=Provenance(hooks=graph.node_layers, settings=dict(resolution=resolution, normalise=normalise)),
    )


def _has_constant(C: Tensor) -> bool:
    """Whether column 0 of `C` is the constant direction (a multiple of the folded-bias coordinate)."""
    return bool(C[-1, 0] != 0) and bool((C[:-1, 0] == 0).all())


def check_basis_model(basis: InteractionBasis, view: Any) -> sections.NodeLayers:
    """The basis's node layers, checked against `view` before any work: hook names of the model, in forward order
    (`sections.check_node_layers`), each as wide as the basis was built on (`basis.dims[l] = d_l + 1`). A
    `ValueError` naming `model`, the layer, both widths and a hint otherwise."""
    if not isinstance(basis, InteractionBasis):
        raise TypeError(f"basis: expected an InteractionBasis (interaction_basis(...)); got {type(basis).__name__}")
    layers = sections.check_node_layers(view, basis.node_layers, _last_from(basis))
    for name, d1 in zip(basis.node_layers, basis.dims):
        d = sections.width(view, name)
        if d != d1 - 1:
            what = "d_vocab_out" if name == sections.OUTPUT else "width"
            raise ValueError(
                f"model: node layer {name!r} has {what} {d} in {view.cfg.model_name!r}; expected {d1 - 1}, the "
                "width the basis was built on. Hint: pass the model the basis was computed from "
                "(interaction_basis(model, ...))"
            )
    return layers


def _last_from(basis: InteractionBasis) -> str | None:
    return next((n for n, last in zip(basis.node_layers, basis.last_position) if last), None)
