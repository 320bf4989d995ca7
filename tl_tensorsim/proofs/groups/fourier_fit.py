"""The untrusted search behind the Fourier check (`fourier_bound.fourier_slack`): the idealised readout Φ̂ in a set
of irreps, and the residual bound's centre. Nothing here needs to be right for the proof to be sound (any Φ̂ and
any centre give a sound bound); it only decides how many pairs the check certifies. Float64 throughout; the
tables' products are taken as exact (a search, not a proof).

Φ̂ is found in two steps. `fit_phi_hat` gives the least-squares bi-equivariant fit, which minimises the mean
‖E_ρ‖² over pairs. The check, though, certifies a pair when min_C (μ_C - Σ_ρ c_ρ ‖E_ρ‖_F ŝ_ρ(C)) exceeds the pair's
residual term, where μ_C, the idealised margin against conjugacy class C, also depends on Φ̂. `refine_phi_hat`
therefore moves Φ̂ by gradient steps on a smooth count of the pairs for which that holds (the residual terms do
not depend on Φ̂, so they are read once off the check), and keeps the Φ̂ that certifies the most pairs.
`choose_irreps` does both for each candidate irrep set and keeps the best.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.proofs.certified import Ball
from tl_tensorsim.proofs.groups.fourier_bound import _classes, _irrep_tables, fourier_slack
from tl_tensorsim.proofs.groups.irreps import irrep_by_name

# gradient steps of `refine_phi_hat` per candidate irrep set (0: the least-squares fit only)
REFINE_STEPS = 200

__all__ = ["REFINE_STEPS", "choose_irreps", "fit_centre", "fit_phi_hat", "refine_phi_hat"]


def _pairs(n: int, samples: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """All n² pairs (x, y), row x·n + y, or `samples` of them drawn at random (seeded) when fewer."""
    if samples is None or samples >= n * n:
        return torch.arange(n).repeat_interleave(n), torch.arange(n).repeat(n)
    pick = torch.randperm(n * n, generator=torch.Generator().manual_seed(seed))[:samples]
    return pick // n, pick % n


def _rotated(group: Any, h: Tensor, wu: Tensor, name: str, x: Tensor, y: Tensor) -> Tensor:
    """ρ(x)ᵀ M_ρ(x, y) ρ(y)ᵀ `[pairs, d, d]` for the pairs (x, y) with hidden layer h `[pairs, m]`: the matrix a
    bi-equivariant Φ̂_ρ should match, with M_ρ = h · Ŵ_ρ the pair's logits read in irrep ρ. Cost 2·pairs·m·d² +
    4·pairs·d³."""
    R = irrep_by_name(group, name).matrices
    d = R.shape[-1]
    M = (h @ torch.einsum("iz,zjk->ijk", wu, R).reshape(len(wu), d * d)).reshape(-1, d, d)
    return torch.einsum("pji,pjk,plk->pil", R[x], M, R[y])


def fit_phi_hat(
    group: Any,
    wl: Tensor,
    wr: Tensor,
    wu: Tensor,
    names: list[str],
    samples: int = 4096,
    seed: int = 0,
    hidden: Tensor | None = None,
) -> dict[str, Float[Tensor, "d d"]]:
    """Per irrep, the least-squares bi-equivariant Φ̂_ρ = mean over pairs of ρ(x)ᵀ M_ρ(x, y) ρ(y)ᵀ (which minimises
    Σ ‖E_ρ‖_F² for orthogonal ρ), estimated on `samples` random pairs (all of them when fewer). Float64 tables
    `[order, m]`, `[order, m]`, `[m, order]`; `hidden` as in `refine_phi_hat` (its sampled rows are read).
    Cost 2·samples·m·Σ d²."""
    x, y = _pairs(group.order, samples, seed)
    h = (wl[x] + wr[y]).relu() if hidden is None else hidden[x * group.order + y]  # one hidden layer, every irrep
    return {name: _rotated(group, h, wu, name, x, y).mean(0) for name in names}


def refine_phi_hat(
    group: Any,
    wl: Tensor,
    wr: Tensor,
    wu: Tensor,
    phi_hat: dict[str, Tensor],
    centre: Tensor | None,
    steps: int = REFINE_STEPS,
    lr: float = 0.02,
    patience: int = 40,
    hidden: Tensor | None = None,
) -> tuple[dict[str, Float[Tensor, "d d"]], float]:
    """Φ̂ moved by `steps` Adam steps (learning rate `lr` times Φ̂'s RMS entry) on the mean of softplus(-s / τ) over
    all pairs, where s(Φ̂) is the Fourier check's slack with its Φ̂-free residual terms held fixed (module
    docstring) and τ a tenth of the mean |s| at the start, stopping early after `patience` steps without a gain;
    returns the Φ̂ whose s is positive on the most pairs (`phi_hat` itself when no step beats it) and that fraction
    of pairs. Float64 tables as in `fit_phi_hat`; `hidden`: the hidden layer of all pairs `[|G|², m]` (row x·n + y)
    when the caller has it (`choose_irreps` forms it once for every candidate), else formed here.
    Cost one check, 2·|G|²·m·Σ d² once, and O(|G|²·Σ d²) per step."""
    n, e = group.order, group.identity
    names = sorted(phi_hat)
    if not names:  # no idealised part: the check certifies nothing, whatever the search does
        return {}, 0.0
    slack0 = fourier_slack(group, (Ball.exact(wl), Ball.exact(wr), Ball.exact(wu)), phi_hat, centre)[0].flatten()
    x, y = _pairs(n)
    h = (wl[x] + wr[y]).relu() if hidden is None else hidden
    target = [_rotated(group, h, wu, name, x, y).flatten(1) for name in names]  # [n², d²] each
    tables = [_irrep_tables(group, irrep_by_name(group, name)) for name in names]
    entries = [t[1].mid for t in tables]  # [n, d²]: ρ̂(g)
    weight = [float(t[0].mid) for t in tables]  # c_ρ
    spread = torch.stack([t[2] for t in tables])  # [|S|, classes]: c_ρ ŝ_ρ(C)
    classes = _classes(group)

    def worst(phis: list[Tensor]) -> Tensor:  # min_C (μ_C - Σ_ρ c_ρ ‖E_ρ‖ ŝ_ρ(C)) per pair `[n²]`
        norms = torch.stack([(t - p).norm(dim=1) for t, p in zip(target, phis)])  # [|S|, n²]
        phi_s = sum(c * (r @ p) for c, r, p in zip(weight, entries, phis))  # [n]: Φ_S(g)
        mu = torch.stack([phi_s[e] - phi_s[cl].max() for cl in classes])
        return (mu[:, None] - spread.T @ norms).amin(0)

    start = [phi_hat[name].reshape(-1).double() for name in names]
    with torch.no_grad():
        rest = slack0 - worst(start)  # the residual and rounding terms, which do not depend on Φ̂
    best = (int((slack0 > 0).sum()), start)
    if steps > 0 and best[0] < n * n:
        tau = max(float(slack0.clamp(-1e30, 1e30).abs().mean()) / 10, 1e-12)
        scale = max(float(torch.cat(start).square().mean().sqrt()), 1e-12)
        phis = [p.clone().requires_grad_(True) for p in start]
        opt = torch.optim.Adam(phis, lr=lr * scale)
        since = 0  # steps since the count last improved
        for _ in range(steps + 1):
            slack = worst(phis) + rest
            count = int((slack > 0).sum())
            if count > best[0]:
                best, since = (count, [p.detach().clone() for p in phis]), 0
            elif (since := since + 1) > patience or best[0] == n * n:
                break
            opt.zero_grad()
            F.softplus(-slack / tau).mean().backward()
            opt.step()
    out = {name: p.reshape(phi_hat[name].shape) for name, p in zip(names, best[1])}
    return out, best[0] / (n * n)


def choose_irreps(
    group: Any,
    wl: Tensor,
    wr: Tensor,
    wu: Tensor,
    candidates: list[list[str]],
    centre: Tensor,
    steps: int = REFINE_STEPS,
) -> tuple[dict[str, Tensor], float]:
    """Among candidate irrep sets, the Φ̂ (`fit_phi_hat`, then `refine_phi_hat` with `steps`) whose Fourier slack is
    positive on the most pairs with the residual's `centre` (ties: fewer matrix entries, the cheaper check), and
    that fraction. Float64 tables as in `fit_phi_hat`. Cost one refinement per candidate."""
    best: tuple[float, int, dict[str, Tensor]] = (-1.0, 0, {})
    x, y = _pairs(group.order)
    hidden = (wl[x] + wr[y]).relu()  # every pair's hidden layer, shared by the candidates' refinements
    for names in candidates:
        size = sum(irrep_by_name(group, name).dim ** 2 for name in names)
        if best[0] == 1.0 and size >= best[1]:
            continue  # it cannot beat a Φ̂ that certifies every pair with fewer entries
        fit = fit_phi_hat(group, wl, wr, wu, names, hidden=hidden)
        phi_hat, score = refine_phi_hat(group, wl, wr, wu, fit, centre, steps, hidden=hidden)
        if (score, -size) > (best[0], -best[1]):
            best = (score, size, phi_hat)
    return best[2], max(best[0], 0.0)


def fit_centre(group: Any, wl: Tensor, wr: Tensor) -> Float[Tensor, "order m"]:
    """The residual bound's centre offset a0 (`fourier_bound`'s module docstring), per answer z the mean over the
    pairs with x ⋆ y = z of h - (w_l[x] + w_r[y]) / 2 = |w_l[x] + w_r[y]| / 2, for the float64 tables wl, wr
    `[order, m]`. Float64 `[order, m]`; cost O(|G|²·m)."""
    n = len(wl)
    half = (wl[:, None] + wr[None]).abs_().mul_(0.5).reshape(n * n, -1)
    return torch.zeros_like(wl).index_add_(0, group.table.flatten(), half) / n  # each answer is n pairs'
