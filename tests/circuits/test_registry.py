"""The shipped ground-truth circuits match the published head sets (circuits note §8)."""

from __future__ import annotations

import pytest

from tl_tensorsim.circuits import Circuit, available_circuits, get_circuit


def test_ioi_has_26_heads_in_7_disjoint_classes():
    ioi = get_circuit("ioi")
    assert len(ioi.classes) == 7
    all_heads = [h for hs in ioi.classes.values() for h in hs]
    assert len(all_heads) == len(set(all_heads)) == 26  # no head in two classes
    assert ioi.head_class(9, 9) == "name mover" and ioi.head_class(0, 0) is None
    assert set(ioi.classes["induction"]) == {(5, 5), (5, 8), (5, 9), (6, 9)}


def test_greater_than_sets():
    gt = get_circuit("greater_than")
    assert set(gt.classes["mid"]) == {(5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)}
    assert set(gt.classes["early"]) == {(0, 1), (0, 3), (0, 5)}
    assert gt.mlps == (0, 1, 2, 3, 8, 9, 10, 11)


def test_round_trip_and_unknown_name():
    assert {"ioi", "greater_than", "induction"} <= set(available_circuits())
    c = get_circuit("induction")
    assert Circuit.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown circuit 'nope'"):
        get_circuit("nope")
