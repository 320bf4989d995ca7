"""`circuits.das_ceiling`: the learned subspace is orthonormal, training lowers the loss, and the held-out effect of
the supervised subspace beats a random subspace of the same width (induction model, previous-token test); a saved
`DASResult` loads back field for field, also in a fresh process, and its share is NaN when the whole space has no
effect."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

import tl_tensorsim as ts
from tl_tensorsim.artifacts import Provenance
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


@pytest.fixture(scope="module")
def small_das(induction_model):
    ds = induction_dataset(64, n=16, length=8, bos_token_id=64, seed=3)
    test = PatchingTest("prev", "blocks.0.hook_resid_post", ds, "relabel", ("keys",))
    return das_ceiling(induction_model, test, 4, steps=3, batch_size=8)


def test_das_is_reachable_from_the_package_and_loads_in_a_fresh_process(small_das, tmp_path):
    from tl_tensorsim import circuits

    assert circuits.das.das_ceiling is das_ceiling is circuits.das_ceiling and circuits.DASResult is DASResult
    assert {"das", "das_ceiling", "DASResult"} <= set(circuits.__all__)
    folder = small_das.save(tmp_path / "das")
    # the Artifact kinds are registered on import: `import tl_tensorsim` alone must know DASResult
    code = f"import tl_tensorsim as ts\nr = ts.load({str(folder)!r})\nprint(type(r).__name__, repr(r.effect))\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["DASResult", repr(small_das.effect)]


def _assert_same_fields(a, b, where):
    assert type(a) is type(b), where
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x) and not isinstance(x, Provenance):
            _assert_same_fields(x, y, f"{where}.{f.name}")
        elif isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), f"{where}.{f.name}"
        else:
            assert x == y, f"{where}.{f.name}: {x!r} -> {y!r}"


def test_das_result_round_trips_every_field(small_das, tmp_path):
    with_var = dataclasses.replace(
        small_das,
        held_out=dataclasses.replace(small_das.held_out, variances=torch.tensor([0.25, 1.5], dtype=torch.float64)),
    )
    for name, res in (("trained", small_das), ("with variances", with_var)):
        assert res.held_out.test == "prev" and res.held_out.provenance.models  # not the defaults
        loaded = ts.load(res.save(tmp_path / name.replace(" ", "_")))
        _assert_same_fields(res, loaded, name)
        assert loaded.held_out.provenance == res.held_out.provenance and loaded.provenance == res.provenance


def test_das_share_is_nan_when_the_whole_space_has_no_effect(induction_model):
    ds = induction_dataset(64, n=16, length=8, bos_token_id=64, seed=4)
    ds.corrupted["relabel"] = ds.clean.clone()  # the corrupted run is the clean one: nothing to patch
    res = das_ceiling(induction_model, PatchingTest("same", "blocks.0.hook_resid_post", ds, "relabel", ("keys",)), 4,
                      steps=2, batch_size=8)  # fmt: skip
    assert res.held_out.whole_effect == 0 and res.effect == 0 and math.isnan(res.share)
    assert "the whole space has no effect" in repr(res)
    assert math.isnan(res.held_out.to_dataframe()["share of whole"][0])  # the same convention
