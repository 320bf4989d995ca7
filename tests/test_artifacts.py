"""The one save/load: safetensors + cfg.json, atomic, typed, never pickle; declared results with provenance."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass, field

import pytest
import torch

import tl_tensorsim as ts
from tl_tensorsim.artifacts import (
    CONFIG_FILE,
    FORMAT_VERSION,
    TENSORS_FILE,
    Artifact,
    DictConfig,
    Provenance,
    expect_shape,
    load_artifact,
    save_artifact,
)


@dataclass
class _Result(Artifact):
    values: torch.Tensor
    hook_name: str


@dataclass
class _Declared(Artifact):
    """Every kind of field the mechanism reads back by annotation."""

    values: torch.Tensor
    pairs: tuple[tuple[int, int], ...]
    names: list[str]
    groups: dict[str, tuple[int, ...]]
    scale: float = 1.0
    stderr: torch.Tensor | None = None
    output: int | list[int] | None = None
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        expect_shape("values", self.values, (len(self.names),), "one per name")


def test_round_trip_records_kind_and_version(tmp_path):
    r = _Result(torch.randn(3, 4, dtype=torch.float64), "blocks.0.hook_resid_post")
    path = r.save(tmp_path / "res")
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, TENSORS_FILE])
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["kind"] == "_Result" and "tl_tensorsim_version" in meta and meta["fields"]["hook_name"] == r.hook_name
    assert meta["format_version"] == FORMAT_VERSION and meta["tensors"]["values"] == {
        "dtype": "float64",
        "shape": [3, 4],
    }
    back = _Result.load(path)
    assert torch.equal(back.values, r.values) and back.values.dtype == torch.float64 and back.hook_name == r.hook_name
    assert isinstance(ts.load(path), _Result) and isinstance(Artifact.load(path), _Result)


def test_fields_are_declared_not_hand_written(tmp_path):
    r = _Declared(
        values=torch.arange(3, dtype=torch.float32),
        pairs=((0, 1), (2, 3)),
        names=["a", "b", "c"],
        groups={"x": (1, 2)},
        output=[0, 2],
        provenance=Provenance(models=("m",), hooks=("blocks.0.hook_z",), settings={"dtype": torch.float64}),
    )
    path = r.save(tmp_path / "r")
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert set(meta["tensors"]) == {"values"} and meta["fields"]["stderr"] is None  # an unset optional tensor
    back = ts.load(path)
    assert torch.equal(back.values, r.values) and back.values.dtype == torch.float32
    assert [back.pairs, back.names, back.groups, back.scale] == [r.pairs, r.names, r.groups, r.scale]
    assert isinstance(back.pairs[0], tuple) and isinstance(back.groups["x"], tuple) and back.output == [0, 2]
    assert back.provenance == r.provenance and back.provenance.settings == {"dtype": "torch.float64"}
    with_err = _Declared(torch.zeros(1), (), ["a"], {}, stderr=torch.ones(2, 2, dtype=torch.float64), output=3)
    back = ts.load(with_err.save(tmp_path / "e"))
    assert torch.equal(back.stderr, with_err.stderr) and back.output == 3


def test_provenance_defaults_and_normalises():
    p = Provenance(models=("a", "b", "a", None), hooks="blocks.0.hook_z", settings={"r": range(2), "t": torch.ones(3)})
    assert p.models == ("a", "b") and p.hooks == ("blocks.0.hook_z",)
    assert p.settings == {"r": [0, 1], "t": "tensor [3] float32"}  # JSON-ready, never fails an analysis
    assert p.library_version == ts.artifacts.library_version() and p.date.endswith("+00:00")
    assert Provenance.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_wrong_kind_and_missing_folder(tmp_path):
    save_artifact(tmp_path / "x", {"a": torch.zeros(2)}, {}, kind="Other")
    with pytest.raises(ValueError, match="holds a 'Other', not a '_Result'"):
        _Result.load(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="holds no saved result"):
        load_artifact(tmp_path / "missing")


def test_failed_save_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "res"
    _Result(torch.ones(2), "a").save(target)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_artifact(target, {"values": torch.zeros(2)}, {"bad": object()}, kind="_Result")
    with pytest.raises(TypeError, match=r"tensors\['values'\]"):
        save_artifact(target, {"values": [1, 2]}, {}, kind="_Result")
    with pytest.raises(TypeError, match="hook_name: .*not JSON-serialisable"):
        _Result(torch.zeros(2), object()).save(target)
    with pytest.raises(ValueError, match=r"values: expected shape \[1\] \(one per name\); got \[2\]"):
        _Declared(torch.zeros(2), (), ["a"], {}).save(target)  # _check runs before anything is written
    assert torch.equal(_Result.load(target).values, torch.ones(2))  # the earlier result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temporary folders left


def test_save_replaces_a_result_but_not_other_folders(tmp_path):
    target = tmp_path / "res"
    _Result(torch.ones(2), "a").save(target)
    _Result(torch.zeros(3), "b").save(target)
    assert ts.load(target).hook_name == "b" and sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"notes exists and holds other files \['todo.txt'\]"):
        _Result(torch.ones(2), "a").save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_save_respects_the_umask(tmp_path):
    before = os.umask(0o022)
    try:
        path = _Result(torch.ones(2), "a").save(tmp_path / "shared" / "res")
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # was 0700 (tempfile.mkdtemp)
    for name in (TENSORS_FILE, CONFIG_FILE):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o644, name  # the tensors file was 0600


def test_shared_memory_tensors_are_saved(tmp_path):
    @dataclass
    class _Two(Artifact):
        a: torch.Tensor
        b: torch.Tensor

    x = torch.arange(6.0)
    back = ts.load(_Two(x[:3], x[3:]).save(tmp_path / "two"))
    assert torch.equal(back.a, x[:3]) and torch.equal(back.b, x[3:])


def test_kinds_register_once_and_can_be_named():
    assert ts.artifacts._KINDS["_Result"] is _Result
    with pytest.raises(TypeError, match="kind: '_Result' is already registered by tests.test_artifacts._Result"):

        @dataclass
        class _Other(Artifact, kind="_Result"):  # a different class under a taken name
            x: int

    @dataclass
    class _Named(Artifact, kind="test_artifacts.named"):
        x: int

    assert ts.artifacts._KINDS["test_artifacts.named"] is _Named


def test_load_names_a_kind_whose_module_is_not_imported(tmp_path, monkeypatch):
    """Every shipped kind is registered once the package is imported; a user's own kind loads once its module
    is imported, and before that the error says so."""
    (tmp_path / "lazy_results_mod.py").write_text(
        "from dataclasses import dataclass\n"
        "import torch\n"
        "from tl_tensorsim.artifacts import Artifact\n\n"
        "@dataclass\n"
        "class LazyResult(Artifact):\n"
        "    values: torch.Tensor\n"
        "    note: str\n"
    )
    fields = {"note": "hi"}
    listing = {"values": {"dtype": "float32", "shape": [2]}}
    path = save_artifact(
        tmp_path / "r", {"values": torch.ones(2)}, {"fields": fields, "tensors": listing}, "LazyResult"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "LazyResult" not in ts.artifacts._KINDS
    with pytest.raises(ValueError, match="unknown kind 'LazyResult'.*import the module that defines it"):
        ts.load(path)
    try:
        import lazy_results_mod  # noqa: F401

        back = ts.load(path)
    finally:
        ts.artifacts._KINDS.pop("LazyResult", None)
        sys.modules.pop("lazy_results_mod", None)
    assert type(back).__name__ == "LazyResult" and back.note == "hi" and torch.equal(back.values, torch.ones(2))


def test_round_trip_keeps_the_order_of_mappings(tmp_path):
    """cfg.json keeps insertion order (it was written with sorted keys): per-layer dicts, nested values and
    provenance settings come back in the order they were built, so `blocks.2` stays before `blocks.10`."""
    names = ["blocks.2.hook_resid_post", "blocks.10.hook_resid_pre", "blocks.1.hook_resid_mid"]
    r = _Declared(
        values=torch.zeros(3),
        pairs=(),
        names=names,
        groups={n: (i,) for i, n in enumerate(names)},
        provenance=Provenance(settings={"z": 1, "a": {"y": 2, "b": 3}}),
    )
    back = ts.load(r.save(tmp_path / "r"))
    assert back.names == names and list(back.groups) == names and back.groups == r.groups
    assert list(back.provenance.settings) == ["z", "a"] and list(back.provenance.settings["a"]) == ["y", "b"]
    meta = json.loads((tmp_path / "r" / CONFIG_FILE).read_text())
    assert list(meta)[:3] == ["kind", "format_version", "tl_tensorsim_version"]  # what it is, first
    assert list(meta["fields"]["groups"]) == names


def test_load_returns_a_saved_model(tmp_path):
    """`ts.load` on a saved HookedTensorNetwork returns it (it named an unknown kind and told the user to import
    a module); a shipped trained model comes back as its module's `load`."""
    from tl_tensorsim.models import group_mlp

    net = ts.HookedTensorNetwork(ts.TensorNetworkConfig(d_in=4, d_model=3, d_hidden=5, d_out=2, seed=1))
    back = ts.load(net.save(tmp_path / "net"))
    assert isinstance(back, ts.HookedTensorNetwork) and back.cfg == net.cfg
    x = torch.randn(2, 4)
    assert torch.equal(back(x), net(x))
    assert type(ts.load(group_mlp.shipped("S5")[0])).__name__ == "GroupMLP"


