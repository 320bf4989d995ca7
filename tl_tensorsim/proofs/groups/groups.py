"""Finite groups as permutation groups with a multiplication table: `symmetric(n)`, `alternating(n)`, `cyclic(n)`,
`dihedral(n)` (Wu, Jaburi, Drori & Gross, arXiv 2410.07476; Chughtai et al. 2023).

The permutations and the table come from `tl_tensorsim.models.group_mlp` (the task's data, defined with the model
that learns it, below the analyses). **Composition convention (used everywhere in `proofs.groups`).** An element is a permutation `p` of
`{0, ..., m-1}` stored as the tuple of images, `p[i]` = the image of i. The product is function composition,

    (x ⋆ y)[i] = x[y[i]]        (apply y first, then x),

so `table[x, y]` = index of x ⋆ y, a representation satisfies ρ(x ⋆ y) = ρ(x) ρ(y), the **left coset** of a
subgroup H is gH = {g ⋆ h}, the **right coset** Hg = {h ⋆ g}. (sympy's `p*q` applies p first: it is y ⋆ x here.)
A network "equivariant on the left" satisfies f(g⋆x, y)_{g⋆z} = f(x, y)_z, "on the right" f(x, y⋆g)_{z⋆g} = f(x, y)_z.

Element order: sorted permutation tuples (the identity is index 0) for S_n and A_n; for C_n the rotation by k is
index k (table[x, y] = (x + y) mod n); for D_n (n >= 3, order 2n, acting on the n-gon's vertices) the rotation r^k
is index k and the reflection r^k s (i -> k - i mod n) is index n + k.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from jaxtyping import Int
from torch import Tensor

from tl_tensorsim.checks import checked_int
from tl_tensorsim.models.group_table import group_elements, multiplication_table, parse_group_name

T = TypeVar("T")

__all__ = ["Group", "alternating", "cyclic", "dihedral", "from_permutations", "group_by_name", "symmetric"]


@dataclass(eq=False)
class Group:
    """A finite group: `elements` (permutation tuples of degree `degree`), `table` (int64 `[order, order]`,
    `table[x, y]` = index of x ⋆ y, module docstring), `identity` (index), `inverse` (int64 `[order]`),
    `generators` (indices), `name` (e.g. "S5")."""

    name: str
    elements: list[tuple[int, ...]]
    table: Int[Tensor, "order order"] = field(repr=False)
    identity: int
    inverse: Int[Tensor, " order"] = field(repr=False)
    generators: list[int]

    @property
    def order(self) -> int:
        return len(self.elements)

    @property
    def degree(self) -> int:
        return len(self.elements[0])

    def __repr__(self) -> str:
        return f"Group({self.name}, order {self.order}, {len(self.generators)} generators)"

    def index(self, perm: tuple[int, ...]) -> int:
        """The index of the permutation `perm` (a `ValueError` if it is not an element)."""
        try:
            return self._lookup[tuple(perm)]
        except KeyError:
            raise ValueError(f"perm: expected an element of {self.name}; got {tuple(perm)}") from None

    @property
    def _lookup(self) -> dict[tuple[int, ...], int]:
        if not hasattr(self, "_index"):
            self._index = {p: i for i, p in enumerate(self.elements)}
        return self._index

    def cached(self, key: Any, make: Callable[[], T]) -> T:
        """`make()` once per key: data derived from the group alone (its irreps' error constants, classes, index
        tables), computed once and shared by every model of the group."""
        cache = self.__dict__.setdefault("_derived", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def mul(self, x: Tensor | int, y: Tensor | int) -> Tensor:
        """x ⋆ y elementwise (indices, broadcasting)."""
        return self.table[torch.as_tensor(x), torch.as_tensor(y)]

    def conjugacy_classes(self) -> list[list[int]]:
        """The conjugacy classes {g ⋆ x ⋆ g⁻¹}, each sorted, ordered by their smallest index (identity first)."""
        conj = self.table[
            self.table[torch.arange(self.order)[:, None], torch.arange(self.order)[None]], self.inverse[:, None]
        ]
        # conj[g, x] = g ⋆ x ⋆ g^-1
        seen: set[int] = set()
        classes = []
        for x in range(self.order):
            if x not in seen:
                cls = sorted(set(conj[:, x].tolist()))
                seen.update(cls)
                classes.append(cls)
        return classes

    def irreps(self) -> list[Any]:
        """Every real irreducible representation, orthogonal float64 `[order, d, d]`, named (partitions for S_n):
        `tl_tensorsim.proofs.groups.irreps(self)` (module `irreps`, which builds on this one; cached)."""
        from tl_tensorsim.proofs.groups.irreps import irreps  # irreps.py imports this module: bound at call time

        return irreps(self)

    def real_classes(self) -> list[list[int]]:
        """The classes C ∪ C⁻¹ (conjugacy classes merged with their inverses): as many as real irreps."""
        out, seen = [], set()
        for cls in self.conjugacy_classes():
            if cls[0] in seen:
                continue
            merged = sorted(set(cls) | set(self.inverse[cls].tolist()))
            seen.update(merged)
            out.append(merged)
        return out

    def subgroup(self, generators: list[int]) -> list[int]:
        """The subgroup generated by `generators` (sorted indices; {identity} for an empty list)."""
        members = {self.identity}
        frontier = [self.identity]
        gens = [checked_int(g, "generators", 0, f"element indices in [0, {self.order})") for g in generators]
        if any(g >= self.order for g in gens):
            raise ValueError(f"generators: expected element indices in [0, {self.order}); got {generators}")
        while frontier:
            new = []
            for h in frontier:
                for g in gens:
                    p = int(self.table[h, g])
                    if p not in members:
                        members.add(p)
                        new.append(p)
            frontier = new
        return sorted(members)

    def is_subgroup(self, members: list[int]) -> bool:
        """Whether `members` is closed under ⋆ and contains the identity (hence a subgroup of a finite group)."""
        idx = torch.as_tensor(sorted(set(members)), dtype=torch.long)
        if len(idx) == 0 or self.identity not in set(idx.tolist()):
            return False
        inside = torch.zeros(self.order, dtype=torch.bool)
        inside[idx] = True
        return bool(inside[self.table[idx[:, None], idx[None]]].all())

    def left_cosets(self, subgroup: list[int]) -> Int[Tensor, " order"]:
        """Label of each element's left coset gH (int64 `[order]`, labels 0.. in order of first appearance)."""
        return self._cosets(subgroup, left=True)

    def right_cosets(self, subgroup: list[int]) -> Int[Tensor, " order"]:
        """Label of each element's right coset Hg (int64 `[order]`)."""
        return self._cosets(subgroup, left=False)

    def _cosets(self, subgroup: list[int], left: bool) -> Tensor:
        if not self.is_subgroup(subgroup):
            raise ValueError(f"subgroup: expected the indices of a subgroup of {self.name}; got {subgroup}")
        h = torch.as_tensor(subgroup, dtype=torch.long)
        label = torch.full((self.order,), -1, dtype=torch.long)
        n = 0
        for g in range(self.order):
            if label[g] < 0:
                members = self.table[g, h] if left else self.table[h, g]
                label[members] = n
                n += 1
        return label


