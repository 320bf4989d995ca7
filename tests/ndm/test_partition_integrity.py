"""SubspacePartition integrity: non-finite rotations and MI are refused (given or loaded), and `==` compares the
fields, so a partition equals itself after a save/load round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import tl_tensorsim as ts
from tl_tensorsim.artifacts import Provenance
from tl_tensorsim.ndm import SubspacePartition


def random_orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))).Q


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rotation_is_refused(value):
    r = torch.eye(8, dtype=torch.float64)
    r[0, 0] = value  # NaN used to pass the orthogonality test (NaN > tol is False)
    with pytest.raises(ValueError, match=r"R: expected a finite orthogonal matrix; got 1 NaN/inf entries of 64"):
        SubspacePartition(r, [4, 4])
    with pytest.raises(ValueError, match="got 64 NaN/inf entries of 64"):
        SubspacePartition(torch.full((8, 8), value, dtype=torch.float64), [8])


def test_non_finite_mi_is_refused():
    mi = torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]])
    with pytest.raises(ValueError, match="mi: expected finite mutual information estimates; got 2 NaN/inf"):
        SubspacePartition(torch.eye(4), (2, 2), mi=mi)
    with pytest.raises(TypeError, match="mi: expected None or a .* tensor; got list"):
        SubspacePartition(torch.eye(4), (2, 2), mi=[[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("field", ["R", "mi"])
def test_loading_a_non_finite_field_is_refused(tmp_path, field):
    part = SubspacePartition(random_orthogonal(6), (3, 3), mi=torch.tensor([[0.0, 0.2], [0.2, 0.0]]))
    part.save(tmp_path / "p")
    tensors = load_file(tmp_path / "p" / "tensors.safetensors")
    tensors[field][0, 1] = float("nan")
    save_file(tensors, tmp_path / "p" / "tensors.safetensors")
    with pytest.raises(
        ValueError, match=rf"directory: .*p holds an invalid SubspacePartition: {field}: expected (a )?fin"
    ):
        ts.load(tmp_path / "p")


def test_equality_compares_fields_and_survives_a_round_trip(tmp_path):
    mi = torch.tensor([[0.0, 0.2], [0.2, 0.0]])
    history = {"step": [1, 2], "loss": [0.5, 0.25], "mean_mi": [float("nan"), 0.2], "checks": [{"merged": []}]}
    prov = Provenance(models=("toy",), settings={"seed": 3})
    part = SubspacePartition(random_orthogonal(6), (3, 3), loss=0.25, mi=mi, history=history, provenance=prov)
    assert part == part and not (part != part)  # used to raise: the truth value of a tensor is ambiguous
    part.save(tmp_path / "p")
    loaded = ts.load(tmp_path / "p")
    assert loaded == part and SubspacePartition.load(tmp_path / "p") == part  # NaN in history equals NaN
    assert hash(loaded) == hash(part) and len({part, loaded}) == 1
    # provenance is not compared; every other field is
    assert part == SubspacePartition(random_orthogonal(6), (3, 3), loss=0.25, mi=mi, history=history)
    others = [
        SubspacePartition(random_orthogonal(6, seed=1), (3, 3), loss=0.25, mi=mi, history=history),
        SubspacePartition(random_orthogonal(6), (2, 4), loss=0.25, mi=mi, history=history),
        SubspacePartition(random_orthogonal(6), (3, 3), loss=0.5, mi=mi, history=history),
        SubspacePartition(random_orthogonal(6), (3, 3), loss=0.25, mi=None, history=history),
        SubspacePartition(random_orthogonal(6), (3, 3), loss=0.25, mi=2 * mi, history=history),
        SubspacePartition(random_orthogonal(6), (3, 3), loss=0.25, mi=mi, history={}),
        SubspacePartition(random_orthogonal(6), (3, 3), method="random", loss=0.25, mi=mi, history=history),
    ]
    assert all(other != part and not (other == part) for other in others)
    assert part != "not a partition" and part != random_orthogonal(6)


def test_a_fitted_partition_equals_its_loaded_copy(tmp_path):
    acts = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    part = ts.fit_ndm(acts, unit_size=4, max_steps=12, merge_start=4, merge_interval=4, key_pool=64,
                      batch_size=16, mi_queries=32, mi_keys=32, progress=False)  # fmt: skip
    part.save(tmp_path / "fit")
    assert ts.load(tmp_path / "fit") == part
    assert SubspacePartition.random([4] * 4) == SubspacePartition.random([4] * 4)
    assert SubspacePartition.random([4] * 4, seed=1) != SubspacePartition.random([4] * 4)
