"""Path patching against an independent computation: the direct effect of one head recomputed from the cached
residual stream (final LayerNorm and unembedding by hand), and the path into a receiver's values recomputed from
the changed residual stream; the IOI model's recorded circuit found again."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.adapter import as_view
from tl_tensorsim.circuits import ioi_dataset, known
from tl_tensorsim.circuits.path_patching import Receiver, discover_circuit, path_patching
from tl_tensorsim.models import ioi


@pytest.fixture(scope="module")
def model():
    return ioi.load_default()


@pytest.fixture(scope="module")
def prompts(model):
    return ioi_dataset(model.tokenizer, 40, "mixed", seed=5)


def _layer_norm(x, w, b, eps):
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b


def _logit_diff(resid, model, prompts):
    view = as_view(model)
    rows = torch.arange(len(prompts))
    h = _layer_norm(resid[rows, prompts.positions["END"]], view.weight("ln_final_w"), view.weight("ln_final_b"),
                    view.config_value("eps", 1e-5))  # fmt: skip
    logits = h @ view.W_U + view.weight("b_U")
    return (logits[rows, prompts.answers["IO"]] - logits[rows, prompts.answers["S"]]).double()


def test_direct_effect_matches_the_residual_stream_by_hand(model, prompts, tmp_path):
    res = path_patching(model, prompts, "random")
    view = as_view(model)
    last = f"blocks.{view.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        _, clean = model.run_with_cache(prompts.clean)
        _, dirty = model.run_with_cache(prompts.corrupted["random"])
        for layer in range(view.cfg.n_layers):
            for head in range(view.cfg.n_heads):
                z = f"blocks.{layer}.attn.hook_z"
                delta = (dirty[z][:, :, head] - clean[z][:, :, head]) @ view.W_O[layer, head]
                expected = _logit_diff(clean[last] + delta, model, prompts)
                torch.testing.assert_close(res.per_prompt[layer, head], expected, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(res.clean, _logit_diff(clean[last], model, prompts), atol=2e-4, rtol=1e-4)
    assert res.heads(0.5) == [(1, 0)]
    assert res.plot(tmp_path / "heads.png").axes and (tmp_path / "heads.png").read_bytes()[:4] == b"\x89PNG"


def test_value_path_matches_the_changed_residual_by_hand(model, prompts):
    view = as_view(model)
    receiver = Receiver(1, 0, "v", "S2")
    res = path_patching(model, prompts, "random", [receiver], senders=[(0, 1), (0, 3)])
    assert torch.isnan(res.per_prompt[1:]).all() and torch.isnan(res.per_prompt[0, [0, 2]]).all()
    blk = model.blocks[1]
    mask = prompts.mask("S2")
    with torch.no_grad():
        _, clean = model.run_with_cache(prompts.clean)
        _, dirty = model.run_with_cache(prompts.corrupted["random"])
        for head in (1, 3):
            z = "blocks.0.attn.hook_z"
            resid = clean["blocks.1.hook_resid_pre"] + (dirty[z][:, :, head] - clean[z][:, :, head]) @ view.W_O[0, head]
            v = blk.ln1(resid) @ view.W_V[1, 0] + view.weight("b_V")[1, 0]

            def put(act, hook, v=v):
                act = act.clone()
                act[:, :, 0] = torch.where(mask[..., None], v, act[:, :, 0])
                return act

            logits = model.run_with_hooks(prompts.clean, fwd_hooks=[("blocks.1.attn.hook_v", put)])
            rows = torch.arange(len(prompts))
            end = logits[rows, prompts.positions["END"]].double()
            expected = end[rows, prompts.answers["IO"]] - end[rows, prompts.answers["S"]]
            torch.testing.assert_close(res.per_prompt[0, head], expected, atol=2e-4, rtol=1e-4)


def test_discovery_finds_the_recorded_circuit(model):
    prompts = ioi_dataset(model.tokenizer, 100, "mixed", seed=11)
    classes, results = discover_circuit(model, prompts, depth=3)
    recorded = known("ioi_3l", "ioi")
    assert {k: set(v) for k, v in classes.items()} == {k: set(v) for k, v in recorded.classes.items()}
    assert set(results) >= {"logits", "q input of name mover", "v input of name mover"}
    df = results["logits"].to_dataframe()
    assert len(df) == 12 and df["relative"].min() < -0.8


def test_bad_input_is_refused_before_any_run(model, prompts):
    with pytest.raises(ValueError, match="input"):
        path_patching(model, prompts, "random", [Receiver(1, 0, "x")])
    with pytest.raises(ValueError, match="outside the model"):
        path_patching(model, prompts, "random", [Receiver(5, 0, "q")])
    with pytest.raises(ValueError, match="senders"):
        path_patching(model, prompts, "random", [Receiver(1, 0, "q")], senders=[(1, 2)])
    with pytest.raises(ValueError, match="corruption"):
        path_patching(model, prompts, "nope")
    with pytest.raises(ValueError, match="position"):
        path_patching(model, prompts, "random", [Receiver(1, 0, "q", "NOPE")])


def test_receivers_in_several_layers_are_each_tested_with_every_head_below(model, prompts):
    """A layer-1 head reaches a layer-2 receiver even when the set also holds a layer-1 receiver: it is a sender,
    patched into the receivers above it only (the same number as a path patching into those alone)."""
    both = path_patching(model, prompts, "random", [Receiver(1, 0, "q"), Receiver(2, 3, "q")])
    assert not torch.isnan(both.per_prompt[:2]).any() and torch.isnan(both.per_prompt[2]).all()
    upper = path_patching(model, prompts, "random", [Receiver(2, 3, "q")], senders=[(1, j) for j in range(4)])
    torch.testing.assert_close(both.per_prompt[1], upper.per_prompt[1], atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"senders: expected \(layer, head\) pairs with layer < 2"):
        path_patching(model, prompts, "random", [Receiver(1, 0, "q"), Receiver(2, 3, "q")], senders=[(2, 0)])


def test_discovery_tests_every_class_member_above_layer_0(model, prompts):
    """At a low threshold the name movers span layers 1 and 2 and the negative name movers layers 0 and 1: every
    head below a receiver's layer is a sender, and a class with layer-0 heads still has its upper heads searched."""
    classes, results = discover_circuit(model, prompts, threshold=0.035, depth=2)
    mixed = [c for c in ("name mover", "negative name mover") if len({h[0] for h in classes.get(c, ())}) > 1]
    assert mixed, classes  # the scenario this test is about
    for parent in mixed:
        top = max(h[0] for h in classes[parent])
        for inp in "qkv":
            res = results[f"{inp} input of {parent}"]
            tested = ~torch.isnan(res.per_prompt[..., 0])
            assert bool(tested[:top].all()) and not bool(tested[top:].any()), (parent, inp)
