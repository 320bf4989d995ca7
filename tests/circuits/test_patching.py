"""`circuits.subspace_patching` against a naive loop of `hooks.interchange` + `run_with_hooks`, and the metrics
against brute force."""

from __future__ import annotations

import pytest
import torch

import tl_tensorsim as ts
from tl_tensorsim import hooks
from tl_tensorsim.circuits.datasets import induction_dataset
from tl_tensorsim.circuits.metrics import (
    greater_than_prob_diff,
    induction_accuracy,
    induction_logit,
    logit_diff,
    normalised_score,
    task_metric,
)
from tl_tensorsim.circuits.patching import PatchingTest, SubspacePatching, subspace_patching
from tl_tensorsim.ndm import SubspacePartition

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def induction_setup(induction_model):
    model = induction_model
    ds = induction_dataset(64, n=24, length=10, bos_token_id=64, seed=0)
    return model, PatchingTest("prev", HOOK, ds, "relabel", ("keys",))


def _naive(model, part, test):
    ds = test.prompts
    metric = task_metric(ds)
    _, cache = model.run_with_cache(ds.corrupted[test.corruption], names_filter=HOOK)
    mask = ds.mask(test.positions)
    rows = []
    with torch.no_grad():
        for basis in [part.basis(i) for i in range(part.n_subspaces)] + [torch.eye(part.d)]:
            fn = hooks.interchange(basis, source=cache[HOOK], positions=mask)
            rows.append(metric(model.run_with_hooks(ds.clean, fwd_hooks=[(HOOK, fn)])))
        clean, corrupted = metric(model(ds.clean)), metric(model(ds.corrupted[test.corruption]))
    return torch.stack(rows), clean, corrupted


@pytest.mark.parametrize("batch_size", [24, 7, 200])  # one subspace per pass, chunked prompts, all in one pass
def test_matches_naive_loop(induction_setup, batch_size, tmp_path):
    model, test = induction_setup
    part = SubspacePartition.random([24, 16, 16, 8], seed=1)
    res = subspace_patching(model, part, test, batch_size=batch_size)
    rows, clean, corrupted = _naive(model, part, test)
    # identical up to float32 reassociation of differently sized batches
    torch.testing.assert_close(res.per_prompt, rows, rtol=0, atol=1e-5)
    torch.testing.assert_close(res.clean, clean, rtol=0, atol=1e-5)
    torch.testing.assert_close(res.corrupted, corrupted, rtol=0, atol=1e-5)
    assert res.effects.shape == (4,) and res.clean_mean > res.corrupted_mean + 1
    df = res.to_dataframe()
    assert list(df["subspace"]) == ["s0", "s1", "s2", "s3", "whole"] and df["size"].iloc[-1] == 64
    loaded = ts.load(res.save(tmp_path / "r"))
    assert isinstance(loaded, SubspacePatching) and torch.equal(loaded.per_prompt, res.per_prompt)
    assert "gini=" in repr(res)


def test_invariances(induction_setup, tmp_path):
    model, test = induction_setup
    one = subspace_patching(model, SubspacePartition.identity([64]), test)
    # one subspace that is the whole space: its row is the whole-space row
    torch.testing.assert_close(one.per_prompt[0], one.per_prompt[1], rtol=0, atol=1e-5)
    # a block rotation inside each subspace (gauge) changes no effect
    part = SubspacePartition.random([32, 32], seed=2)
    q = torch.block_diag(*[torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64)).Q for _ in range(2)])
    rotated = SubspacePartition(part.R @ q, part.sizes)
    a, b = subspace_patching(model, part, test), subspace_patching(model, rotated, test)
    torch.testing.assert_close(a.per_prompt, b.per_prompt, rtol=0, atol=1e-4)
    # patching from the clean run itself changes nothing
    prompts = test.prompts.subset(slice(0, 8))
    prompts.corrupted["relabel"] = prompts.clean
    same = PatchingTest("same", HOOK, prompts, "relabel", ("keys",))
    res = subspace_patching(model, part, same)
    torch.testing.assert_close(res.per_prompt, res.clean.expand(3, -1), rtol=0, atol=1e-5)
    fig = a.plot()
    assert len(fig.axes[0].patches) == 2
    png = tmp_path / "figs" / "effects.png"
    assert a.plot(png).axes and png.read_bytes()[:4] == b"\x89PNG"


