"""ρ-set circuits: the untrusted search that reads them off a trained `GroupMLP` (`rho_set_circuits`), and the
G-set tools it shares with the verifier (orbits, the permutation action σ, diagonal orbits, `fit_circuit`).

**ρ-set circuits (what `explain` extracts; derived and checked here, the paper's equations being unreadable).**
On trained models the Fourier coefficient of each neuron's w_l in its irrep ρ is rank one, a_i uᵀ, with u shared
by a cluster of neurons (one cluster per irrep on S4, several on S5), and w_r's is u b_iᵀ: w_l^i(x) ≈ a_iᵀρ(x)u,
w_r^i(y) ≈ uᵀρ(y)b_i, w_u^i(z) ≈ γ_i a_iᵀρ(z)b_i, with a_i, b_i from finite ρ-sets (orbits; ρ(g)B = B). On S4 the
left and right ρ-sets are different orbits (a in the tetrahedron T pairs with b in -T). For G-sets B_l, B_r
(permuted by σ), any ℓ on B_l, r on B_r and any U on B_l × B_r invariant under the diagonal action, the network
whose neurons (a, b) ∈ B_l × B_r have
    w̃_l(x) = λ ℓ(σ_{x⁻¹} a),   w̃_r(y) = λ r(σ_y b),   w̃_u(z) = U(σ_{z⁻¹} a, b) / λ        (λ > 0 per neuron)
computes exactly f̃(z | x, y) = Φ(x⁻¹ ⋆ z ⋆ y⁻¹) with
    Φ(g) = Σ_{a ∈ B_l, b ∈ B_r} U(σ_{g⁻¹} a, b) · ReLU(ℓ(a) + r(b))
(substitute a = σ_x a', b = σ_{y⁻¹} b'). The trained case is ℓ(a) = aᵀu, r(b) = uᵀb, U ∝ aᵀb; `fit_circuit`
fits ℓ, r, U, λ and the readout shares by least squares instead. `verify.rho_set` proves accuracy from this;
here the untrusted search reads it all off the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.proofs.groups.fourier import fourier_transform
from tl_tensorsim.proofs.groups.groups import Group
from tl_tensorsim.proofs.groups.irreps import irreps

__all__ = ["diagonal_orbits", "fit_circuit", "orbit", "rho_set_action", "rho_set_circuits"]


def orbit(matrices: Float[Tensor, "order d d"], v: Float[Tensor, " d"], tol: float = 1e-6) -> Float[Tensor, "k d"]:
    """The distinct vectors ρ(g) v (float64 `[k, d]`, in order of first appearance; within `tol` counts as equal)."""
    out: list[Tensor] = []
    for w in torch.einsum("gij,j->gi", matrices, v.to(matrices.dtype)):
        if not any(float((w - x).norm()) < tol for x in out):
            out.append(w)
    return torch.stack(out)


def rho_set_action(matrices: Tensor, B: Tensor) -> tuple[Int[Tensor, "order k"], float]:
    """σ[g, a] = index of the vector of B nearest ρ(g) B[a], and the largest distance (the closure error)."""
    moved = torch.einsum("gij,kj->gki", matrices, B)  # [order, k, d]
    dist = torch.cdist(moved, B[None].expand(len(matrices), -1, -1))  # [order, k, k]
    best = dist.min(-1)
    return best.indices, float(best.values.max())


def diagonal_orbits(sig_l: Tensor, sig_r: Tensor) -> Tensor:
    """Labels `[k_l, k_r]` of the orbits of G acting on pairs by (a, b) -> (σ_l(g)a, σ_r(g)b)."""
    label = torch.full((sig_l.shape[1], sig_r.shape[1]), -1, dtype=torch.long)
    n = 0
    for a in range(sig_l.shape[1]):
        for b in range(sig_r.shape[1]):
            if label[a, b] < 0:
                label[sig_l[:, a], sig_r[:, b]] = n
                n += 1
    return label


def fit_circuit(
    group: Group,
    sig_l: Tensor,
    sig_r: Tensor,
    w: tuple[Tensor, Tensor, Tensor],
    ka: Tensor,
    kb: Tensor,
    lam: Tensor,
    rounds: int = 4,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Least-squares idealised values of one circuit (untrusted search): ℓ `[k_l]`, r `[k_r]`, U `[k_l, k_r]`
    (constant on diagonal orbits), neuron scales λ and readout coefficients c (`[n]`) minimising
    Σ (w_l[x,j] - λ_j ℓ(σ_{x⁻¹}a_j))² + Σ (w_r[y,j] - λ_j r(σ_y b_j))² and Σ (w_u[j,z] - c_j U(σ_{z⁻¹}a_j, b_j))²
    by alternation. `w` = the members' (w_l `[order, n]`, w_r `[order, n]`, w_u `[n, order]`)."""
    wl, wr, wu = w
    inv = group.inverse
    kl, kr = sig_l.shape[1], sig_r.shape[1]
    il = sig_l[inv][:, ka]  # [order, n]: σ_{x⁻¹} a_j
    ir = sig_r[:, kb]  # [order, n]: σ_y b_j
    orbit_id = diagonal_orbits(sig_l, sig_r)
    iu = orbit_id[sig_l[inv][:, ka], kb[None, :]].T  # [n, order(z)]
    n_orb = int(orbit_id.max()) + 1
    lam = lam.clone()
    c = torch.ones_like(lam)
    for _ in range(rounds):
        ell = torch.zeros(kl, dtype=torch.float64).index_add_(0, il.flatten(), (wl * lam).flatten())
        ell = ell / torch.zeros(kl, dtype=torch.float64).index_add_(
            0, il.flatten(), (lam**2).expand_as(wl).flatten()
        ).clamp_min(1e-300)
        r = torch.zeros(kr, dtype=torch.float64).index_add_(0, ir.flatten(), (wr * lam).flatten())
        r = r / torch.zeros(kr, dtype=torch.float64).index_add_(
            0, ir.flatten(), (lam**2).expand_as(wr).flatten()
        ).clamp_min(1e-300)
        pl, pr = ell[il], r[ir]
        lam = ((wl * pl).sum(0) + (wr * pr).sum(0)) / ((pl**2).sum(0) + (pr**2).sum(0)).clamp_min(1e-300)
        uo = torch.zeros(n_orb, dtype=torch.float64).index_add_(0, iu.flatten(), (wu * c[:, None]).flatten())
        uo = uo / torch.zeros(n_orb, dtype=torch.float64).index_add_(
            0, iu.flatten(), (c[:, None] ** 2).expand_as(wu).flatten()
        ).clamp_min(1e-300)
        pu = uo[iu]
        # c_j = argmin Σ_j ‖w_u[j] - c_j U_j‖² subject to Σ_{j in pair P} λ_j c_j = 1 (Lagrange, per pair)
        A = (pu**2).sum(1).clamp_min(1e-300)
        Bc = (wu * pu).sum(1)
        pair = ka * kr + kb
        num = torch.zeros(kl * kr, dtype=torch.float64).index_add_(0, pair, lam * Bc / A)
        den = torch.zeros(kl * kr, dtype=torch.float64).index_add_(0, pair, lam**2 / A).clamp_min(1e-300)
        mu = (1 - num) / den
        c = (Bc + mu[pair] * lam) / A
    return ell, r, uo[orbit_id], lam.clamp_min(1e-12), c


