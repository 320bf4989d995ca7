"""Real irreducible orthogonal representations of a finite `Group`, float64 (arXiv 2410.07476 §2; Chughtai et al.).

Two constructions, checked against each other in the tests:

- **Young's orthogonal form** (S_n, named by partitions): basis the standard Young tableaux of shape λ; the adjacent
  transposition s_i = (i, i+1) fixes T (entry +1) when i, i+1 share a row, negates it when they share a column, and
  otherwise acts on span{T, s_i T} by [[1/r, √(1-1/r²)], [√(1-1/r²), -1/r]], r = c(i+1) - c(i) the axial distance
  (c = column - row). Every other ρ(g) is a product along the Cayley graph, so ρ(x ⋆ y) = ρ(x) ρ(y).
- **Commutant splitting** (any group): average a random symmetric matrix M over G, A = (1/|G|) Σ_g R(g) M R(g)ᵀ,
  which commutes with the (orthogonal) regular representation R; its eigenspaces are invariant, and for generic M
  each is irreducible over R (the symmetric elements of End_G(V) are scalars on an irreducible V of real or complex
  type). Irreps are kept once per character.

**Real versus complex.** Over R an irreducible ρ has End_G(ρ) = R, C or H (e = 1, 2, 4); ⟨χ, χ⟩ = (1/|G|)Σ χ(g)²
= e. The identities the tests check are Σ_ρ d_ρ² / e_ρ = |G| and #(real irreps) = #(real classes C ∪ C⁻¹); a real
irrep of complex type (e.g. the 2-d rotations of C_n, the 2-d irrep of A4) is the sum of two conjugate complex irreps.
S_n and D_n have only real-type irreps; the span of ρ's matrix entries (as functions on G) has dimension d²/e.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.proofs.groups.groups import Group

__all__ = ["Irrep", "irreps", "partitions", "regular_representation", "split_representation", "young_irrep"]


@dataclass(eq=False)
class Irrep:
    """A real irreducible orthogonal representation: `matrices` float64 `[order, d, d]` (ρ(x ⋆ y) = ρ(x)ρ(y),
    ρ(g)ᵀ = ρ(g⁻¹)), `name`, `kind` = End_G(ρ) dimension e (1 real type, 2 complex type, 4 quaternionic)."""

    name: str
    matrices: Float[Tensor, "order d d"] = field(repr=False)
    kind: int = 1

    @property
    def dim(self) -> int:
        return self.matrices.shape[-1]

    @property
    def character(self) -> Float[Tensor, " order"]:
        """χ(g) = tr ρ(g), float64 `[order]`."""
        return self.matrices.diagonal(dim1=-2, dim2=-1).sum(-1)

    def __repr__(self) -> str:
        kind = {1: "real", 2: "complex", 4: "quaternionic"}.get(self.kind, str(self.kind))
        return f"Irrep({self.name}, dim {self.dim}, {kind} type)"


# --------------------------------------------------------------------------------------------- S_n (Young)
def partitions(n: int) -> list[tuple[int, ...]]:
    """The partitions of n, largest first ((n,), (n-1, 1), ...)."""
    out: list[tuple[int, ...]] = []

    def rec(rest: int, most: int, prefix: tuple[int, ...]) -> None:
        if rest == 0:
            out.append(prefix)
            return
        for part in range(min(rest, most), 0, -1):
            rec(rest - part, part, prefix + (part,))

    rec(n, n, ())
    return out


def _tableaux(shape: tuple[int, ...]) -> list[dict[int, tuple[int, int]]]:
    """Standard Young tableaux of `shape`, each as {entry: (row, column)}."""
    n = sum(shape)
    out = []

    def rec(k: int, rows: list[int], where: dict[int, tuple[int, int]]) -> None:
        if k == n:
            out.append(dict(where))
            return
        for r, length in enumerate(rows):
            if length < shape[r] and (r == 0 or rows[r - 1] > length):
                where[k] = (r, length)
                rows[r] += 1
                rec(k + 1, rows, where)
                rows[r] -= 1
                del where[k]

    rec(0, [0] * len(shape), {})
    return out


def young_irrep(group: Group, shape: tuple[int, ...]) -> Irrep:
    """The irrep of S_n (`group` = `symmetric(n)`) for the partition `shape`, in Young's orthogonal form."""
    n = group.degree
    if group.order != math.factorial(n) or sorted(shape, reverse=True) != list(shape) or sum(shape) != n:
        raise ValueError(f"shape: expected a partition of {n} for the symmetric group; got {shape} for {group.name}")
    tabs = _tableaux(tuple(shape))
    key = {tuple(sorted(t.items())): i for i, t in enumerate(tabs)}
    d = len(tabs)
    gens = []
    for i in range(n - 1):
        m = torch.zeros(d, d, dtype=torch.float64)
        for a, t in enumerate(tabs):
            (r1, c1), (r2, c2) = t[i], t[i + 1]
            if r1 == r2:
                m[a, a] = 1.0
            elif c1 == c2:
                m[a, a] = -1.0
            else:
                r = (c2 - r2) - (c1 - r1)
                swapped = dict(t)
                swapped[i], swapped[i + 1] = t[i + 1], t[i]
                b = key[tuple(sorted(swapped.items()))]
                m[a, a] = 1.0 / r
                m[b, a] = math.sqrt(1.0 - 1.0 / r**2)
        gens.append(m)
    # Young's matrices are those of the adjacent transpositions (i, i+1), whatever generators the group lists
    # (D3 is the whole of S3 too, generated by a rotation and a reflection)
    index = {tuple(p): k for k, p in enumerate(group.elements)}
    swaps = [index[tuple(range(i)) + (i + 1, i) + tuple(range(i + 2, n))] for i in range(n - 1)]
    return Irrep("(" + ",".join(map(str, shape)) + ")", _extend(group, gens, swaps))


