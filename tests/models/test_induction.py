"""The embedded induction model: config, data, shipped weights, short training runs, both model classes."""

from __future__ import annotations

import json

import pytest
import torch

from tl_tensorsim.artifacts import CONFIG_FILE, TENSORS_FILE
from tl_tensorsim.models import induction as ind
from tl_tensorsim.models.toy import tl_state_dict

# measured on the shipped weights (see weights/induction_2l/cfg.json): held-out induction accuracy 0.99+
SHIPPED_MIN_ACCURACY = 0.95


@pytest.fixture(scope="module")
def model():
    return ind.load_default()


def test_config_round_trip():
    cfg = ind.InductionConfig(seed=3, steps=10, normalization_type=None)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert ind.InductionConfig.from_dict(d) == cfg
    assert cfg.d_vocab == cfg.n_tokens + 1 == cfg.bos_token_id + 1
    with pytest.raises(ValueError, match="unknown InductionConfig fields"):
        ind.InductionConfig.from_dict({**d, "nope": 1})
    with pytest.raises(ValueError, match="max_repeat"):
        ind.InductionConfig(max_repeat=30)


def test_batch_shapes_and_repeat_structure():
    cfg = ind.InductionConfig()
    tokens, mask = ind.make_batch(cfg, 50, torch.Generator().manual_seed(0))
    assert tokens.shape == mask.shape == (50, cfg.n_ctx) and tokens.dtype == torch.long and mask.dtype == torch.bool
    assert (tokens[:, 0] == cfg.bos_token_id).all() and (tokens[:, 1:] < cfg.n_tokens).all()
    lengths = set()
    for row, m in zip(tokens, mask):
        body = row[1:].tolist()
        # exactly one repeated segment; every other token occurs once
        repeated = {t for t in body if body.count(t) == 2}
        assert all(body.count(t) in (1, 2) for t in body)
        L = len(repeated)
        lengths.add(L)
        assert cfg.min_repeat <= L <= cfg.max_repeat
        assert int(m.sum()) == L - 1
        # every masked position: its token occurred before and the next token follows that earlier occurrence
        for j in m.nonzero().flatten().tolist():
            earlier = [i for i in range(1, j) if row[i] == row[j]]
            assert len(earlier) == 1 and row[earlier[0] + 1] == row[j + 1]
    assert len(lengths) > 5
    again, _ = ind.make_batch(cfg, 50, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)


def test_repeated_tokens():
    cfg = ind.InductionConfig()
    rep = ind.repeated_tokens(cfg, 4, length=10)
    assert rep.shape == (4, 21) and torch.equal(rep[:, 1:11], rep[:, 11:])


def test_tokenizer_round_trip(model):
    assert model.to_tokens("t3 t17 t3").tolist() == [[64, 3, 17, 3]]
    assert model.to_str_tokens("t3 t17") == ["<|endoftext|>", "t3", "t17"]


def test_shipped_model_has_the_induction_circuit(model):
    from transformer_lens.head_detector import detect_head

    assert not model.training
    acc = ind.induction_accuracy(model, n=256)
    assert acc > SHIPPED_MIN_ACCURACY, acc
    cfg = ind.InductionConfig()
    rep = ind.repeated_tokens(cfg, 16, seed=3)
    strings = [" ".join(f"t{int(t)}" for t in row[1:]) for row in rep]
    prev = detect_head(model, strings, "previous_token_head", exclude_bos=True)
    induct = detect_head(model, strings, "induction_head", exclude_bos=True)
    # measured: previous-token L0H0 0.52, L0H2 0.53 (the function is split over two heads), every layer-1 head < 0.06;
    # induction L1H0 0.93, L1H2 0.87, L1H3 0.94, every layer-0 head < 0.01
    assert divmod(int(prev.argmax()), cfg.n_heads)[0] == 0 and float(prev.max()) > 0.4, prev
    assert float(prev[1].max()) < 0.2, prev
    assert divmod(int(induct.argmax()), cfg.n_heads)[0] == 1 and float(induct.max()) > 0.8, induct
    assert float(induct[0].max()) < 0.2, induct


def test_shipped_files_are_small_and_documented():
    assert (ind.SHIPPED / TENSORS_FILE).stat().st_size < 1_000_000
    meta = json.loads((ind.SHIPPED / CONFIG_FILE).read_text())
    assert meta["kind"] == ind.KIND and ind.InductionConfig.from_dict(meta["config"]) == ind.InductionConfig()
    assert meta["training"]["final_induction_accuracy"] > SHIPPED_MIN_ACCURACY


