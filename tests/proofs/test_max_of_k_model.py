"""The Max-of-K model: config, data, a short training run through `train_loop`, save/load, the registry."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import needs_hooked_transformer
from tl_tensorsim import cli
from tl_tensorsim.models import max_of_k as mok
from tl_tensorsim.models import registry

SMALL = dict(d_vocab=8, n_ctx=3, d_model=8, d_head=8, steps=60, eval_every=30, eval_size=64)


def test_config_defaults_are_the_papers():
    c = mok.MaxOfKConfig()
    assert (c.d_vocab, c.n_ctx, c.d_model, c.d_head, c.steps, c.batch_size, c.lr) == (64, 4, 32, 32, 3000, 128, 1e-3)
    fields = c.tl_fields()
    assert fields["n_layers"] == fields["n_heads"] == 1 and fields["attn_only"] and fields["normalization_type"] is None
    with pytest.raises(ValueError, match="n_ctx: expected an integer >= 2; got 1"):
        mok.MaxOfKConfig(n_ctx=1)
    assert mok.MaxOfKConfig.from_dict(c.to_dict()) == c


def test_batches_are_uniform_with_the_max_as_label():
    tokens, labels = mok.make_batch(mok.MaxOfKConfig(**SMALL), 500, torch.Generator().manual_seed(0))
    assert tokens.shape == (500, 3) and torch.equal(labels, tokens.max(1).values)
    assert set(tokens.flatten().tolist()) == set(range(8))


def test_training_is_seeded_and_keeps_biases_zero():
    config = mok.MaxOfKConfig(**SMALL, seed=3)
    a, b = mok.train(config, progress=False), mok.train(config, progress=False)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name
    leaf = {k: k.rsplit(".", 1)[-1] for k, _ in a.model.named_parameters()}  # b_Q ... (hooked) or bias (bridge)
    biases = {k: v for k, v in a.model.named_parameters() if leaf[k].startswith("b_") or leaf[k] == "bias"}
    assert biases and all(not p.requires_grad and not p.any() for p in biases.values())
    assert a.history[-1]["step"] == 60 and a.history[-1]["loss"] < a.history[0]["loss"]


@pytest.mark.parametrize("backend", [pytest.param("hooked", marks=needs_hooked_transformer), "bridge"])
def test_save_load_round_trip(tmp_path, backend):
    run = mok.train(mok.MaxOfKConfig(**SMALL), progress=False, backend=backend)
    mok.save(run, tmp_path / "m")
    loaded = mok.load(tmp_path / "m", backend=backend)
    tokens = mok.make_batch(run.config, 32)[0]
    with torch.no_grad():
        assert torch.allclose(loaded(tokens), run.model(tokens), atol=1e-6)
    assert loaded.training_summary["steps"] == 60


def test_registered_for_the_cli(tmp_path):
    assert "max_of_k" in [m.__name__.rsplit(".", 1)[-1] for m in registry.available()]
    out = tmp_path / "run"
    args = ["train", "max_of_k", "--out", str(out), "--steps", "3", "--set", "d_vocab=6", "--set", "n_ctx=3", "--quiet"]
    assert cli.main(args) == 0
    model = mok.load_default(out)
    assert model.cfg.d_vocab == 6 and model.training_summary["steps"] == 3
