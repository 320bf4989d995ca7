"""`positions=`: normalisation, range checks, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_tensorsim.hooks import check_positions, normalize_positions, positions_mask


def test_normalize_accepts_the_four_forms():
    assert normalize_positions(None) is None
    assert normalize_positions(3) == 3 and normalize_positions(-1) == -1
    assert normalize_positions(np.int64(2)) == 2
    assert normalize_positions(torch.tensor(4)) == 4
    long = normalize_positions(torch.tensor([0, 2, -1], dtype=torch.int32))
    assert long.dtype == torch.long and long.tolist() == [0, 2, -1]
    mask = torch.zeros(2, 5, dtype=torch.bool)
    assert normalize_positions(mask) is not None and normalize_positions(mask).shape == (2, 5)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (True, TypeError, "bool"),
        ([0, 1], TypeError, "list"),
        (1.5, TypeError, "float"),
        (torch.tensor([0.0, 1.0]), TypeError, "float32"),
        (torch.zeros(2, 3, dtype=torch.long), ValueError, "boolean mask"),
        (torch.zeros(5, dtype=torch.bool), ValueError, r"2-D \[batch, pos\]"),
    ],
)
def test_normalize_rejects(bad, error, match):
    with pytest.raises(error, match=match):
        normalize_positions(bad)


def test_range_checks_against_context_and_input():
    check_positions(15, n_ctx=16)
    check_positions(-16, n_ctx=16)
    with pytest.raises(ValueError, match=r"position 16 is out of range .*n_ctx=16.*-16 to 15"):
        check_positions(16, n_ctx=16)
    with pytest.raises(ValueError, match=r"position -17"):
        check_positions(-17, n_ctx=16)
    # the real length wins over n_ctx
    with pytest.raises(ValueError, match=r"position 6 is out of range for sequences of length 6"):
        check_positions(6, n_ctx=16, seq=6)
    with pytest.raises(ValueError, match=r"position 9 \(row 1\)"):
        check_positions(torch.tensor([0, 9, 2]), seq=6)
    with pytest.raises(ValueError, match="3 positions .* batch of 2"):
        check_positions(torch.tensor([0, 1, 2]), batch=2)
    with pytest.raises(ValueError, match="mask has 3 rows but the batch has 2"):
        check_positions(torch.zeros(3, 6, dtype=torch.bool), batch=2)
    with pytest.raises(ValueError, match="covers 5 positions but the sequences have 6"):
        check_positions(torch.zeros(2, 5, dtype=torch.bool), seq=6)
    with pytest.raises(ValueError, match="more than the model's n_ctx=16"):
        check_positions(torch.zeros(2, 17, dtype=torch.bool), n_ctx=16)


def test_masks():
    assert positions_mask(None, 2, 4) is None
    m = positions_mask(-1, 2, 4)
    assert m.tolist() == [[False, False, False, True]] * 2
    m = positions_mask(torch.tensor([0, -2]), 2, 4)
    assert m.tolist() == [[True, False, False, False], [False, False, True, False]]
    mask = torch.rand(2, 4) > 0.5
    assert torch.equal(positions_mask(mask, 2, 4), mask)
    with pytest.raises(ValueError, match="out of range"):
        positions_mask(4, 2, 4)


def test_checked_int_rejects_bools_non_integers_and_small_values():
    from tl_tensorsim.checks import checked_int

    assert checked_int(3, "n", 1, "a positive int") == 3
    with pytest.raises(TypeError, match=r"n: expected a positive int; got True \(bool\)"):
        checked_int(True, "n", 1, "a positive int")
    with pytest.raises(TypeError, match=r"n: expected a positive int; got 2\.5 \(float\)"):
        checked_int(2.5, "n", 1, "a positive int")
    with pytest.raises(ValueError, match="n: expected a positive int; got 0"):
        checked_int(0, "n", 1, "a positive int")
