"""The Fourier deviation of the bi-equivariant proof (`rho_set(..., deviation="fourier")`): each pair's logits are
compared with an idealised bi-equivariant network in the explanation's irreps, by Cauchy–Schwarz per irrep, so
that no pair needs its |G| logits; float64 ball arithmetic (`tl_tensorsim.proofs.certified`).

**Derivation (ours; the paper's equations are unreadable).** For a pair (x, y) with answer z* = x ⋆ y, let
f(z) = Σ_i h_i w_u[i, z] with h = ReLU(w_l[x] + w_r[y]) `[m]`. For each irrep ρ of the set S, with ρ̂ the stored
float64 matrices and c_ρ = d_ρ / (e_ρ |G|) (e_ρ = 1 real, 2 complex type), put

    M_ρ = Σ_z f(z) ρ̂(z) = h · Ŵ_ρ,   Ŵ_ρ[i] = Σ_z w_u[i, z] ρ̂(z)                          (d × d)
    f_S(z) = Σ_ρ c_ρ tr(ρ̂(z)ᵀ M_ρ),   f_⊥ = f - f_S = h · Res,   Res = w_u - w_u P̂,
    P̂[z', z] = Σ_ρ c_ρ tr(ρ̂(z')ᵀ ρ̂(z))

(identities for any matrices ρ̂; P̂ is the projection onto S's matrix entries when ρ̂ is exact). The idealised
network f̃(z | x, y) = Φ(x⁻¹ ⋆ z ⋆ y⁻¹) in S is given by one matrix Φ̂_ρ per irrep (the explanation's), and
M_ρ = ρ̂(x) Φ̂_ρ ρ̂(y) + E_ρ defines the deviation E_ρ(x, y). For z = x ⋆ g ⋆ y (g ≠ e):

    f(z*) - f(z) >= [Φ_S(e) - Φ_S(g)] - Σ_ρ c_ρ ‖E_ρ‖_F ŝ_ρ(g) - Σ_ρ ε_ρ - [max_z' h · Res_z' - h · Res_z*]

with Φ_S(g) = Σ_ρ c_ρ tr(ρ̂(g)ᵀ Φ̂_ρ). The E term is Cauchy–Schwarz on c_ρ tr((ρ̂(z*) - ρ̂(z))ᵀ E_ρ). In the
residual bracket Res's rows are first centred (a constant per neuron cancels); h · Res_z* is computed, and
max_z' h · Res_z' is bounded by the smaller of Σ_i h_i max_z' Res[i, z'] (h >= 0) and, for the centre
c(x, y) = (w_l[x] + w_r[y]) / 2 + a0(x ⋆ y) with any offset a0 `[order, m]` per answer (`fit_centre`: the mean of
h - (w_l + w_r) / 2 = |w_l[x] + w_r[y]| / 2 over the pairs with that answer),

    ‖h - c‖ max_z' ‖Res_z'‖ + max_z' (w_l[x] / 2) · Res_z' + max_z' (w_r[y] / 2) · Res_z' + max_z' a0(z*) · Res_z'

(Cauchy–Schwarz), with ‖h - c‖² = ‖c‖² - 2 h · a0(z*) since h · (w_l[x] + w_r[y]) = ‖h‖² for h = ReLU(·), and ‖c‖²
read off Gram tables of w_l, w_r and a0 `[|G|, |G|]`; it keeps the cancellation between neurons that the per-neuron
sum loses. For exact orthogonal ρ, ρ̂(x ⋆ g ⋆ y) = ρ̂(x) ρ̂(g) ρ̂(y) gives ŝ_ρ(g) = ‖I - ρ̂(g)‖_F and ε_ρ = 0; for
the stored matrices, with ν = max_{a,b} ‖ρ̂(a)ρ̂(b) - ρ̂(a⋆b)‖_F, o = max_a ‖ρ̂(a)ᵀρ̂(a) - I‖_F, o' = max_a
‖ρ̂(a)ρ̂(a)ᵀ - I‖_F and w = max_a ‖ρ̂(a)‖_F (computed in ball arithmetic, `irrep_errors`):

    ŝ_ρ(g) = (1 + o) ‖I - ρ̂(g)‖_F + ν (2 + w),
    ε_ρ = c_ρ ‖Φ̂_ρ‖_F [o' (1 + w) + o w² (1 + w) + ν w² (2 + w) + ι],   ι = ‖ρ̂(e) - I‖_F.

ŝ and Φ_S are bounded per conjugacy class C (ŝ_ρ(C) = max over C, μ_C = min over g ∈ C \\ {e} of
Φ_S(e) - Φ_S(g)), so a pair's slack is min_C (μ_C - Σ_ρ c_ρ ‖E_ρ‖_F ŝ_ρ(C)) minus the ε and residual terms, and the
pair is certified when it is > 0. Any Φ̂ gives a sound bound (a poor one only a smaller bound).

**Cost.** 2·|G|²·m·(Σ_ρ d_ρ² + 1 + 2s) for h and the products, O(|G|²·Σ d_ρ³) for E, O(|G|²·(m + #classes)) for
the centre's Gram tables and to combine, against brute force's 2·|G|³·m: about (Σ d² + 1 + 2s) / |G| of it (S5 with
sign + standard, s = 3: 24 / 120). The pairs are read answer by answer (`answer_rows`: pairs (x, x⁻¹ ⋆ z), blocks of
s answers, one reused buffer), so that h · Res_z* and h · a0(z*) are two more columns per answer of the block's one
product [Σ d² + 1 + 2s, m] @ [m, s·|G|]: no other pass over the hidden layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.proofs.certified import EPS, Ball, add_flops, cat, column_radius, gamma, norm_matmul
from tl_tensorsim.proofs.groups.irreps import Irrep, irrep_by_name
from tl_tensorsim.proofs.groups.pairs import answer_index, answer_rows, hidden_block, hidden_bounds

# answers per block of the check's product (`answer_rows`): each adds 2 columns to every pair's product, each block a
# few torch calls; 2-8 were within ±5% on S5 and A5 (2-core CPU), 3 S5's fastest
ANSWER_BLOCK = 3

__all__ = ["fourier_slack", "irrep_errors"]


def _frobenius_upper(b: Ball) -> Tensor:
    """Upper bounds of ‖·‖_F over the last two axes of the exact matrices in `b`."""
    t = b.upper().abs().maximum(b.lower().abs())
    sq = (Ball.exact(t) * Ball.exact(t)).sum(-1).sum(-1).upper()
    return _next_up(sq.sqrt())


def _safe(value: float) -> float:
    """A positive float computed from upper bounds by a few rounded operations, made an upper bound again."""
    return value * (1 + 2.0**-40) + 2.0**-1000


def irrep_errors(group: Any, rep: Irrep) -> tuple[float, float, float, float, float]:
    """(ν, o, o', w, ι): certified upper bounds of how far the stored float64 matrices ρ̂ are from an exact
    orthogonal representation (module docstring): ν = max_{a,b} ‖ρ̂(a)ρ̂(b) - ρ̂(a⋆b)‖_F over the whole table,
    o = max_a ‖ρ̂(a)ᵀρ̂(a) - I‖_F, o' = max_a ‖ρ̂(a)ρ̂(a)ᵀ - I‖_F, w = max_a ‖ρ̂(a)‖_F, ι = ‖ρ̂(e) - I‖_F. Cost
    |G|²·2d³; cached on the group (the group's irreps are fixed data, shared by every model)."""

    def make() -> tuple[float, float, float, float, float]:
        R = Ball.exact(rep.matrices)
        eye = torch.eye(rep.dim, dtype=torch.float64)
        nu = _frobenius_upper(R.map(lambda t: t[:, None]) @ R.map(lambda t: t[None]) - R[group.table]).max()
        o = _frobenius_upper(R.T @ R - eye).max()
        o2 = _frobenius_upper(R @ R.T - eye).max()
        w = _frobenius_upper(R).max()
        iota = _frobenius_upper(R[group.identity] - eye)
        return float(nu), float(o), float(o2), float(w), float(iota)

    return group.cached(rep.name, make)


def _classes(group: Any) -> list[list[int]]:
    """The conjugacy classes without the identity (cached on the group)."""
    return group.cached(
        "classes",
        lambda: [c for c in ([g for g in cl if g != group.identity] for cl in group.conjugacy_classes()) if c],
    )


def _irrep_tables(group: Any, rep: Irrep) -> tuple[Ball, Ball, Tensor]:
    """Model-independent quantities of one irrep (cached on the group, like `irrep_errors`): c_ρ = d/(e|G|) (ball),
    the entries ρ̂ `[order, d²]` (exact ball) and c_ρ ŝ_ρ(C) per conjugacy class (upper bounds)."""

    def make() -> tuple[Ball, Ball, Tensor]:
        n, d, R = group.order, rep.dim, rep.matrices
        nu, o, _, w, _ = irrep_errors(group, rep)
        c = Ball(torch.tensor(d / (rep.kind * n), dtype=torch.float64))
        c = Ball(c.mid, c.mid * EPS)
        flat = Ball.exact(R.reshape(n, d * d))
        s_hat = Ball.exact(_frobenius_upper(-Ball.exact(R) + torch.eye(d, dtype=torch.float64))) * _safe(1 + o)
        s_hat = (s_hat + _safe(nu * (2 + w))).upper()  # [n]: ŝ_ρ(g)
        s_class = (c * Ball.exact(torch.stack([s_hat[cl].max() for cl in _classes(group)]))).upper()
        return c, flat, s_class

    return group.cached(("tables", rep.name), make)


def _set_tables(group: Any, names: tuple[str, ...]) -> tuple[Ball, Ball, Tensor]:
    """Model-independent quantities of an irrep set S (cached on the group): the entries of every ρ̂ side by side
    `[order, Σ d²]` (exact ball), each entry's c_ρ `[Σ d²]` (ball; P̂ = flat·diag(c)·flatᵀ), and the factors
    c_ρ ŝ_ρ(C) `[|S|, classes]` scaled up by 1 + 2γ_{|S|+1} (so that a rounded product with nonnegative upper
    bounds stays an upper bound)."""

    def make() -> tuple[Ball, Ball, Tensor]:
        tables = [_irrep_tables(group, irrep_by_name(group, name)) for name in names]
        weight = cat([t[0].map(lambda v, k=t[1].mid.shape[1]: v.expand(k)) for t in tables], 0)
        coef = _next_up(torch.stack([t[2] for t in tables]) * (1 + 2 * gamma(len(names) + 1)))
        return cat([t[1] for t in tables], 1), weight, coef

    return group.cached(("set", names), make)


def fourier_slack(
    group: Any,
    real: tuple[Ball, Ball, Ball],
    phi_hat: dict[str, Tensor],
    centre: Tensor | None = None,
) -> tuple[Float[Tensor, "order order"], dict[str, Any]]:
    """Certified lower bounds `[order, order]` (x, y) of each pair's margin f(x⋆y) - max_{z ≠ x⋆y} f(z) by the
    module docstring's inequality, and diagnostics (idealised margin, mean deviation and residual terms).
    `real` = balls of w_l, w_r `[order, m]`, w_u `[m, order]`; `phi_hat` = {irrep name: Φ̂ float64 `[d, d]`};
    `centre` = the residual bound's offset a0, float64 `[order, m]` (`fit_centre`; None: zero). The per-pair
    arrays are float64 midpoints with per-column radii (`column_radius`), rounded outward."""
    wl, wr, wu = real
    n, m = wl.shape
    e = group.identity
    names = sorted(phi_hat)
    if not names:  # no idealised part: Φ_S = 0, so no pair can have a positive slack
        return torch.full((n, n), -math.inf, dtype=torch.float64), {"irreps": [], "ideal_margin": 0.0}
    a0 = torch.zeros(n, m, dtype=torch.float64) if centre is None else torch.as_tensor(centre, dtype=torch.float64)
    if a0.shape != (n, m):
        raise ValueError(f"centre: expected a table of shape [{n}, {m}] (one row per answer); got {list(a0.shape)}")
    classes = _classes(group)
    # per irrep: Φ_S's coefficients, ε and ρ̂(x) Φ̂ (O(|G|·d³), in balls); the set's tables are the group's (cached)
    flat, weight, coef = _set_tables(group, tuple(names))
    eps_total, weights, parts, ideal_rads = 0.0, [], [], []
    for name in names:
        rep = irrep_by_name(group, name)
        R, d = rep.matrices, rep.dim
        phi = torch.as_tensor(phi_hat[name], dtype=torch.float64)
        if phi.shape != (d, d):
            raise ValueError(f"phi_hat[{name!r}]: expected shape [{d}, {d}]; got {list(phi.shape)}")
        nu, o, o2, w, iota = irrep_errors(group, rep)
        c = _irrep_tables(group, rep)[0]
        weights.append(c * Ball.exact(phi.reshape(d * d)))  # c_ρ Φ̂_ρ, flattened
        norm_phi = float(_sqrt_upper(phi.square().sum() * (1 + gamma(d * d + 2))))  # ‖Φ̂‖_F, upper
        err = norm_phi * (o2 * (1 + w) + o * w * w * (1 + w) + nu * w * w * (2 + w) + iota)
        eps_total = _safe(eps_total + _safe(float(c.upper()) * _safe(err)))
        A = R @ phi  # [n, d, d]: fl(ρ̂(x) Φ̂), each entry within γ_d·d·max|ρ̂|·max|Φ̂| of the exact one
        parts.append((d, R, A))
        # |ρ̂(x) Φ̂ ρ̂(y) - fl(fl(ρ̂(x) Φ̂) ρ̂(y))| <= d·max|ρ̂|·(A's error + γ_d·max|A|)
        r_abs = float(R.abs().max())
        a_err = _safe(gamma(d) * d * r_abs * float(phi.abs().max()))
        ideal_rads.append(_safe(d * r_abs * (a_err + gamma(d) * float(A.abs().max()))))
    phi_s = flat @ cat(weights, 0)  # [n]: Φ_S(g) = Σ_ρ c_ρ tr(ρ̂(g)ᵀ Φ̂_ρ)
    w_hat = norm_matmul(flat.mid.T, wu.T).T  # [m, Σ d²]: every Ŵ_ρ
    wu_proj = norm_matmul(flat.mid, (w_hat * weight).T).T  # [m, n]: w_u P̂ = Ŵ diag(c) flatᵀ
    # the residual readout Res = w_u - w_u P̂ (a constant per neuron cancels in f_⊥(z) - f_⊥(z*), so each row is
    # centred), and what its bounds need: max_z Res per neuron and the columns' norms (upper), the centre's rows
    res = wu - wu_proj  # [m, n]
    res = res - Ball.exact(res.mid.mean(1, keepdim=True))
    res_top = res.upper().amax(1)  # [m]
    r_max = _safe(float(res.mid.abs().add(res.rad).norm(dim=0).max()))  # max_z ‖Res_z‖ (a few roundings: _safe)
    # the centre c = (w_l[x] + w_r[y]) / 2 + a0(x ⋆ y): max_z' c · Res_z' for each of its three parts (upper; the
    # radii of w_l and w_r by Cauchy–Schwarz against max_z ‖|Res_z|‖)
    l_top, r_top, a_top = norm_matmul(torch.cat([wl.mid * 0.5, wr.mid * 0.5, a0]), res).upper().amax(1).split(n)
    l_top, r_top = (
        _next_up(t + _safe(r_max) * w.rad.norm(dim=1).mul_(0.5 + gamma(m + 4))) for t, w in ((l_top, wl), (r_top, wr))
    )
    colrad, colabs = hidden_bounds(wl, wr)
    readout = cat([w_hat, Ball.exact(res_top[:, None])], 1)  # [m, Σ d² + 1]
    k = readout.shape[1]
    # the products' radii per column, and the rounding of h · Res_z and h · a0(z) per answer z `[n]`
    radius, f_err, a_err = column_radius(colrad, colabs, cat([readout, res, Ball.exact(a0.T)], 1))[0].split([k, n, n])
    # every pair's products, answer by answer (pairs (z, x), y = x⁻¹ ⋆ z): one product per block of answers with the
    # Σ d² + 1 readout columns and the block's own Res_z and a0(z) (2·step more)
    step = max(1, min(hidden_block(n, m), ANSWER_BLOCK))
    blocks = -(-n // step)
    out = torch.empty(blocks, k + 2 * step, step * n, dtype=torch.float64)
    zi = torch.arange(blocks * step).clamp_max_(n - 1).view(blocks, step)  # a short last block repeats its last z
    q = torch.cat([readout.mid.T.expand(blocks, k, m), res.mid.T[zi], a0[zi]], 1)  # [blocks, k + 2·step, m]
    for zs, h in answer_rows(group, wl.mid, wr.mid, step):
        torch.mm(q[zs.start // step], h.T, out=out[zs.start // step, :, : len(h)])
    Mt = rearrange(out[:, :k], "b k r -> k (b r)")[:, : n * n]  # [k, n²]: pairs (z, x)
    own = out[:, k:].view(blocks, 2, step, step, n).diagonal(0, 2, 3)  # [b, 2, x, j]: answer j's own two columns
    F, ha = rearrange(own, "b t x j -> t (b j) x")[:, :n]  # [n(z), n(x)] each: h · Res_{z*} and h · a0(z*)
    per_neuron = Mt[-1]
    # -E_ρ = ρ̂(x) Φ̂ ρ̂(y) - M_ρ for every pair: one product [d·n, d] @ [d, d·n] per irrep, read in pair order
    y = answer_index(group)  # [z, x]
    pairs = (torch.arange(n) * n + y).flatten()  # pair (z, x) -> x·n + y
    sizes = [d for d, _, _ in parts]
    sq = torch.empty(len(parts), n * n, dtype=torch.float64)  # ‖fl(ρ̂(x) Φ̂ ρ̂(y) - M_ρ)‖², rounded
    col = 0
    for j, (d, R, A) in enumerate(parts):
        ideal = (A.reshape(n * d, d) @ R.permute(1, 2, 0).reshape(d, d * n)).view(n, d, d, n)
        diff = rearrange(ideal, "x i k y -> (x y) (i k)").index_select(0, pairs) - Mt[col : col + d * d].T
        torch.sum(diff.square_(), 1, out=sq[j])
        col += d * d
    add_flops(2 * n * n * m * (k + 2 * step) + 2 * n * n * sum(d**3 + d * d for d in sizes))  # h, products; E
    # ‖E_ρ‖ <= ‖fl(diff)‖ (1 + EPS) + ‖radius of M_ρ's columns + the ideal's radius‖ (triangle inequality)
    ends = torch.tensor(sizes).square().cumsum(0).tolist()
    rad = torch.tensor(
        [_safe(math.hypot(*(radius[end - d * d : end] + r).tolist())) for d, end, r in zip(sizes, ends, ideal_rads)]
    )  # ‖·‖ of each irrep's radii (hypot is correctly rounded to within 1 ulp; _safe covers it)
    scale = torch.tensor([[1 + gamma(d * d + 2)] for d in sizes], dtype=torch.float64)
    norms = (_sqrt_upper(sq.mul_(scale)).mul_(1 + 2 * EPS).add_(rad[:, None])).mul_(1 + EPS)  # [irreps, n²]
    # Σ_ρ c_ρ ‖E_ρ‖ ŝ_ρ(C) for every class: one small product of nonnegative upper bounds, its rounding covered by
    # scaling the small factor up
    dev = coef.T @ norms  # [classes, n²]
    add_flops(2 * dev.numel() * len(parts) + 8 * sq.numel())
    F_low = (F - f_err[:, None]).flatten()
    ha_low = ha - a_err[:, None]
    # ‖h - c‖² = ‖c‖² - 2 h · a0(z) (h · (w_l[x] + w_r[y]) = ‖h‖² for h = ReLU(w_l[x] + w_r[y])), ‖c‖ from Gram tables
    spread = _centre_distance(wl, wr, a0, y, ha_low) * r_max  # >= 0
    shift = l_top[None] + r_top[y] + a_top[:, None]  # [z, x]: any sign; each rounding bounded by EPS·|·| below
    size = (2 * spread + l_top.abs()[None] + r_top.abs()[y] + a_top.abs()[:, None]).flatten()
    cs = (spread + shift).flatten()
    cs = cs + 2 * EPS * (size + cs.abs())
    best = torch.minimum(cs, per_neuron + radius[-1])
    resid = best - F_low
    resid_up = resid + 2 * EPS * (best.abs() + F_low.abs() + resid.abs()) + 2.0**-1000
    top = phi_s.upper()
    mu = _next_down(phi_s.lower()[e] - torch.stack([top[cl].max() for cl in classes]))  # [classes]: μ_C
    worst = (mu[:, None] - dev).amin(0)
    total = worst - resid_up - eps_total
    slack = torch.empty(n * n, dtype=torch.float64)
    slack[pairs] = total - EPS * (worst.abs() + resid_up.abs() + total.abs()) - 2.0**-1000  # the two subtractions
    add_flops(2 * dev.numel() + 30 * slack.numel())
    terms = {
        "irreps": names,
        "ideal_margin": float(mu.min()),
        "deviation_mean": float(dev.amax(0).mean()),
        "residual_mean": float(resid_up.mean()),
        "residual_per_neuron_mean": float((per_neuron - F_low).mean()),
        "residual_cs_mean": float((cs - F_low).mean()),
        "epsilon": eps_total,
    }
    return slack.view(n, n), terms


def _centre_distance(wl: Ball, wr: Ball, a0: Tensor, y: Tensor, ha_low: Tensor) -> Float[Tensor, "z x"]:
    """Upper bounds `[z, x]` of ‖h - c‖, c = (w_l[x] + w_r[y]) / 2 + a0(z), y = `y[z, x]`: ‖c‖² - 2 h · a0(z), with
    `ha_low` lower bounds of h · a0(z), ‖c‖² from the Gram tables of u = w_l / 2, v = w_r / 2, a0 (error at most
    γ_{m+6} (‖u‖ + ‖v‖ + ‖a0‖)²) and ‖c - fl c‖ <= ‖(rad w_l + rad w_r) / 2‖. Cost O(|G|²·m)."""
    n, m = a0.shape
    u, v = wl.mid * 0.5, wr.mid * 0.5
    nu, nv, na = (t.square().sum(1) for t in (u, v, a0))
    gau, gav = (a0 @ torch.cat([u, v]).T).mul_(2).split(n, 1)  # [z, x], [z, y]: 2 a0 · u, 2 a0 · v
    by_y = torch.addmm(nv[:, None], v, u.T, alpha=2).gather(0, y)  # [z, x]: ‖v_y‖² + 2 v_y · u_x
    c2 = gau.add_(nu[None]).add_(na[:, None]).add_(by_y).add_(gav.gather(1, y))
    size = float(nu.max().sqrt() + nv.max().sqrt() + na.max().sqrt()) * (1 + gamma(m + 2))
    delta = float((wl.rad.amax(0) + wr.rad.amax(0)).norm()) * 0.5
    c2 = (c2 + _safe(gamma(m + 8) * size * size)).mul_(1 + 2 * EPS).clamp_min_(0)
    c_up = (_sqrt_upper(c2) + _safe(delta)) * (1 + EPS)
    cc = c_up * c_up
    t2 = cc - 2 * ha_low
    return _sqrt_upper((t2 + 4 * EPS * (cc + 2 * ha_low.abs() + t2.abs())).clamp_min_(0))


def _sqrt_upper(v: Tensor) -> Tensor:
    """Upper bounds of √v for nonnegative upper bounds v (one rounded square root, then one step up)."""
    return _next_up((v + 2.0**-1000).sqrt())


def _next_down(v: Tensor) -> Tensor:
    """The next float64 below each entry (a lower bound of a value rounded to nearest)."""
    return torch.nextafter(v, torch.tensor(-math.inf, dtype=torch.float64))


def _next_up(v: Tensor) -> Tensor:
    """The next float64 above each entry (an upper bound of a value rounded to nearest)."""
    return torch.nextafter(v, torch.tensor(math.inf, dtype=torch.float64))
