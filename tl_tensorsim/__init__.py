"""tl_tensorsim: a TransformerLens plugin for weight-based and subspace-based interpretability.

The public API is flat, as in SAELens: everything a user calls is importable from `tl_tensorsim`.

    import tl_tensorsim as ts
    from tl_tensorsim import hooks

    sim = ts.head_similarity(model_a, model_b, circuit="OV", level="token")
    traj = ts.checkpoint_similarity(checkpoints, circuit="QK")
    ts.tensor_similarity(net_a, net_b)                      # HookedTensorNetwork / BilinearLayer / FactoredMatrix
    acts = ts.collect_activations(model, tokens, "blocks.1.hook_resid_post")
    sim.save("results/ov"); ts.load("results/ov")           # any result, back as its own type, with provenance

Importing `tl_tensorsim` changes no global state of TransformerLens: `ts.register_identity_activation()` (called
by `ts.bilinear_config`) adds `act_fn="identity"`, with which `gated_mlp=True` MLPs are bilinear.
"""

from tl_tensorsim import circuits, hooks, interaction, ndm, proofs
from tl_tensorsim.activation_store import ActivationStore, load_activations
from tl_tensorsim.activations import collect_activations
from tl_tensorsim.adapter import ModelConfig, ModelLike, ModelView, as_view
from tl_tensorsim.artifacts import Artifact, Provenance, load, load_artifact, save_artifact
from tl_tensorsim.interaction import InteractionBasis, InteractionGraph, interaction_basis, interaction_graph
from tl_tensorsim.models.induction import InductionConfig, induction_accuracy
from tl_tensorsim.models.induction import load_default as load_induction_model
from tl_tensorsim.models.induction import train as train_induction_model
from tl_tensorsim.ndm import SubspacePartition, fit_ndm, subspace_mutual_information
from tl_tensorsim.proofs import ProofComparison, ProofResult
from tl_tensorsim.report import Report
from tl_tensorsim.similarity import (
    CheckpointSimilarity,
    HeadSimilarity,
    behavioral_similarity,
    checkpoint_similarity,
    factored_cosine,
    factored_inner,
    head_similarity,
    raw_weight_similarity,
)
from tl_tensorsim.tensor_networks import (
    BilinearLayer,
    HookedTensorNetwork,
    NotPolynomialError,
    TensorNetworkConfig,
    TensorSimilarityMatrix,
    bilinear_config,
    extract_mlp,
    extract_mlps,
    register_identity_activation,
    tensor_inner,
    tensor_similarity,
    tensor_similarity_matrix,
)
from tl_tensorsim.training import TrainingRun, limit_threads, load_run, train_loop

__all__ = [
    "ActivationStore",
    "load_activations",
    "InteractionBasis",
    "InteractionGraph",
    "interaction",
    "interaction_basis",
    "interaction_graph",
    "SubspacePartition",
    "fit_ndm",
    "ndm",
    "subspace_mutual_information",
    "ModelLike",
    "ProofComparison",
    "ProofResult",
    "proofs",
    "Artifact",
    "BilinearLayer",
    "CheckpointSimilarity",
    "HeadSimilarity",
    "HookedTensorNetwork",
    "InductionConfig",
    "ModelConfig",
    "ModelView",
    "NotPolynomialError",
    "Provenance",
    "Report",
    "TensorNetworkConfig",
    "TensorSimilarityMatrix",
    "TrainingRun",
    "as_view",
    "behavioral_similarity",
    "bilinear_config",
    "checkpoint_similarity",
    "circuits",
    "collect_activations",
    "extract_mlp",
    "extract_mlps",
    "factored_cosine",
    "factored_inner",
    "head_similarity",
    "hooks",
    "induction_accuracy",
    "limit_threads",
    "load",
    "load_artifact",
    "load_induction_model",
    "load_run",
    "raw_weight_similarity",
    "register_identity_activation",
    "save_artifact",
    "tensor_inner",
    "tensor_similarity",
    "tensor_similarity_matrix",
    "train_induction_model",
    "train_loop",
]
