"""The IOI model: its training sentences, its tokenizer (the circuit datasets use it unchanged), and the shipped
weights solving the task on both model classes."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.models import ioi, registry
from tl_tensorsim.models.ioi_text import NAMES
from tl_tensorsim.training import limit_threads


@pytest.fixture(scope="module")
def shipped():
    with limit_threads(1):
        return ioi.load_default()


def test_batch_sentences_answer_the_name_that_occurs_once():
    cfg = ioi.IOIConfig()
    tok = ioi.ioi_tokenizer()
    batch = ioi.make_batch(cfg, 200, torch.Generator().manual_seed(3))
    names = {tok.convert_tokens_to_ids(n) for n in NAMES}
    for b in range(200):
        row = batch.tokens[b]
        end = int(batch.end[b])
        assert row[0] == cfg.bos_token_id and row[end + 1] == batch.io[b]
        assert bool(batch.valid[b, end]) and not bool(batch.valid[b, end + 1])
        body = [t for t in row[1 : end + 1].tolist() if t in names]
        assert body.count(int(batch.io[b])) == 1 and body.count(int(batch.s[b])) == 2 and len(body) == 3
        # duplicate-first sentences put both subject mentions before the indirect object
        assert bool(batch.duplicate_first[b]) == (body[-1] == int(batch.io[b]))
    share = float(batch.duplicate_first.double().mean())
    assert abs(share - cfg.duplicate_first) < 0.1


def test_config_checks():
    with pytest.raises(ValueError, match="n_ctx"):
        ioi.IOIConfig(n_ctx=10)
    with pytest.raises(ValueError, match="duplicate_first"):
        ioi.IOIConfig(duplicate_first=1.5)


def test_circuit_datasets_use_the_model_tokenizer():
    from tl_tensorsim.circuits import ioi_dataset

    ps = ioi_dataset(ioi.ioi_tokenizer(), 30, "mixed", seed=0)
    tok = ioi.ioi_tokenizer()
    for b in range(30):
        ids = ps.clean[b].tolist()
        assert ids[int(ps.positions["IO"][b])] == int(ps.answers["IO"][b])
        assert ids[int(ps.positions["S2"][b])] == ids[int(ps.positions["S1"][b])] == int(ps.answers["S"][b])
        assert tok.decode(ids[1 : int(ps.lengths[b])]).split()[-1] in ("to", "said")


def test_shipped_model_solves_ioi(shipped):
    with limit_threads(1):
        batch = ioi.make_batch(ioi.config_of(shipped), 300, torch.Generator().manual_seed(77))
        scores = ioi.evaluate(shipped, batch)
    assert scores["accuracy"] >= 0.99 and scores["ioi_accuracy"] >= 0.99
    assert scores["logit_diff"] > 5.0
    assert shipped.training_summary["final"]["ioi_accuracy"] >= 0.99


def test_training_is_deterministic_and_registered(tmp_path):
    assert registry.get("ioi") is ioi
    cfg = ioi.IOIConfig(steps=6, eval_every=3, eval_size=20, batch_size=8)
    with limit_threads(1):
        a = ioi.train(cfg, progress=False)
        b = ioi.train(cfg, progress=False)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    path = ioi.save(a, tmp_path / "m")
    back = ioi.load(path)
    assert back.ioi_config == cfg
    for name, value in a.model.state_dict().items():
        if name in back.state_dict():
            assert torch.equal(value, back.state_dict()[name])