def _extend(group: Group, gen_matrices: list[Tensor], generators: list[int]) -> Tensor:
    """ρ on every element from ρ on `generators` (element indices), by breadth-first search: ρ(s ⋆ g) = ρ(s) ρ(g)."""
    d = gen_matrices[0].shape[-1]
    out = torch.full((group.order, d, d), math.nan, dtype=torch.float64)
    out[group.identity] = torch.eye(d, dtype=torch.float64)
    done, frontier = {group.identity}, [group.identity]
    while frontier:
        new = []
        for g in frontier:
            for s, m in zip(generators, gen_matrices):
                h = int(group.table[s, g])
                if h not in done:
                    out[h] = m @ out[g]
                    done.add(h)
                    new.append(h)
        frontier = new
    if len(done) != group.order:
        raise ValueError(f"group: these generators of {group.name} do not generate it ({len(done)} of {group.order})")
    return out


# ---------------------------------------------------------------------------------------- any group (split)
def regular_representation(group: Group) -> Float[Tensor, "order order order"]:
    """R(g) e_h = e_{g ⋆ h}: permutation matrices, float64 `[order, order, order]`."""
    n = group.order
    out = torch.zeros(n, n, n, dtype=torch.float64)
    out[torch.arange(n)[:, None], group.table, torch.arange(n)[None, :]] = 1.0
    return out


def split_representation(matrices: Float[Tensor, "order D D"], seed: int = 0, tol: float = 1e-7) -> list[Tensor]:
    """The invariant subspaces of an orthogonal representation, as orthogonal float64 representations
    `[order, d, d]` (one per eigenspace of a random symmetric element of the commutant; module docstring)."""
    D = matrices.shape[-1]
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(D, D, generator=g, dtype=torch.float64)
    m = m + m.T
    avg = torch.einsum("gij,jk,glk->il", matrices, m, matrices) / matrices.shape[0]
    vals, vecs = torch.linalg.eigh((avg + avg.T) / 2)
    out, start = [], 0
    scale = float(vals.abs().max()) + 1.0
    for k in range(1, D + 1):
        if k == D or vals[k] - vals[k - 1] > tol * scale:
            q = vecs[:, start:k]
            out.append(torch.einsum("ia,gij,jb->gab", q, matrices, q))
            start = k
    return out


def irreps(group: Group) -> list[Irrep]:
    """Every real irreducible representation of `group` once (orthogonal float64 `[order, d, d]`), sorted by
    dimension then name. S_n: Young's orthogonal form, named by partitions ("(4,1)" is the standard irrep);
    others: split from the regular representation, named "trivial", "sign" (1-d, ±1), then by dimension with a
    letter ("2a", "3a", "3b", ...). Cached on the group."""
    cached = getattr(group, "_irreps", None)
    if cached is not None:
        return cached
    n = group.degree
    if group.order == math.factorial(n) and n >= 2:
        found = [young_irrep(group, shape) for shape in partitions(n)]
        found.sort(key=lambda r: r.dim)
    elif group.order == 1:
        found = [Irrep("trivial", torch.ones(1, 1, 1, dtype=torch.float64))]
    else:
        found = _split_irreps(group)
    for rep in found:
        rep.kind = max(1, round(float((rep.character**2).sum()) / group.order))
    group._irreps = found
    return found


def _split_irreps(group: Group) -> list[Irrep]:
    chars: list[Tensor] = []
    reps: list[Tensor] = []
    for sub in split_representation(regular_representation(group)):
        chi = sub.diagonal(dim1=-2, dim2=-1).sum(-1)
        if not any((chi - c).abs().max() < 1e-6 for c in chars):
            chars.append(chi)
            reps.append(sub)
    reps.sort(key=lambda r: (r.shape[-1], -float(r.diagonal(dim1=-2, dim2=-1).sum(-1).sum())))
    out, count = [], {}
    for rep in reps:
        d = rep.shape[-1]
        chi = rep.diagonal(dim1=-2, dim2=-1).sum(-1)
        if d == 1 and bool((chi - 1).abs().max() < 1e-9):
            name = "trivial"
        elif d == 1 and "sign" not in count:
            name = "sign"
            count["sign"] = 1
        else:
            count[d] = count.get(d, 0) + 1
            name = f"{d}{'abcdefghijklmnopqrstuvwxyz'[count[d] - 1]}"
        out.append(Irrep(name, rep))
    return out


def permutation_representation(group: Group) -> Float[Tensor, "order m m"]:
    """P(g) e_i = e_{g[i]} on the points the group permutes (float64 `[order, degree, degree]`)."""
    m = group.degree
    out = torch.zeros(group.order, m, m, dtype=torch.float64)
    perms = torch.as_tensor(group.elements, dtype=torch.long)  # [order, m]
    out[torch.arange(group.order)[:, None], perms, torch.arange(m)[None, :]] = 1.0
    return out


def irrep_by_name(group: Group, name: str) -> Irrep:
    """The irrep of `group` called `name` (a `ValueError` listing the names otherwise)."""
    for rep in irreps(group):
        if rep.name == name:
            return rep
    raise ValueError(f"name: expected one of {[r.name for r in irreps(group)]} for {group.name}; got {name!r}")


__all__ += ["irrep_by_name", "permutation_representation"]
