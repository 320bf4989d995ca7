"""Compact proofs for group-operation networks (Wu, Jaburi, Drori & Gross, arXiv 2410.07476): finite groups and
their real orthogonal irreps, the group Fourier transform, explanations of a trained `GroupMLP` (irrep sparsity,
coset concentration, ρ-set circuits) and certified accuracy bounds (brute force, ρ-set proof, and the irrep and coset
explanations as baseline proofs), all float64.

    from tl_tensorsim.proofs import groups
    G = groups.symmetric(5)                       # G.table[x, y] = index of x ⋆ y (apply y first)
    reps = groups.irreps(G)                       # Young's orthogonal form: (5), (4,1), ...
    exact = groups.brute_force(model)             # every |G|² pair, certified margins
    expl = groups.explain(model)                  # irreps per neuron, cosets, ρ-set circuits
    proof = groups.rho_set(model, expl)           # margin of the idealised network minus deviation bounds
    tight = groups.rho_set(model, expl, deviation="lowrank")  # per-z idealised gap, low-rank readout deviation
    base = groups.irrep(model, expl)              # baselines: groups.irrep, groups.coset (cost above brute force)
    table = groups.compare([model])               # bound and cost per strategy; .plot()
    groups.plot_rho_sets(expl, "rho_sets.png")     # the 3-d ρ-sets (tetrahedra, icosahedra)
"""

from tl_tensorsim.proofs.groups.baselines import coset, irrep, verify_idealised
from tl_tensorsim.proofs.groups.compare import compare, plot
from tl_tensorsim.proofs.groups.explain import Explanation, coset_concentration, explain, model_group, model_tables
from tl_tensorsim.proofs.groups.figures import plot_rho_sets
from tl_tensorsim.proofs.groups.fourier import fourier_transform, irrep_bases, irrep_power, project
from tl_tensorsim.proofs.groups.groups import (
    Group,
    alternating,
    cyclic,
    dihedral,
    from_permutations,
    group_by_name,
    symmetric,
)
from tl_tensorsim.proofs.groups.handbuilt import handbuilt, tetra_circuits
from tl_tensorsim.proofs.groups.irreps import (
    Irrep,
    irrep_by_name,
    irreps,
    partitions,
    permutation_representation,
    regular_representation,
    split_representation,
    young_irrep,
)
from tl_tensorsim.proofs.groups.lowrank import explanation_rank, lowrank_slack
from tl_tensorsim.proofs.groups.rho_sets import diagonal_orbits, fit_circuit, orbit, rho_set_action, rho_set_circuits
from tl_tensorsim.proofs.groups.verify import (
    brute_force,
    certified_margins,
    certified_tables,
    check_action,
    rho_set,
)

__all__ = [
    "Explanation",
    "Group",
    "Irrep",
    "alternating",
    "brute_force",
    "certified_margins",
    "certified_tables",
    "check_action",
    "compare",
    "coset",
    "coset_concentration",
    "cyclic",
    "diagonal_orbits",
    "dihedral",
    "explain",
    "explanation_rank",
    "fit_circuit",
    "fourier_transform",
    "from_permutations",
    "group_by_name",
    "handbuilt",
    "irrep_bases",
    "irrep_by_name",
    "irrep",
    "irrep_power",
    "irreps",
    "lowrank_slack",
    "model_group",
    "model_tables",
    "orbit",
    "partitions",
    "permutation_representation",
    "plot",
    "plot_rho_sets",
    "project",
    "regular_representation",
    "rho_set",
    "rho_set_action",
    "rho_set_circuits",
    "split_representation",
    "symmetric",
    "tetra_circuits",
    "verify_idealised",
    "young_irrep",
]
