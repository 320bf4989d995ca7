"""Hand-built GroupMLPs (arXiv 2410.07476, the ρ-set construction): exactly bi-equivariant networks written from
ρ-sets, with the explanation that describes them (neuron (a, b) of circuit c gets w_l(x) = ℓ(σ_{x⁻¹}a), w_r(y) = r(σ_y b), w_u(z) = U(σ_{z⁻¹}a, b))."""

from __future__ import annotations

import torch

from tl_tensorsim.models.group_mlp import GroupMLP, GroupMLPConfig
from tl_tensorsim.proofs.groups.explain import Explanation
from tl_tensorsim.proofs.groups.groups import group_by_name
from tl_tensorsim.proofs.groups.irreps import irrep_by_name
from tl_tensorsim.proofs.groups.rho_sets import diagonal_orbits, orbit, rho_set_action

__all__ = ["handbuilt", "tetra_circuits"]


def tetra_circuits(u=(0.9, 0.3, 0.2), sign=1.0):
    """S4's standard irrep (3,1): T = the orbit of e_1 (a tetrahedron), circuits T x (-T) and (-T) x T with
    ℓ(a) = aᵀu, r(b) = uᵀb, U(a, b) = sign·aᵀb."""
    group = group_by_name("S4")
    rep = irrep_by_name(group, "(3,1)")
    T = orbit(rep.matrices, torch.eye(3, dtype=torch.float64)[0])
    uu = torch.tensor(u, dtype=torch.float64)
    out = []
    for BL, BR in ((T, -T), (-T, T)):
        out.append(("(3,1)", BL, BR, BL @ uu, BR @ uu, sign * (BL @ BR.T)))
    return group, out


def handbuilt(group, circuits, pad: int = 0, seed: int = 0):
    """A GroupMLP (d_embed = order, identity embeddings, so w_l = W[:order]) realising the circuits exactly (in
    float32), `pad` extra zero neurons, and its Explanation."""
    n = group.order
    cols_l, cols_r, rows_u, assign = [], [], [], []
    for c, (name, BL, BR, ell, r, U) in enumerate(circuits):
        rep = irrep_by_name(group, name)
        sl, _ = rho_set_action(rep.matrices, BL)
        sr, _ = rho_set_action(rep.matrices, BR)
        orbit_id = diagonal_orbits(sl, sr)
        U = (
            torch.zeros(int(orbit_id.max()) + 1, dtype=torch.float64).index_add_(0, orbit_id.flatten(), U.flatten())[
                orbit_id
            ]
            / torch.bincount(orbit_id.flatten()).double()[orbit_id]
        )
        for a in range(len(BL)):
            for b in range(len(BR)):
                assign.append([c, len(cols_l), a, b])
                cols_l.append(ell[sl[group.inverse, a]])
                cols_r.append(r[sr[:, b]])
                rows_u.append(U[sl[group.inverse, a], b])
    m = len(cols_l) + pad
    cfg = GroupMLPConfig(group=group.name, d_embed=n, d_hidden=m, seed=seed)
    model = GroupMLP(cfg)
    with torch.no_grad():
        model.embed_left.copy_(torch.eye(n))
        model.embed_right.copy_(torch.eye(n))
        W = torch.zeros(2 * n, m)
        W[:n, : len(cols_l)] = torch.stack(cols_l, 1).float()
        W[n:, : len(cols_l)] = torch.stack(cols_r, 1).float()
        model.W.copy_(W)
        WU = torch.zeros(m, n)
        WU[: len(rows_u)] = torch.stack(rows_u).float()
        model.W_U.copy_(WU)
    k = len(assign)
    expl = Explanation(
        group=group.name,
        irreps=[],
        power_l=torch.zeros(0, m, dtype=torch.float64),
        power_r=torch.zeros(0, m, dtype=torch.float64),
        power_u=torch.zeros(0, m, dtype=torch.float64),
        neuron_irrep=torch.zeros(m, dtype=torch.long),
        coset_left_order=torch.ones(m, dtype=torch.long),
        coset_right_order=torch.ones(m, dtype=torch.long),
        circuit_irrep=[c[0] for c in circuits],
        left_sets=[c[1].tolist() for c in circuits],
        right_sets=[c[2].tolist() for c in circuits],
        u=[[0.0] * c[1].shape[1] for c in circuits],
        ell=[c[3].tolist() for c in circuits],
        r=[c[4].tolist() for c in circuits],
        U=[c[5].tolist() for c in circuits],
        assign=torch.tensor(assign, dtype=torch.long).reshape(-1, 4),
        lam=torch.ones(k, dtype=torch.float64),
        share=torch.ones(k, dtype=torch.float64),
    )
    return model.eval(), expl
