"""The adapter builds, loads and runs either model class: the same calls on a HookedTransformer and a
TransformerBridge with the same weights give the same numbers (float64 pair: tolerances 1e-10 unless stated)."""

from __future__ import annotations

import warnings

import pytest
import torch

import tl_tensorsim as ts
from tests.conftest import HAS_HOOKED_TRANSFORMER, SMALL, make_bridge, make_model_pair, needs_hooked_transformer

RESID0, RESID1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
ATOL = 1e-10


HT = pytest.param("HookedTransformer", marks=needs_hooked_transformer)


def _f64(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.to(torch.float64)


@pytest.fixture(scope="module")
def bridge64():
    return _f64(make_bridge(seed=5))


@pytest.fixture(scope="module")
def pair64(bridge64):
    """(HookedTransformer, TransformerBridge) with the same float64 weights (skips on TransformerLens 4)."""
    return _f64(make_model_pair(seed=5)[0]), bridge64


@pytest.fixture(scope="module")
def models64(request, bridge64):
    """Both classes with the same float64 weights, or the bridge alone where TransformerLens has no
    HookedTransformer (4.x): each model's checks run on what is installed, the comparison where there are two."""
    return request.getfixturevalue("pair64") if HAS_HOOKED_TRANSFORMER else (bridge64,)


@pytest.fixture(params=[HT, "TransformerBridge"])
def view64(request):
    if request.param == "TransformerBridge":
        return ts.ModelView(request.getfixturevalue("bridge64"))
    return ts.ModelView(request.getfixturevalue("pair64")[0])


@pytest.fixture
def tokens():
    return torch.randint(0, SMALL["d_vocab"], (3, 6), generator=torch.Generator().manual_seed(0))


def no_hooks_left(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.fixture
def forbid_forward(view64, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(view64.model, "run_with_hooks", forbidden)
    return view64


# ------------------------------------------------------------------------------------------- build / load
FIELDS = dict(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=11, d_mlp=32, act_fn="gelu_new", seed=0)


@pytest.mark.parametrize(
    "backend,kind",
    [pytest.param("hooked", "HookedTransformer", marks=needs_hooked_transformer), ("bridge", "TransformerBridge")],
)
def test_build_either_class_from_fields_or_config(backend, kind):
    view = ts.ModelView.build(FIELDS, backend=backend)
    assert view.kind == kind and view.cfg.n_layers == 2 and view.cfg.d_mlp == 32
    if backend == "hooked":
        from transformer_lens import HookedTransformerConfig

        config = HookedTransformerConfig(**FIELDS)
    else:
        from transformer_lens.config import TransformerBridgeConfig

        config = TransformerBridgeConfig(**{k: v for k, v in FIELDS.items() if k != "seed"})
    assert ts.ModelView.build(config).kind == kind  # the config's own class by default


@pytest.mark.parametrize("backend", [pytest.param("hooked", marks=needs_hooked_transformer), "bridge", None])
def test_build_honours_the_config_dtype(backend):
    """`"dtype": torch.bfloat16` gives a bf16 model of either class (the bridge was float32 on TransformerLens 4)."""
    view = ts.ModelView.build({**FIELDS, "dtype": torch.bfloat16}, backend=backend)
    assert view.dtype == torch.bfloat16 and view.model.cfg.dtype == torch.bfloat16
    assert {p.dtype for p in view.model.parameters()} == {torch.bfloat16}
    assert view.model(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16
    if backend != "hooked":
        from transformer_lens.config import TransformerBridgeConfig

        fields = {k: v for k, v in FIELDS.items() if k != "seed"}
        assert ts.ModelView.build(TransformerBridgeConfig(**fields, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert ts.ModelView.build(FIELDS, backend=backend).dtype == torch.float32  # the default stays float32


def test_build_errors():
    with pytest.raises(ValueError, match=r"backend: expected one of \('hooked', 'bridge'\)"):
        ts.ModelView.build(FIELDS, backend="nope")
    with pytest.raises(TypeError, match="config: expected a dict of TransformerLens config fields.*got builtins.list"):
        ts.ModelView.build([1, 2])


HOOKED = pytest.param("hooked", marks=needs_hooked_transformer)


@pytest.mark.parametrize(
    "source",
    ["tl_names", pytest.param("ht_state_dict", marks=needs_hooked_transformer), "bridge_state_dict", "native_raw"],
)
@pytest.mark.parametrize("target", [HOOKED, "bridge"])
def test_state_dict_round_trips_across_naming_conventions(source, target, tokens):
    bridge = make_bridge(seed=7)
    state = {
        "tl_names": lambda: ts.ModelView(bridge).state_dict(),  # embed.W_E, blocks.0.attn.W_Q, ...
        "ht_state_dict": lambda: make_model_pair(seed=7)[0].state_dict(),  # with the mask / IGNORE buffers
        "bridge_state_dict": lambda: bridge.state_dict(),  # embed.weight, blocks.0.attn.q.weight, ...
        "native_raw": lambda: bridge.original_model.state_dict(),  # layers.0._original_component...
    }[source]()
    fresh = ts.ModelView.build({**SMALL, "seed": 99}, backend=target)
    before = fresh.W_Q.clone()
    assert fresh.load_state_dict(state) is fresh
    assert not torch.equal(fresh.W_Q, before)  # cached weights refreshed
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(tokens), bridge(tokens), atol=1e-5, rtol=1e-5)
    reference = ts.ModelView(bridge).state_dict()
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, reference[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "target,kind",
    [pytest.param("hooked", "HookedTransformer", marks=needs_hooked_transformer), ("bridge", "TransformerBridge")],
)
def test_load_state_dict_errors_name_the_keys(target, kind, bridge_model):
    view = ts.ModelView.build({**SMALL, "seed": 1}, backend=target)
    state = ts.ModelView(bridge_model).state_dict()
    with pytest.raises(ValueError, match=r"state: keys differ.*missing \['embed.W_E'\]"):
        view.load_state_dict({k: v for k, v in state.items() if k != "embed.W_E"})
    with pytest.raises(ValueError, match=rf"(?s)state: does not fit this {kind}.*size mismatch"):
        view.load_state_dict({**state, "embed.W_E": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="state: unrecognised weight names"):
        view.load_state_dict({"foo": torch.zeros(1)})
    with pytest.raises(TypeError, match="state: expected a state dict"):
        view.load_state_dict([1, 2])


def test_copy_is_independent(bridge_model):
    view = ts.ModelView(bridge_model)
    before = view.W_E.clone()
    other = view.copy()
    state = other.state_dict()
    state["embed.W_E"] = state["embed.W_E"] + 1.0
    other.load_state_dict(state)
    assert torch.equal(other.W_E, before + 1.0)
    assert torch.equal(view.refresh().W_E, before)


# ------------------------------------------------------------------------------------------- gates
@needs_hooked_transformer
def test_gates_switch_on_and_restore_even_on_exceptions(model_pair, tokens):
    ht = model_pair[0]
    view = ts.ModelView(ht)
    name = "blocks.0.attn.hook_result"
    with pytest.raises(ValueError, match=r"set_use_attn_result\(True\)"):
        view.check_gate(name)
    with view.gates(name, "blocks.1.hook_mlp_in") as state:
        assert state["use_attn_result"] and state["use_hook_mlp_in"]
        view.check_gate(name)
    assert ht.cfg.use_attn_result is False and ht.cfg.use_hook_mlp_in is False
    with pytest.raises(RuntimeError, match="boom"):
        with view.gates(name, use_split_qkv_input=True):
            assert ht.cfg.use_split_qkv_input
            raise RuntimeError("boom")
    assert ht.cfg.use_attn_result is False and ht.cfg.use_split_qkv_input is False
    ht.set_use_attn_result(True)  # a flag already on stays on, and a keyword can switch it off for the block
    try:
        with view.gates(use_attn_result=False):
            assert ht.cfg.use_attn_result is False
        assert ht.cfg.use_attn_result is True
    finally:
        ht.set_use_attn_result(False)
    with pytest.raises(ValueError, match="use_attn_reslt: expected a gate flag"):
        with view.gates(use_attn_reslt=True):
            pass
    with pytest.raises(ValueError, match="needs use_attn_result=True"):
        with view.gates(name, use_attn_result=False):
            pass


def test_gate_that_cannot_switch_is_a_value_error_and_changes_nothing(bridge_model):
    bridge = bridge_model
    view = ts.ModelView(bridge)
    with pytest.raises(ValueError, match=r"'blocks.0.attn.hook_result' is not available on this TransformerBridge"):
        with view.gates("blocks.1.hook_mlp_in", "blocks.0.attn.hook_result"):
            pass
    assert bridge.cfg.use_attn_result is False and not bridge.cfg.use_hook_mlp_in


@needs_hooked_transformer
def test_gate_refused_by_a_hooked_transformer_is_a_value_error():
    view = ts.ModelView.build({**FIELDS, "attn_only": True, "d_mlp": None}, backend="hooked")
    with pytest.raises(ValueError, match="use_hook_mlp_in=True is not available on this HookedTransformer"):
        with view.gates(use_hook_mlp_in=True):
            pass
    assert view.model.cfg.use_hook_mlp_in is False


@needs_hooked_transformer
def test_gated_hook_in_run_with_cache_matches_einsum(model_pair, tokens):
    ht = model_pair[0]
    view = ts.ModelView(ht)
    _, cache = view.run_with_cache(tokens, names=["blocks.0.attn.hook_result", "blocks.0.attn.hook_z"])
    ref = torch.einsum("bphd,hdm->bphm", cache["blocks.0.attn.hook_z"], view.W_O[0])
    torch.testing.assert_close(cache["blocks.0.attn.hook_result"], ref, atol=1e-5, rtol=1e-5)
    assert ht.cfg.use_attn_result is False and no_hooks_left(ht)


# ------------------------------------------------------------------------------------------- run_with_cache
def test_run_with_cache_same_numbers_on_both_classes(pair64, tokens):
    names = ["hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "ln_final.hook_normalized"]
    (la, ca), (lb, cb) = (ts.ModelView(m).run_with_cache(tokens, names=names) for m in pair64)
    torch.testing.assert_close(la, lb, atol=ATOL, rtol=0)
    assert set(ca) == set(cb) == set(names)
    for n in names:
        torch.testing.assert_close(ca[n], cb[n], atol=ATOL, rtol=0)
        assert not ca[n].requires_grad
    with torch.no_grad():
        torch.testing.assert_close(la, pair64[0](tokens))


def test_run_with_cache_stop_at_layer(view64, tokens):
    out, cache = view64.run_with_cache(tokens, names=[RESID0, "blocks.0.attn.hook_z"], stop_at_layer=1)
    assert out.shape == (3, 6, 32)
    torch.testing.assert_close(out, cache[RESID0], atol=0, rtol=0)  # the residual stream after block 0
    _, full = view64.run_with_cache(tokens, names=RESID0)
    torch.testing.assert_close(cache[RESID0], full[RESID0], atol=0, rtol=0)
    out_neg, _ = view64.run_with_cache(tokens, names=[], stop_at_layer=-1)
    torch.testing.assert_close(out_neg, out, atol=0, rtol=0)
    _, everything = view64.run_with_cache(tokens, stop_at_layer=1)  # every ungated hook point before block 1
    assert RESID0 in everything and not any(n.startswith("blocks.1.") for n in everything)
    assert no_hooks_left(view64.model)


def test_run_with_cache_errors_before_any_forward(forbid_forward, tokens):
    view = forbid_forward
    with pytest.raises(ValueError, match=r"names: \['blocks.1.hook_resid_post'\] do not run with stop_at_layer=1"):
        view.run_with_cache(tokens, names=[RESID0, RESID1], stop_at_layer=1)
    with pytest.raises(ValueError, match=r"names: unknown hook name 'blocks.0.hook_resid_pots'"):
        view.run_with_cache(tokens, names="blocks.0.hook_resid_pots")
    with pytest.raises(ValueError, match=r"stop_at_layer: expected an int in \[-2, 2\]; got 3"):
        view.run_with_cache(tokens, stop_at_layer=3)
    with pytest.raises(ValueError, match="tokens: token id 50 is out of range for d_vocab=50"):
        view.run_with_cache(torch.full((1, 3), 50))


# ------------------------------------------------------------------------------------------- forward_between
PAIRS = [
    ("blocks.0.hook_resid_pre", RESID1),
    ("blocks.0.attn.hook_z", RESID1),
    ("blocks.0.mlp.hook_post", "blocks.1.attn.hook_pattern"),
    ("hook_embed", RESID0),
    ("blocks.1.hook_resid_mid", "ln_final.hook_normalized"),
]


@pytest.mark.parametrize("hook_in,hook_out", PAIRS)
def test_forward_between_equals_the_full_forward_on_both_classes(models64, tokens, hook_in, hook_out):
    outs = []
    for model in models64:
        view = ts.ModelView(model)
        _, cache = view.run_with_cache(tokens, names=[hook_in, hook_out])
        f = view.forward_between(hook_in, hook_out, tokens)
        y = f(cache[hook_in])
        torch.testing.assert_close(y, cache[hook_out], atol=ATOL, rtol=0)
        outs.append(f(cache[hook_in] * 1.5))  # off the clean run, still the same function on both classes
        assert no_hooks_left(model)
    if len(outs) == 2:
        torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)


def test_forward_between_under_torch_func(view64, tokens):
    hook_in, hook_out = "blocks.0.attn.hook_z", RESID1
    _, cache = view64.run_with_cache(tokens[:1, :4], names=[hook_in])
    x = cache[hook_in]
    f = view64.forward_between(hook_in, hook_out, tokens[:1, :4])
    g = torch.Generator().manual_seed(1)
    xs = x + 0.1 * torch.randn(5, *x.shape, generator=g, dtype=x.dtype)
    batched = torch.func.vmap(f)(xs)
    torch.testing.assert_close(batched, torch.stack([f(xi) for xi in xs]), atol=ATOL, rtol=0)

    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    _, tangent = torch.func.jvp(f, (x,), (v,))
    eps = 1e-5  # central differences in float64: error O(eps^2) + rounding O(1e-16 / eps)
    fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, atol=1e-7, rtol=1e-6)

    J = torch.func.jacrev(f)(x)
    assert J.shape == (*f(x).shape, *x.shape)
    torch.testing.assert_close(torch.einsum("abcdefg,defg->abc", J, v), tangent, atol=1e-10, rtol=0)
    _, vjp_fn = torch.func.vjp(f, x)
    u = torch.randn(f(x).shape, generator=g, dtype=x.dtype)
    x_leaf = x.clone().requires_grad_(True)  # plain autograd (no torch.func) as the reference
    (grad,) = torch.autograd.grad((u * f(x_leaf)).sum(), x_leaf)
    torch.testing.assert_close(vjp_fn(u)[0], grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.einsum("abc,abcdefg->defg", u, J), grad, atol=1e-10, rtol=0)


def test_forward_between_jacobians_agree_across_classes(pair64, tokens):
    jac = []
    for model in pair64:
        view = ts.ModelView(model)
        _, cache = view.run_with_cache(tokens[:1, :3], names=["blocks.0.hook_resid_mid"])
        f = view.forward_between("blocks.0.hook_resid_mid", "blocks.1.hook_resid_pre", tokens[:1, :3])
        jac.append(torch.func.jacfwd(f)(cache["blocks.0.hook_resid_mid"]))
    torch.testing.assert_close(jac[0], jac[1], atol=ATOL, rtol=0)


@needs_hooked_transformer
def test_forward_between_switches_gated_hooks_per_call(model_pair, tokens):
    ht = model_pair[0]
    view = ts.ModelView(ht)
    f = view.forward_between("blocks.0.attn.hook_result", RESID0, tokens)
    _, cache = view.run_with_cache(tokens, names=["blocks.0.attn.hook_result", RESID0])
    torch.testing.assert_close(f(cache["blocks.0.attn.hook_result"]), cache[RESID0], atol=1e-5, rtol=1e-5)
    assert ht.cfg.use_attn_result is False and no_hooks_left(ht)


def test_forward_between_errors_before_any_forward(forbid_forward, tokens):
    view = forbid_forward
    cases = [
        ((RESID1, RESID0), r"hook_out: 'blocks.0.hook_resid_post' comes before hook_in 'blocks.1.hook_resid_post'"),
        (("blocks.0.attn.hook_q", "blocks.0.attn.hook_k"), "runs in parallel with hook_in"),
        ((RESID0, RESID0), "is the same hook point as hook_in"),
        (("blocks.0.hook_resid_pots", RESID1), r"hook_in: unknown hook name .*Nearest valid names: \['blocks.0.hook"),
        ((RESID0, "blocks.9.hook_resid_post"), "hook_out: unknown hook name"),
    ]
    if view.kind == "TransformerBridge":
        cases.append(((RESID0, "blocks.0.hook_out"), "same hook point"))  # an alias of the same point
        cases.append((("blocks.0.attn.q.hook_in", RESID1), "hook_in: cannot place 'blocks.0.attn.q.hook_in'"))
    for (hook_in, hook_out), match in cases:
        with pytest.raises(ValueError, match=match):
            view.forward_between(hook_in, hook_out, tokens)
    with pytest.raises(ValueError, match=r"tokens: at most n_ctx=16 positions; got 17"):
        view.forward_between(RESID0, RESID1, torch.zeros(1, 17, dtype=torch.long))


def test_forward_between_wrong_input_shape(view64, tokens):
    f = view64.forward_between(RESID0, RESID1, tokens)
    with pytest.raises(ValueError, match=r"activation: expected shape \[3, 6, 32\] .*got \[3, 6, 31\]"):
        f(torch.zeros(3, 6, 31, dtype=torch.float64))
    with pytest.raises(TypeError, match="activation: expected dtype torch.float64"):
        f(torch.zeros(3, 6, 32))
    assert no_hooks_left(view64.model)


# ------------------------------------------------------------------------------------------- run_from
def test_run_from_cached_activation_equals_the_logits(view64, tokens):
    for name in ("blocks.1.hook_resid_pre", "blocks.0.attn.hook_z", "ln_final.hook_normalized"):
        logits, cache = view64.run_with_cache(tokens, names=[name])
        torch.testing.assert_close(view64.run_from(name, cache[name], tokens), logits, atol=ATOL, rtol=0)


def test_run_from_patches_like_run_with_hooks(models64, tokens):
    other = tokens.flip(0)
    name = "blocks.1.hook_resid_pre"
    patched = []
    for model in models64:
        view = ts.ModelView(model)
        _, source = view.run_with_cache(other, names=[name])
        got = view.run_from(name, source[name], tokens)
        ref = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, hook, s=source[name]: s)])
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
        patched.append(got)
    if len(patched) == 2:
        torch.testing.assert_close(patched[0], patched[1], atol=ATOL, rtol=0)


def test_run_from_resid_mid_patches_the_residual_stream_on_both_classes(pair64, tokens):
    """A bridge's `hook_resid_mid` is an alias of `ln2.hook_in` (the MLP branch's input only); the adapter patches
    the skip path too, so both classes give the same logits (a plain bridge hook there would not)."""
    name = "blocks.0.hook_resid_mid"
    logits = []
    for model in pair64:
        view = ts.ModelView(model)
        _, cache = view.run_with_cache(tokens, names=[name])
        logits.append(view.run_from(name, 2.0 * cache[name], tokens))
    torch.testing.assert_close(logits[0], logits[1], atol=ATOL, rtol=0)
