"""Hook factories on plain tensors, against hand computations (no model needed)."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim import hooks

D = 12


class FakeHook:
    name = "blocks.0.hook_resid_post"


HOOK = FakeHook()


def orthonormal(d: int, k: int, dtype=torch.float32) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, k, dtype=torch.float64)).Q.to(dtype)


def projector(B: torch.Tensor) -> torch.Tensor:
    B = B.double()
    return B @ B.T


@pytest.fixture
def x():
    return torch.randn(3, 5, D)


# ------------------------------------------------------------------------------------------- algebra
def test_project_on_standard_basis_keeps_those_coordinates_exactly(x):
    B = torch.eye(D)[:, [1, 4, 7]]
    out = hooks.project(B)(x, HOOK)
    expected = torch.zeros_like(x)
    expected[..., [1, 4, 7]] = x[..., [1, 4, 7]]
    assert torch.equal(out, expected)
    rest = hooks.ablate(B)(x, HOOK)
    expected = x.clone()
    expected[..., [1, 4, 7]] = 0
    assert torch.equal(rest, expected)


def test_projection_algebra_random_basis(x):
    B = orthonormal(D, 4)
    P = projector(B)
    p = hooks.project(B)(x, HOOK)
    a = hooks.ablate(B)(x, HOOK)
    assert torch.allclose(p.double(), x.double() @ P, atol=1e-5)
    assert torch.allclose(a.double(), x.double() @ (torch.eye(D, dtype=torch.float64) - P), atol=1e-5)
    assert torch.allclose(p + a, x, atol=1e-5)  # P + (I - P) = I
    assert torch.allclose(hooks.project(B)(p, HOOK), p, atol=1e-5)  # idempotent
    assert (a @ B).abs().max() < 1e-5  # nothing left in the span
    assert (p - p @ B @ B.T).abs().max() < 1e-5  # nothing outside it


def test_mean_ablation(x):
    B = orthonormal(D, 3)
    mean = torch.randn(D)
    out = hooks.ablate(B, mode="mean", mean=mean)(x, HOOK)
    assert torch.allclose(out @ B, (mean @ B).expand(3, 5, 3), atol=1e-5)  # span component = the mean's
    assert torch.allclose(out - out @ B @ B.T, x - x @ B @ B.T, atol=1e-5)  # the rest untouched
    per_pos = torch.randn(5, D)
    out = hooks.ablate(B, mode="mean", mean=per_pos)(x, HOOK)
    assert torch.allclose(out @ B, (per_pos @ B).expand(3, 5, 3), atol=1e-5)


def test_interchange_ndm_properties(x):
    source = torch.randn_like(x)
    # full identity basis: the source exactly
    assert torch.equal(hooks.interchange(torch.eye(D), source)(x, HOOK), source)
    # any full orthonormal basis: still the source exactly
    assert torch.equal(hooks.interchange(orthonormal(D, D), source)(x, HOOK), source)
    # the clean activation as source: a no-op, bit for bit
    B = orthonormal(D, 5)
    assert torch.equal(hooks.interchange(B, x.clone())(x, HOOK), x)
    # the component in the span comes from the source, the rest from x
    out = hooks.interchange(B, source)(x, HOOK)
    assert torch.allclose(out @ B, source @ B, atol=1e-5)
    assert torch.allclose(out - out @ B @ B.T, x - x @ B @ B.T, atol=1e-5)
    P = projector(B)
    expected = x.double() - x.double() @ P + source.double() @ P
    assert torch.allclose(out.double(), expected, atol=1e-5)


def test_interchange_outside_the_span_bit_identical(x):
    source = torch.randn_like(x)
    B = torch.eye(D)[:, :3]
    out = hooks.interchange(B, source)(x, HOOK)
    assert torch.equal(out[..., 3:], x[..., 3:])
    assert torch.allclose(out[..., :3], source[..., :3], atol=1e-6)


def test_empty_and_direction_bases(x):
    empty = torch.zeros(D, 0)
    assert torch.equal(hooks.project(empty)(x, HOOK), torch.zeros_like(x))
    assert torch.equal(hooks.ablate(empty)(x, HOOK), x)
    assert torch.equal(hooks.interchange(empty, torch.randn_like(x))(x, HOOK), x)
    v = torch.randn(D)
    v = v / v.norm()
    out = hooks.ablate(v)(x, HOOK)  # a [d] vector is one direction
    assert (out @ v).abs().max() < 1e-5


def test_rotate_and_inverse(x):
    R = orthonormal(D, D)
    r = hooks.rotate(R)
    assert r.orthogonal
    assert torch.equal(r(x, HOOK), x @ R)
    assert torch.allclose(hooks.unrotate(R)(r(x, HOOK), HOOK), x, atol=1e-5)
    # not orthogonal, but invertible (an interaction basis need not be orthogonal)
    M = torch.randn(D, D) + 3 * torch.eye(D)
    m = hooks.rotate(M)
    assert not m.orthogonal
    back = hooks.rotate(M, inverse=True)(m(x, HOOK), HOOK)
    assert torch.allclose(back, x, atol=1e-4)
    # an edit in rotated coordinates: ablate the first rotated coordinate
    e0 = torch.eye(D)[:, :1]
    y = hooks.unrotate(R)(hooks.ablate(e0)(hooks.rotate(R)(x, HOOK), HOOK), HOOK)
    assert torch.allclose(y, hooks.ablate(R[:, :1])(x, HOOK), atol=1e-5)


# ------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    "positions",
    [2, -1, torch.tensor([0, 4, 2]), torch.rand(3, 5) > 0.5],
    ids=["int", "negative", "per-row", "mask"],
)
@pytest.mark.parametrize("factory", ["project", "ablate", "mean", "interchange", "rotate"])
def test_only_selected_positions_change(x, positions, factory):
    B = orthonormal(D, 4)
    source = torch.randn_like(x)
    make = {
        "project": lambda **kw: hooks.project(B, **kw),
        "ablate": lambda **kw: hooks.ablate(B, **kw),
        "mean": lambda **kw: hooks.ablate(B, mode="mean", mean=torch.randn(D), **kw),
        "interchange": lambda **kw: hooks.interchange(B, source, **kw),
        "rotate": lambda **kw: hooks.rotate(orthonormal(D, D), **kw),
    }[factory]
    torch.manual_seed(0)
    full = make()(x, HOOK)
    torch.manual_seed(0)
    before = x.clone()
    out = make(positions=positions)(x, HOOK)
    assert torch.equal(x, before), "the input must not be modified in place"
    mask = hooks.positions_mask(positions, 3, 5)
    assert torch.equal(out[~mask], x[~mask])  # bit-identical elsewhere
    assert torch.allclose(out[mask], full[mask], atol=1e-6)
    assert mask.any() and not torch.equal(out[mask], x[mask])


def test_head_selection_leaves_other_heads_bit_identical():
    z = torch.randn(2, 5, 4, 8)
    B = orthonormal(8, 3)
    source = torch.randn_like(z)
    out = hooks.interchange(B, source, head=2)(z, HOOK)
    keep = [0, 1, 3]
    assert torch.equal(out[:, :, keep], z[:, :, keep])
    P = projector(B)
    expected = z[:, :, 2].double() @ (torch.eye(8, dtype=torch.float64) - P) + source[:, :, 2].double() @ P
    assert torch.allclose(out[:, :, 2].double(), expected, atol=1e-5)
    # source may also be the head's own [batch, pos, d] slice
    assert torch.equal(hooks.interchange(B, source[:, :, 2], head=2)(z, HOOK), out)
    # head + positions: one head at one position
    out = hooks.project(B, head=1, positions=-1)(z, HOOK)
    changed = torch.zeros_like(z, dtype=torch.bool)
    changed[:, -1, 1] = True
    assert torch.equal(out[~changed], z[~changed])
    assert torch.allclose(out[:, -1, 1], z[:, -1, 1] @ B @ B.T, atol=1e-6)


def test_dtype_device_and_gradients():
    x = torch.randn(2, 3, D, dtype=torch.bfloat16)
    B = orthonormal(D, 2)
    out = hooks.project(B)(x, HOOK)
    assert out.dtype == torch.bfloat16
    # a learnable basis gets gradients (DAS)
    Bp = torch.nn.Parameter(orthonormal(D, 2))
    y = hooks.interchange(Bp, torch.randn(2, 3, D), positions=-1)(torch.randn(2, 3, D), HOOK)
    y.sum().backward()
    assert Bp.grad is not None and Bp.grad.abs().sum() > 0


def test_repr_is_short():
    r = repr(hooks.interchange(torch.eye(D)[:, :2], torch.randn(2, 3, D), positions=-1))
    assert r == "interchange(basis=[12, 2], source=[2, 3, 12], positions=-1)"
    assert "head=1" in repr(hooks.project(torch.eye(4), head=1))


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "basis, error, match",
    [
        (torch.randn(D, 3), ValueError, r"not orthonormal \(max \|BᵀB - I\|"),
        (torch.eye(D)[:, :3] * 1.01, ValueError, "not orthonormal"),
        (torch.randn(3, D), ValueError, "transposed"),
        (torch.randn(2, D, 3), ValueError, r"\[d, k\]"),
        (torch.full((D, 1), float("nan")), ValueError, "NaN"),
        (torch.eye(D, dtype=torch.long), TypeError, "floating"),
    ],
)
def test_bad_bases(basis, error, match):
    with pytest.raises(error, match=match):
        hooks.project(basis)


def test_tolerance_is_configurable():
    B = torch.eye(D)[:, :3] * (1 + 1e-3)
    with pytest.raises(ValueError):
        hooks.project(B)
    hooks.project(B, atol=1e-2)
    assert hooks.default_atol(torch.float32) == hooks.ORTHONORMAL_ATOL
    assert hooks.default_atol(torch.bfloat16) > 1e-2


def test_argument_errors():
    B = torch.eye(D)[:, :2]
    with pytest.raises(ValueError, match="mode"):
        hooks.ablate(B, mode="resample")
    with pytest.raises(ValueError, match="needs the mean activation"):
        hooks.ablate(B, mode="mean")
    with pytest.raises(ValueError, match="only used with mode='mean'"):
        hooks.ablate(B, mean=torch.zeros(D))
    with pytest.raises(ValueError, match="mean: has 5 features"):
        hooks.ablate(B, mode="mean", mean=torch.zeros(5))
    with pytest.raises(ValueError, match="source: has 5 features"):
        hooks.interchange(B, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="pass head="):
        hooks.interchange(B, torch.zeros(2, 3, 4, D))
    with pytest.raises(ValueError, match="square"):
        hooks.rotate(torch.randn(D, 3))
    with pytest.raises(ValueError, match="singular"):
        hooks.rotate(torch.ones(D, D))
    with pytest.raises(ValueError, match="head index >= 0"):
        hooks.project(B, head=-1)
    with pytest.raises(TypeError, match="head"):
        hooks.project(B, head="0")


def test_call_time_errors_name_the_problem():
    B = torch.eye(D)[:, :2]
    with pytest.raises(ValueError, match=r"basis: has 12 rows but the feature axis of 'blocks.0.hook_resid_post'.*8"):
        hooks.project(B)(torch.randn(2, 3, 8), HOOK)
    with pytest.raises(ValueError, match="pass head="):
        hooks.project(B)(torch.randn(2, 3, 4, D), HOOK)
    with pytest.raises(ValueError, match="no head axis"):
        hooks.project(B, head=0)(torch.randn(2, 3, D), HOOK)
    with pytest.raises(ValueError, match="head: 4 is out of range"):
        hooks.project(B, head=4)(torch.randn(2, 3, 4, D), HOOK)
    with pytest.raises(ValueError, match="out of range for sequences of length 3"):
        hooks.project(B, positions=3)(torch.randn(2, 3, D), HOOK)
    with pytest.raises(ValueError, match=r"3 positions \(one per row\) for a batch of 2"):
        hooks.project(B, positions=torch.tensor([0, 1, 2]))(torch.randn(2, 3, D), HOOK)
    with pytest.raises(ValueError, match="source run has 1 rows, the patched run 2"):
        hooks.interchange(B, torch.randn(1, 3, D))(torch.randn(2, 3, D), HOOK)
    with pytest.raises(ValueError, match="per-position mean has 4 positions but the input"):
        hooks.ablate(B, mode="mean", mean=torch.zeros(4, D))(torch.randn(2, 3, D), HOOK)
    with pytest.raises(ValueError, match=r"\[batch, pos, d\]"):
        hooks.project(B)(torch.randn(3, D), HOOK)
