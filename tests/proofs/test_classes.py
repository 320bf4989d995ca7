"""The combinatorial counters against `itertools.product` enumeration, written independently of the package."""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_tensorsim.proofs.max_of_k import (
    all_inputs,
    certified_count,
    certified_inputs,
    class_of,
    class_sizes,
    valid_classes,
)


def covered(good: torch.Tensor, seq: tuple[int, ...]) -> bool:
    """The good-set rule, spelled out for one sequence."""
    q, m = seq[-1], max(seq)
    nonmax = [t for t in seq[:-1] if t < m]
    c = len(nonmax)
    if q < m and c == len(seq) - 1:
        return False  # impossible: the max must occur somewhere
    if c == 0:
        return bool(good[q, m, 0, 0])
    return all(bool(good[q, m, k, c]) for k in nonmax)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(2, 6), st.integers(1, 4), st.integers(0, 2**16), st.floats(0.2, 1.0))
def test_counts_match_enumeration(V, n, seed, density):
    g = torch.Generator().manual_seed(seed)
    good = torch.rand(V, V, V, n, generator=g) < density
    good[..., 0] = good[:, :, :1, 0]  # c = 0 is recorded identically along k
    k_below_m = torch.arange(V)[None, None, :, None] < torch.arange(V)[None, :, None, None]  # [1, m, k, 1]
    good &= k_below_m | (torch.arange(n) == 0)
    good &= valid_classes(V, n)[:, :, None, :]
    enumerated = sum(covered(good, seq) for seq in itertools.product(range(V), repeat=n))
    tokens = all_inputs(V, n)
    assert certified_count(good) == enumerated == int(certified_inputs(good, tokens).sum())


def test_classes_partition_all_inputs():
    for V, n in ((5, 1), (6, 2), (5, 3), (4, 4), (3, 6)):
        good = torch.ones(V, V, V, n, dtype=torch.bool)
        sizes = class_sizes(good)
        assert int(sizes.sum()) == V**n
        counts = torch.zeros(V, V, n, dtype=torch.int64)
        for seq in itertools.product(range(V), repeat=n):
            q, m = seq[-1], max(seq)
            counts[q, m, sum(t < m for t in seq[:-1])] += 1
        assert torch.equal(sizes, counts)
        assert torch.equal(valid_classes(V, n), counts > 0)
        q, m, c = class_of(all_inputs(V, n))
        assert torch.equal(torch.bincount((q * V + m) * n + c, minlength=V * V * n).reshape(V, V, n), counts)


def test_all_inputs_streams_in_lexicographic_order():
    full = all_inputs(5, 3)
    assert full.shape == (125, 3) and full.tolist() == [list(s) for s in itertools.product(range(5), repeat=3)]
    assert torch.equal(all_inputs(5, 3, 40, 77), full[40:77])
    assert math.comb(3, 1) == 3  # the counters' C(n-1, c)