def from_permutations(name: str, elements: list[tuple[int, ...]], generators: list[tuple[int, ...]]) -> Group:
    """A `Group` from its permutations (in the order given; the identity must be among them) and generators."""
    table = multiplication_table(elements)
    lookup = {p: i for i, p in enumerate(elements)}
    identity = lookup.get(tuple(range(len(elements[0]))))
    if identity is None:
        raise ValueError("elements: the identity permutation is missing")
    inverse = (table == identity).nonzero()[:, 1]
    return Group(name, list(elements), table, identity, inverse, [lookup[g] for g in generators])


def symmetric(n: int) -> Group:
    """S_n (1 <= n <= 7), order n!, sorted permutations, generated by the adjacent transpositions (i, i+1)."""
    n = checked_int(n, "n", 1, "an integer >= 1")
    return from_permutations(f"S{n}", *_elements("S", n))


def alternating(n: int) -> Group:
    """A_n (2 <= n <= 7), the even permutations, order n!/2; generated by the 3-cycles 0 -> 1 -> i -> 0."""
    n = checked_int(n, "n", 2, "an integer >= 2")
    return from_permutations(f"A{n}", *_elements("A", n))


def cyclic(n: int) -> Group:
    """C_n (n >= 1): the rotations i -> i + k mod n, index k; generated by k = 1."""
    n = checked_int(n, "n", 1, "an integer >= 1")
    return from_permutations(f"C{n}", *_elements("C", n))


def dihedral(n: int) -> Group:
    """D_n (n >= 3), the symmetries of the n-gon, order 2n: r^k (i -> i + k) at index k, r^k s (i -> k - i) at
    index n + k; generated by r and s."""
    n = checked_int(n, "n", 3, "an integer >= 3")
    return from_permutations(f"D{n}", *_elements("D", n))


def _elements(kind: str, n: int):
    try:
        return group_elements(f"{kind}{n}")
    except ValueError as e:
        raise ValueError(f"n: {e}") from None


@functools.lru_cache(maxsize=16)
def group_by_name(name: str) -> Group:
    """ "S4", "A5", "C12", "D6", ... -> the group (cached: one shared `Group` per name; treat it as read-only)."""
    makers = {"S": symmetric, "A": alternating, "C": cyclic, "D": dihedral}
    kind, n = parse_group_name(name)
    return makers[kind](n)
