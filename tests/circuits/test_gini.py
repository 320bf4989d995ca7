"""`circuits.gini` against a brute-force double loop and the hand values of ndm.md §5 item 10."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_tensorsim.circuits import gini
from tl_tensorsim.circuits.gini import gini_inputs


def _brute(effects, share=None):
    x = [abs(float(e)) for e in effects]
    total = sum(x)
    x = [v / total for v in x]
    if share is not None:
        x = [v / s for v, s in zip(x, share)]
    s = len(x)
    num = sum(abs(a - b) for a in x for b in x)
    return num / (2 * s * sum(x))


@pytest.mark.parametrize("seed", range(5))
def test_matches_double_loop(seed):
    rng = np.random.default_rng(seed)
    s = int(rng.integers(1, 20))
    eff = rng.normal(size=s)
    sizes = rng.integers(1, 9, size=s)
    var = rng.uniform(0.1, 3.0, size=s)
    assert gini(eff) == pytest.approx(_brute(eff), abs=1e-12)
    assert gini(eff, sizes=sizes, normalize="dim") == pytest.approx(_brute(eff, sizes / sizes.sum()), abs=1e-12)
    assert gini(eff, variances=var, normalize="var") == pytest.approx(_brute(eff, var / var.sum()), abs=1e-12)


def test_hand_values_and_invariances():
    assert gini([2.0, 2.0, 2.0, 2.0]) == 0.0
    for s in (1, 2, 5, 12):
        one_hot = [0.0] * s
        one_hot[s // 2] = -3.5  # the sign is dropped
        assert gini(one_hot) == pytest.approx((s - 1) / s, abs=1e-15)
    assert gini([1.0, 3.0]) == pytest.approx(0.25)  # x = (1/4, 3/4): (2 * 1/2) / (2 * 2 * 1)
    eff = torch.tensor([0.3, -1.2, 0.05, 2.0], dtype=torch.float64)
    assert gini(eff) == pytest.approx(gini(7.0 * eff), abs=1e-12)  # scale invariance
    assert gini(eff) == pytest.approx(gini(eff.flip(0)), abs=1e-12)  # order invariance
    # effects proportional to dimension shares: per-dim Gini 0, raw Gini not
    sizes = [8, 16, 32, 8]
    assert gini(sizes, sizes=sizes, normalize="dim") == pytest.approx(0.0, abs=1e-12)
    assert gini(sizes) > 0.2
    assert np.isnan(gini([0.0, 0.0, 0.0]))
    x = gini_inputs([1.0, 1.0], sizes=[1, 3], normalize="dim")
    assert x.dtype == np.float64 and x.tolist() == pytest.approx([2.0, 2.0 / 3.0])


def test_argument_errors():
    with pytest.raises(ValueError, match="normalize: expected one of"):
        gini([1.0, 2.0], normalize="size")
    with pytest.raises(ValueError, match='sizes: normalize="dim" needs'):
        gini([1.0, 2.0], normalize="dim")
    with pytest.raises(ValueError, match='variances: normalize="var" needs'):
        gini([1.0, 2.0], normalize="var")
    with pytest.raises(ValueError, match="sizes: expected 2 values"):
        gini([1.0, 2.0], sizes=[1, 2, 3], normalize="dim")
    with pytest.raises(ValueError, match="sizes: expected 2 values"):
        gini([1.0, 2.0], sizes=[1, 2, 3])
    with pytest.raises(ValueError, match="sizes: expected positive integer"):
        gini([1.0, 2.0], sizes=[0, 2], normalize="dim")
    with pytest.raises(ValueError, match="variances: expected positive"):
        gini([1.0, 2.0], variances=[-1.0, 2.0], normalize="var")
    with pytest.raises(ValueError, match="effects: expected a 1-D vector"):
        gini([[1.0, 2.0]])
    with pytest.raises(ValueError, match="effects: expected at least one"):
        gini([])
    with pytest.raises(ValueError, match="effects: expected finite"):
        gini([1.0, float("nan")])
    with pytest.raises(TypeError, match="effects: expected a 1-D sequence"):
        gini(["a", object()])
