"""The hooks inside real forward passes, on a HookedTransformer and a TransformerBridge with the same weights."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim import hooks

RESID = "blocks.0.hook_resid_post"


@pytest.fixture
def tokens():
    return torch.randint(0, 50, (3, 6))


def basis(d: int, k: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, k, dtype=torch.float64)).Q.float()


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def run_and_record(model, tokens, name, fn):
    """Run with `fn` at `name` and return (logits, the activation `fn` returned)."""
    seen = []
    logits = model.run_with_hooks(
        tokens, fwd_hooks=[hooks.bind(model, name, fn, tokens), (name, lambda a, hook: seen.append(a.detach()))]
    )
    assert len(seen) == 1
    return logits, seen[0]


# ------------------------------------------------------------------------------------------- inside a forward pass
CASES = [
    ("blocks.0.hook_resid_post", None, 32),
    ("blocks.1.hook_attn_out", None, 32),
    ("blocks.0.hook_mlp_out", None, 32),
    ("blocks.0.mlp.hook_post", None, 64),
    ("blocks.1.attn.hook_z", 2, 8),
]


@pytest.mark.parametrize("name, head, d", CASES, ids=[c[0].split(".", 2)[-1] for c in CASES])
def test_each_factory_matches_the_hand_computation(model, tokens, name, head, d):
    _, cache = model.run_with_cache(tokens)
    clean = cache[name].detach()
    x = clean if head is None else clean[:, :, head]
    B = basis(d, 3)
    P = B.double() @ B.double().T
    I = torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d)
    source = torch.randn_like(clean)
    src = source if head is None else source[:, :, head]
    R = basis(d, d)
    expected = {
        "project": x.double() @ P,
        "ablate": x.double() @ (I - P),
        "mean": x.double() @ (I - P) + mean.double() @ P,
        "interchange": x.double() @ (I - P) + src.double() @ P,
        "rotate": x.double() @ R.double(),
    }
    made = {
        "project": hooks.project(B, head=head),
        "ablate": hooks.ablate(B, head=head),
        "mean": hooks.ablate(B, mode="mean", mean=mean, head=head),
        "interchange": hooks.interchange(B, source, head=head),
        "rotate": hooks.rotate(R, head=head),
    }
    for op, fn in made.items():
        _, got = run_and_record(model, tokens, name, fn)
        new = got if head is None else got[:, :, head]
        assert torch.allclose(new.double(), expected[op], atol=1e-5), op
        if head is not None:
            others = [h for h in range(got.shape[2]) if h != head]
            assert torch.equal(got[:, :, others], clean[:, :, others]), op
    assert no_hooks_left(model)


@pytest.mark.parametrize("positions", [-1, torch.tensor([0, 5, 3]), torch.rand(3, 6) > 0.6], ids=["int", "row", "mask"])
def test_untouched_positions_bit_identical_and_downstream_causal(model, tokens, positions):
    _, cache = model.run_with_cache(tokens)
    clean = cache[RESID].detach()
    fn = hooks.ablate(basis(32, 5), positions=positions)
    _, got = run_and_record(model, tokens, RESID, fn)
    mask = hooks.positions_mask(positions, 3, 6)
    assert torch.equal(got[~mask], clean[~mask])
    assert not torch.equal(got[mask], clean[mask])


def test_interchange_ndm_properties_in_the_model(model, tokens):
    clean_logits, clean_cache = model.run_with_cache(tokens)
    corrupt = torch.randint(0, 50, tokens.shape)
    corrupt_logits, corrupt_cache = model.run_with_cache(corrupt)
    # clean activation as source on the clean run: a no-op
    same = model.run_with_hooks(
        tokens, fwd_hooks=[hooks.bind(model, RESID, hooks.interchange(basis(32, 7), clean_cache[RESID]), tokens)]
    )
    assert torch.equal(same, clean_logits)
    # full identity basis, clean source into the corrupt run: the clean run's downstream, exactly
    patched = model.run_with_hooks(
        corrupt, fwd_hooks=[hooks.bind(model, RESID, hooks.interchange(torch.eye(32), clean_cache[RESID]), corrupt)]
    )
    assert torch.equal(patched, clean_logits)
    # outside the span: untouched
    B = torch.eye(32)[:, :4]
    _, got = run_and_record(model, corrupt, RESID, hooks.interchange(B, clean_cache[RESID]))
    assert torch.equal(got[..., 4:], corrupt_cache[RESID][..., 4:])
    assert torch.allclose(got[..., :4], clean_cache[RESID][..., :4], atol=1e-6)
    assert not torch.allclose(corrupt_logits, patched)


def test_rotate_then_unrotate_is_the_identity(model, tokens):
    clean = model(tokens)
    R = basis(32, 32)
    out = model.run_with_hooks(tokens, fwd_hooks=[(RESID, hooks.rotate(R)), (RESID, hooks.unrotate(R))])
    assert torch.allclose(out, clean, atol=1e-4)
    out = model.run_with_hooks(tokens, fwd_hooks=[(RESID, hooks.rotate(R))])
    assert not torch.allclose(out, clean, atol=1e-3)


def test_hook_results_identical_on_both_classes(model_pair, tokens):
    ht, bridge = model_pair
    B = basis(32, 4)
    source = torch.randn(3, 6, 32)
    fns = [
        hooks.project(B, positions=2),
        hooks.ablate(B),
        hooks.interchange(B, source, positions=torch.tensor([1, 2, 3])),
    ]
    for fn in fns:
        a, ra = run_and_record(ht, tokens, RESID, fn)
        b, rb = run_and_record(bridge, tokens, RESID, fn)
        assert torch.allclose(ra, rb, atol=1e-5), fn
        assert torch.allclose(a, b, atol=1e-5), fn
    z = hooks.interchange(basis(8, 2), torch.randn(3, 6, 4, 8), head=1, positions=-1)
    _, za = run_and_record(ht, tokens, "blocks.1.attn.hook_z", z)
    _, zb = run_and_record(bridge, tokens, "blocks.1.attn.hook_z", z)
    assert torch.allclose(za, zb, atol=1e-5)


def test_compat_mode_bridge_matches_processed_hooked_transformer(compat_pair, tokens):
    ht, bridge = compat_pair
    fn = hooks.ablate(basis(32, 6), positions=-1)
    a = ht.run_with_hooks(tokens, fwd_hooks=[hooks.bind(ht, RESID, fn)])
    b = bridge.run_with_hooks(tokens, fwd_hooks=[hooks.bind(bridge, RESID, fn)])
    assert torch.allclose(a, b, atol=1e-4)


def test_model_hooks_context_and_add_hook(model, tokens):
    fn = hooks.project(basis(32, 3), positions=0)
    expected = model.run_with_hooks(tokens, fwd_hooks=[(RESID, fn)])
    with model.hooks(fwd_hooks=[hooks.bind(model, RESID, fn)]):
        assert torch.equal(model(tokens), expected)
    assert no_hooks_left(model)
    model.add_hook(RESID, fn)
    try:
        assert torch.equal(model(tokens), expected)
    finally:
        model.reset_hooks()
    assert no_hooks_left(model)


def test_hook_result_per_head_on_hooked_transformer(model_pair, tokens):
    ht = model_pair[0]
    name = "blocks.0.attn.hook_result"
    with pytest.raises(ValueError, match=r"set_use_attn_result\(True\)"):
        hooks.bind(ht, name, hooks.project(basis(32, 2), head=0))
    ht.set_use_attn_result(True)
    try:
        _, cache = ht.run_with_cache(tokens)
        B = basis(32, 2)
        _, got = run_and_record(ht, tokens, name, hooks.project(B, head=3))
        assert torch.allclose(got[:, :, 3], cache[name][:, :, 3] @ B @ B.T, atol=1e-5)
        assert torch.equal(got[:, :, :3], cache[name][:, :, :3])
        with pytest.raises(ValueError, match="pass head="):
            hooks.bind(ht, name, hooks.project(B))
    finally:
        ht.set_use_attn_result(False)


# ------------------------------------------------------------------------------------------- errors before any forward
@pytest.fixture
def forward_counter(model):
    calls = []
    model.add_hook("blocks.0.hook_resid_pre", lambda a, hook: calls.append(1))
    yield calls
    model.reset_hooks()


def test_errors_are_raised_before_any_forward_pass(model, tokens, forward_counter):
    B = basis(32, 3)
    cases = [
        (("blocks.0.hook_resid_pots", hooks.project(B)), r"unknown hook name .*blocks\.0\.hook_resid_post"),
        (
            (RESID, hooks.project(basis(64, 3))),
            r"basis: has 64 rows but the feature axis of 'blocks.0.hook_resid_post' has size 32",
        ),
        (("blocks.0.mlp.hook_post", hooks.project(B)), "has size 64"),
        (("blocks.0.attn.hook_z", hooks.project(basis(8, 2))), "per-head hook.*pass head="),
        (("blocks.0.attn.hook_z", hooks.project(basis(8, 2), head=4)), "head: 4 is out of range.*4 heads"),
        ((RESID, hooks.project(B, head=0)), "no head axis"),
        ((RESID, hooks.project(B, positions=6)), "position 6 is out of range for sequences of length 6"),
        ((RESID, hooks.project(B, positions=torch.tensor([0, 1]))), "2 positions .* batch of 3"),
        ((RESID, hooks.interchange(B, torch.randn(2, 6, 32))), "source: batch of 2 rows but the input has 3"),
        ((RESID, hooks.ablate(B, mode="mean", mean=torch.zeros(5, 32))), "per-position mean has 5 positions"),
        (("blocks.0.attn.hook_pattern", hooks.project(B)), "no feature axis"),
        (("blocks.0.attn.hook_result", hooks.project(B, head=0)), r"set_use_attn_result\(True\)"),
    ]
    for (name, fn), match in cases:
        with pytest.raises(ValueError, match=match):
            hooks.run_with_hooks(model, tokens, fwd_hooks=[(name, fn)])
        with pytest.raises(ValueError, match=match):
            hooks.bind(model, name, fn, tokens)
    assert forward_counter == []
    with pytest.raises(ValueError, match="name filter selects no hook point"):
        hooks.validate(model, [(lambda n: False, hooks.project(B))])
    with pytest.raises(ValueError, match="has size 64"):
        hooks.validate(model, [(lambda n: n.endswith("mlp.hook_post"), hooks.project(B))])
    assert forward_counter == []


def test_bind_without_tokens_checks_against_n_ctx(model):
    B = basis(32, 3)
    name, fn = hooks.bind(model, RESID, hooks.project(B, positions=15))
    assert name == RESID and isinstance(fn, hooks.Project)
    with pytest.raises(ValueError, match=r"position 16 is out of range for the model's context \(n_ctx=16\)"):
        hooks.bind(model, RESID, hooks.project(B, positions=16))
    with pytest.raises(ValueError, match=r"position 99 \(row 1\) is out of range .*n_ctx=16"):
        hooks.bind(model, RESID, hooks.project(B, positions=torch.tensor([0, 99])))
    hooks.bind(model, RESID, hooks.interchange(B, torch.randn(5, 16, 32)))
    with pytest.raises(ValueError, match="17 positions, more than the model's n_ctx=16"):
        hooks.bind(model, RESID, hooks.interchange(B, torch.randn(5, 17, 32)))
    # plain callables get the name checks only
    hooks.bind(model, "blocks.0.attn.hook_pattern", lambda a, hook: a)


# ------------------------------------------------------------------------------------------- a raising hook leaves nothing behind
def test_a_raising_hook_leaves_no_hook_attached(model, tokens):
    wrong = hooks.project(basis(64, 3))  # not bound: fails inside the forward pass
    with pytest.raises(ValueError, match="has 64 rows"):
        model.run_with_hooks(
            tokens, fwd_hooks=[(RESID, wrong), ("blocks.1.hook_resid_post", hooks.ablate(basis(32, 1)))]
        )
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="has 64 rows"):
        with model.hooks(fwd_hooks=[(RESID, wrong)]):
            model(tokens)
    assert no_hooks_left(model)
    # and the model still runs normally afterwards
    assert torch.equal(model(tokens), model(tokens))
