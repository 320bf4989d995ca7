"""fit_ndm: the step against the exact loss, determinism, merging, resume after an interrupt, model input."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.checks import check_finite
from tl_tensorsim.ndm import SubspacePartition, fit_ndm, ndm_loss, subspace_mutual_information
from tl_tensorsim.ndm.trainer import NDMSettings, NDMState

FAST = dict(mi_queries=200, mi_keys=400, progress=False, log_every=10)


def blocks_data(n=1500, seed=0):
    """Two independent 2-d blocks, each a noisy circle, mixed by a fixed rotation of R^4."""
    g = torch.Generator().manual_seed(seed)
    angles = 6.283 * torch.rand(n, 2, generator=g)
    x = torch.cat(
        [torch.cos(angles[:, :1]), torch.sin(angles[:, :1]), torch.cos(angles[:, 1:]), torch.sin(angles[:, 1:])], 1
    )
    x = x + 0.05 * torch.randn(n, 4, generator=g)
    mix = torch.linalg.qr(torch.randn(4, 4, generator=g)).Q
    return x @ mix.T


def test_exact_step_equals_the_loss():
    """refresh_every=1, rerank=1 with every row a key: the step's loss is `ndm_loss` on the same queries."""
    acts = blocks_data(300).double()
    s = NDMSettings(sizes=(2, 1, 1), key_pool=1000, refresh_every=1, rerank=1, batch_size=16, dtype="float64")
    state = NDMState(acts, s, torch.device("cpu"))
    with torch.no_grad():
        state.rotation.weight.normal_()
    g, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    loss = state.batch_loss(0, g)
    ids = torch.randint(len(acts), (16,), generator=g2)
    expected, _ = ndm_loss(
        acts[ids], acts, state.rotation.matrix(), [2, 1, 1], query_ids=ids, key_ids=torch.arange(300)
    )
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)


def test_fit_is_deterministic_and_orthogonal():
    acts = blocks_data()
    kw = dict(unit_size=1, key_pool=64, lr=1e-2, max_steps=40, merge_start=20, merge_interval=10, **FAST)
    a, b = fit_ndm(acts, seed=3, **kw), fit_ndm(acts, seed=3, **kw)
    assert torch.equal(a.R, b.R) and a.sizes == b.sizes and a.history == b.history
    assert not torch.equal(a.R, fit_ndm(acts, seed=4, **kw).R)
    assert (a.R.T @ a.R - torch.eye(4, dtype=torch.float64)).abs().max() < 1e-12
    assert a.method == "ndm" and a.mi.shape == (len(a.sizes),) * 2 and a.loss == a.history["loss"][-1]
    assert sorted(a.sizes, reverse=True) == list(a.sizes) and sum(a.sizes) == 4
    assert a.provenance.settings["key_pool"] == 64 and a.provenance.settings["n_rows"] == 1500


def test_merging_follows_the_schedule_and_stops():
    acts = blocks_data()
    part = fit_ndm(acts, unit_size=1, key_pool=32, lr=1e-2, max_steps=400, merge_start=100, merge_interval=50, **FAST)
    checks = part.history["checks"]
    assert [c["step"] for c in checks] == list(range(100, 100 + 50 * len(checks), 50))
    assert all(c["merged"] for c in checks[:-1])
    if part.history["step"][-1] < 400:  # stopped early: at the first check with nothing to merge
        assert checks[-1]["merged"] == [] and part.history["step"][-1] == checks[-1]["step"]
    assert list(part.sizes) == checks[-1]["sizes"]


def test_fixed_partition_and_cap():
    acts = blocks_data()
    fixed = fit_ndm(acts, sizes=[3, 1], key_pool=64, max_steps=30, merge_start=10, merge_interval=10, **FAST)
    assert fixed.sizes == (3, 1) and fixed.history["checks"] == []
    capped = fit_ndm(acts, unit_size=1, key_pool=64, max_steps=200, merge_start=10, merge_interval=10,
                     merge_threshold=1e-9, stop_at_n_subspaces=3, **FAST)  # fmt: skip
    assert len(capped.sizes) == 3 and capped.history["checks"][-1]["merged"] == []