def rho_set_circuits(
    group: Group,
    wl: Tensor,
    wr: Tensor,
    wu: Tensor,
    neuron_irrep: Tensor,
    min_neurons: int = 4,
    cos: float = 0.95,
    min_fill: float = 0.25,
) -> dict[str, Any]:
    """The untrusted search for ρ-set circuits (module docstring). Per non-trivial irrep, the neurons assigned to
    it are clustered by their own u (cosine `cos`, up to sign); per cluster of at least `min_neurons` neurons: the
    shared u (top right singular vector of the stacked w_l and w_rᵀ coefficients),
    each neuron's a_i, b_i (w_l^i ≈ a_iᵀρ(x)u, w_r^i ≈ uᵀρ(y)b_i), the orbits ρ(G)v of the directions used by two
    or more neurons (the ρ-sets), and the neurons whose a_i, b_i lie within cosine `cos` of vectors of orbits
    O_l, O_r; each block O_l × O_r with at least `min_neurons` neurons that fill at least `min_fill` of its pairs
    or are most of the cluster becomes a circuit (left ρ-set O_l, right ρ-set O_r). Neuron scale
    λ_i = (|a_i| + |b_i|)/2, share γ_i λ_i (w_u^i ≈ γ_i a_iᵀρ(z)b_i)."""
    reps = irreps(group)
    keys = ("circuit_irrep", "left", "right", "u", "ell", "r", "U", "assign", "lam", "share", "err")
    out: dict[str, Any] = {k: [] for k in keys}
    for k, rep in enumerate(reps):
        idx = (neuron_irrep == k).nonzero()[:, 0]
        if rep.name in ("trivial", f"({group.degree})") or len(idx) < min_neurons:
            continue
        d, n = rep.dim, group.order
        fl = fourier_transform(wl[:, idx], group)[rep.name] * d / n  # [n_i, d, d] ≈ a_i uᵀ
        fr = fourier_transform(wr[:, idx], group)[rep.name] * d / n  # ≈ u b_iᵀ
        # each neuron's own u (top right singular vector of [a uᵀ; (u bᵀ)ᵀ]), clustered up to sign
        own = torch.linalg.svd(torch.cat([fl, fr.transpose(1, 2)], 1))[2][:, 0]  # [n_i, d]
        clusters: list[list[int]] = []
        for i, v in enumerate(own):
            for cl in clusters:
                if abs(float(v @ own[cl[0]])) > cos:
                    cl.append(i)
                    break
            else:
                clusters.append([i])
        for cl in clusters:
            if len(cl) < min_neurons:
                continue
            sub = torch.tensor(cl)
            _circuits_of_cluster(
                group, rep, idx[sub], (fl[sub], fr[sub]), (wl, wr, wu), (min_neurons, cos, min_fill), out
            )
    return out


