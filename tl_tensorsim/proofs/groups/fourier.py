"""The group Fourier transform on a finite group and the power of a function in each real irrep (Chughtai et al.
2023, "irrep sparsity"; arXiv 2410.07476). Float64.

For f: G -> R, f̂(ρ) = Σ_g f(g) ρ(g) (`[d, d]`). The matrix entries ρ_jk(·) of all real irreps span the functions on
G, and the spans V_ρ of different irreps are orthogonal (Schur); dim V_ρ = d²/e (e = 1 real type, 2 complex type).
The power of f in ρ is ‖P_ρ f‖², P_ρ the orthogonal projection onto V_ρ, computed from an orthonormal basis of V_ρ
(SVD of the `[order, d²]` entry matrix); Σ_ρ ‖P_ρ f‖² = ‖f‖² (Parseval). Cost O(|G|·Σ d²) per function.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.proofs.groups.groups import Group
from tl_tensorsim.proofs.groups.irreps import irreps

__all__ = ["fourier_transform", "irrep_bases", "irrep_power", "project"]


def irrep_bases(group: Group) -> dict[str, Float[Tensor, "order r"]]:
    """Per irrep name, an orthonormal basis (float64 `[order, d²/e]`) of the span of its matrix entries. Cached."""
    cached = getattr(group, "_irrep_bases", None)
    if cached is not None:
        return cached
    out = {}
    for rep in irreps(group):
        entries = rep.matrices.reshape(group.order, -1)
        u, s, _ = torch.linalg.svd(entries, full_matrices=False)
        rank = round(rep.dim**2 / rep.kind)
        if rank < len(s) and s[rank] > 1e-8 * s[0] or s[rank - 1] < 1e-8 * s[0]:
            raise ValueError(f"group: the entries of {rep.name} span {int((s > 1e-8 * s[0]).sum())} dims, not {rank}")
        out[rep.name] = u[:, :rank].contiguous()
    group._irrep_bases = out
    return out


def fourier_transform(f: Float[Tensor, "order ..."], group: Group) -> dict[str, Float[Tensor, "... d d"]]:
    """f̂(ρ) = Σ_g f(g) ρ(g) for every irrep (float64), `f` a function on G along its first axis."""
    _check(f, group)
    f = f.to(torch.float64)
    return {rep.name: torch.einsum("g...,gjk->...jk", f, rep.matrices.to(f.device)) for rep in irreps(group)}


def irrep_power(f: Float[Tensor, "order ..."], group: Group, normalise: bool = True) -> Float[Tensor, "n_irreps ..."]:
    """‖P_ρ f‖² per irrep (in the order of `irreps(group)`), float64; with `normalise`, as fractions of ‖f‖²
    (0 where f = 0)."""
    _check(f, group)
    f = f.to(torch.float64)
    powers = torch.stack(
        [torch.einsum("gr,g...->r...", b.to(f.device), f).pow(2).sum(0) for b in irrep_bases(group).values()]
    )
    if normalise:
        total = powers.sum(0, keepdim=True)
        powers = torch.where(total > 0, powers / total.clamp_min(1e-300), torch.zeros_like(powers))
    return powers


def project(f: Float[Tensor, "order ..."], group: Group, names: list[str]) -> Float[Tensor, "order ..."]:
    """The orthogonal projection of `f` onto the span of the matrix entries of the irreps `names` (float64)."""
    _check(f, group)
    bases = irrep_bases(group)
    unknown = [n for n in names if n not in bases]
    if unknown:
        raise ValueError(f"names: expected irrep names of {group.name} from {list(bases)}; got {unknown}")
    f = f.to(torch.float64)
    out = torch.zeros_like(f)
    for n in names:
        b = bases[n].to(f.device)
        out = out + torch.einsum("gr,hr,h...->g...", b, b, f)
    return out


def _check(f: Tensor, group: Group) -> None:
    if not isinstance(f, Tensor):
        raise TypeError(f"f: expected a tensor [order, ...]; got {type(f).__name__}")
    if f.ndim == 0 or f.shape[0] != group.order:
        raise ValueError(f"f: expected a function on {group.name}, shape [{group.order}, ...]; got {list(f.shape)}")
