"""The task of `models.group_mlp`: a finite permutation group's elements, generators and multiplication table.
They live in the model layer (below the analyses) because the model trains on them; `tl_tensorsim.proofs.groups.Group`
builds on these. Convention: (x ⋆ y)[i] = x[y[i]] (apply y first).
"""

from __future__ import annotations

from itertools import permutations
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["group_elements", "multiplication_table"]


def _parity(p: tuple[int, ...]) -> int:
    """0 for even permutations, 1 for odd ones."""
    seen, cycles = [False] * len(p), 0
    for i in range(len(p)):
        if not seen[i]:
            cycles += 1
            j = i
            while not seen[j]:
                seen[j] = True
                j = p[j]
    return (len(p) - cycles) % 2


def parse_group_name(name: Any, argument: str = "name") -> tuple[str, int]:
    """("S", 5) from "S5": a kind among S, A, C, D and a number written without leading zeros (a ValueError
    naming `argument` otherwise; the range of n is each kind's own)."""
    kind, digits = (name[:1], name[1:]) if isinstance(name, str) else ("", "")
    if kind not in ("S", "A", "C", "D") or not digits.isdigit():
        raise ValueError(f"{argument}: expected 'S<n>', 'A<n>', 'C<n>' or 'D<n>'; got {name!r}")
    if digits != str(int(digits)):
        raise ValueError(f"{argument}: expected no leading zeros; got {name!r} (did you mean '{kind}{int(digits)}'?)")
    return kind, int(digits)


def group_elements(name: str) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The permutations and generators of the group `name`: "S<n>" (n <= 7; sorted permutations, generators the
    adjacent transpositions), "A<n>" (2 <= n <= 7; the even ones, generators the 3-cycles 0 -> 1 -> i -> 0),
    "C<n>" (rotations i -> i + k at index k, generator k = 1), "D<n>" (n >= 3: r^k at index k, the reflection
    i -> k - i at index n + k; generators r, s)."""
    kind, n = parse_group_name(name, "group")
    low = {"S": 1, "A": 2, "C": 1, "D": 3}[kind]
    if n < low or (kind in "SA" and n > 7):
        raise ValueError(f"group: {kind}<n> needs {low} <= n{' <= 7' if kind in 'SA' else ''}; got {name!r}")
    if kind in "SA":
        elements = sorted(permutations(range(n)))
        if kind == "S":
            gens = [tuple(i + 1 if j == i else i if j == i + 1 else j for j in range(n)) for i in range(n - 1)]
            return elements, gens
        gens = []
        for i in range(2, n):
            p = list(range(n))
            p[0], p[1], p[i] = 1, i, 0  # 0 -> 1 -> i -> 0
            gens.append(tuple(p))
        return [p for p in elements if _parity(p) == 0], gens
    rot = [tuple((i + k) % n for i in range(n)) for k in range(n)]
    if kind == "C":
        return rot, [rot[1 % n]]
    ref = [tuple((k - i) % n for i in range(n)) for k in range(n)]
    return rot + ref, [rot[1], ref[0]]


def multiplication_table(elements: list[tuple[int, ...]]) -> Int[Tensor, "order order"]:
    """`table[x, y]` = index of x ⋆ y, (x ⋆ y)[i] = x[y[i]] (a `ValueError` if the set is not closed)."""
    lookup = {p: i for i, p in enumerate(elements)}
    if len(lookup) != len(elements):
        raise ValueError(f"elements: expected distinct permutations; got {len(elements) - len(lookup)} repeats")
    table = torch.empty(len(elements), len(elements), dtype=torch.long)
    for i, x in enumerate(elements):
        for j, y in enumerate(elements):
            k = lookup.get(tuple(x[t] for t in y))
            if k is None:
                raise ValueError(f"elements: not closed under composition ({x} ⋆ {y} is missing)")
            table[i, j] = k
    return table
