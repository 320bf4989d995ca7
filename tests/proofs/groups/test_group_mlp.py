"""GroupMLP: forward against the folded tables, hooks, save/load, training, the shipped models."""

from __future__ import annotations

import copy

import pytest
import torch

from tl_tensorsim.models import group_mlp
from tl_tensorsim.models.group_mlp import GroupMLP, GroupMLPConfig, all_pairs
from tl_tensorsim.proofs.groups import symmetric


def test_forward_hooks_and_folded_tables():
    model = GroupMLP(GroupMLPConfig(group="S3", d_embed=16, d_hidden=8, seed=1))
    pairs = all_pairs(6)
    logits, cache = model.run_with_cache(pairs)
    assert logits.shape == (36, 6)
    assert set(cache.keys()) >= {"hook_embed_left", "hook_embed_right", "hook_pre", "hook_post", "hook_logits"}
    assert torch.allclose(logits, model.fast_logits(pairs[:, 0], pairs[:, 1]), atol=1e-5)
    assert torch.allclose(cache["hook_pre"], model.w_l[pairs[:, 0]] + model.w_r[pairs[:, 1]], atol=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        model(torch.tensor([[0, 6]]))
    with pytest.raises(ValueError, match="tokens"):
        model(torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="recipe"):
        GroupMLPConfig(recipe="slow")
    for same in (
        GroupMLP(symmetric(3), d_embed=16, d_hidden=8, seed=1),
        GroupMLP("S3", d_embed=16, d_hidden=8, seed=1),
    ):
        assert same.cfg == model.cfg and torch.equal(same.table, model.table)
        assert all(torch.equal(a, b) for a, b in zip(same.parameters(), model.parameters()))
    with pytest.raises(TypeError, match="keywords"):
        GroupMLP(model.cfg, d_hidden=4)


def test_training_is_seeded_and_saves(tmp_path):
    cfg = GroupMLPConfig(group="S3", d_embed=16, d_hidden=16, steps=30, eval_every=10, train_frac=0.5)
    a, b = group_mlp.train(cfg, progress=False), group_mlp.train(cfg, progress=False)
    assert torch.equal(a.model.W, b.model.W) and a.history[-1]["step"] == 30
    path = group_mlp.save(a, tmp_path / "m")
    loaded = group_mlp.load(path)
    assert torch.equal(loaded.W_U, a.model.W_U) and loaded.cfg == cfg
    assert GroupMLPConfig(group="S5").resolved_frac == 0.4 and GroupMLPConfig(group="S4").resolved_frac == 0.6
    assert GroupMLPConfig(group="A5", recipe="published").resolved_lr == 1e-3


@pytest.mark.parametrize("name", ["S4", "A5", "S5"])
def test_shipped_models_are_accurate(name):
    (path,) = group_mlp.shipped(name)
    model = group_mlp.load(path)
    with torch.no_grad():
        pred = model(all_pairs(model.order)).argmax(-1)
    assert bool((pred == model.table.flatten()).all())


def test_registry_trains_resumes_and_loads(tmp_path):
    from tl_tensorsim.models import registry
    from tl_tensorsim.training import load_run

    config = registry.make_config(
        "group_mlp", {"group": "S3", "d_embed": 8, "d_hidden": 8, "steps": 6, "eval_every": 3}
    )
    path = registry.train_and_save("group_mlp", config, tmp_path, checkpoint_every=2, progress=False)
    first = group_mlp.load_default(tmp_path)
    again = registry.train_and_save("group_mlp", config, tmp_path, resume=True, progress=False)
    for k, v in group_mlp.load_default(again).state_dict().items():
        assert torch.equal(v, first.state_dict()[k]), k
    run = load_run(tmp_path / "checkpoints", group_mlp.load(path), config)
    assert run.steps == [0, 3, 6] and len(run.history) == 3
    with pytest.raises(ValueError, match="the shipped folder group_S5 holds another group"):
        group_mlp.save(run, group_mlp.WEIGHTS / "group_S5")  # an S3 run cannot overwrite the shipped S5 model


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_fused_train_loss_matches_the_module_forward(scale):
    # the fused loss and its hand-written backward against autograd through the module forward, float64 loss;
    # scale 300 on the pairs the model answers with a wide margin makes the loss tiny, where a float64 softmax minus 1
    # keeps only absolute precision
    model = GroupMLP(GroupMLPConfig(group="S4", d_embed=16, d_hidden=32, seed=2))
    with torch.no_grad():
        model.W_U.mul_(scale)
    pairs = all_pairs(24)[::3]
    labels = model.table.flatten()[::3]
    if scale > 1:  # labels = the model's own confident answers: a near-zero loss
        with torch.no_grad():
            top = model(pairs).topk(2).values
        pairs = pairs[top[:, 0] - top[:, 1] > 25]
        labels = model(pairs).argmax(-1)
    ref = torch.nn.functional.cross_entropy(model(pairs).double(), labels)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    loss = model.train_loss(pairs[:, 0], pairs[:, 1], labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert scale == 1 or (len(pairs) > 10 and float(ref.detach()) < 1e-8)
    assert loss.dtype == torch.float64 and float(loss.detach()) == pytest.approx(
        float(ref.detach()), rel=1e-5, abs=1e-12
    )
    exact_model = copy.deepcopy(model).double()  # the float64 network: the reference both are compared with
    exact = torch.nn.functional.cross_entropy(exact_model(pairs), labels)
    exact_grads = torch.autograd.grad(exact, list(exact_model.parameters()))
    for g, r, x in zip(grads, ref_grads, exact_grads):
        err, ref_err = float((g.double() - x).norm()), float((r.double() - x).norm())
        assert err <= 2 * ref_err + 1e-6 * float(x.norm()), (err, ref_err)


def test_load_refuses_missing_or_foreign_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = GroupMLPConfig(group="S3", d_embed=8, d_hidden=8, steps=2, eval_every=1)
    path = group_mlp.save(group_mlp.train(cfg, progress=False), tmp_path / "m")
    tensors = load_file(path / "tensors.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "W_U"}, path / "tensors.safetensors")
    with pytest.raises(ValueError, match=r"missing \['W_U'\]"):
        group_mlp.load(path)
    save_file({**tensors, "extra": torch.zeros(1)}, path / "tensors.safetensors")
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        group_mlp.load(path)


def test_groups_the_model_and_the_proofs_refuse():
    from tl_tensorsim.proofs import groups

    with pytest.raises(ValueError, match="order >= 2"):
        GroupMLP("C1")
    with pytest.raises(ValueError, match="did you mean 'S4'"):
        GroupMLP("S04")
    with pytest.raises(ValueError, match="no training pair"):
        group_mlp.split(2, 0.2, 0)
    klein = groups.from_permutations("V4", [(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)], [(1, 0, 3, 2)])
    model = GroupMLP(klein, d_embed=8, d_hidden=8)
    assert model(torch.tensor([[1, 2]])).shape == (1, 4)  # a custom group trains and runs
    with pytest.raises(ValueError, match="'V4' is not one they know"):
        groups.brute_force(model)
    s4 = symmetric(4)  # S4's elements in another order, under the name "S4": proofs would read the wrong table
    reordered = groups.from_permutations("S4", s4.elements[::-1], [s4.elements[g] for g in s4.generators])
    with pytest.raises(ValueError, match="not S4's"):
        groups.explain(GroupMLP(reordered, d_embed=8, d_hidden=8))


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"min_neurons": 0}, "min_neurons"),
        ({"cos": 2.0}, "cos"),
        ({"min_fill": -1}, "min_fill"),
        ({"coset_tol": "x"}, "coset_tol"),
    ],
)
def test_explain_checks_its_settings(setting, match):
    from tl_tensorsim.proofs import groups

    with pytest.raises((ValueError, TypeError), match=match):
        groups.explain(GroupMLP("S3", d_embed=8, d_hidden=8), **setting)
