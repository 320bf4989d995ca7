"""`hooks.rotate` with an affine basis carrying a folded-bias coordinate (an interaction-basis node layer)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tl_tensorsim import hooks

F64 = torch.float64
D = 6


class FakeHook:
    name = "blocks.0.hook_resid_post"


def affine_basis(d: int = D, seed: int = 0):
    """An invertible affine change of basis `[x, 1] -> [x, 1] C` (last column of C⁻¹ keeps the constant)."""
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(d + 1, d + 1, generator=g, dtype=F64) + 3 * torch.eye(d + 1, dtype=F64)
    return SimpleNamespace(C=C, C_pinv=torch.linalg.inv(C))


def expected(x, basis, keep):
    aug = torch.cat([x, torch.ones_like(x[..., :1])], -1).to(F64)
    return (aug @ basis.C[:, keep] @ basis.C_pinv[keep])[..., :-1]


def test_all_directions_kept_is_the_identity():
    x = torch.randn(2, 3, D, dtype=F64)
    out = hooks.rotate(affine_basis())(x, FakeHook())
    assert torch.allclose(out, x, atol=1e-10)


def test_keep_forms_agree_with_the_formula():
    b = affine_basis()
    x = torch.randn(2, 3, D, dtype=F64)
    want = expected(x, b, [0, 1, 2])
    mask = torch.zeros(D + 1, dtype=torch.bool)
    mask[:3] = True
    for keep in (3, [0, 1, 2], torch.tensor([0, 1, 2]), mask):
        assert torch.allclose(hooks.rotate(b, keep=keep)(x, FakeHook()), want, atol=1e-12)
    assert torch.allclose(hooks.rotate((b.C, b.C_pinv), keep=[1, 4])(x, FakeHook()), expected(x, b, [1, 4]))


def test_positions_leave_the_rest_bit_identical():
    b = affine_basis()
    x = torch.randn(2, 4, D)
    out = hooks.rotate(b, keep=2, positions=-1)(x, FakeHook())
    assert torch.equal(out[:, :-1], x[:, :-1])
    assert torch.allclose(out[:, -1].double(), expected(x[:, -1:], b, [0, 1])[:, 0], atol=1e-5)
    assert out.dtype == x.dtype


def test_with_a_model_and_an_interaction_basis():
    from tests.interaction.helpers import NODES, tiny, tokens
    from tl_tensorsim.interaction import interaction_basis
    from tl_tensorsim.training import limit_threads

    model, data = tiny(0), tokens(30)
    with limit_threads(1):  # tiny tensors: one thread is fastest on a shared machine
        ib = interaction_basis(model, NODES, data, progress=False)
    clean = model(data)
    full = hooks.run_with_hooks(model, data, [("blocks.0.hook_resid_mid", hooks.rotate(ib.node(1)))])
    assert torch.allclose(full, clean, atol=1e-8)  # nothing truncated at this layer (kept 9 of 9)
    cut = hooks.run_with_hooks(model, data, [("blocks.0.hook_resid_mid", hooks.rotate(ib.node(1), keep=2))])
    assert not torch.allclose(cut, clean, atol=1e-3)
    # feature size checked before the forward pass; C has d + 1 rows (the constant), and the message counts them
    match = r"basis.C: has 9 rows \(features and the constant\) but .*hook_post' has size 12 \(basis.C must be \[13,"
    with pytest.raises(ValueError, match=match):
        hooks.run_with_hooks(model, data, [("blocks.0.mlp.hook_post", hooks.rotate(ib.node(1), keep=2))])


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((affine_basis(),), dict(inverse=True), ValueError, "inverse"),
        ((affine_basis(),), dict(keep=D + 2), ValueError, "keep"),
        ((affine_basis(),), dict(keep=[0, D + 1]), ValueError, "keep"),
        ((affine_basis(),), dict(keep=torch.ones(3, dtype=torch.bool)), ValueError, "keep"),
        ((torch.eye(D),), dict(keep=2), ValueError, "keep"),
        ((SimpleNamespace(C=torch.eye(4, 3), C_pinv=torch.eye(4, 3)),), {}, ValueError, "C_pinv"),
        ((SimpleNamespace(C="no", C_pinv=torch.eye(3)),), {}, TypeError, "rotation.C"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        hooks.rotate(*args, **kwargs)


def test_unrotate_names_an_affine_basis():
    with pytest.raises(ValueError, match=r"rotation: unrotate takes a rotation matrix; an affine basis"):
        hooks.unrotate(affine_basis())