def test_load_names_the_call_for_a_training_checkpoint(tmp_path):
    path = save_artifact(tmp_path / "step", {"model/w": torch.zeros(1)}, {"step": 3}, kind="TrainingCheckpoint")
    with pytest.raises(ValueError, match=r"holds a 'TrainingCheckpoint'.*tl_tensorsim.training.load_run\(run_folder"):
        ts.load(path)


@dataclass
class _Settings(DictConfig):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    widths: list[int] = field(default_factory=lambda: [4, 8])
    name: str | None = None


def test_dict_config_round_trips_through_json_and_rejects_unknown_keys():
    cfg = _Settings(lr=0.5, betas=(0.8, 0.99), widths=[3], name="x")
    d = cfg.to_dict()
    assert d == {"lr": 0.5, "betas": (0.8, 0.99), "widths": [3], "name": "x"}
    back = _Settings.from_dict(json.loads(json.dumps(d)))  # JSON turns the tuple into a list
    assert back == cfg and isinstance(back.betas, tuple) and isinstance(back.widths, list)
    assert _Settings.from_dict({}) == _Settings()
    with pytest.raises(
        ValueError, match=r"unknown _Settings fields \['beta', 'nope'\]; expected a subset of \['betas', "
    ):
        _Settings.from_dict({**d, "beta": (0.1, 0.2), "nope": 1})
