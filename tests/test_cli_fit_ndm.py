"""`tl-tensorsim fit-ndm`: a small run through the CLI's entry function (a locally built model saved as a
TransformerLens config + state dict, token ids in a .npy file), the resume after an interrupt, a run on the saved
activation store, flags generated from the settings dataclass, and usage errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import SMALL
from tl_tensorsim import cli, load
from tl_tensorsim.activations import collect_activations, load_activations
from tl_tensorsim.adapter import ModelView
from tl_tensorsim.ndm import SubspacePartition, fit_ndm
from tl_tensorsim.ndm.trainer import NDMSettings, NDMState
from tl_tensorsim.training import limit_threads

HOOK = "blocks.0.hook_resid_post"
SETTINGS = ["--unit-size", "8", "--max-steps", "24", "--merge-start", "8", "--merge-interval", "8", "--key-pool",
            "40", "--batch-size", "16", "--mi-queries", "30", "--mi-keys", "60", "--merge-threshold", "1e-6",
            "--refresh-every", "2", "--threads", "1"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    with limit_threads(1):
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A model folder (config.json + state dict) and token ids [10, 8] in a .npy file."""
    folder = tmp_path_factory.mktemp("fit_ndm_inputs")
    view = ModelView.build({**SMALL, "seed": 3}, backend="bridge")
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text(json.dumps({**SMALL, "seed": 3}))
    save_file(view.state_dict(), str(folder / "model" / "weights.safetensors"))
    tokens = torch.randint(0, SMALL["d_vocab"], (10, 8), generator=torch.Generator().manual_seed(0))
    np.save(folder / "tokens.npy", tokens.numpy())
    return folder


def _argv(inputs, out, *extra):
    return ["fit-ndm", str(inputs / "model"), HOOK, "--data", str(inputs / "tokens.npy"), "--out", str(out),
            "--checkpoint-every", "5", "--log-every", "4", "--quiet", *SETTINGS, *extra]  # fmt: skip


def test_fit_ndm_writes_partition_store_and_resumes(inputs, tmp_path, monkeypatch):
    assert cli.main(_argv(inputs, tmp_path / "a")) == 0
    part = load(tmp_path / "a" / "partition")
    assert isinstance(part, SubspacePartition) and part.d == SMALL["d_model"] and sum(part.sizes) == 32
    assert part.hook_name == HOOK and part.history["checks"] and part.history["checks"][0]["merged"]
    settings = part.provenance.settings
    assert settings["unit_size"] == 8 and settings["key_pool"] == 40 and settings["merge_threshold"] == 1e-6
    assert settings["n_rows"] == 10 * 7  # BOS left out
    # the store holds what collect_activations gives on the same model (loaded the way the CLI loads it)
    model = cli._load_model(str(inputs / "model"), "cpu")
    tokens = torch.from_numpy(np.load(inputs / "tokens.npy"))
    mask = torch.ones(10, 8, dtype=torch.bool)
    mask[:, 0] = False
    expected = collect_activations(model, tokens, HOOK, mask, dtype=torch.float32, progress=False)
    store = load_activations(tmp_path / "a" / "activations")
    torch.testing.assert_close(store.tensor(), expected, rtol=0, atol=1e-6)

    # Ctrl-C in update 13 (between the checkpoints at 10 and 15), then the same command again: the same result
    original = NDMState.batch_loss

    def interrupted(self, step, generator):
        if step == 12:
            raise KeyboardInterrupt
        return original(self, step, generator)

    monkeypatch.setattr(NDMState, "batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_argv(inputs, tmp_path / "b"))
    assert not (tmp_path / "b" / "partition").exists()
    monkeypatch.setattr(NDMState, "batch_loss", original)
    assert cli.main(_argv(inputs, tmp_path / "b")) == 0
    resumed = load(tmp_path / "b" / "partition")
    assert torch.equal(resumed.R, part.R) and resumed.sizes == part.sizes and resumed.history == part.history

    # a saved store as DATA (no model needed) gives the fit of fit_ndm on that store
    assert cli.main(["fit-ndm", "--data", str(tmp_path / "a" / "activations"), "--out", str(tmp_path / "c"),
                     "--quiet", *SETTINGS]) == 0  # fmt: skip
    direct = fit_ndm(store, unit_size=8, max_steps=24, merge_start=8, merge_interval=8, key_pool=40, batch_size=16,
                     mi_queries=30, mi_keys=60, merge_threshold=1e-6, refresh_every=2, progress=False)  # fmt: skip
    from_store = load(tmp_path / "c" / "partition")
    assert torch.equal(from_store.R, direct.R) and from_store.hook_name == HOOK


def test_every_setting_has_a_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit-ndm", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(NDMSettings):
        assert f"--{f.name.replace('_', '-')}" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--parametrization", "qr"], "parametrization: expected one of"),
        (["--unit-size", "5"], "unit_size: must divide d=32"),
        (["--search-dtype", "float16"], "search_dtype: expected one of"),
    ],
)
def test_usage_errors(inputs, tmp_path, extra, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(_argv(inputs, tmp_path / "x", *extra))
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_hook_and_model(inputs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["fit-ndm", "--data", str(inputs / "tokens.npy"), "--out", str(tmp_path)])
    assert e.value.code == 2 and "MODEL: expected a model folder or name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["fit-ndm", str(inputs / "model"), "--data", str(inputs / "tokens.npy"), "--out", str(tmp_path)])
    assert e.value.code == 2 and "HOOK: expected a hook name" in capsys.readouterr().err


def test_data_that_is_neither_a_local_file_nor_a_dataset_is_named(tmp_path, capsys, no_network):
    # a folder that does not exist: `datasets` does not know it either; the error names DATA (exit code 2), and
    # no connection is attempted (every socket connection raises: `no_network`)
    with pytest.raises(SystemExit) as e:
        cli.main(["fit-ndm", "--data", str(tmp_path / "missing-folder"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "DATA: " in err and "did not load as a `datasets` name" in err
    assert "network blocked" not in err
