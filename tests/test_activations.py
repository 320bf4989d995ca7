"""`collect_activations` on a HookedTransformer and a TransformerBridge with the same weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import tl_tensorsim as ts
from tl_tensorsim import hooks

RESID = "blocks.0.hook_resid_post"


@pytest.fixture
def tokens():
    return torch.randint(0, 50, (7, 6))


def collect(model, data, name, positions=None, **kw):
    kw.setdefault("progress", False)
    return ts.collect_activations(model, data, name, positions, **kw)


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("name", [RESID, "blocks.1.hook_resid_pre", "blocks.0.mlp.hook_post", "hook_embed"])
def test_matches_the_cache(model, tokens, name):
    _, cache = model.run_with_cache(tokens)
    expected = cache[name].reshape(-1, cache[name].shape[-1])
    for batch_size in (1, 3, 32):
        got = collect(model, tokens, name, batch_size=batch_size)
        assert got.shape == expected.shape and got.device.type == "cpu"
        assert torch.allclose(got, expected, atol=1e-6), batch_size
    assert no_hooks_left(model)


@pytest.mark.parametrize(
    "positions",
    [-1, 2, torch.tensor([0, 5, 1, 1, 3, 2, 4]), torch.rand(7, 6) > 0.5],
    ids=["last", "int", "per-sequence", "mask"],
)
def test_positions_select_rows(model, tokens, positions):
    _, cache = model.run_with_cache(tokens)
    mask = hooks.positions_mask(positions, 7, 6)
    got = collect(model, tokens, RESID, positions, batch_size=3)
    assert torch.allclose(got, cache[RESID][mask], atol=1e-6)


def test_per_head_hooks(model, tokens):
    name = "blocks.1.attn.hook_z"
    _, cache = model.run_with_cache(tokens)
    one = collect(model, tokens, name, -1, head=2)
    assert one.shape == (7, 8) and torch.allclose(one, cache[name][:, -1, 2], atol=1e-6)
    every = collect(model, tokens, name)
    assert every.shape == (42, 4, 8) and torch.allclose(every, cache[name].reshape(42, 4, 8), atol=1e-6)


def test_identical_on_both_classes(model_pair, tokens):
    ht, bridge = model_pair
    for name, head in [(RESID, None), ("blocks.1.hook_mlp_out", None), ("blocks.0.attn.hook_z", 1)]:
        a = collect(ht, tokens, name, -1, head=head)
        b = collect(bridge, tokens, name, -1, head=head)
        assert torch.allclose(a, b, atol=1e-5), name


def test_compatibility_mode_bridge(compat_pair, tokens):
    ht, bridge = compat_pair
    for name in ("blocks.1.hook_resid_pre", "hook_embed", "blocks.0.hook_out"):
        if name not in ht.hook_dict:
            name_ht = ts.ModelView(bridge).canonical_hook_name(name)
        else:
            name_ht = name
        a = collect(ht, tokens, name_ht, -1)
        b = collect(bridge, tokens, name, -1)
        assert torch.allclose(a, b, atol=1e-4), name


def test_stops_at_the_hooks_layer(model, tokens, monkeypatch):
    seen = []
    original = model.run_with_hooks

    def spy(*args, **kwargs):
        seen.append(kwargs.get("stop_at_layer"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "run_with_hooks", spy)
    collect(model, tokens, "blocks.0.hook_resid_pre")
    collect(model, tokens, "blocks.1.attn.hook_z", head=0)
    collect(model, tokens, "hook_embed")
    assert seen == [1, 2, 0]


def test_dataset_and_iterables(model, tokens):
    from datasets import Dataset

    expected = collect(model, tokens, RESID, -1)
    for column in ("tokens", "input_ids"):
        ds = Dataset.from_dict({column: tokens.tolist(), "label": list(range(7))})
        assert torch.allclose(collect(model, ds, RESID, -1, batch_size=3), expected, atol=1e-6)
        assert torch.allclose(collect(model, ds.with_format("torch"), RESID, -1, batch_size=3), expected, atol=1e-6)
    rows = (row for row in tokens)  # a generator: length unknown
    assert torch.allclose(collect(model, rows, RESID, -1, batch_size=4), expected, atol=1e-6)
    dicts = [{"input_ids": row.tolist()} for row in tokens]
    assert torch.allclose(collect(model, dicts, RESID, -1, batch_size=2), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"column named one of \('tokens', 'input_ids'\); the columns are \['text'\]"):
        collect(model, Dataset.from_dict({"text": ["a", "b"]}), RESID)


def test_ragged_sequences_run_in_separate_batches(model):
    seqs = [torch.randint(0, 50, (n,)) for n in (6, 6, 4, 4, 4, 6)]
    got = collect(model, seqs, RESID, -1, batch_size=2)
    expected = torch.cat([model.run_with_cache(s.unsqueeze(0))[1][RESID][:, -1] for s in seqs])
    assert got.shape == (6, 32) and torch.allclose(got, expected, atol=1e-5)
    every = collect(model, seqs, RESID)
    assert every.shape == (30, 32)


def test_memory_mapped_output(model, tokens, tmp_path, monkeypatch):
    expected = collect(model, tokens, RESID)
    path = tmp_path / "acts" / "resid.npy"
    got = collect(model, tokens, RESID, out=path, batch_size=3)
    assert torch.allclose(got, expected, atol=1e-6)
    assert isinstance(np.load(path, mmap_mode="r"), np.memmap)
    on_disk = np.load(path)
    assert on_disk.shape == (42, 32) and on_disk.dtype == np.float32
    assert torch.equal(torch.from_numpy(on_disk), got)
    # too big for memory: spills to a temporary .npy file, which is unlinked once mapped
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "spill"))
    (tmp_path / "spill").mkdir()
    for data in (tokens, (row for row in tokens)):  # known and unknown size
        spilled = collect(model, data, RESID, max_memory_bytes=1000, batch_size=2)
        assert torch.allclose(spilled, expected, atol=1e-6)
        assert os.listdir(tmp_path / "spill") == []
    empty = collect(model, tokens, RESID, torch.zeros(7, 6, dtype=torch.bool), out=tmp_path / "empty.npy")
    assert empty.shape == (0, 32)


def test_dtype_and_progress(model, tokens, capsys):
    got = ts.collect_activations(model, tokens, RESID, -1, dtype=torch.float64, progress=True)
    assert got.dtype == torch.float64 and got.shape == (7, 32)
    assert "collect blocks.0.hook_resid_post" in capsys.readouterr().err


def test_gated_hook_result(model_pair, tokens):
    ht, bridge = model_pair
    name = "blocks.0.attn.hook_result"
    got = collect(ht, tokens, name, -1, head=3)
    assert ht.cfg.use_attn_result is False  # switched on for the call only
    ht.set_use_attn_result(True)
    try:
        _, cache = ht.run_with_cache(tokens)
    finally:
        ht.set_use_attn_result(False)
    assert torch.allclose(got, cache[name][:, -1, 3], atol=1e-6)
    with pytest.raises(ValueError, match="not available on this TransformerBridge"):
        collect(bridge, tokens, name, head=0)
    assert bridge.cfg.use_attn_result is False and no_hooks_left(bridge)


# ------------------------------------------------------------------------------------------- errors
def test_errors_before_any_forward_pass(model, tokens, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(model, "run_with_hooks", forbidden)
    cases = [
        (
            dict(hook_name="blocks.0.hook_resid_pots"),
            ValueError,
            r"Nearest valid names: \['blocks\.0\.hook_resid_post'",
        ),
        (dict(hook_name="blocks.0.attn.hook_pattern"), ValueError, "no feature axis"),
        (dict(positions=6), ValueError, "position 6 is out of range for sequences of length 6"),
        (dict(positions=torch.tensor([0, 1])), ValueError, "2 positions .* batch of 7"),
        (dict(positions=torch.zeros(7, 5, dtype=torch.bool)), ValueError, "covers 5 positions"),
        (dict(head=0), ValueError, "no head axis"),
        (dict(hook_name="blocks.0.attn.hook_z", head=4), ValueError, "head: 4 is out of range"),
        (dict(tokens_or_dataset=torch.full((2, 3), 50)), ValueError, "token id 50 is out of range for d_vocab=50"),
        (dict(tokens_or_dataset=torch.zeros(2, 17, dtype=torch.long)), ValueError, "exceed the model's n_ctx=16"),
        (dict(tokens_or_dataset=torch.zeros(2, 3)), TypeError, "integer token ids"),
        (dict(tokens_or_dataset="some text"), TypeError, "tokenise it first"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (
            dict(positions=torch.tensor([0]), tokens_or_dataset=iter([torch.zeros(3, dtype=torch.long)])),
            ValueError,
            "known length",
        ),
    ]
    for kw, error, match in cases:
        args = dict(tokens_or_dataset=tokens, hook_name=RESID, progress=False)
        args.update(kw)
        with pytest.raises(error, match=match):
            ts.collect_activations(model, **args)


def test_failures_leave_no_hooks_and_no_files(model, tokens, tmp_path):
    def rows():
        yield tokens[0]
        yield tokens[1]
        raise RuntimeError("dataset broke")

    path = tmp_path / "partial.npy"
    with pytest.raises(RuntimeError, match="dataset broke"):
        collect(model, rows(), RESID, batch_size=1, out=path)
    assert no_hooks_left(model) and not path.exists()

    # an exception inside the forward pass (a user's hook later in the same block)
    def boom(activation, hook):
        raise RuntimeError("boom")

    model.add_hook("blocks.0.hook_resid_post", boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            collect(model, tokens, "blocks.0.hook_resid_mid")
        leftover = [hp for hp in model.hook_dict.values() if hp.fwd_hooks]
        assert len({id(hp) for hp in leftover}) == 1  # only the user's own hook
    finally:
        model.reset_hooks()
    assert no_hooks_left(model)


def _tokens_per_pass(model, monkeypatch) -> list[int]:
    """Spy: the token count of the activation the collected hook sees in each forward pass."""
    seen: list[int] = []
    original = model.run_with_hooks

    def spy(tokens, fwd_hooks=(), **kwargs):
        count = (fwd_hooks[0][0], lambda act, hook: seen.append(act.shape[0] * act.shape[1]))
        return original(tokens, fwd_hooks=[*fwd_hooks, count], **kwargs)

    monkeypatch.setattr(model, "run_with_hooks", spy)
    return seen


def test_batches_are_bounded_by_tokens(model, tokens, monkeypatch):
    seen = _tokens_per_pass(model, monkeypatch)
    expected = collect(model, tokens, RESID, batch_size=32, batch_tokens=None)
    assert seen == [7 * 6]  # batch_size alone: one pass
    seen.clear()
    got = collect(model, tokens, RESID, batch_size=32, batch_tokens=13)  # 2 sequences of 6 per pass
    assert seen == [12, 12, 12, 6] and torch.allclose(got, expected, atol=1e-6)
    seen.clear()
    collect(model, tokens, RESID, batch_size=1, batch_tokens=100)  # batch_size still bounds the sequences
    assert seen == [6] * 7
    seen.clear()
    collect(model, tokens, RESID, batch_tokens=4)  # a sequence longer than the bound runs alone
    assert seen == [6] * 7
    with pytest.raises(ValueError, match="batch_tokens"):
        collect(model, tokens, RESID, batch_tokens=0)


def test_long_context_default_is_bounded_by_tokens(monkeypatch):
    """The default `batch_size=32` with 512-token sequences would be 16k tokens a pass; the default bound is 8192."""
    from tests.conftest import make_bridge

    model = make_bridge(n_ctx=512)
    long = torch.randint(0, 50, (20, 512), generator=torch.Generator().manual_seed(0))
    seen = _tokens_per_pass(model, monkeypatch)
    got = collect(model, long, "blocks.0.hook_resid_pre", -1)
    assert seen == [16 * 512, 4 * 512] and max(seen) <= ts.activations.DEFAULT_BATCH_TOKENS == 8192
    assert got.shape == (20, 32)
