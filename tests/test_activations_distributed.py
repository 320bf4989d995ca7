"""A HookedTransformer split over several GPUs (`n_devices > 1`): `collect_activations` (each activation moved
from its block's device), the adapter's weights and `fit_ndm` on the model agree with the same weights on one
device. Needs at least 2 CUDA devices and HookedTransformer; skipped otherwise."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import SMALL, needs_hooked_transformer
from tl_tensorsim.activations import collect_activations
from tl_tensorsim.adapter import ModelView
from tl_tensorsim.ndm import fit_ndm

pytestmark = [
    needs_hooked_transformer,
    pytest.mark.skipif(
        torch.cuda.device_count() < 2,
        reason=f"needs at least 2 CUDA devices for n_devices=2; this machine has {torch.cuda.device_count()}",
    ),
]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.attn.hook_z"]


@pytest.fixture(scope="module")
def pair():
    """The same weights on one GPU and split over two (block 0 on cuda:0, block 1 on cuda:1)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    one = HookedTransformer(HookedTransformerConfig(**SMALL, seed=0, device="cuda:0"))
    split = HookedTransformer(HookedTransformerConfig(**SMALL, seed=0, device="cuda:0", n_devices=2))
    split.load_state_dict(one.state_dict(), strict=False)
    split.move_model_modules_to_device()
    assert {p.device.index for p in split.parameters()} == {0, 1}
    return one.eval(), split.eval()


@pytest.mark.parametrize("hook", HOOKS)
def test_collect_activations_matches_one_device(pair, hook):
    one, split = pair
    tokens = torch.randint(0, SMALL["d_vocab"], (6, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(6, 10, generator=torch.Generator().manual_seed(1)) < 0.5
    expected = collect_activations(one, tokens, hook, mask, batch_size=4, progress=False)
    got = collect_activations(split, tokens, hook, mask, batch_size=4, progress=False)
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_adapter_weights_and_fit(pair):
    one, split = pair
    for name in ("W_Q", "W_O", "W_in"):
        torch.testing.assert_close(ModelView(split).weight(name).cpu(), ModelView(one).weight(name).cpu())
    tokens = torch.randint(0, SMALL["d_vocab"], (8, 10), generator=torch.Generator().manual_seed(2))
    kw = dict(unit_size=8, key_pool=32, max_steps=5, merge_start=3, merge_interval=2, mi_queries=20, mi_keys=40,
              progress=False, dtype=torch.float64)  # fmt: skip
    a = fit_ndm(one, "blocks.1.hook_resid_post", tokens, **kw)
    b = fit_ndm(split, "blocks.1.hook_resid_post", tokens, **kw)
    assert a.sizes == b.sizes
    torch.testing.assert_close(a.R, b.R, rtol=0, atol=1e-6)
