"""The low-rank readout deviation of the ρ-set proof (`rho_set(..., deviation="lowrank")`): the real network's
logits differ from the idealised network's by v·M per pair; a low-rank split M = A·B + Res is evaluated exactly
in float64 ball arithmetic and only the residual is bounded, against each wrong answer's own idealised gap.
(`lowrank_slack`; `explanation_rank` picks the rank.)
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.proofs.certified import EPS, Ball, add_flops, cat, column_matmul, gamma
from tl_tensorsim.proofs.groups.irreps import irrep_by_name

__all__ = ["explanation_rank", "lowrank_slack"]


def lowrank_slack(
    group: Any,
    phi: Ball,
    real: tuple[Ball, Ball, Ball],
    ideal: tuple[Ball, Ball, Ball],
    virtual: tuple[Tensor, Tensor, Tensor] | None,
    rank: int,
) -> tuple[Float[Tensor, "order order"], dict[str, Any]]:
    """Certified lower bounds `[order, order]` (x, y) of each pair's real margin from the idealised Φ and a low-rank
    split of the readout (rho_set's `deviation="lowrank"`), and diagnostics.

    With h = ReLU(p), h̃ = ReLU(p̃) per neuron (real neurons, then the virtual ones, whose real weights are 0), the
    real and idealised logits differ by D(z) = f(z) - f̃(z) = v · M[:, z] with v = [h - h̃ ; h̃] per pair and
    M = [w_u ; w_u - w̃_u] (columns where v or M is identically 0 are left out). Any A `[M', r]`, B `[r, order]`
    split M = A·B + Res exactly (Res enclosed in balls), so for the correct z* = x ⋆ y and every z ≠ z*:

        f(z*) - f(z) = [Φ(e) - Φ(x⁻¹ ⋆ z ⋆ y⁻¹)] + (v·A)·(B[:, z*] - B[:, z]) + v·Res[:, z*] - v·Res[:, z]
                    >= [Φ(e) - Φ(x⁻¹zy⁻¹)] + (v·A)·(B[:, z*] - B[:, z]) + v·Res[:, z*]
                       - v·min_z Res - ReLU(v)·(max_z Res - min_z Res)                (max/min per row of Res)

    and the pair's slack is the minimum over z ≠ z* of the right-hand side (certified when > 0). Any A, B give a
    sound bound; B = the top `rank` right singular vectors of M with rows centred and weighted by the RMS of v over
    pairs (untrusted float64 search), A = M·Bᵀ. A negative `rank` -k means "k, capped at m·|G| / (2(M' + |G|))" so
    that the two products cost at most half of brute force (rho_set's "auto", k = `explanation_rank`). `rank` = 0
    keeps only the per-z idealised gap and the residual, never weaker than the pairwise bound (which takes each
    neuron's worst z apart and ranges instead of one-sided maxima). Cost: 2·|G|²·M'·r (v·A) + 2·|G|³·r ((v·A)·B) + O(|G|²·M') + O(|G|³) (gathers, minima), against
    brute force's 2·|G|³·m."""
    wl, wr, wu = real
    il, ir, iu = ideal
    n, m = wl.shape
    inv, e = group.inverse, group.identity
    # pairs ordered by their answer: q = (z*, x), y = x⁻¹ ⋆ z*, so that x ⋆ y = z*
    label = torch.arange(n).repeat_interleave(n)
    x = torch.arange(n).repeat(n)
    y = group.table[inv[x], label]
    h = (wl[x] + wr[y]).relu()  # [n², m]
    explained = (il.mid != 0).any(0) | (il.rad != 0).any(0) | (ir.mid != 0).any(0) | (ir.rad != 0).any(0)
    ht = (il[:, explained][x] + ir[:, explained][y]).relu()  # idealised neurons that can fire
    v_parts, rows = [h - _widen(ht, explained)], [wu]
    v_parts.append(ht)
    rows.append(wu[explained] - iu[explained])
    if virtual is not None and virtual[0].shape[1]:
        vl, vr, vu = virtual
        v_parts.append((Ball.exact(vl)[x] + Ball.exact(vr)[y]).relu())  # [n², virtual]: h̃ (their h = 0)
        rows.append(-Ball.exact(vu.T))  # their Δu = 0 - w̃_u
    v, mat = cat(v_parts, 1), cat(rows, 0)  # [n², M'], [M', n]: D(z) = v @ mat[:, z]
    if rank < 0:
        rank = min(-rank, m * n // (2 * (mat.shape[0] + n)))
    weighted = v.mid.square().mean(0).sqrt()[:, None] * mat.mid
    weighted = weighted - weighted.mean(1, keepdim=True)
    basis = torch.linalg.svd(weighted, full_matrices=False)[2]
    rank = min(rank, len(basis))
    B = basis[:rank]  # [r, n]
    A = mat.mid @ B.T  # [M', r]
    res = mat - Ball.exact(A) @ Ball.exact(B)  # [M', n], encloses M - A·B exactly
    # Σ_k max_z v_k Res[k, z] <= Σ_k max(v_k hi_k, v_k lo_k) = v·lo + ReLU(v)·(hi - lo); one product gives v·A and v·lo.
    # The big products use per-column bounds of v's radius and size (`column_matmul`).
    lo, hi = res.lower().amin(1), res.upper().amax(1)
    colrad, colabs = v.rad.amax(0), v.mid.abs().amax(0)  # [M']
    both = column_matmul(v.mid, colrad, colabs, torch.cat([A, lo[:, None]], 1))  # [n², r + 1]
    spread = (Ball.exact(hi) - Ball.exact(lo)).upper()[:, None]  # ReLU(v) >= 0: an upper bound of the range will do
    worst = both[:, rank] + column_matmul(v.mid.clamp_min(0), colrad, colabs, spread)[:, 0]
    # v·Res[:, z*]: the pairs with answer z* are rows z*·n .. z*·n + n - 1 (batched, radius per answer z*)
    k = v.shape[1]
    at_mid = (v.mid.reshape(n, n, k) @ res.mid.T[:, :, None]).flatten()
    res_abs = res.mid.abs()
    res_abs, res_rad = Ball.exact(res_abs), Ball.exact(res.rad)
    at_rad = (
        Ball.exact(colabs[None]) @ (res_rad + res_abs * gamma(k)) + Ball.exact(colrad[None]) @ (res_abs + res_rad)
    ).upper()[0]  # [n(z*)]: |v·Res - fl(mid·Res.mid)| <= |mid|·(Res.rad + γ_k |Res.mid|) + rad_v·(|Res.mid| + Res.rad)
    add_flops(2 * at_mid.numel() * k)
    at_label = Ball(at_mid, at_rad.repeat_interleave(n))
    # min over z ≠ z* of Φ(e) - Φ(x⁻¹zy⁻¹) + low(z*) - low(z) = Φ(e) + low(z*) - max_z (Φ(x⁻¹zy⁻¹) + low(z)), with
    # low = (v·A)·B; the [n², n] table is built in float64 once and its error bounded per row
    g = group.table[group.table[inv[x]], inv[y][:, None]]  # [n², n(z)]: x⁻¹ ⋆ z ⋆ y⁻¹
    vals = phi.mid[g]
    err = Ball.exact(phi.rad.max())  # the exact Φ(g) is within phi.rad of phi.mid
    low_star = Ball(torch.zeros(n * n, dtype=torch.float64))
    if rank:
        low_abs = both.mid[:, :rank].abs().amax(0)
        low = column_matmul(both.mid[:, :rank], both.rad[0, :rank], low_abs, B)  # [n², n]: (v·A)·B
        low_star = low.map(lambda t: t.gather(1, label[:, None])[:, 0])
        vals += low.mid  # rounded: the error is at most EPS·|vals| per entry
        err = err + Ball.exact(low.rad[0].max())
        add_flops(vals.numel())
    size = vals.abs().amax(1)
    vals.scatter_(1, label[:, None], -torch.inf)  # z ≠ z*
    top = Ball(vals.amax(1), (err + Ball.exact(size) * EPS).upper())  # encloses max_{z ≠ z*} (Φ(g) + low(z))
    add_flops(2 * vals.numel())
    gap = phi[e] + low_star - top
    slack = (gap + (at_label - worst)).lower()
    terms = {
        "rank": int(rank),
        "columns": int(mat.shape[0]),
        "residual_mean": float((worst - at_label).mid.mean()),
        "gap_mean": float(gap.mid.mean()),
    }
    out = torch.empty(n, n, dtype=torch.float64)
    out[x, y] = slack
    return out, terms


def _widen(b: Ball, columns: Tensor) -> Ball:
    """`b` `[rows, k]` placed in the `columns` (bool `[m]`, k of them set) of a zero ball `[rows, m]`."""
    mid = torch.zeros(b.shape[0], len(columns), dtype=torch.float64)
    rad = torch.zeros_like(mid)
    mid[:, columns], rad[:, columns] = b.mid, b.rad
    return Ball(mid, rad)


def explanation_rank(group: Any, names: list[str]) -> int:
    """The rank `rho_set(..., rank="auto")` starts from: Σ d_ρ² over the distinct irreps of the kept circuits, the
    dimension of the functions of z those irreps span (where the readout of an explained network lives); capped
    in `lowrank_slack` so that the check costs at most half of brute force's FLOPs."""
    return sum(irrep_by_name(group, name).dim ** 2 for name in dict.fromkeys(names))