def test_bridge_gives_the_same_logits(model):
    """TransformerLens 4 has no HookedTransformer: the bridge path must load the same weights exactly."""
    bridge = ind.load_default(backend="bridge")
    assert type(bridge).__name__ == "TransformerBridge"
    tokens, _ = ind.make_batch(ind.InductionConfig(), 8, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    assert bridge.to_str_tokens("t1 t2")[1:] == ["t1", "t2"]
    for k, v in tl_state_dict(bridge).items():
        assert torch.equal(v, tl_state_dict(model)[k]), k


def test_short_training_returns_the_requested_checkpoints():
    cfg = ind.InductionConfig(steps=6, batch_size=8, eval_every=4, eval_size=16, warmup_steps=2)
    run = ind.train(cfg, checkpoint_steps=[0, 3, 6], progress=False)
    assert [s for s, _ in run.checkpoints] == [0, 3, 6]
    assert [r["step"] for r in run.history] == [0, 3, 4, 6]
    assert 0.0 <= run.metrics_at(3)["induction_accuracy"] <= 1.0
    assert set(run.metrics_at(6)) >= {"loss", "induction_accuracy"}
    init, final = run.checkpoints[0][1], run.checkpoints[-1][1]
    assert set(init) == set(run.model.state_dict())

    def tl_weights(state):  # TransformerLens names, whichever model class trained (TransformerBridge on TL 4)
        model = ind.build_model(cfg)
        model.load_state_dict(state)
        return tl_state_dict(model)

    assert not torch.equal(tl_weights(init)["blocks.0.attn.W_Q"], tl_weights(final)["blocks.0.attn.W_Q"])
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, final[k]), k
    # deterministic given the seed; a checkpoint loads back into a fresh model
    again = ind.train(cfg, checkpoint_steps=[3], progress=False)
    for k, v in again.checkpoints[0][1].items():
        assert torch.equal(v, run.checkpoints[1][1][k]), k
    fresh = ind.build_model(cfg)
    fresh.load_state_dict(run.checkpoints[1][1], strict=True)
    assert torch.equal(tl_state_dict(fresh)["embed.W_E"], tl_weights(run.checkpoints[1][1])["embed.W_E"])
    assert all(torch.equal(v, run.checkpoints[1][1][k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ValueError, match="checkpoint_steps"):
        ind.train(cfg, checkpoint_steps=[7], progress=False)
    with pytest.raises(ValueError, match="step: no evaluation"):
        run.metrics_at(5)


def test_save_and_load_weights(tmp_path):
    cfg = ind.InductionConfig(steps=2, batch_size=4, eval_size=8, warmup_steps=1)
    run = ind.train(cfg, progress=False)
    path = ind.save(run, tmp_path / "tiny")
    loaded = ind.load(path)
    assert loaded.induction_config == cfg and not loaded.training
    tokens, _ = ind.make_batch(cfg, 2)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), run.model(tokens))


def test_load_default_trains_and_caches_when_weights_are_missing(tmp_path, monkeypatch):
    calls, real_train = [], ind.train

    def quick_train(config, **kwargs):
        calls.append(config)
        return real_train(ind.InductionConfig(steps=2, batch_size=4, eval_size=8, warmup_steps=1), **kwargs)

    monkeypatch.setattr(ind, "SHIPPED", tmp_path / "absent")
    monkeypatch.setenv("TL_TENSORSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ind, "train", quick_train)
    first = ind.load_default()
    assert len(calls) == 1 and (tmp_path / "cache" / "induction" / "model" / TENSORS_FILE).is_file()
    second = ind.load_default()
    assert len(calls) == 1 and not second.training
    assert torch.equal(first.W_E, second.W_E)


def test_load_default_reads_a_trained_folder_and_names_a_missing_one(tmp_path):
    cfg = ind.InductionConfig(steps=2, batch_size=4, eval_size=8, warmup_steps=1)
    run = ind.train(cfg, progress=False)
    ind.save(run, tmp_path / "model")
    for path in (tmp_path, tmp_path / "model"):  # the `--out DIR` folder, or the model folder inside it
        loaded = ind.load_default(path)
        assert loaded.induction_config == cfg and torch.equal(loaded.W_E, run.model.W_E)
    with pytest.raises(
        FileNotFoundError, match="path: .* holds no saved induction model.*tl-tensorsim train induction"
    ):
        ind.load_default(tmp_path / "nothing")


def test_ctrl_c_then_resume_gives_the_uninterrupted_weights(tmp_path, monkeypatch):
    cfg = ind.InductionConfig(steps=8, batch_size=4, eval_every=4, eval_size=8, warmup_steps=2)
    full = ind.train(cfg, checkpoint_steps=[0, 5, 8], progress=False)
    real_make_batch, calls = ind.make_batch, []

    def interrupted(*args, **kwargs):  # call 1 is the evaluation batch, call k + 1 the batch of update k
        calls.append(1)
        if len(calls) == 1 + 7:
            raise KeyboardInterrupt
        return real_make_batch(*args, **kwargs)

    monkeypatch.setattr(ind, "make_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ind.train(cfg, checkpoint_steps=[0, 5, 8], progress=False, checkpoint_dir=tmp_path, checkpoint_every=3)
    monkeypatch.setattr(ind, "make_batch", real_make_batch)
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == ["step_00000006"]
    resumed = ind.train(cfg, checkpoint_steps=[0, 5, 8], progress=False, checkpoint_dir=tmp_path, resume=True)
    assert resumed.history == full.history and resumed.steps == full.steps == [0, 5, 8]
    for (_, a), (_, b) in zip(resumed.checkpoints, full.checkpoints):
        assert all(torch.equal(a[k], b[k]) for k in b)