def _circuits_of_cluster(group, rep, idx, coefficients, tables, thresholds, out) -> None:
    """The circuits of one cluster of neurons sharing u (appended to `out`): `coefficients` = the members' Fourier
    coefficients (fl, fr), `tables` = (w_l, w_r, w_u), `thresholds` = (min_neurons, cos, min_fill)."""
    (fl, fr), (wl, wr, wu), (min_neurons, cos, min_fill) = coefficients, tables, thresholds
    d = rep.dim
    u = torch.linalg.svd(torch.cat([fl.reshape(-1, d), fr.transpose(1, 2).reshape(-1, d)]))[2][0]
    a, b = fl @ u, fr.transpose(1, 2) @ u  # [n_i, d]
    an, bn = a / a.norm(dim=1, keepdim=True).clamp_min(1e-300), b / b.norm(dim=1, keepdim=True).clamp_min(1e-300)
    orbits = _orbits_of_directions(rep.matrices, torch.cat([an, bn]), cos)
    if not orbits:
        return
    lam = (a.norm(dim=1) + b.norm(dim=1)) / 2
    la, ka = _nearest(orbits, an, cos)
    lb, kb = _nearest(orbits, bn, cos)
    for i_orb, orb_l in enumerate(orbits):
        for j_orb, orb_r in enumerate(orbits):
            members = ((la == i_orb) & (lb == j_orb)).nonzero()[:, 0]
            # a block filled to min_fill, or holding most of the cluster (A5's icosahedral circuits are sparse:
            # 33 of a cluster's 53 neurons on 12 x 12 pairs)
            filled = len(members) >= min_fill * len(orb_l) * len(orb_r) or 2 * len(members) > len(idx)
            if len(members) < min_neurons or not filled:
                continue
            sig_l, _ = rho_set_action(rep.matrices, orb_l)
            sig_r, _ = rho_set_action(rep.matrices, orb_r)
            cols = idx[members]
            ell, r, U, lam_fit, coef = fit_circuit(
                group, sig_l, sig_r, (wl[:, cols], wr[:, cols], wu[cols]), ka[members], kb[members], lam[members]
            )
            c = len(out["circuit_irrep"])
            out["circuit_irrep"].append(rep.name)
            out["left"].append(orb_l.tolist())
            out["right"].append(orb_r.tolist())
            out["u"].append(u.tolist())
            out["ell"].append(ell.tolist())
            out["r"].append(r.tolist())
            out["U"].append(U.tolist())
            for t, i in enumerate(members.tolist()):
                out["assign"].append([c, int(idx[i]), int(ka[i]), int(kb[i])])
                out["lam"].append(float(lam_fit[t]))
                out["share"].append(float(coef[t] * lam_fit[t]))
            out["err"].append(max(_closure(rep.matrices[group.generators], o) for o in (orb_l, orb_r)))


def _closure(gens: Tensor, B: Tensor) -> float:
    """max over generators s and vectors a of the distance from ρ(s)a to the nearest vector of B."""
    moved = torch.einsum("gij,kj->gki", gens, B)
    return float((moved[:, :, None] - B[None, None]).norm(dim=-1).amin(-1).max())


def _orbits_of_directions(matrices: Tensor, dirs: Tensor, cos: float, max_size: int = 64) -> list[Tensor]:
    """Orbits ρ(G)v of the unit directions `dirs` shared by two or more rows (greedy clustering at cosine `cos`),
    most used first; an orbit already covered is skipped, orbits larger than `max_size` are dropped."""
    reps_dirs: list[Tensor] = []
    counts: list[int] = []
    for v in dirs:
        for j, r in enumerate(reps_dirs):
            if float(v @ r) > cos:
                counts[j] += 1
                break
        else:
            reps_dirs.append(v)
            counts.append(1)
    orbits: list[Tensor] = []
    for v, c in sorted(zip(reps_dirs, counts), key=lambda t: -t[1]):
        if c < 2 or any(float((o @ v).max()) > cos for o in orbits):
            continue
        near = torch.einsum("gij,j->gi", matrices, v) @ v > cos  # the approximate stabiliser of v
        v = matrices[near].sum(0) @ v  # averaged over it: fixed exactly when `near` is a subgroup
        v = v / v.norm().clamp_min(1e-300)
        orb = orbit(matrices, v, tol=1e-3)
        if len(orb) <= max_size:
            orbits.append(orb / orb.norm(dim=1, keepdim=True))
    return orbits


def _nearest(orbits: list[Tensor], dirs: Tensor, cos: float) -> tuple[Tensor, Tensor]:
    """For each unit direction: (orbit index or -1, index within the orbit) of the nearest ρ-set vector."""
    best = torch.full((len(dirs),), -cos, dtype=torch.float64)
    lab = torch.full((len(dirs),), -1, dtype=torch.long)
    pos = torch.zeros(len(dirs), dtype=torch.long)
    for j, o in enumerate(orbits):
        sim = (dirs @ o.T).max(1)
        better = sim.values > torch.maximum(best, torch.full_like(best, cos))
        best = torch.where(better, sim.values, best)
        lab = torch.where(better, j, lab)
        pos = torch.where(better, sim.indices, pos)
    return lab, pos
