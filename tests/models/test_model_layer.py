"""The model layer: model classes importable from `tl_tensorsim.models` (and, as before, from the analyses), the
model registry behind `tl-tensorsim train`, and no TransformerLens state changed by importing the package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tl_tensorsim as ts
from tl_tensorsim.models import registry


def test_model_classes_live_in_models_and_are_re_exported():
    from tl_tensorsim import models, tensor_networks

    for name in ("HookedTensorNetwork", "TensorNetworkConfig", "BilinearLayer", "LinearLayer", "TensorChain"):
        cls = getattr(models, name)
        assert cls.__module__.startswith("tl_tensorsim.models."), (name, cls.__module__)
        assert getattr(tensor_networks, name) is cls
    assert ts.HookedTensorNetwork is models.HookedTensorNetwork and ts.BilinearLayer is models.BilinearLayer


def test_importing_the_package_leaves_transformer_lens_alone():
    code = (
        "from transformer_lens.utilities import activation_functions as af\n"
        "before = dict(af.SUPPORTED_ACTIVATIONS)\n"
        "import tl_tensorsim, tl_tensorsim.tensor_networks, tl_tensorsim.models\n"
        "assert af.SUPPORTED_ACTIVATIONS == before, set(af.SUPPORTED_ACTIVATIONS) ^ set(before)\n"
        "tl_tensorsim.register_identity_activation()\n"
        "assert set(af.SUPPORTED_ACTIVATIONS) - set(before) == {'identity'}\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_registry_finds_the_trainable_models():
    names = [m.__name__.rsplit(".", 1)[-1] for m in registry.available()]
    assert names == sorted(names) and set(names) >= {"induction", "grokking", "backdoor"}
    assert "toy" not in names and "registry" not in names
    assert registry.get("induction").SHIPPED.is_dir()
    with pytest.raises(ValueError, match=r"name: unknown model 'nope'; expected one of \["):
        registry.get("nope")


def test_make_config_parses_command_line_values():
    cfg = registry.make_config("grokking", {"lr": "3e-3", "betas": "[0.9, 0.98]", "steps": 7})
    assert cfg.lr == 0.003 and cfg.betas == (0.9, 0.98) and cfg.steps == 7 and cfg.p == 113
    assert registry.make_config("induction", {"normalization_type": "null"}).normalization_type is None
    assert registry.make_config("induction", {"normalization_type": "LNPre"}).normalization_type == "LNPre"
    assert registry.make_config("grokking", {"lr": "1"}).lr == 1  # an integer is a number
    with pytest.raises(ValueError, match="unknown InductionConfig fields"):
        registry.make_config("induction", {"nope": "1"})


@pytest.mark.parametrize("name", [m.__name__.rsplit(".", 1)[-1] for m in registry.available()])
def test_make_config_checks_each_override_against_the_field_type(name):
    # every default, written as the command line writes it, is accepted; a value of the wrong type is named
    # before any training (`--set steps=abc` used to fail inside the loop with a TypeError about str + int)
    defaults = registry.get(name).CONFIG().to_dict()
    as_typed = {k: v if isinstance(v, str) else json.dumps(v) for k, v in defaults.items()}
    assert registry.make_config(name, as_typed).to_dict() == registry.get(name).CONFIG().to_dict()
    ints = [k for k, v in defaults.items() if isinstance(v, int) and not isinstance(v, bool)]
    for key in ints[:2]:
        with pytest.raises(ValueError, match=f"config: {key}: expected .*integer.*; got 'abc'"):
            registry.make_config(name, {key: "abc"})
        with pytest.raises(ValueError, match=f"config: {key}: expected"):
            registry.make_config(name, {key: "true"})


def test_cache_folder_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_TENSORSIM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.default_out("grokking") == tmp_path / "xdg" / "tl_tensorsim" / "grokking"
    monkeypatch.setenv("TL_TENSORSIM_CACHE", str(tmp_path / "mine"))
    assert registry.default_out("grokking") == tmp_path / "mine" / "grokking"


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("grokking", {"p": 7, "d_hidden": 8, "steps": 6, "batch_size": 16, "n_checkpoints": 3}),
        ("backdoor", {"d_hidden": 8, "clean_steps": 4, "poison_steps": 2, "every": 3, "batch_size": 16}),
    ],
)
def test_every_registered_model_trains_into_a_folder_resumes_and_loads(name, overrides, tmp_path):
    import torch

    from tl_tensorsim.training import load_run

    module = registry.get(name)
    config = registry.make_config(name, overrides)
    path = registry.train_and_save(name, config, tmp_path, checkpoint_every=2, progress=False)
    assert path == tmp_path / "model"
    first = module.load_default(tmp_path)
    again = registry.train_and_save(name, config, tmp_path, resume=True, progress=False)  # finished: nothing to redo
    for k, v in module.load_default(again).state_dict().items():
        assert torch.equal(v, first.state_dict()[k]), k
    run = load_run(tmp_path / "checkpoints", module.load(path), config)
    assert run.steps[0] == 0 and len(run.checkpoints) == len(run.history) >= 2
