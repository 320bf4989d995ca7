"""`validate_ndm` end to end on a GPT-2-shaped random-weight model with the real GPT-2 tokenizer.

The model is shrunk to fit the test budget (4 layers, d_model 32, the tests' layers remapped to 0-3), but it has
GPT-2's vocabulary (50,257) and n_ctx, and the prompts are the real IOI / greater-than prompts under the real
tokenizer, so positions, batching, the partitions' loading paths and the report run at GPT-2's token level. The
numbers are meaningless (random weights); the plumbing is not.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import tl_tensorsim as ts
from tl_tensorsim.adapter import ModelView
from tl_tensorsim.circuits.datasets import ioi_dataset
from tl_tensorsim.circuits.validate import METHODS, PAPER_GINI, TESTS, NDMValidation, paper_tests, validate_ndm
from tl_tensorsim.ndm import SubspacePartition

LAYERS = {"t1": 0, "t2": 1, "t3_pos": 2, "t3_name": 2, "t4": 3}
GPT2_SHAPED = dict(n_layers=4, d_model=32, n_heads=4, d_head=8, d_mlp=128, n_ctx=1024, d_vocab=50257,
                   act_fn="gelu_new", normalization_type="LN", model_name="gpt2-shaped-random", seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def gpt2_shaped(gpt2_tok):
    return ModelView.build(GPT2_SHAPED, tokenizer=gpt2_tok)


def test_paper_numbers():
    raw, dim = PAPER_GINI["raw"], PAPER_GINI["dim"]
    for table in (raw, dim):
        for m, vals in table.items():
            assert abs(sum(vals[:5]) / 5 - vals[5]) < 6e-4, m  # the stored means are the tests' means
    assert (round(raw["ndm"][5], 2), round(dim["ndm"][5], 2)) == (0.69, 0.71)
    assert (round(raw["identity"][5], 2), round(dim["identity"][5], 2)) == (0.33, 0.09)


def test_end_to_end_gpt2_shaped(gpt2_shaped, gpt2_tok, tmp_path):
    view = gpt2_shaped
    # layer 0: the released format (R-*.pt state dict + R_config JSON); layer 1: a saved folder; 2-3: fitted
    r0 = SubspacePartition.random([16, 8, 8], seed=5)
    torch.save({"R.parametrizations.weight.0.base": r0.R.float()}, tmp_path / "R-gpt2-x0.post.pt")
    (tmp_path / "R_config-gpt2-x0.post.json").write_text(json.dumps({"partition": [16, 8, 8]}))
    SubspacePartition.random([8, 8, 8, 8], seed=6).save(tmp_path / "x1")
    partitions = {0: (tmp_path / "R-gpt2-x0.post.pt", tmp_path / "R_config-gpt2-x0.post.json"), 1: tmp_path / "x1"}
    data = ioi_dataset(gpt2_tok, 24, seed=99).clean
    ndm = dict(sizes=[16, 16], max_steps=10, key_pool=256, mi_queries=100, mi_keys=300)
    res = validate_ndm(view, partitions=partitions, data=data, layers=LAYERS, n_prompts=12, ndm=ndm, progress=False)
    assert res.tests == TESTS and res.methods == METHODS
    assert res.hooks == ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post",
                         "blocks.2.hook_resid_post", "blocks.3.hook_resid_post")  # fmt: skip
    assert res.sizes["t1"] == [16, 8, 8] and res.sizes["t2"] == [8, 8, 8, 8] and res.sizes["t4"] == [16, 16]
    assert res.provenance.settings["fitted"] == ["blocks.2.hook_resid_post", "blocks.3.hook_resid_post"]
    g = res.gini
    assert bool(torch.isfinite(g).all()) and bool(((g >= 0) & (g < 1)).all())
    # every method patches the same whole space: one whole-space effect per test, and t3_pos / t3_name share a layer
    assert len(res.effects) == len(METHODS) * len(TESTS)
    for j, t in enumerate(TESTS):
        s = len(res.sizes[t])
        assert all(len(res.effects[f"{m}/{t}"]) == s for m in METHODS)
        assert float(res.best[0, j]) == max(res.effects[f"ndm/{t}"], key=abs)
    df = res.to_dataframe()
    assert set(df["method"]) == set(METHODS) and math.isclose(
        df[(df.method == "ndm") & (df.norm == "raw")]["paper mean"].item(), 0.689
    )
    assert list(res.effects_table()["test"]) == list(TESTS)
    assert res.plot(tmp_path / "gini.png").axes and (tmp_path / "gini.png").read_bytes()[:4] == b"\x89PNG"
    loaded = ts.load(res.save(tmp_path / "val"))
    assert isinstance(loaded, NDMValidation) and torch.equal(loaded.gini, res.gini) and loaded.effects == res.effects

    class _Report:  # the Report API used by report_section
        def __init__(self):
            self.items = []

        def section(self, title, level=2):
            self.items.append(("section", title))

        def text(self, md):
            self.items.append(("text", md))

        def table(self, rows, columns=None, caption=None):
            self.items.append(("table", rows))

        def figure(self, fig, name, caption=""):
            self.items.append(("figure", name))

    rep = _Report()
    res.report_section(rep)
    assert [k for k, _ in rep.items].count("table") == 2 and ("figure", "ndm_validation_gini") in rep.items


def test_paper_tests_positions_and_errors(gpt2_shaped, gpt2_tok):
    ioi = ioi_dataset(gpt2_tok, 4, seed=0)
    tests = paper_tests(ioi, ioi, tests=("t1", "t2", "t3_pos", "t3_name"))
    assert [t.hook_name for t in tests] == [f"blocks.{k}.hook_resid_post" for k in (4, 6, 8, 8)]
    assert tests[0].positions == ("IO+1", "S1+1") and tests[3].corruption == "s_name"
    with pytest.raises(ValueError, match="tests: unknown test 't5'"):
        paper_tests(ioi, ioi, tests=("t5",))
    with pytest.raises(ValueError, match="data: the partitions of"):
        validate_ndm(gpt2_shaped, layers=LAYERS, n_prompts=4, progress=False)
    with pytest.raises(ValueError, match="methods: expected a non-empty subset"):
        validate_ndm(gpt2_shaped, layers=LAYERS, methods=("ica",), progress=False)
    with pytest.raises(TypeError, match=r"partitions\['0'\]: expected a SubspacePartition"):
        validate_ndm(gpt2_shaped, partitions={0: 3}, layers=LAYERS, progress=False)
