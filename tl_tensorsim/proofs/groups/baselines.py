"""The earlier explanations of group-operation networks as sound verifiers (baselines of arXiv 2410.07476, which
reports that neither gives a non-vacuous bound): irrep sparsity (Chughtai et al. 2023) and coset concentration
(Stander et al. 2024). Float64 ball arithmetic (`tl_tensorsim.proofs.certified`).

Each verifier builds an idealised network w̃_l, w̃_r `[order, m]`, w̃_u `[m, order]` from the explanation (float64
numbers, which define it exactly), computes its margins m̃(x, y) in certified arithmetic (`verify.certified_margins`,
O(|G|²·m·|G|): the idealised network has no symmetry that would make this cheaper, so the check costs more than
brute force), and bounds the real network's deviation from it per input with rho_set's pairwise inequality
(`verify._pairwise_deviation`): for the correct z* and any z, with Δ = real - idealised weights,
    |(f - f̃)(z*) - (f - f̃)(z)| <= Σ_i c_i |ReLU(p_i) - ReLU(p̃_i)| + Σ_i range_z(Δu_i) ReLU(p̃_i),
c_i = range_z w_u[i, z] (ReLU is 1-Lipschitz). (x, y) is certified when m̃(x, y) > that bound (lower / upper
ends of the balls). Whatever the explanation says, this is sound: a bad explanation only lowers m̃ or raises the
deviation.

**irrep**: each neuron whose irrep (`Explanation.neuron_irrep`) is a key irrep (`Explanation.key_irreps`) keeps
only its w_l, w_r (as functions of x, y) and w_u (of z) projected onto the span of that irrep's matrix entries,
plus the trivial irrep for w_l and w_r (the constant offset, which sets where the ReLU bends; kept so the baseline
is not handicapped by it); the other neurons are unexplained: idealised weights 0.
**coset**: for each neuron with a left subgroup H (w_l constant on left cosets xH) or right subgroup K (w_r
constant on right cosets Ky) of the order the explanation recorded, w̃_l(x) = mean_{h∈H} w_l(x⋆h),
w̃_r(y) = mean_{k∈K} w_r(k⋆y), w̃_u = w_u; the subgroups are recomputed by `coset_concentration` with the
explanation's tolerance (the explanation stores only their orders; a mismatch leaves that side unexplained, H = {e}).
Neurons with neither are unexplained: idealised weights 0.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from tl_tensorsim.proofs.certified import Ball, count_flops
from tl_tensorsim.proofs.groups.explain import Explanation, check_explanation, coset_concentration
from tl_tensorsim.proofs.groups.fourier import irrep_bases, project
from tl_tensorsim.proofs.groups.irreps import irreps
from tl_tensorsim.proofs.groups.verify import _pairwise_deviation, _result, certified_margins, certified_tables
from tl_tensorsim.proofs.result import ProofResult
from tl_tensorsim.training import limit_threads

__all__ = ["coset", "irrep", "verify_idealised"]


def verify_idealised(
    model: Any, ideal: tuple[Tensor, Tensor, Tensor], name: str, settings: dict | None = None, threads: int | None = 1
) -> ProofResult:
    """Certify the pairs (x, y) where the idealised network `ideal` = (w̃_l `[order, m]`, w̃_r `[order, m]`,
    w̃_u `[m, order]`, float64, taken as exact) has margin m̃(x, y) above the deviation bound of the module
    docstring. `certified` bool `[order, order]`, bound = its mean, `margin` = m̃ - deviation (lower bound of the
    real margin), settings: the idealised network's certified accuracy and the mean deviation. Cost
    O(|G|²·m·|G|) + O(|G|²·m), counted FLOPs and seconds."""
    n, m = model.order, model.cfg.d_hidden
    want = [[n, m], [n, m], [m, n]]
    if len(ideal) != 3 or [list(t.shape) for t in ideal] != want:
        raise ValueError(f"ideal: expected three tensors of shapes {want}; got {[list(t.shape) for t in ideal]}")
    start = time.perf_counter()
    with count_flops() as flops, limit_threads(threads):
        group, wl, wr, wu = certified_tables(model)
        il, ir, iu = (Ball.exact(t.to(torch.float64).cpu()) for t in ideal)
        margin_ideal = certified_margins(group.table, il, ir, iu)
        c_range = (wu.amax(1) - wu.amin(1)).upper()  # [m]
        du = wu - iu
        d_real = (du.amax(1) - du.amin(1)).upper()  # [m]: range_z Δu_i
        dev, terms = _pairwise_deviation(wl, wr, il, ir, c_range, d_real, [], [], [])
        slack = margin_ideal - dev.upper()
        certified = slack > 0
    settings = {
        **(settings or {}),
        "ideal_accuracy": float((margin_ideal > 0).double().mean()),
        "ideal_margin_mean": float(margin_ideal.mean()),
        "deviation_mean": float(dev.upper().mean()),
        "pairwise_terms_mean": terms,
    }
    return _result(name, certified, start, flops, model, settings, margin=slack)


def irrep(model: Any, explanation: Explanation, threads: int | None = 1) -> ProofResult:
    """Chughtai et al.'s irrep-sparsity explanation as a proof (module docstring): the idealised network keeps
    each neuron's component in its own irrep if that is a key irrep (+ trivial for w_l, w_r), else 0. Cost
    O(|G|·m·Σ d²) for the projections plus O(|G|²·m·|G|) for the margins (above brute force)."""
    group = check_explanation(model, explanation)
    _, wl, wr, wu = certified_tables(model)
    m = wl.shape[1]
    bases = irrep_bases(group)
    if explanation.neuron_irrep.shape != (m,) or not bool(
        ((explanation.neuron_irrep >= 0) & (explanation.neuron_irrep < len(explanation.irreps))).all()
    ):
        raise ValueError(
            f"explanation: expected neuron_irrep of shape [{m}] indexing its {len(explanation.irreps)} irreps; "
            f"got shape {list(explanation.neuron_irrep.shape)}"
        )
    key = [n for n in explanation.key_irreps() if n in bases]
    trivial = [r.name for r in irreps(group) if r.dim == 1 and bool((r.matrices == 1).all())]
    il, ir, iu = torch.zeros_like(wl.mid), torch.zeros_like(wr.mid), torch.zeros_like(wu.mid)
    with torch.no_grad():
        for name in key:
            cols = (explanation.neuron_irrep == explanation.irreps.index(name)).nonzero()[:, 0]
            embed = sorted({name, *trivial})
            il[:, cols] = project(wl.mid[:, cols], group, embed)
            ir[:, cols] = project(wr.mid[:, cols], group, embed)
            iu[cols] = project(wu.mid[cols].T, group, [name]).T
    explained = int(sum((explanation.neuron_irrep == explanation.irreps.index(n)).sum() for n in key))
    settings = {"key_irreps": key, "neurons_explained": explained}
    return verify_idealised(model, (il, ir, iu), "irrep", settings, threads)


def coset(model: Any, explanation: Explanation, threads: int | None = 1) -> ProofResult:
    """Stander et al.'s coset explanation as a proof (module docstring): each coset neuron's w_l, w_r averaged over
    its cosets, readout kept; other neurons zeroed. Cost O(|G|²·m·|G|) (above brute force)."""
    group = check_explanation(model, explanation)
    _, wl, wr, wu = certified_tables(model)
    m = wl.shape[1]
    if explanation.coset_left_order.shape != (m,) or explanation.coset_right_order.shape != (m,):
        raise ValueError(
            f"explanation: expected coset orders of shape [{m}]; got {list(explanation.coset_left_order.shape)}, "
            f"{list(explanation.coset_right_order.shape)}"
        )
    tol = float(explanation.settings.get("coset_tol", 0.05))
    wl_t, wr_t = wl.mid, wr.mid
    left = coset_concentration(wl_t, group, tol)
    right = coset_concentration(wr_t[group.inverse], group, tol)  # y⁻¹K for w_r(y⁻¹) <-> right cosets Ky
    il, ir, iu = torch.zeros_like(wl_t), torch.zeros_like(wr_t), torch.zeros_like(wu.mid)
    explained = 0
    for i in range(m):
        h = left[i] if len(left[i]) == int(explanation.coset_left_order[i]) else [group.identity]
        k = right[i] if len(right[i]) == int(explanation.coset_right_order[i]) else [group.identity]
        if len(h) == 1 and len(k) == 1:
            continue
        explained += 1
        il[:, i] = wl_t[group.table[:, h], i].mean(1)  # mean over the left coset xH
        ir[:, i] = wr_t[group.table[k, :], i].mean(0)  # mean over the right coset Ky
        iu[i] = wu.mid[i]
    return verify_idealised(model, (il, ir, iu), "coset", {"neurons_explained": explained}, threads)
