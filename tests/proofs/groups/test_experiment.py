"""The many-seed experiment (`proofs.groups.experiment`): one model's row (brute force, the ρ-set checks, the
model's own forward pass) agrees with itself and with brute force; `summarise` counts what it says; a run resumes."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tl_tensorsim.models import group_mlp
from tl_tensorsim.proofs.groups import brute_force, experiment
from tl_tensorsim.proofs.groups.experiment import forward_pass, prove_model, run_experiment, summarise


def test_prove_model_row_agrees_with_brute_force_and_the_forward_pass():
    model = group_mlp.load(group_mlp.shipped("S4")[0])
    row = prove_model(model, repeats=2)
    assert row["accuracy"] == brute_force(model).bound == forward_pass(model)[0] == row["forward_accuracy"]
    for key in ("rho_set_fourier_bound", "rho_set_lowrank_bound", "rho_set_pairwise_bound", "rho_set_bound"):
        assert 0.0 <= row[key] <= row["accuracy"]
    assert row["forward_s"] > 0 and row["brute_force_s"] > 0 and row["rho_set_fourier_s"] > 0
    assert row["fourier_residual_mean"] <= row["fourier_residual_per_neuron_mean"] + 1e-9
    assert row["fourier_irreps"] and set(row["fourier_irreps"]) <= set(row["key_irreps"]) | {"(1,1,1,1)", "(2,1,1)"}
    assert row["sound"] is True


def test_prove_model_flags_a_proof_that_certifies_a_wrong_pair(monkeypatch):
    # a stand-in proof that certifies every pair, on a model that gets some pairs wrong: `sound` must be False
    import copy
    import sys

    model = copy.deepcopy(group_mlp.load(group_mlp.shipped("S4")[0]))
    with torch.no_grad():
        model.W_U.add_(torch.randn(model.W_U.shape, generator=torch.Generator().manual_seed(0)) * model.W_U.std())
    assert brute_force(model).bound < 1
    module = sys.modules["tl_tensorsim.proofs.groups.experiment"]
    real = module.rho_set

    def everything(m, expl, **kwargs):
        result = real(m, expl, **kwargs)
        result.certified = torch.ones_like(result.certified)
        return result

    monkeypatch.setattr(module, "rho_set", everything)
    assert prove_model(model, repeats=1)["sound"] is False


def test_summarise_counts_bounds_and_ratios():
    base = {"group": "S4", "accuracy": 1.0, "brute_force_s": 2.0, "brute_force_flops": 100.0, "forward_s": 4.0}
    base |= {"rho_set_s": 1.0, "rho_set_flops": 10.0, "ideal_margin": 1.0, "K": 0.0, "L_mean": 0.0, "R_mean": 0.0}
    rows = [
        base | {"rho_set_bound": 0.99, "rho_set_fourier_bound": 0.96, "rho_set_fourier_s": 1.0},
        base | {"rho_set_bound": 0.5, "rho_set_fourier_bound": 0.2, "rho_set_fourier_s": 3.0},
    ]
    rows[0]["sound"] = True
    (out,) = summarise(rows)
    assert out["sound (models checked)"] == "1 of 1"
    assert out["models"] == 2 and out["bound >= 0.95"] == 0.5 and out["fourier bound >= 0.95"] == 0.5
    assert out["fourier s / brute force s (median)"] == pytest.approx(1.0)
    assert out["fourier s / forward pass s (median)"] == pytest.approx(0.5)


def test_run_experiment_trains_proves_and_resumes(tmp_path):
    out = tmp_path / "runs.jsonl"
    rows = run_experiment(["C5"], [0], out)
    assert len(rows) == 1 and rows[0]["group"] == "C5" and rows[0]["accuracy"] >= rows[0]["rho_set_fourier_bound"]
    assert run_experiment(["C5"], [0], out) == rows  # resumed: nothing retrained
    assert [json.loads(line)["seed"] for line in out.read_text().splitlines()] == [0]


@pytest.mark.parametrize(
    ("groups", "recipe", "match"),
    [
        (["C5", "X9"], "fast", "name: expected"),
        (["C5"], "slow", "recipe"),
        (["C5", "C1"], "fast", "C1 \\(order 1\\) cannot be trained"),
    ],
)
def test_run_experiment_refuses_bad_input_before_training(tmp_path, groups, recipe, match):
    out = tmp_path / "runs.jsonl"
    with pytest.raises(ValueError, match=match):
        run_experiment(groups, [0], out, recipe=recipe)
    assert not out.exists()  # nothing trained, nothing written


def test_run_experiment_refuses_a_file_of_another_recipe(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs.jsonl"
    out.write_text(json.dumps({"group": "C5", "seed": 0, "recipe": "fast"}) + "\n")
    with pytest.raises(ValueError, match="'fast' recipe"):
        run_experiment(["C5"], [0], out, recipe="published")
    assert len(out.read_text().splitlines()) == 1  # nothing trained, nothing appended
    with pytest.raises(SystemExit) as exit_info:  # the script: a usage error, no traceback
        monkeypatch.setattr(sys, "argv", ["experiment", "--groups", "Q8", "--out", str(out)])
        experiment.main()
    assert exit_info.value.code == 2 and "name: expected" in capsys.readouterr().err
