"""Neighbour distance minimisation (NDM; Huang & Hahn, arXiv 2508.01916): unsupervised subspace partitions of a
representation space. `fit_ndm` learns a `SubspacePartition`; `subspace_mutual_information` estimates the
pairwise KSG mutual information of any partition; `baselines` gives identity / random / PCA partitions of the same
sizes."""

from tl_tensorsim.ndm.fit import fit_ndm
from tl_tensorsim.ndm.mutual_info import merge_pairs, merged_order, subspace_mutual_information
from tl_tensorsim.ndm.objective import ndm_loss
from tl_tensorsim.ndm.partition import SubspacePartition, baselines, group_recovery

__all__ = [
    "SubspacePartition",
    "baselines",
    "fit_ndm",
    "group_recovery",
    "merge_pairs",
    "merged_order",
    "ndm_loss",
    "subspace_mutual_information",
]
