"""Neighbour distance minimisation (NDM; Huang & Hahn, arXiv 2508.01916): unsupervised subspace partitions of a
representation space. `fit_ndm` learns a `SubspacePartition`; `subspace_mutual_information` estimates the pairwise
KSG mutual information of any partition; `partition_baselines` gives identity / random / PCA partitions of the same
sizes; `group_recovery` scores how well known groups of directions fall into single subspaces."""

from tl_tensorsim.ndm.fit import fit_ndm
from tl_tensorsim.ndm.mutual_info import merge_pairs, merged_order, subspace_mutual_information
from tl_tensorsim.ndm.objective import ndm_loss
from tl_tensorsim.ndm.partition import SubspacePartition, group_recovery, partition_baselines

__all__ = [
    "SubspacePartition",
    "fit_ndm",
    "group_recovery",
    "merge_pairs",
    "merged_order",
    "ndm_loss",
    "partition_baselines",
    "subspace_mutual_information",
]
