"""Certified accuracy bounds for `GroupMLP`s over all |G|² pairs (arXiv 2410.07476), float64 ball arithmetic
(`tl_tensorsim.proofs.certified`): brute force, and the ρ-set proof built on `explain.Explanation`.

**The model's exact function.** The float32 weights are read exactly; w_l = embed_left @ W[:d], w_r, and the
logits f(z | x, y) = Σ_i w_u[i, z] ReLU(w_l[x, i] + w_r[y, i]) are enclosed in balls, so a pair counts as correct
only when its certified margin (correct logit minus the largest other) is positive.

**ρ-set proof (`rho_set`).** Per circuit c of the explanation: the irrep ρ_c (taken from `irreps(group)` by name),
a left and a right ρ-set B_l, B_r, the values ℓ on B_l, r on B_r, U on B_l × B_r, and neurons assigned to pairs
(a, b) with scales λ > 0 and shares. The verifier (trusting nothing it does not check):
1. computes σ(g) = the permutation of each ρ-set by ρ_c(g) (nearest vector), and checks **exactly, in integers**
   that σ is an action: σ(s ⋆ g) = σ(s)∘σ(g) for every generator s and every g (then by induction for all g), and
   that every σ(g) is a bijection; it records the closure error max ‖ρ(s)B - B_σ‖. A circuit failing a check is
   dropped (its neurons count as unexplained). A neuron claimed twice keeps its first claim.
2. defines the idealised network (explain.py's docstring): U averaged over each orbit of the diagonal action (so
   it is exactly invariant); neuron j at pair (a, b) with w̃_l(x) = λ_j ℓ(σ_{x⁻¹}a), w̃_r(y) = λ_j r(σ_y b),
   w̃_u(z) = U(σ_{z⁻¹}a, b)·share_j/(λ_j Σ_{pair} share) (balls enclose these reals, so the shares sum to exactly
   one per pair); pairs without a neuron are virtual neurons whose real weights are 0; unassigned real neurons have
   idealised weights 0. Then f̃(z | x, y) = Φ(x⁻¹ ⋆ z ⋆ y⁻¹) exactly, with
   Φ(g) = Σ_c Σ_{a,b} U_c(σ_c(g⁻¹)a, b) ReLU(ℓ_c(a) + r_c(b)): |G| evaluations of Σ_c k_c² terms.
3. idealised margin m̃ = Φ(e) - max_{g ≠ e} Φ(g), the same for every input (the correct answer z = x ⋆ y is where
   x⁻¹ ⋆ z ⋆ y⁻¹ = e).
4. deviation: for the correct z* and any z, with Δ = real - idealised weights,
   (f - f̃)(z*) - (f - f̃)(z) = Σ_i (w_u[i,z*] - w_u[i,z])(ReLU(p_i) - ReLU(p̃_i)) + Σ_i (Δ_u[i,z*] - Δ_u[i,z]) ReLU(p̃_i)
   <= Σ_i c_i (|Δ_l[x,i]| + |Δ_r[y,i]|) + Σ_c Σ sorted(D_c)·sorted(R_c) =: L(x) + R(y) + K,
   c_i = range_z w_u[i, z] (ReLU is 1-Lipschitz), D_c[P] = Σ_{j in pair P} λ_j range_z Δu_j (virtual pairs:
   range_z U(σ_{z⁻¹}a, b)), R_c = ReLU(ℓ_c(a) + r_c(b)): for every input the p̃_j/λ_j of a circuit are a
   permutation of R_c's entries, so the rearrangement inequality bounds the sum.
5. (x, y) is certified when m̃ > L(x) + R(y) + K (certified lower / upper bounds). Since the ranges are at most
   twice the largest deviation of one logit, this is the "margin > 2 × deviation" rule with a per-neuron
   left/right split. Cost: |G|·Σ_c k_c² for Φ, O(|G|·m) for L, R and the ranges, O(|G|²) to combine; brute force
   costs O(|G|²·m·|G|). `deviation="pairwise"` evaluates the inequality of step 4 before the split, per pair:
   Σ_i c_i |ReLU(p_i) - ReLU(p̃_i)| + Σ_i range_z(Δu_i)·ReLU(p̃_i) (virtual neurons included), O(|G|²·m).
A wrong explanation only makes m̃ smaller or the deviations larger, so the bound stays sound.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from tl_tensorsim.checks import check_choice, checked_int
from tl_tensorsim.proofs.certified import EPS, Ball, add_flops, column_radius, count_flops, norm_matmul
from tl_tensorsim.proofs.groups.explain import Explanation, check_explanation, model_group
from tl_tensorsim.proofs.groups.fourier_bound import fourier_slack
from tl_tensorsim.proofs.groups.irreps import irrep_by_name
from tl_tensorsim.proofs.groups.lowrank import explanation_rank, lowrank_slack
from tl_tensorsim.proofs.groups.pairs import hidden_bounds, hidden_rows
from tl_tensorsim.proofs.groups.rho_sets import diagonal_orbits, rho_set_action
from tl_tensorsim.proofs.result import ProofResult
from tl_tensorsim.training import limit_threads

__all__ = [
    "Deviation",
    "Idealised",
    "brute_force",
    "certified_margins",
    "certified_tables",
    "check_action",
    "rho_set",
]

CLASS_AXES = ("x", "y")
Deviation = Literal["split", "pairwise", "lowrank", "fourier"]
Idealised = Literal["fit", "rho_set"]


def certified_tables(model: Any) -> tuple[Any, Ball, Ball, Ball]:
    """The group and balls enclosing the exact folded tables w_l, w_r `[order, m]` and w_u `[m, order]`."""
    group = model_group(model)
    d = model.cfg.d_embed
    with torch.no_grad():
        w = Ball.exact(model.W.detach().cpu())
        wl = norm_matmul(model.embed_left.detach().cpu(), w[:d])
        wr = norm_matmul(model.embed_right.detach().cpu(), w[d:])
        wu = Ball.exact(model.W_U.detach().cpu())
    return group, wl, wr, wu


def _result(strategy, certified, start, flops, model, settings, search_time=0.0, margin=None) -> ProofResult:
    n = int(certified.sum())
    return ProofResult(
        strategy=strategy,
        bound=n / certified.numel(),
        n_certified=n,
        n_inputs=certified.numel(),
        wall_time=time.perf_counter() - start,
        flops=flops.value,
        flops_bounds=flops.bounds,
        certified=certified,
        class_axes=CLASS_AXES,
        search_time=search_time,
        margin=margin,
        model_name=getattr(model.cfg, "model_name", ""),
        settings=settings,
    )


def brute_force(model: Any, threads: int | None = 1) -> ProofResult:
    """Exact accuracy over all |G|² pairs: the logits of every pair in certified float64 (module docstring);
    `certified` bool `[order, order]` marks the pairs (x, y) whose certified margin is > 0, `margin` float64
    `[order, order]` its lower bound. Cost O(|G|²·m·|G|) (counted FLOPs and seconds)."""
    start = time.perf_counter()
    with count_flops() as flops, limit_threads(threads):
        group, wl, wr, wu = certified_tables(model)
        margin = certified_margins(group.table, wl, wr, wu)
        certified = margin > 0
    return _result("brute_force", certified, start, flops, model, {}, margin=margin)


def certified_margins(table: Tensor, wl: Ball, wr: Ball, wu: Ball) -> Tensor:
    """Lower bounds (float64 `[order, order]`) of the margins f(x⋆y | x, y) - max_{z ≠ x⋆y} f(z | x, y) of the
    network ReLU(wl[x] + wr[y]) @ wu given by the balls wl, wr `[order, m]`, wu `[m, order]`; `table[x, y]` the
    correct class. Float64 products `[order, m] @ [m, rows]` on midpoints, block by block of x (`hidden_rows`, as
    the Fourier check reads its pairs), with per-column error bounds (`column_radius`: the hidden values' radius
    and the dot products' rounding), then the margins rounded outward. Cost 2·|G|²·m·|G| + O(|G|³)."""
    n, m = wl.shape
    colrad, colabs = hidden_bounds(wl, wr)
    rad = column_radius(colrad, colabs, wu)[0][:, None]  # [n(z), 1]
    wu_t = wu.mid.T.contiguous()
    margin = torch.empty(n * n, dtype=torch.float64)
    for xs, h in hidden_rows(wl.mid, wr.mid):
        rows = (xs.stop - xs.start) * n
        logits = wu_t @ h.T  # [n(z), rows]: ReLU is exact and 1-Lipschitz
        label = table[xs].reshape(1, rows)
        right = logits.gather(0, label)[0] - rad[label[0], 0]
        others = logits.add_(rad).scatter_(0, label, -torch.inf).amax(0)
        margin[xs.start * n : xs.stop * n] = (
            right - others - EPS * (right.abs() + others.abs() + (right - others).abs())
        )
    add_flops(2 * n * n * m * (n + 1) + 4 * n**3)
    return (margin - 2.0**-1000).reshape(n, n)


def check_action(sigma: Int[Tensor, "order k"], table: Tensor, generators: list[int]) -> bool:
    """Exact integer check that σ is a group action on {0..k-1}: each σ(g) a bijection, σ(e) = id (g = identity
    row 0 of the sorted elements is not assumed: the identity is where table[g, g] = g), and
    σ(s ⋆ g)[a] = σ(s)[σ(g)[a]] for every generator s and every g."""
    k = sigma.shape[1]
    if not bool((torch.sort(sigma, 1).values == torch.arange(k)).all()):
        return False
    e = int((table.diagonal() == torch.arange(len(table))).nonzero()[0, 0])
    if not bool((sigma[e] == torch.arange(k)).all()):
        return False
    for s in generators:
        if not bool((sigma[table[s]] == sigma[s][sigma]).all()):
            return False
    return True


def rho_set(
    model: Any,
    explanation: Explanation,
    deviation: Deviation = "split",
    threads: int | None = 1,
    rank: int | str = "auto",
    phi: Idealised = "fit",
) -> ProofResult:
    """The ρ-set proof (module docstring): `certified` bool `[order, order]`, bound = its mean; `settings` holds
    the idealised margin, the circuits kept and dropped, the closure errors and the deviation constant K.

    `deviation`: "split" (step 4: L(x) + R(y) + K, O(|G|·m) + O(|G|²)), "pairwise": per pair (x, y) the exact
    Σ_i c_i |ReLU(p_i) - ReLU(p̃_i)| + Σ_i range_z(Δu_i) ReLU(p̃_i) over real and virtual neurons (the same
    inequality before its split; O(|G|²·m), still |G| times below brute force), or "lowrank" (`lowrank_slack`):
    the idealised gap Φ(e) - Φ(x⁻¹zy⁻¹) per z plus the readout deviation split as A·B + Res, (v·A)·B exact and
    Res bounded, O(|G|²·M'·r + |G|³·r). `rank` (lowrank only): r >= 0, or "auto": Σ d_ρ² over the explanation's
    irreps (`explanation_rank`), capped so that the check costs at most half of brute force; or "fourier"
    (`fourier_bound`): per pair the logits' matrix coefficients in the explanation's irreps against an idealised
    Φ̂ (Cauchy–Schwarz per irrep, per conjugacy class of x⁻¹zy⁻¹) plus a per-neuron bound on the rest of the readout,
    O(|G|²·m·(Σ d² + 1)), no |G|² x |G| table. `phi` (fourier only): "fit", the explanation's fitted Φ̂
    (`Explanation.idealised_readout`; the ρ-set circuits are then not needed), or "rho_set", the Fourier
    coefficients of the verified ρ-set network's Φ in the kept circuits' irreps."""
    check_choice(deviation, Deviation, "deviation")
    check_choice(phi, Idealised, "phi")
    if rank != "auto":
        rank = checked_int(rank, "rank", 0, "an integer >= 0 or 'auto'")
    check_explanation(model, explanation)
    if deviation == "fourier" and phi == "fit":
        return _fourier(model, explanation, threads)
    start = time.perf_counter()
    with count_flops() as flops, limit_threads(threads):
        group, wl, wr, wu = certified_tables(model)
        n, m = group.order, wl.shape[1]
        inv = group.inverse
        ideal_l = torch.zeros(n, m, dtype=torch.float64)
        ideal_l = Ball(ideal_l)
        ideal_r, ideal_u = Ball(torch.zeros(n, m, dtype=torch.float64)), Ball(torch.zeros(m, n, dtype=torch.float64))
        phi_values = Ball(torch.zeros(n, dtype=torch.float64))  # Φ(g)
        K = Ball(torch.zeros((), dtype=torch.float64))
        used = torch.zeros(m, dtype=torch.bool)
        kept, dropped, closure, k_parts = [], [], [], []
        d_real = torch.zeros(m, dtype=torch.float64)  # range_z Δu_i of the assigned real neurons (upper bounds)
        virt_l: list[Tensor] = []  # per circuit: ℓ(σ_{x⁻¹}a) [n, virtual pairs], r(σ_y b), range_z U
        virt_r: list[Tensor] = []
        virt_d: list[Tensor] = []
        virt_u: list[Tensor] = []  # per circuit: the virtual neurons' w̃_u = U(σ_{z⁻¹}a, b) [n(z), virtual pairs]
        for c, name in enumerate(explanation.circuit_irrep):
            try:
                rep = irrep_by_name(group, name)
                BL, BR = explanation.rho_sets(c)
                if BL.ndim != 2 or BR.ndim != 2 or BL.shape[1] != rep.dim or BR.shape[1] != rep.dim:
                    raise ValueError("shape")
            except (ValueError, TypeError):
                dropped.append(c)
                continue
            sig_l, err_l = rho_set_action(rep.matrices, BL)
            sig_r, err_r = rho_set_action(rep.matrices, BR)
            closure.append(max(err_l, err_r))
            if not (
                check_action(sig_l, group.table, group.generators)
                and check_action(sig_r, group.table, group.generators)
            ):
                dropped.append(c)
                continue
            kl, kr = len(BL), len(BR)
            sel = explanation.assign[:, 0] == c
            owner: dict[tuple[int, int], list[tuple[int, float, float]]] = {}
            for (_, i, a, b), lam, share in zip(
                explanation.assign[sel].tolist(), explanation.lam[sel].tolist(), explanation.share[sel].tolist()
            ):
                if 0 <= i < m and not used[i] and 0 <= a < kl and 0 <= b < kr and lam > 0:
                    owner.setdefault((a, b), []).append((i, lam, share))
                    used[i] = True
            kept.append(c)
            # the explanation's ℓ, r, U (float64 numbers that define the idealised model exactly)
            ell = torch.tensor(explanation.ell[c], dtype=torch.float64)
            r = torch.tensor(explanation.r[c], dtype=torch.float64)
            gram = torch.tensor(explanation.U[c], dtype=torch.float64)
            if ell.shape != (kl,) or r.shape != (kr,) or gram.shape != (kl, kr):
                kept.pop()
                dropped.append(c)
                for _, i, _, _ in explanation.assign[sel].tolist():
                    if 0 <= i < m:
                        used[i] = False
                continue
            orbit_id = diagonal_orbits(sig_l, sig_r)
            sums = torch.zeros(int(orbit_id.max()) + 1, dtype=torch.float64)
            sums.index_add_(0, orbit_id.flatten(), gram.flatten())
            U = (sums / torch.bincount(orbit_id.flatten()).double())[orbit_id]  # exactly invariant
            R = (Ball.exact(ell)[:, None] + Ball.exact(r)[None, :]).relu()  # [kl, kr]: ReLU(ℓ(a) + r(b))
            sig_inv = sig_l[inv]  # [n, kl]: σ_{g⁻¹} on the left ρ-set
            # Φ_c(g) = Σ_{a,b} U[σ_{g⁻¹}a, b] R[a, b]
            terms_c = Ball.exact(U[sig_inv]) * R.map(lambda t: t[None].expand(n, -1, -1))  # [n, kl, kr]
            phi_values = phi_values + terms_c.sum(2).sum(1)
            # per pair slot P = (a, b): D_P = Σ_{j in P} λ_j range_z Δu_j; virtual slots (no neuron): range_z U(σ_{z⁻¹}a, b)
            uz_all = Ball.exact(U[sig_inv])  # [n(z), kl, kr]
            D = (uz_all.amax(0) - uz_all.amin(0)).map(lambda t: t.flatten())  # [kl·kr]
            rows = [(i, a, b, lam, sh) for (a, b), js in owner.items() for i, lam, sh in js]
            real = torch.zeros(kl * kr, dtype=torch.bool)
            if rows:
                idx_t = torch.tensor([t[0] for t in rows])
                a_t, b_t = torch.tensor([t[1] for t in rows]), torch.tensor([t[2] for t in rows])
                lam_b = Ball.exact(torch.tensor([t[3] for t in rows], dtype=torch.float64))
                share_t = torch.tensor([t[4] for t in rows], dtype=torch.float64)
                pair = a_t * kr + b_t
                onehot = torch.zeros(kl * kr, len(rows), dtype=torch.float64)
                onehot[pair, torch.arange(len(rows))] = 1.0
                total = Ball.exact(onehot) @ Ball.exact(share_t)  # encloses each pair's exact Σ share
                ok = (total.mid.abs() > total.rad)[pair]  # a pair whose total may be 0 is left virtual
                for i in idx_t[~ok].tolist():
                    used[i] = False
                keep = ok.nonzero()[:, 0]
                if len(keep):
                    idx_t, a_t, b_t, pair = idx_t[keep], a_t[keep], b_t[keep], pair[keep]
                    lam_b, share_t = lam_b[keep], share_t[keep]
                    ideal_l = _put(ideal_l, idx_t, lam_b.map(lambda t: t[None]) * Ball.exact(ell[sig_inv[:, a_t]]))
                    ideal_r = _put(ideal_r, idx_t, lam_b.map(lambda t: t[None]) * Ball.exact(r[sig_r[:, b_t]]))
                    coef = Ball.exact(share_t) / (lam_b * total[pair])  # [nj]: Σ_{j in P} λ_j coef_j = 1 exactly
                    wt_u = Ball.exact(U[sig_inv[:, a_t], b_t]) * coef.map(lambda t: t[None])  # [n(z), nj]
                    ideal_u = _put(ideal_u, idx_t, wt_u.T, row=True)
                    du = wu[idx_t] - wt_u.T  # [nj, n(z)]
                    spread = du.amax(1) - du.amin(1)  # [nj]: range_z Δu_j
                    d_real[idx_t] = spread.upper()
                    slot = Ball.exact(onehot[:, keep]) @ (lam_b * spread)  # [kl·kr]
                    real[pair] = True
                    D = Ball(torch.where(real, slot.mid, D.mid), torch.where(real, slot.rad, D.rad))
            virtual = (~real).nonzero()[:, 0]
            virt_l.append(ell[sig_inv[:, virtual // kr]])
            virt_r.append(r[sig_r[:, virtual % kr]])
            virt_d.append(D.upper()[virtual])
            virt_u.append(U[sig_inv][:, virtual // kr, virtual % kr])
            # Σ_P D_P R[π(P)] over a bijection π <= Σ sorted(D)·sorted(R) (rearrangement inequality)
            d_up = D.upper().flatten().sort(descending=True).values
            r_up = R.upper().flatten().sort(descending=True).values
            K = K + Ball.exact(d_up) @ Ball.exact(r_up)
            k_parts.append(float((Ball.exact(d_up) @ Ball.exact(r_up)).upper()))
        dl, dr, du_all = wl - ideal_l, wr - ideal_r, wu  # Δ_l, Δ_r [n, m]; c_i from the real w_u
        c_range = (du_all.amax(1) - du_all.amin(1)).upper()  # [m]
        L = dl.abs() @ c_range  # [n]
        Rr = dr.abs() @ c_range  # [n]
        e = group.identity
        others = torch.cat([phi_values.mid[:e], phi_values.mid[e + 1 :]])
        rad_others = torch.cat([phi_values.rad[:e], phi_values.rad[e + 1 :]])
        margin_ideal = phi_values[e] - Ball(others, rad_others).amax(0)
        terms: dict[str, float] = {}
        if deviation == "split":
            dev = L.map(lambda t: t[:, None].expand(n, n)) + Rr.map(lambda t: t[None, :].expand(n, n)) + K
            slack = margin_ideal.lower() - dev.upper()
        elif deviation == "fourier":
            names = dict.fromkeys(explanation.circuit_irrep[c] for c in kept)
            phi_hat = {k: torch.einsum("g,gjk->jk", phi_values.mid, irrep_by_name(group, k).matrices) for k in names}
            slack, terms = fourier_slack(group, (wl, wr, wu), phi_hat, explanation.hidden_centre())
        elif deviation == "pairwise":
            dev, terms = _pairwise_deviation(wl, wr, ideal_l, ideal_r, c_range, d_real, virt_l, virt_r, virt_d)
            slack = margin_ideal.lower() - dev.upper()
        else:
            virtual_tables = (torch.cat(virt_l, 1), torch.cat(virt_r, 1), torch.cat(virt_u, 1)) if virt_l else None
            if rank == "auto":
                rank = -explanation_rank(group, [explanation.circuit_irrep[c] for c in kept])
            slack, terms = lowrank_slack(
                group, phi_values, (wl, wr, wu), (ideal_l, ideal_r, ideal_u), virtual_tables, rank
            )
        certified = slack > 0
    settings = {
        "ideal_margin": float(margin_ideal.lower()),
        "K": float(K.upper()),
        "K_per_circuit": k_parts,
        "L_mean": float(L.upper().mean()),
        "L_per_neuron": (dl.abs().mid.mean(0) * c_range).tolist(),
        "R_mean": float(Rr.upper().mean()),
        "pairwise_terms_mean": terms if deviation == "pairwise" else {},
        "lowrank": terms if deviation == "lowrank" else {},
        "fourier": terms if deviation == "fourier" else {},
        "circuits_kept": kept,
        "circuits_dropped": dropped,
        "closure_error": closure,
        "neurons_explained": int(used.sum()),
    }
    name = {"split": "rho_set", "pairwise": "rho_set_pairwise", "lowrank": "rho_set_lowrank"}
    name["fourier"] = "rho_set_fourier_rho"  # the ρ-set network's Φ; phi="fit" returns from `_fourier` above
    return _result(name[deviation], certified, start, flops, model, settings, margin=slack)


def _fourier(model: Any, explanation: Explanation, threads: int | None) -> ProofResult:
    """`rho_set(..., deviation="fourier", phi="fit")`: `fourier_slack` against the explanation's fitted Φ̂."""
    start = time.perf_counter()
    with count_flops() as flops, limit_threads(threads):
        group, wl, wr, wu = certified_tables(model)
        slack, terms = fourier_slack(group, (wl, wr, wu), explanation.idealised_readout(), explanation.hidden_centre())
        certified = slack > 0
    return _result("rho_set_fourier", certified, start, flops, model, {"fourier": terms}, margin=slack)


def _pairwise_deviation(wl, wr, ideal_l, ideal_r, c_range, d_real, virt_l, virt_r, virt_d) -> tuple[Ball, dict]:
    """`[order, order]` upper bounds of the logit-difference deviation per pair (rho_set's "pairwise"), and the
    mean of each of its three terms (ReLU differences, real readout deviations, virtual neurons)."""
    n = wl.shape[0]
    x, y = torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
    p, p_ideal = wl[x] + wr[y], ideal_l[x] + ideal_r[y]  # [n², m]
    relu_term = (p.relu() - p_ideal.relu()).abs() @ c_range
    readout_term = p_ideal.relu() @ d_real
    dev = relu_term + readout_term
    terms = {"relu": float(relu_term.mid.mean()), "readout": float(readout_term.mid.mean()), "virtual": 0.0}
    if virt_l:
        vl, vr, vd = torch.cat(virt_l, 1), torch.cat(virt_r, 1), torch.cat(virt_d)
        if vd.numel():
            virtual_term = (Ball.exact(vl)[x] + Ball.exact(vr)[y]).relu() @ vd
            dev = dev + virtual_term
            terms["virtual"] = float(virtual_term.mid.mean())
    return dev.map(lambda t: t.reshape(n, n)), terms


def _put(table: Ball, i: Tensor, values: Ball, row: bool = False) -> Ball:
    """`table` with columns `i` (or rows `i`) replaced by `values` (in place: the tables are private)."""
    if row:
        table.mid[i], table.rad[i] = values.mid, values.rad
    else:
        table.mid[:, i], table.rad[:, i] = values.mid, values.rad
    return table
