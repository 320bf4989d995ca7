"""Every result type round-trips through `tl_tensorsim.load(dir)` as its own type, provenance included."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tl_tensorsim as ts
from tests.similarity.conftest import f64_model
from tests.tensor_networks.helpers import random_net
from tl_tensorsim.artifacts import CONFIG_FILE, Provenance
from tl_tensorsim.circuits import Circuit, get_circuit
from tl_tensorsim.tensor_networks import PerOutputSimilarity, TensorValue


@pytest.fixture(scope="module")
def models():
    return f64_model(0), f64_model(1)


@pytest.fixture(scope="module")
def nets():
    return [random_net(s, n_layers=1) for s in range(3)]


def _same_provenance(a: Provenance, b: Provenance) -> None:
    assert isinstance(b, Provenance) and b == a and b.date == a.date and b.settings == a.settings


def test_head_similarity(models, tmp_path):
    sim = ts.head_similarity(*models, "OV", "token", positions=True)
    p = sim.provenance
    assert p.models == tuple(dict.fromkeys(m.cfg.model_name for m in models))  # in order, each once
    assert p.settings["circuit"] == "OV" and p.settings["level"] == "token" and p.settings["dtype"] == "torch.float64"
    back = ts.load(sim.save(tmp_path / "h"))
    assert type(back) is ts.HeadSimilarity and back.labels_a == sim.labels_a and back.settings == sim.settings
    for name in ("values", "inner", "norms_sq_a", "norms_sq_b"):
        assert torch.equal(getattr(back, name), getattr(sim, name)) and getattr(back, name).dtype == torch.float64
    _same_provenance(sim.provenance, back.provenance)
    assert repr(back) == repr(sim)


def test_head_similarity_baseline_records_hooks(models, tmp_path):
    tokens = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    sim = ts.head_similarity(*models, metric="behavioral", tokens=tokens)
    assert sim.provenance.hooks == ("blocks.0.attn.hook_z", "blocks.1.attn.hook_z")
    back = ts.HeadSimilarity.load(sim.save(tmp_path / "b"))
    assert back.provenance.hooks == sim.provenance.hooks and back.metric == "behavioral"


def test_checkpoint_similarity(models, tmp_path):
    res = ts.checkpoint_similarity([models[0], models[1], models[0]], "QK", steps=[0, 10, 20], progress=False)
    assert res.provenance.settings["circuit"] == "QK" and res.provenance.models
    back = ts.load(res.save(tmp_path / "c"))
    assert type(back) is ts.CheckpointSimilarity and back.steps == [0, 10, 20] and back.labels == res.labels
    assert torch.equal(back.values, res.values)
    _same_provenance(res.provenance, back.provenance)


def test_tensor_similarity_matrix(nets, tmp_path):
    m = ts.tensor_similarity_matrix(nets, "gaussian", method="monte_carlo", samples=2000, steps=[1, 2, 3], output=[0])
    assert m.provenance.settings["seed"] == 0 and m.provenance.settings["output"] == [0]
    assert m.provenance.models == (nets[0].cfg.model_name,)  # each name once
    back = ts.load(m.save(tmp_path / "m"))
    assert type(back) is ts.TensorSimilarityMatrix and back.steps == [1, 2, 3] and back.output == [0]
    assert torch.equal(back.values, m.values) and torch.equal(back.stderr, m.stderr) and back.samples == 2000
    _same_provenance(m.provenance, back.provenance)


def test_tensor_value_and_per_output(nets, tmp_path):
    v = ts.tensor_similarity(nets[0], nets[1])
    assert v.provenance.settings["metric"] == "frobenius"
    back = ts.load(v.save(tmp_path / "v"))
    assert type(back) is TensorValue and float(back) == float(v) and back == v and back.method == "exact"
    _same_provenance(v.provenance, back.provenance)
    inner = ts.tensor_inner(nets[0], nets[1])
    inner.log_abs = -math.inf  # what an exact zero inner product records; Python's JSON keeps infinities
    assert ts.load(inner.save(tmp_path / "i")).log_abs == -math.inf
    per = ts.tensor_similarity(nets[0], nets[1], per_output=True)
    back = ts.load(per.save(tmp_path / "p"))
    assert type(back) is PerOutputSimilarity and torch.equal(back.values, per.values) and back.stderr is None
    assert float(back[1]) == float(per[1]) and back[1].provenance == per.provenance
    _same_provenance(per.provenance, back.provenance)


def test_circuit_saves_and_the_shipped_json_still_loads(tmp_path):
    ioi = get_circuit("ioi")
    assert len(ioi.heads) == 26 and ioi.head_class(9, 9) == "name mover"  # the shipped JSON
    back = ts.load(ioi.save(tmp_path / "ioi"))
    assert type(back) is Circuit and back == ioi and back.classes["induction"][0] == (5, 5)
    assert isinstance(back.mlps, tuple) and Circuit.from_dict(back.to_dict()) == ioi
    meta = json.loads((tmp_path / "ioi" / CONFIG_FILE).read_text())
    assert meta["kind"] == "Circuit" and meta["fields"]["name"] == "ioi" and "provenance" not in ioi.to_dict()


def test_type_load_checks_the_kind(models, tmp_path):
    path = get_circuit("induction").save(tmp_path / "c")
    with pytest.raises(ValueError, match=r"holds a 'Circuit', not a 'HeadSimilarity'; tl_tensorsim.load"):
        ts.HeadSimilarity.load(path)
