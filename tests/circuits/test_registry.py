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


def test_known_by_model_and_task():
    from tl_tensorsim.circuits import known

    ioi = known("gpt2-small", "ioi")
    assert ioi == get_circuit("ioi") and ioi.paper.startswith("Wang et al. 2022")
    assert known("gpt2", "greater_than").mlps == (0, 1, 2, 3, 8, 9, 10, 11)
    assert set(known("gpt2", "induction").classes["induction"]) == {(5, 5), (5, 8), (5, 9), (6, 9)}
    pts = ioi.hook_points("name mover")
    assert pts == [("blocks.9.attn.hook_z", 9), ("blocks.10.attn.hook_z", 0), ("blocks.9.attn.hook_z", 6)]
    assert len(ioi.hook_points()) == 26
    assert known("gpt2", "greater_than").hook_names()["mlp"][0] == ("blocks.0.hook_mlp_out", -1)
    with pytest.raises(ValueError, match=r"no known circuit for \('gpt2', 'docstring'\)"):
        known("gpt2", "docstring")
    with pytest.raises(ValueError, match="classes: unknown head class 'movers'"):
        ioi.hook_points("movers")
    with pytest.raises(ValueError, match="hook: expected a per-head hook point"):
        ioi.hook_points(hook="hook_resid_post")


def test_induction_2l_heads_match_the_shipped_model(induction_model):
    """The registry's heads of the embedded model are the ones detect_head finds (an independent check)."""
    from transformer_lens.head_detector import detect_head

    from tl_tensorsim.circuits import known

    c = known("induction_2l", "induction")
    model = induction_model
    seq = [" ".join(f"t{i}" for i in (5, 9, 2, 17, 33, 8, 41, 12) * 2)]
    for cls, pattern in (("previous token", "previous_token_head"), ("induction", "induction_head")):
        scores = detect_head(model, seq, pattern, exclude_bos=True)
        found = {(int(a), int(b)) for a, b in (scores > 0.5).nonzero()}
        assert found == set(c.classes[cls]), (cls, scores)
    # the hook points fire on the model with the named head
    names = {n for n, _ in c.hook_points()}
    assert names <= set(model.hook_dict)
