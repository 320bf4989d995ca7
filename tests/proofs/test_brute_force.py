"""Brute force: the path tables against the model's forward pass on every input, the streamed evaluator against
the direct one, the error bound against extended precision, and the preconditions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import needs_hooked_transformer
from tests.proofs.factories import ideal_state, model_with, random_state
from tl_tensorsim.model_io import build_tl_model
from tl_tensorsim.proofs import max_of_k
from tl_tensorsim.proofs.max_of_k.brute_force import _Query, group_correct


@pytest.mark.parametrize("backend", [pytest.param("hooked", marks=needs_hooked_transformer), "bridge"])
def test_path_tables_reproduce_the_forward_pass_on_every_input(backend):
    model = model_with(ideal_state(7, 3, 6, seed=0, noise=0.05, bias=0.05), backend=backend)
    tables = max_of_k.path_tables(model)
    tokens = max_of_k.all_inputs(7, 3)
    with torch.no_grad():
        forward = model(tokens)[:, -1].double()
    want = max_of_k.path_logits(tables, tokens)
    assert (forward - want).abs().max() <= 1e-5 * (1 + want.abs().max())


def test_streamed_evaluator_matches_the_direct_one():
    for V, n in ((6, 2), (5, 3), (4, 4)):
        model = model_with(ideal_state(V, n, 6, seed=V, noise=0.02))
        tables = max_of_k.path_tables(model)
        eps = max_of_k.evaluation_error_bound(tables)
        prefixes = max_of_k.all_inputs(V, n - 2) if n > 2 else torch.zeros(1, 0, dtype=torch.int64)
        streamed, _ = group_correct(tables, _Query.build(tables), prefixes, eps)
        direct = max_of_k.margins(tables, max_of_k.all_inputs(V, n)) > eps
        assert torch.equal(streamed.reshape(-1), direct)
        result = max_of_k.brute_force(model, progress=False, batch_size=7, check_samples=0)
        assert torch.equal(result.certified.reshape(-1), direct) and result.n_inputs == V**n


def _longdouble_margins(tables, tokens) -> np.ndarray:
    """The path formula in numpy's extended precision (80-bit on x86), from the same table midpoints."""
    E, P, EV, PV, EU = (
        np.asarray(t.mid.numpy(), dtype=np.longdouble)
        for t in (tables.EQKE, tables.EQKP, tables.EVOU, tables.PVOU, tables.EUPU)
    )
    tok = tokens.numpy()
    q = tok[:, -1]
    scores = E[q[:, None], tok] + P[q]
    a = np.exp(scores - scores.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    logits = EU[q] + np.einsum("bi,bix->bx", a, EV[tok] + PV[None])
    m = tok.max(1)
    right = logits[np.arange(len(m)), m]
    logits[np.arange(len(m)), m] = -np.inf
    return right - logits.max(1)


@pytest.mark.parametrize("qk_scale", [30.0, 3000.0])
def test_error_bound_covers_the_float64_evaluation(qk_scale):
    model = model_with(ideal_state(9, 3, 8, seed=1, qk_scale=qk_scale, ov_scale=50.0, noise=0.03))
    tables = max_of_k.path_tables(model)
    tokens = max_of_k.all_inputs(9, 3)
    diff = np.abs(max_of_k.margins(tables, tokens).numpy() - _longdouble_margins(tables, tokens))
    eps = max_of_k.evaluation_error_bound(tables)
    assert diff.max() <= eps and eps < 1e-6  # tiny next to the margins (order 1-100)


def test_forward_method_agrees_with_the_tables():
    model = model_with(ideal_state(6, 3, 6, seed=2, noise=0.03))
    tables = max_of_k.brute_force(model, progress=False)
    forward = max_of_k.brute_force(model, method="forward", progress=False, batch_size=50)
    assert tables.settings["ambiguous"] == 0 and torch.equal(tables.certified, forward.certified)
    assert tables.settings["forward_max_abs_diff"] < 1e-4
    assert forward.flops > tables.flops > 0


def test_preconditions_name_the_setting():
    base = dict(d_model=8, d_head=8, n_heads=1, n_layers=1, d_vocab=5, n_ctx=3, attn_only=True, normalization_type=None)
    for change, message in (
        ({"n_layers": 2}, r"model: expected cfg.n_layers = 1; got 2"),
        ({"n_heads": 2, "d_head": 4}, r"model: expected cfg.n_heads = 1; got 2"),
        ({"attn_only": False, "d_mlp": 16, "act_fn": "relu"}, r"model: expected cfg.attn_only = True; got False"),
        ({"normalization_type": "LN"}, r"model: expected cfg.normalization_type = None; got 'LN'"),
        ({"positional_embedding_type": "rotary", "rotary_dim": 8}, r"positional_embedding_type = 'standard'"),
        ({"post_embedding_ln": True}, r"model: expected cfg.post_embedding_ln off; got True"),  # LN without a type
    ):
        model = build_tl_model({**base, **change})
        for fn in (max_of_k.brute_force, max_of_k.cubic, max_of_k.subcubic, max_of_k.compare):
            with pytest.raises(ValueError, match=message):
                fn(model)
    with pytest.raises(TypeError, match="model: expected"):
        max_of_k.cubic(torch.nn.Linear(2, 2))
    model = model_with(random_state(5, 3, 6, 0))
    with pytest.raises(ValueError, match="method: expected one of"):
        max_of_k.brute_force(model, method="exact")
    with pytest.raises(ValueError, match="attention: expected one of"):
        max_of_k.subcubic(model, attention="rank2")
    state = random_state(5, 3, 6, 0)
    state["embed.W_E"][2, 1] = float("nan")
    state["blocks.0.attn.W_O"][0, 0, 0] = float("inf")
    broken = model_with(state)  # named before any table is built (it used to fail the forward cross-check)
    for fn in (max_of_k.brute_force, max_of_k.cubic, max_of_k.subcubic):
        with pytest.raises(ValueError, match="model: expected finite weights; NaN or inf in W_E, W_O"):
            fn(broken)


@needs_hooked_transformer
def test_forward_check_catches_a_model_the_formula_does_not_describe():
    """The attention scale is read from the config; a config edited after construction no longer describes the
    forward pass, and the sampled cross-check refuses the model before any proof."""
    from tests.proofs.factories import _shell

    model = model_with(ideal_state(6, 3, 6, seed=3))
    original = model.cfg.attn_scale
    try:
        model.cfg.attn_scale = 2 * original
        for fn in (max_of_k.brute_force, max_of_k.cubic, max_of_k.subcubic):
            with pytest.raises(ValueError, match="model: its forward pass differs from the path decomposition"):
                fn(model)
    finally:
        model.cfg.attn_scale = original
    assert _shell.cache_info().currsize > 0
