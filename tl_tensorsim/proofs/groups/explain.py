"""Explanations of a trained `GroupMLP` (arXiv 2410.07476; Chughtai et al. 2023; Stander et al. 2024), float64:
irrep sparsity per neuron, coset concentration per neuron, and ρ-set circuits (`rho_sets`: the search and the
construction), gathered in an `Explanation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.artifacts import Artifact, Provenance
from tl_tensorsim.checks import check_finite_weights, checked_int, checked_number
from tl_tensorsim.proofs.groups.fourier import irrep_power
from tl_tensorsim.proofs.groups.fourier_fit import choose_irreps, fit_centre
from tl_tensorsim.proofs.groups.groups import Group, group_by_name
from tl_tensorsim.proofs.groups.irreps import irreps
from tl_tensorsim.proofs.groups.rho_sets import rho_set_circuits

__all__ = ["Explanation", "check_explanation", "coset_concentration", "explain", "model_group", "model_tables"]


def model_group(model: Any) -> Group:
    """The group of a `GroupMLP` (a TypeError naming the given type for anything else, a ValueError naming the
    weights that hold NaN or inf); no arithmetic."""
    for attr in ("embed_left", "embed_right", "W", "W_U", "cfg"):
        if not hasattr(model, attr):
            raise TypeError(f"model: expected a GroupMLP (tl_tensorsim.models.group_mlp); got {type(model).__name__}")
    check_finite_weights({n: getattr(model, n) for n in ("embed_left", "embed_right", "W", "W_U")})
    try:
        group = group_by_name(model.cfg.group)
    except ValueError as exc:
        raise ValueError(
            f"model: the proofs rebuild a model's group from its name, and {model.cfg.group!r} is not one they know "
            f"({exc}); a GroupMLP on a custom Group trains and runs, but only S<n>, A<n>, C<n> and D<n> are proved"
        ) from None
    if not torch.equal(model.table.cpu(), group.table):
        raise ValueError(f"model: its multiplication table is not {group.name}'s (a custom table under that name)")
    return group


def check_explanation(model: Any, explanation: Any) -> Group:
    """The model's group, after checking that `explanation` is an `Explanation` read off a model like this one:
    same group and same hidden width (a TypeError or ValueError naming the argument, the expected and the given
    value, before any arithmetic)."""
    group = model_group(model)
    if not isinstance(explanation, Explanation):
        raise TypeError(
            f"explanation: expected an Explanation (proofs.groups.explain); got {type(explanation).__name__}"
        )
    if explanation.group != model.cfg.group:
        raise ValueError(f"explanation: expected one for group {model.cfg.group}; got one for {explanation.group}")
    width = explanation.neuron_irrep.shape[0]
    if width != model.cfg.d_hidden:
        raise ValueError(
            f"explanation: expected one for a model with d_hidden={model.cfg.d_hidden}; got one for d_hidden={width} "
            "(explain(model) reads the model you prove)"
        )
    return group


def model_tables(model: Any) -> tuple[Group, Tensor, Tensor, Tensor]:
    """The model's group and its folded tables in float64 (exact copies of the float32 products computed in
    float64): w_l, w_r `[order, m]`, w_u `[m, order]`. Accepts a `GroupMLP`."""
    group = model_group(model)
    with torch.no_grad():
        d = model.cfg.d_embed
        w = model.W.detach().double()
        wl = model.embed_left.detach().double() @ w[:d]
        wr = model.embed_right.detach().double() @ w[d:]
        wu = model.W_U.detach().double()
    return group, wl.cpu(), wr.cpu(), wu.cpu()


def coset_concentration(f: Float[Tensor, "order m"], group: Group, tol: float = 0.05) -> list[list[int]]:
    """Per column of `f` (a function on G per neuron), the largest subgroup H with f(x ⋆ h) ≈ f(x) for all x
    (constant on left cosets xH; relative tolerance `tol` of the column's range): the elements h that keep f within
    tolerance form a set closed under ⋆ when f is exactly constant on cosets; the subgroup they generate is kept
    only if f is still within tolerance on it, else {e}. Stander et al.'s coset neurons."""
    out = []
    for j in range(f.shape[1]):
        col = f[:, j]
        scale = float(col.max() - col.min()) + 1e-300
        dev = (col[group.table] - col[:, None]).abs().amax(0) / scale  # [h]: max_x |f(x⋆h) - f(x)|
        keep = (dev <= tol).nonzero()[:, 0].tolist()
        sub = group.subgroup(keep)
        out.append(sub if float(dev[sub].max()) <= tol else [group.identity])
    return out


@dataclass(repr=False)
class Explanation(Artifact):
    """What `explain(model)` read off a GroupMLP (all float64): `irreps` (names), `power_l/r/u` (`[n_irreps, m]`:
    each neuron's fraction of w_l, w_r, w_u power per irrep), `neuron_irrep` (`[m]`, index into `irreps`, argmax
    of the summed power), `coset_left/right_order` (`[m]`: order of the subgroup whose left/right cosets make the
    neuron's w_l / w_r constant), and the ρ-set circuits: for circuit c, `circuit_irrep[c]`, its left and right
    ρ-sets `left_sets[c]`, `right_sets[c]` (`[k, d_c]`, unit), shared vector `u[c]` (`[d_c]`), the idealised
    values ℓ `ell[c]` (`[k_l]`), `r[c]` (`[k_r]`) and U `U[c]` (`[k_l, k_r]`, made orbit-constant by the verifier); and per assigned
    neuron (`assign`, int64 `[n, 4]`: circuit, neuron, a index, b index) its scale `lam` (`[n]`) and its share
    `share` (`[n]`) of its pair's readout (normalised per pair by the verifier); and the idealised bi-equivariant
    readout, `phi_irreps` (chosen by `explain`) with one matrix Φ̂ `phi_hat[k]` (`[d, d]`) each, the least-squares
    fit of the network's logits refined for the number of pairs certified (`fourier_fit.fit_phi_hat`,
    `fourier_fit.refine_phi_hat`) that `rho_set(..., deviation="fourier")` certifies against, and that check's
    residual centre offset `centre` (`[order, m]`, one row per answer z: `fourier_fit.fit_centre`)."""

    group: str
    irreps: list[str]
    power_l: Tensor
    power_r: Tensor
    power_u: Tensor
    neuron_irrep: Tensor
    coset_left_order: Tensor
    coset_right_order: Tensor
    circuit_irrep: list[str]
    left_sets: list[list[list[float]]]
    right_sets: list[list[list[float]]]
    u: list[list[float]]
    ell: list[list[float]]
    r: list[list[float]]
    U: list[list[list[float]]]
    assign: Tensor
    lam: Tensor
    share: Tensor
    closure_error: list[float] = field(default_factory=list)
    phi_irreps: list[str] = field(default_factory=list)
    phi_hat: list[list[list[float]]] = field(default_factory=list)
    centre: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def to_dataframe(self) -> Any:
        """`pandas.DataFrame`, one row per hidden neuron: `neuron`, its `irrep` and that irrep's share of the
        neuron's w_l, w_r and w_u power (`power l`, `power r`, `power u`), the orders of the subgroups whose left
        and right cosets make w_l and w_r constant (`coset l`, `coset r`), and its ρ-set `circuit` (index, <NA>
        when unassigned) with the ρ-set vectors `a`, `b` it is assigned to."""
        import pandas as pd

        idx = self.neuron_irrep
        rows = [
            {
                "neuron": i,
                "irrep": self.irreps[int(idx[i])],
                "power l": float(self.power_l[idx[i], i]),
                "power r": float(self.power_r[idx[i], i]),
                "power u": float(self.power_u[idx[i], i]),
                "coset l": int(self.coset_left_order[i]),
                "coset r": int(self.coset_right_order[i]),
                "circuit": None,
                "a": None,
                "b": None,
            }
            for i in range(len(idx))
        ]
        for circuit, neuron, a, b in self.assign.tolist():
            if rows[neuron]["circuit"] is None:  # a neuron claimed twice keeps its first claim, as the verifier does
                rows[neuron].update(circuit=circuit, a=a, b=b)
        return pd.DataFrame(rows).astype({"circuit": "Int64", "a": "Int64", "b": "Int64"})  # <NA>: unassigned

    def key_irreps(self, threshold: float = 0.05) -> list[str]:
        """Irreps holding at least `threshold` of the neurons (Chughtai's key irreps)."""
        counts = torch.bincount(self.neuron_irrep, minlength=len(self.irreps)).double() / len(self.neuron_irrep)
        return [n for n, c in zip(self.irreps, counts.tolist()) if c >= threshold]

    def idealised_readout(self) -> dict[str, Tensor]:
        """{irrep name: Φ̂ float64 `[d, d]`}: the idealised network f̃(z | x, y) = Φ(x⁻¹ ⋆ z ⋆ y⁻¹) in those irreps."""
        return {n: torch.tensor(p, dtype=torch.float64) for n, p in zip(self.phi_irreps, self.phi_hat)}

    def hidden_centre(self) -> Tensor | None:
        """a0 float64 `[order, m]`: the Fourier check's centre (w_l[x] + w_r[y]) / 2 + a0(x ⋆ y) of the hidden layer
        h(x, y), or None when not recorded."""
        return None if self.centre is None else self.centre.double()

    def rho_sets(self, c: int) -> tuple[Tensor, Tensor]:
        """The left and right ρ-sets of circuit c (float64 `[k_l, d]`, `[k_r, d]`)."""
        return (
            torch.tensor(self.left_sets[c], dtype=torch.float64),
            torch.tensor(self.right_sets[c], dtype=torch.float64),
        )

    def __repr__(self) -> str:
        sizes = [f"{len(a)}x{len(b)}" for a, b in zip(self.left_sets, self.right_sets)]
        return (
            f"Explanation({self.group}: key irreps {self.key_irreps()}, {len(sizes)} ρ-set circuits "
            f"{list(zip(self.circuit_irrep, sizes))}, {len(self.assign)} of {len(self.neuron_irrep)} neurons assigned)"
        )


def explain(
    model: Any, min_neurons: int = 4, cos: float = 0.95, coset_tol: float = 0.05, min_fill: float = 0.25
) -> Explanation:
    """Irrep sparsity, coset concentration and ρ-set circuits of a `GroupMLP` (module docstring), and the fitted
    idealised readout Φ̂ (`choose_irreps`: in the circuits' irreps or the leading irreps of the readout, whichever
    the Fourier check certifies more pairs with, each least-squares fit refined for that count; `settings[
    "fourier_estimate"]`); cost O(|G|²·m) for the Fourier transforms and the coset scan, plus one Fourier check and
    one refinement (`fourier_fit.refine_phi_hat`) per candidate irrep set. The settings are checked first:
    `min_neurons` >= 1, `cos` and `min_fill` in [0, 1], `coset_tol` >= 0."""
    checked_int(min_neurons, "min_neurons", 1, "an integer >= 1")
    cos, min_fill = checked_number(cos, "cos", 0.0, 1.0), checked_number(min_fill, "min_fill", 0.0, 1.0)
    coset_tol = checked_number(coset_tol, "coset_tol", 0.0)
    group, wl, wr, wu = model_tables(model)
    names = [r.name for r in irreps(group)]
    pl, pr, pu = irrep_power(wl, group), irrep_power(wr, group), irrep_power(wu.T, group)
    neuron_irrep = (pl + pr + pu).argmax(0)
    found = rho_set_circuits(group, wl, wr, wu, neuron_irrep, min_neurons, cos, min_fill)
    left = coset_concentration(wl, group, coset_tol)
    # w_r constant on right cosets Hy: apply the same scan to y -> w_r(y⁻¹) (Hy ↔ y⁻¹H)
    right = coset_concentration(wr[group.inverse], group, coset_tol)
    # the idealised readout's irreps: the circuits', or the first k irreps by readout power (>= 1% each), whichever
    # the Fourier check certifies most pairs with
    readout = (pu * (wu**2).sum(1)).sum(1)
    ranked = [names[k] for k in readout.argsort(descending=True).tolist() if readout[k] >= 0.01 * readout.sum()]
    ranked = [k for k in ranked if k not in ("trivial", f"({group.degree})")]
    candidates = [list(dict.fromkeys(found["circuit_irrep"]))] + [ranked[: k + 1] for k in range(len(ranked))]
    centre = fit_centre(group, wl, wr)
    phi_hat, estimate = choose_irreps(group, wl, wr, wu, [c for c in candidates if c], centre)
    return Explanation(
        group=group.name,
        irreps=names,
        power_l=pl,
        power_r=pr,
        power_u=pu,
        neuron_irrep=neuron_irrep,
        coset_left_order=torch.tensor([len(h) for h in left]),
        coset_right_order=torch.tensor([len(h) for h in right]),
        circuit_irrep=found["circuit_irrep"],
        left_sets=found["left"],
        right_sets=found["right"],
        u=found["u"],
        ell=found["ell"],
        r=found["r"],
        U=found["U"],
        assign=torch.tensor(found["assign"], dtype=torch.long).reshape(-1, 4),
        lam=torch.tensor(found["lam"], dtype=torch.float64),
        share=torch.tensor(found["share"], dtype=torch.float64),
        closure_error=found["err"],
        phi_irreps=list(phi_hat),
        phi_hat=[p.tolist() for p in phi_hat.values()],
        centre=centre,
        settings=dict(
            min_neurons=min_neurons, cos=cos, coset_tol=coset_tol, min_fill=min_fill, fourier_estimate=estimate
        ),
        provenance=Provenance(models=(getattr(model.cfg, "model_name", ""),), settings={"function": "explain"}),
    )
