"""tl_tensorsim: a TransformerLens plugin for weight-based and subspace-based interpretability.

The public API is flat, as in SAELens: everything a user calls is importable from `tl_tensorsim`.
"""

from tl_tensorsim import hooks
from tl_tensorsim.activations import collect_activations
from tl_tensorsim.adapter import ModelConfig, ModelView, as_view
from tl_tensorsim.artifacts import Artifact, load_artifact, save_artifact
from tl_tensorsim.report import Report

__all__ = [
    "Artifact",
    "ModelConfig",
    "ModelView",
    "Report",
    "as_view",
    "collect_activations",
    "hooks",
    "load_artifact",
    "save_artifact",
]
