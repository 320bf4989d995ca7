"""The accelerator path: each analysis run with its model and data on a GPU gives what it gives on the CPU.

CI has no GPU, so these tests skip there. They run where CUDA is available, or on the device named by the
environment variable `TL_TENSORSIM_TEST_DEVICE` (`cpu` checks the tests themselves). Inputs stay where a user
would leave them (a basis or a source built on the CPU, a model on the GPU), so the tests also check that the
library moves what it needs. Tolerances: float64 results 1e-9 relative; float32 forward passes 1e-4.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import make_bridge
from tests.interaction.helpers import NODES, tiny, tokens
from tests.proofs.factories import ideal_state, model_with

DEVICE = os.environ.get("TL_TENSORSIM_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(
    DEVICE is None, reason="no CUDA device here (TL_TENSORSIM_TEST_DEVICE=<device> runs these on another device)"
)


def _close(got, want, rtol=1e-9, atol=1e-12) -> None:
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    assert got.device.type == "cpu" or got.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(got.cpu().to(want.dtype), want.cpu(), rtol=rtol, atol=atol)


def _orthonormal(d: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g))[0]


def test_subspace_hooks_and_activations_on_the_device():
    import tl_tensorsim as ts
    from tl_tensorsim import hooks

    cpu, dev = ts.load_induction_model(device="cpu"), ts.load_induction_model(device=DEVICE)
    tok = torch.randint(1, cpu.cfg.d_vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    src = torch.randint(1, cpu.cfg.d_vocab, (4, 12), generator=torch.Generator().manual_seed(1))
    name = "blocks.0.hook_resid_post"
    B = _orthonormal(cpu.cfg.d_model, 8, 0)  # left on the CPU, as a user builds it
    out = []
    for model in (cpu, dev):
        device = next(model.parameters()).device
        _, cache = model.run_with_cache(src.to(device), names_filter=name)
        fn = hooks.interchange(B, source=cache[name], positions=-1)
        with torch.no_grad():
            patched = model.run_with_hooks(tok.to(device), fwd_hooks=[hooks.bind(model, name, fn, tok.to(device))])
            rotated = model.run_with_hooks(tok.to(device), fwd_hooks=[(name, hooks.rotate(_orthonormal(64, 64, 1)))])
        acts = ts.collect_activations(model, tok.to(device), name, progress=False)
        out.append((patched, rotated, acts))
        assert patched.device == device
    for got, want in zip(out[1], out[0]):
        _close(got, want, rtol=1e-4, atol=1e-4)


def test_head_and_checkpoint_similarity_on_the_device():
    import tl_tensorsim as ts

    a, b = make_bridge(0), make_bridge(1)
    want = ts.head_similarity(a, b, circuit="OV", level="token")
    want_t = ts.checkpoint_similarity([a, b], circuit="QK", progress=False)
    a, b = a.to(DEVICE), b.to(DEVICE)
    got = ts.head_similarity(a, b, circuit="OV", level="token")
    got_t = ts.checkpoint_similarity([a, b], circuit="QK", progress=False)
    _close(got.values, want.values)
    _close(got_t.to_final, want_t.to_final)
    # the CPU computation of a model on the device, when asked for
    _close(ts.head_similarity(a, b, circuit="OV", level="token", device="cpu").values, want.values)


def test_tensor_similarity_on_the_device():
    import tl_tensorsim as ts

    cfg = dict(d_in=6, d_model=5, d_hidden=7, n_layers=2, d_out=3, residual=True, bias=True)
    a = ts.HookedTensorNetwork(ts.TensorNetworkConfig(**cfg, seed=0))
    b = ts.HookedTensorNetwork(ts.TensorNetworkConfig(**cfg, seed=1))
    want = [float(ts.tensor_similarity(a, b, metric)) for metric in ("frobenius", "gaussian")]
    a, b = a.to(DEVICE), b.to(DEVICE)
    got = [float(ts.tensor_similarity(a, b, metric)) for metric in ("frobenius", "gaussian")]
    _close(got, want)


def test_fit_ndm_on_the_device():
    from tests.ndm.test_fit import FAST, blocks_data
    from tl_tensorsim import fit_ndm

    acts = blocks_data()
    kw = dict(unit_size=1, key_pool=64, lr=1e-2, max_steps=40, merge_start=20, merge_interval=10, seed=3, **FAST)
    want, got = fit_ndm(acts, **kw), fit_ndm(acts.to(DEVICE), **kw)
    R = got.R.cpu()
    assert got.sizes == want.sizes and (R.T @ R - torch.eye(4, dtype=torch.float64)).abs().max() < 1e-12
    assert got.history["loss"][-1] == pytest.approx(want.history["loss"][-1], rel=0.05)


def test_interaction_basis_on_the_device():
    from tl_tensorsim.interaction import interaction_basis

    model, data = tiny(0), tokens(32)
    want = interaction_basis(model, NODES, data, batch_size=20, progress=False)
    got = interaction_basis(model.to(DEVICE), NODES, data.to(DEVICE), batch_size=20, progress=False)
    assert got.dims == want.dims
    for g, w in zip(got.Lambda, want.Lambda):
        if w is not None:
            _close(g, w, rtol=1e-7, atol=1e-10)


def test_proofs_on_the_device():
    from tl_tensorsim.models import group_mlp
    from tl_tensorsim.proofs import groups, max_of_k

    model = model_with(ideal_state(7, 3, 6, seed=0, noise=0.05, bias=0.05))
    want = max_of_k.brute_force(model)
    got = max_of_k.brute_force(model.to(DEVICE))
    assert got.n_certified == want.n_certified and torch.equal(got.certified.cpu(), want.certified.cpu())
    model.to("cpu")  # the factory caches its shell
    s4 = group_mlp.load(group_mlp.shipped("S4")[0])
    expl = groups.explain(s4)
    want = [groups.brute_force(s4), groups.rho_set(s4, expl, deviation="fourier")]
    on = group_mlp.load(group_mlp.shipped("S4")[0], device=DEVICE)
    got = [groups.brute_force(on), groups.rho_set(on, groups.explain(on), deviation="fourier")]
    for g, w in zip(got, want):
        assert g.bound == w.bound and torch.equal(g.certified.cpu(), w.certified.cpu())


def test_ndm_search_on_the_device_equals_the_cpu_search(monkeypatch):
    # float64; the device's own key blocks (one here), then many small ones (topk merges across blocks)
    from tests.ndm.test_objective import SIZES, data, random_orthogonal
    from tl_tensorsim.ndm import objective

    queries, keys, qid, kid = data()
    rotation = random_orthogonal(keys.shape[1], 1)
    want = objective.ndm_loss(queries, keys, rotation, SIZES, query_ids=qid, key_ids=kid)[1]
    on = [t.to(DEVICE) for t in (queries, keys, rotation, qid, kid)]
    for block in (None, 1000):
        if block is not None:
            monkeypatch.setitem(objective.SEARCH_BLOCK_ELEMENTS, torch.device(DEVICE).type, block)
        _close(objective.ndm_loss(*on[:3], SIZES, query_ids=on[3], key_ids=on[4])[1], want)


def test_group_mlp_trains_on_the_device():
    # the same initial weights and training pairs; AdamW amplifies rounding, so the runs agree loosely
    from tl_tensorsim.models.group_mlp import GroupMLPConfig, train

    config = GroupMLPConfig(group="S4", seed=0, steps=300, eval_every=300)
    want = train(config, progress=False)
    got = train(config, progress=False, device=DEVICE)
    assert next(got.model.parameters()).device.type == torch.device(DEVICE).type
    first = [{k: v for k, v in r.history[0].items() if k != "seconds"} for r in (got, want)]
    assert first[0] == pytest.approx(first[1], rel=1e-5)
    assert got.history[-1]["train_loss"] == pytest.approx(want.history[-1]["train_loss"], rel=0.2, abs=1e-4)
    assert got.history[-1]["test_acc"] == pytest.approx(want.history[-1]["test_acc"], abs=0.05)