def test_argument_errors(induction_setup):
    model, test = induction_setup
    with pytest.raises(ValueError, match="partition: has d=32"):
        subspace_patching(model, SubspacePartition.identity([32]), test)
    with pytest.raises(TypeError, match="partition: expected a SubspacePartition"):
        subspace_patching(model, [16] * 4, test)
    with pytest.raises(ValueError, match="corruption: expected one of"):
        PatchingTest("x", HOOK, test.prompts, "swap", ("keys",))
    with pytest.raises(ValueError, match="names: expected position names"):
        PatchingTest("x", HOOK, test.prompts, "relabel", ("END",))
    with pytest.raises(ValueError, match="metric: 'logit_diff' needs IOI"):
        PatchingTest("x", HOOK, test.prompts, "relabel", ("keys",), metric="logit_diff")
    bad = PatchingTest("x", "blocks.0.hook_resid_pots", test.prompts, "relabel", ("keys",))
    with pytest.raises(ValueError, match="test.hook_name: unknown hook name"):
        subspace_patching(model, SubspacePartition.identity([64]), bad)


def test_metrics_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 120, generator=g)
    end = torch.tensor([6, 3, 4, 6, 2])
    io, s = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([9, 8, 7, 6, 5])
    ld = logit_diff(logits, end, io, s)
    assert ld.dtype == torch.float64
    for b in range(5):
        assert float(ld[b]) == pytest.approx(float(logits[b, end[b], io[b]] - logits[b, end[b], s[b]]), abs=1e-6)
    year_ids = torch.arange(10, 110)
    yy = torch.tensor([0, 50, 99, 17, 2])
    pd_ = greater_than_prob_diff(logits, end, yy, year_ids)
    for b in range(5):
        p = logits[b, end[b]].double().softmax(-1)
        want = sum(p[10 + y] for y in range(100) if y > yy[b]) - sum(p[10 + y] for y in range(100) if y <= yy[b])
        assert float(pd_[b]) == pytest.approx(float(want), abs=1e-9)
    assert bool((pd_.abs() <= 1).all())
    q = torch.tensor([[1, 2], [3, 4], [0, 5], [2, 2], [6, 1]])
    nxt = torch.tensor([[3, 4], [5, 6], [7, 8], [9, 10], [11, 12]])
    il = induction_logit(logits, q, nxt)
    assert float(il[2]) == pytest.approx(float(logits[2, 0, 7] + logits[2, 5, 8]) / 2, abs=1e-6)
    logits[0, 1, 3] = 100.0
    assert float(induction_accuracy(logits, q, nxt)[0]) == 0.5
    assert normalised_score(3.0, 3.0, 1.0) == 1.0 and normalised_score(1.0, 3.0, 1.0) == 0.0
    with pytest.raises(ValueError, match="clean, corrupted: the clean and corrupted metrics are equal"):
        normalised_score(1.0, 2.0, 2.0)


def test_logits_at_read_positions_equal_the_full_forward(induction_setup, monkeypatch):
    """The fast path (stop at `unembed.hook_in`, unembed the read positions only) equals `run_from`'s full logits."""
    from tl_tensorsim.circuits import patching

    model, test = induction_setup
    part = SubspacePartition.random([32, 32], seed=3)
    fast = subspace_patching(model, part, test)
    monkeypatch.setattr(patching._Unembed, "HOOK", "no.such.hook")  # forces the full forward pass
    full = subspace_patching(model, part, test)
    torch.testing.assert_close(fast.per_prompt, full.per_prompt, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.clean, full.clean, rtol=0, atol=1e-5)
    # no hook is left behind on the model
    assert all(not p.fwd_hooks for p in model.hook_dict.values())
