"""`tl_tensorsim.circuits`: known circuits (IOI, greater-than, induction) as ground truth, and the tools to test
subspaces against them: datasets for any tokenizer, task metrics, batched subspace patching, the Gini coefficient,
path patching (`path_patching`, `discover_circuit`), the DAS ceiling (`das_ceiling`: a supervised subspace of a
given width) and `validate_ndm`, the NDM paper's five tests beside its numbers."""

from tl_tensorsim.circuits import das, datasets
from tl_tensorsim.circuits.das import DASResult, das_ceiling
from tl_tensorsim.circuits.datasets import PromptSet, greater_than_dataset, induction_dataset, ioi_dataset
from tl_tensorsim.circuits.gini import gini
from tl_tensorsim.circuits.metrics import (
    greater_than_prob_diff,
    induction_logit,
    logit_diff,
    normalised_score,
    task_metric,
)
from tl_tensorsim.circuits.patching import PatchingTest, SubspacePatching, subspace_patching
from tl_tensorsim.circuits.path_patching import PathPatching, Receiver, discover_circuit, path_patching
from tl_tensorsim.circuits.registry import Circuit, available_circuits, get_circuit, known
from tl_tensorsim.circuits.validate import NDMValidation, paper_tests, validate_ndm

__all__ = [
    "Circuit",
    "DASResult",
    "NDMValidation",
    "PatchingTest",
    "PathPatching",
    "PromptSet",
    "Receiver",
    "SubspacePatching",
    "available_circuits",
    "das",
    "das_ceiling",
    "datasets",
    "discover_circuit",
    "get_circuit",
    "gini",
    "greater_than_dataset",
    "greater_than_prob_diff",
    "induction_dataset",
    "induction_logit",
    "ioi_dataset",
    "known",
    "logit_diff",
    "normalised_score",
    "paper_tests",
    "path_patching",
    "subspace_patching",
    "task_metric",
    "validate_ndm",
]
