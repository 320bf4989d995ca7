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
from tl_tensorsim import cli, fit_ndm_command, load
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
    model = fit_ndm_command._load_model(str(inputs / "model"), "cpu")
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


def _exit_message(argv, capsys) -> str:
    """The stderr of a usage error (exit code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--keep-bos"], "--keep-bos: off there, on now"),
        (["--max-sequences", "5"], "--max-sequences: not given there, 5 now"),
        (["--positions", "-1"], "--positions: all there, -1 now"),
        (["--hook", "blocks.1.hook_resid_post"], "HOOK: blocks.0.hook_resid_post there, blocks.1.hook_resid_post now"),
        (["--data", "other.npy"], "--data: "),
        (["--tokens-changed"], "DATA's token ids: shape [10, 8]"),
    ],
)
def test_a_rerun_into_the_same_out_with_other_data_is_refused(inputs, tmp_path, capsys, change, named):
    # the first run collects OUT/activations and fits; a re-run that would train on other rows is refused before any
    # work (the store, the checkpoints and the partition stay as they were), naming the setting, both values, a hint
    tokens = tmp_path / "tokens.npy"
    tokens.write_bytes((inputs / "tokens.npy").read_bytes())
    argv = _argv(inputs, tmp_path / "out", "--max-steps", "8")
    argv[argv.index(str(inputs / "tokens.npy"))] = str(tokens)
    assert cli.main(argv) == 0
    before = load(tmp_path / "out" / "partition")
    rerun = list(argv)
    if change == ["--hook", "blocks.1.hook_resid_post"]:
        rerun[rerun.index(HOOK)] = change[1]
    elif change == ["--data", "other.npy"]:
        np.save(tmp_path / "other.npy", np.load(tokens))
        rerun[rerun.index(str(tokens))] = str(tmp_path / "other.npy")
    elif change == ["--tokens-changed"]:  # the same DATA path, other token ids
        np.save(tokens, (np.load(tokens) + 1) % SMALL["d_vocab"])
    else:
        rerun += change
    err = _exit_message(rerun, capsys)
    assert named in err and f"--out {tmp_path / 'out'} holds a run on other data" in err and "use a new --out" in err
    assert len(err) < 1000
    assert load_activations(tmp_path / "out" / "activations").shape[0] == 10 * 7
    assert torch.equal(load(tmp_path / "out" / "partition").R, before.R)
    if change != ["--tokens-changed"]:  # the same command again still resumes (here: the finished run)
        assert cli.main(argv) == 0 and torch.equal(load(tmp_path / "out" / "partition").R, before.R)


def test_a_run_that_did_no_work_does_not_pin_the_data(inputs, tmp_path, capsys):
    # a first run refused before collecting or fitting leaves nothing that depends on its data: any data may follow
    argv = _argv(inputs, tmp_path / "out")
    argv[argv.index(HOOK)] = "blocks.9.hook_resid_post"
    assert "blocks.9.hook_resid_post" in _exit_message(argv, capsys)
    assert (tmp_path / "out" / "data.json").is_file()
    assert cli.main(_argv(inputs, tmp_path / "out", "--max-steps", "8", "--keep-bos")) == 0
    assert load(tmp_path / "out" / "partition").provenance.settings["n_rows"] == 10 * 8


def test_a_store_as_data_is_recorded_too(inputs, tmp_path, capsys):
    assert cli.main(_argv(inputs, tmp_path / "a", "--max-steps", "8")) == 0
    assert cli.main(_argv(inputs, tmp_path / "b", "--max-steps", "8", "--keep-bos")) == 0
    fit = ["--out", str(tmp_path / "c"), "--quiet", *SETTINGS, "--max-steps", "8"]
    assert cli.main(["fit-ndm", "--data", str(tmp_path / "a" / "activations"), *fit]) == 0
    err = _exit_message(["fit-ndm", "--data", str(tmp_path / "b" / "activations"), *fit], capsys)
    assert "--data: " in err and "b/activations now" in err and "use a new --out" in err


@pytest.mark.parametrize("value", ["1", "0", "-3", "two"])
def test_seq_len_is_checked_before_any_work(inputs, tmp_path, capsys, monkeypatch, value):
    (tmp_path / "doc.txt").write_text("hello world this is text. ")

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(fit_ndm_command, "_load_model", no_work)
    err = _exit_message(["fit-ndm", str(inputs / "model"), HOOK, "--data", str(tmp_path / "doc.txt"), "--out",
                         str(tmp_path / "o"), "--seq-len", value], capsys)  # fmt: skip
    assert f"argument --seq-len: expected an int from 2 (BOS and one token) to the model's n_ctx; got {value!r}" in err
    assert not (tmp_path / "o").exists()


def test_seq_len_above_n_ctx_is_named():
    class Tokenizer:
        eos_token_id, bos_token_id = 0, 1

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [2] * 100}

    class Model:
        tokenizer = Tokenizer()
        cfg = type("Cfg", (), {"n_ctx": 16})

    assert fit_ndm_command._tokenise(["text"], Model(), 16).shape == (6, 16)
    assert fit_ndm_command._tokenise(["text"], Model(), None).shape == (6, 16)  # default: n_ctx
    with pytest.raises(ValueError, match=r"--seq-len: expected an int from 2 to the model's n_ctx, 16; got 17"):
        fit_ndm_command._tokenise(["text"], Model(), 17)


def test_max_sequences_must_be_positive(inputs, tmp_path, capsys):
    err = _exit_message(_argv(inputs, tmp_path / "o", "--max-sequences", "0"), capsys)
    assert "argument --max-sequences: expected an int >= 1; got '0'" in err


@pytest.mark.parametrize("spec", ["./mdoel", "{tmp}/mdoel", "mdoel/", "runs/x/model", "{tmp}/file.txt"])
def test_a_model_path_that_does_not_exist_is_named(tmp_path, capsys, monkeypatch, no_network, spec):
    # written as a path: one short message saying so, and no hub lookup (no list of hub names, no OSError traceback)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    spec = spec.format(tmp=tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(cli_model_view(), "from_pretrained", no_hub)
    np.save(tmp_path / "tokens.npy", np.zeros((2, 4), np.int64))
    err = _exit_message(["fit-ndm", spec, HOOK, "--data", "tokens.npy", "--out", "o", "--quiet"], capsys)
    what = "is a file, not a folder" if spec.endswith(".txt") else "does not exist"
    assert f"MODEL: {spec} {what}; expected a model folder" in err and len(err) < 400


def cli_model_view():
    from tl_tensorsim.adapter import ModelView

    return ModelView


@pytest.mark.parametrize(
    "error",
    [
        OSError("Repo id must use alphanumeric chars, '-', '_' or '.'"),
        ValueError("mdoel not found. Valid official model names (excl aliases): " + str(["gpt2"] * 2000)),
    ],
)
def test_a_model_name_that_does_not_load_is_named(inputs, tmp_path, capsys, monkeypatch, no_network, error):
    # a name (not written as a path) that the hub loader refuses: one short message naming MODEL and the cause
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli_model_view(), "from_pretrained", refuse)
    argv = ["fit-ndm", "org/mdoel", HOOK, "--data", str(inputs / "tokens.npy"), "--out", str(tmp_path), "--quiet"]
    err = _exit_message(argv, capsys)
    assert "MODEL: could not load 'org/mdoel'" in err and type(error).__name__ in err and len(err) < 600


class _TwoRanks:
    """A stand-in for a 2-rank `Collectives`: rank 1 sends rank 0's hash (`same`) or another one."""

    distributed = True

    def __init__(self, same: bool):
        self.same = same

    def all_gather(self, tensor):
        return torch.stack([tensor, tensor if self.same else tensor + 1])


def test_ranks_given_different_arguments_are_refused():
    """Under torchrun each rank parses its own command line: a rank given other arguments (another --lr, --data)
    or other token ids is refused on every rank, before any work (one all-gather of a hash)."""
    args = {"model": "m", "hook": "blocks.0.hook_resid_post", "data": "tokens.npy", "ndm_lr": 0.01}
    assert fit_ndm_command._digest(args) == fit_ndm_command._digest(dict(reversed(args.items())))  # key order
    assert fit_ndm_command._digest(args) != fit_ndm_command._digest({**args, "ndm_lr": 0.02})  # another --lr
    fit_ndm_command._same_on_every_rank(_TwoRanks(same=True), args, "the command line")
    with pytest.raises(ValueError, match=r"the command line: every rank must get the same .*ranks \[1\] differ"):
        fit_ndm_command._same_on_every_rank(_TwoRanks(same=False), args, "the command line")
