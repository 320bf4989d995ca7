"""The one save/load: safetensors + cfg.json, atomic, typed, never pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from tl_tensorsim.artifacts import CONFIG_FILE, TENSORS_FILE, Artifact, DictConfig, load_artifact, save_artifact


@dataclass
class _Result(Artifact):
    values: torch.Tensor
    hook_name: str

    def _tensors(self):
        return {"values": self.values}

    def _config(self):
        return {"hook_name": self.hook_name}

    @classmethod
    def _from_parts(cls, tensors, config):
        return cls(values=tensors["values"], **config)


def test_round_trip_records_kind_and_version(tmp_path):
    r = _Result(torch.randn(3, 4, dtype=torch.float64), "blocks.0.hook_resid_post")
    path = r.save(tmp_path / "res")
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, TENSORS_FILE])
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["kind"] == "_Result" and "tl_tensorsim_version" in meta and meta["hook_name"] == r.hook_name
    back = _Result.load(path)
    assert torch.equal(back.values, r.values) and back.values.dtype == torch.float64 and back.hook_name == r.hook_name


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
    assert torch.equal(_Result.load(target).values, torch.ones(2))  # the earlier result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temporary folders left


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
