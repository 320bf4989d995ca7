"""The interaction basis (Bushnaq et al., arXiv 2405.10927 / 2405.10928; Apollo Research's `rib` library) for
TransformerLens models:

    ib = interaction_basis(model, node_layers, data)            # InteractionBasis: per node layer C, C⁺, Λ, PCA
    graph = interaction_graph(ib, model, data, which="ib")      # InteractionGraph: squared edges
    edge_ablation(graph, ib, model, data, metric)               # fewest edges within a tolerance (bisection)
    node_ablation(ib, model, data, metric, node=..., keep=...)  # top-k directions kept (hooks.rotate)
    modules(graph)                                              # Louvain communities and modularity Q
"""

from . import sections
from .ablation import AblationCurve, clean_metric, edge_ablation, node_ablation
from .basis import InteractionBasis, NodeBasis, interaction_basis
from .graph import InteractionGraph, Modules, interaction_graph, modules

__all__ = [
    "AblationCurve",
    "InteractionBasis",
    "InteractionGraph",
    "Modules",
    "NodeBasis",
    "clean_metric",
    "edge_ablation",
    "interaction_basis",
    "interaction_graph",
    "modules",
    "node_ablation",
    "sections",
]
