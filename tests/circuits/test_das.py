"""`circuits.das_ceiling`: the learned subspace is orthonormal, training lowers the loss, and the held-out effect of
the supervised subspace beats a random subspace of the same width (induction model, previous-token test)."""

from __future__ import annotations

import pytest
import torch

import tl_tensorsim as ts
from tl_tensorsim.circuits.das import DASResult, das_ceiling
from tl_tensorsim.circuits.datasets import induction_dataset
from tl_tensorsim.circuits.patching import PatchingTest, subspace_patching
from tl_tensorsim.ndm import SubspacePartition


def test_das_learns_the_previous_token_subspace(induction_model, tmp_path):
    ds = induction_dataset(64, n=48, length=12, bos_token_id=64, seed=7)
    test = PatchingTest("prev", "blocks.0.hook_resid_post", ds, "relabel", ("keys",))
    res = das_ceiling(induction_model, test, 8, steps=40, lr=5e-2, batch_size=24)
    assert res.basis.shape == (64, 8) and res.basis.dtype == torch.float64
    torch.testing.assert_close(res.basis.T @ res.basis, torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)
    assert sum(res.losses[-5:]) < 0.5 * sum(res.losses[:5])
    held = ds.subset(slice(24, 48), trim=False)
    held_test = PatchingTest("prev", test.hook_name, held, "relabel", ("keys",))
    rand = subspace_patching(induction_model, SubspacePartition.random([8, 56], seed=1), held_test)
    assert res.effect > 2 * float(rand.effects[0]) and 0 < res.share <= 1.05
    loaded = ts.load(res.save(tmp_path / "das"))
    assert isinstance(loaded, DASResult) and torch.equal(loaded.basis, res.basis) and loaded.effect == res.effect
    with pytest.raises(ValueError, match="size: expected a subspace width in 1..63"):
        das_ceiling(induction_model, test, 64)
    with pytest.raises(ValueError, match="train_fraction: expected a number in"):
        das_ceiling(induction_model, test, 8, train_fraction=1.0)