def test_resume_after_interrupt_is_identical(tmp_path, monkeypatch):
    acts = blocks_data()
    kw = dict(unit_size=1, key_pool=64, refresh_every=3, rerank=2, lr=1e-2, max_steps=60, merge_start=20,
              merge_interval=20, reinit_every=8, reinit_until=16, reinit_draws=3, checkpoint_every=10, **FAST)  # fmt: skip
    whole = fit_ndm(acts, checkpoint_dir=tmp_path / "a", **kw)
    original = NDMState.batch_loss

    def interrupted(self, step, generator):
        if step == 34:  # Ctrl-C during update 35 (after the merge at 20, between checkpoints 30 and 40)
            raise KeyboardInterrupt
        return original(self, step, generator)

    monkeypatch.setattr(NDMState, "batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_ndm(acts, checkpoint_dir=tmp_path / "b", **kw)
    monkeypatch.setattr(NDMState, "batch_loss", original)
    resumed = fit_ndm(acts, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert [h for h in whole.history["step"] if h in (8, 16)] == [8, 16]  # re-initialisations before the merges
    assert torch.equal(resumed.R, whole.R) and resumed.sizes == whole.sizes
    assert resumed.history == whole.history and torch.equal(resumed.mi, whole.mi)
    with pytest.raises(ValueError, match="resume"):
        fit_ndm(acts, checkpoint_dir=tmp_path / "b", resume=True, **{**kw, "lr": 2e-2})


def test_fit_on_a_model_leaves_out_bos(model):
    tokens = torch.randint(0, model.cfg.d_vocab, (6, 5))
    part = fit_ndm(model, "blocks.0.hook_resid_post", tokens, unit_size=8, key_pool=16, max_steps=3, merge_start=2,
                   merge_interval=1, **FAST)  # fmt: skip
    assert isinstance(part, SubspacePartition) and part.d == model.cfg.d_model
    assert part.hook_name == "blocks.0.hook_resid_post" and part.model_name == model.cfg.model_name
    assert part.provenance.settings["n_rows"] == 6 * 4  # position 0 left out
    last = fit_ndm(model, "blocks.0.hook_resid_post", tokens, positions=-1, sizes=[32], key_pool=4, max_steps=1, **FAST)
    assert last.provenance.settings["n_rows"] == 6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(unit_size=3), "unit_size: must divide d=4"),
        (dict(sizes=[3, 2]), "sizes: the widths must sum to d=4"),
        (dict(key_pool=0), "key_pool: expected a positive int"),
        (dict(parametrization="qr"), "parametrization: expected one of"),
        (dict(resume=True), "resume: needs checkpoint_dir"),
        (dict(hook_name="blocks.0.hook_resid_post"), "hook_name, data: only used with a model"),
        (dict(merge_threshold=0), "merge_threshold: expected a positive number"),
        (dict(reinit_every=100, reinit_until=500, merge_start=400, batch_size=8), "merge_start: merging starts after"),
        (dict(reinit_every=100), "reinit_every: the re-initialisation needs more rows"),
        (dict(search_dtype=torch.float16), "search_dtype: expected one of"),
    ],
)
def test_errors_before_work(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fit_ndm(torch.randn(50, 4), **{"progress": False, "unit_size": 2, **kwargs})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_activations_are_refused_before_work(bad):
    # one bad row among 300 is named before any step, also when read in chunks of 64 rows (as a memory map is)
    acts = torch.randn(300, 4)
    acts[217, 2] = bad
    with pytest.raises(ValueError, match=r"acts: expected finite values; row 217 \(of 300\)"):
        fit_ndm(acts, unit_size=2, progress=False)
    with pytest.raises(ValueError, match=r"row 217 \(of 300\)"):
        check_finite(acts, "acts", "hint", chunk=64)
    check_finite(torch.randn(300, 4), "acts", "hint", chunk=64)  # finite rows pass
    with pytest.raises(ValueError, match=r"acts: expected finite values; row 217 \(one of 300 drawn\)"):
        subspace_mutual_information(acts, SubspacePartition.identity([2, 2]))


def test_non_finite_rows_of_a_memory_mapped_store_are_named(tmp_path):
    import numpy as np

    import tl_tensorsim as ts
    from tl_tensorsim.activations import load_activations

    view = ts.ModelView.build({"n_layers": 1, "d_model": 16, "n_ctx": 8, "d_head": 4, "n_heads": 4, "d_vocab": 50})
    tokens = torch.randint(0, 50, (10, 8), generator=torch.Generator().manual_seed(0))
    ts.collect_activations(view.model, tokens, "blocks.0.hook_resid_post", out=tmp_path / "s", progress=False)
    check_finite(load_activations(tmp_path / "s"), "acts", "hint", chunk=7)  # read in chunks of 7 rows: finite
    (npy,) = (tmp_path / "s").glob("*.npy")
    rows = np.load(npy, mmap_mode="r+")
    rows[33, 3] = np.inf
    rows.flush()
    del rows
    with pytest.raises(ValueError, match=r"acts: expected finite values; row 33 \(of 80\)"):
        fit_ndm(load_activations(tmp_path / "s"), unit_size=4, progress=False)
