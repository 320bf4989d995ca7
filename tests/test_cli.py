"""`tl-tensorsim demo` and `tl-tensorsim train`: listing, argument errors, `python -m tl_tensorsim`, failing demos,
and retraining into a named folder without touching the shipped weights."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import types

import pytest
import torch

from tl_tensorsim import cli, demos


def test_list_shows_the_induction_demo(capsys):
    assert cli.main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("induction"))
    assert "default" in line and "Induction circuit in the embedded model" in line


def test_available_is_sorted_and_complete():
    mods = demos.available()
    assert [m.ORDER for m in mods] == sorted(m.ORDER for m in mods)
    assert demos.get("induction").DEFAULT is True
    for m in mods:
        assert isinstance(m.TITLE, str) and isinstance(m.ORDER, int) and isinstance(m.DEFAULT, bool) and callable(m.run)


def test_unknown_demo_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "nope"])
    assert e.value.code == 2 and "unknown demo 'nope'" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_python_dash_m_lists_demos():
    res = subprocess.run([sys.executable, "-m", "tl_tensorsim", "demo", "--list"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "induction" in res.stdout


def test_failing_demo_is_noted_and_reported(tmp_path, monkeypatch, capsys):
    def ok(report, full=False):
        report.text("fine")
        return {"x": 1.5}

    def broken(report, full=False):
        raise RuntimeError("boom")

    fake = {
        "a": types.SimpleNamespace(__name__="tl_tensorsim.demos.a", TITLE="A", ORDER=1, DEFAULT=True, run=ok),
        "b": types.SimpleNamespace(__name__="tl_tensorsim.demos.b", TITLE="B", ORDER=2, DEFAULT=True, run=broken),
    }
    monkeypatch.setattr(demos, "available", lambda: list(fake.values()))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 1
    assert "demos failed: b" in capsys.readouterr().err
    text = (tmp_path / "report.md").read_text()
    assert "## A" in text and "## B" in text and "RuntimeError: boom" in text and "| x | 1.5 |" in text
    assert text.index("| demo |") < text.index("## A")  # the summary table comes first
    path = demos.run_demos(["a"], tmp_path / "only_a", verbose=False)
    assert path.read_text().count("## ") == 1


def test_train_list_shows_every_registered_model(capsys):
    assert cli.main(["train", "--list"]) == 0
    lines = {l.split()[0]: l for l in capsys.readouterr().out.splitlines()}
    assert set(lines) >= {"induction", "grokking", "backdoor"}
    assert "shipped" in lines["induction"] and "shipped" not in lines["grokking"]


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


TINY = ["--steps", "3", "--set", "batch_size=4", "--set", "eval_size=8", "--set", "warmup_steps=1", "--quiet"]


def test_train_writes_to_the_named_folder_and_leaves_the_shipped_weights_alone(tmp_path):
    from tl_tensorsim.models import induction

    before = _digest(induction.SHIPPED)
    assert cli.main(["train", "induction", "--out", str(tmp_path), "--checkpoint-every", "2", *TINY]) == 0
    assert _digest(induction.SHIPPED) == before  # byte-identical
    model = induction.load_default(tmp_path)
    assert model.induction_config.steps == 3 and model.induction_config.batch_size == 4
    assert (tmp_path / "checkpoints" / "resume" / "step_00000003").is_dir()
    # the same folder again: refused without --resume; with it, the finished run is saved again unchanged
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "induction", "--out", str(tmp_path), *TINY])
    assert e.value.code == 2
    first = induction.load_default(tmp_path).W_E.clone()
    assert cli.main(["train", "induction", "--out", str(tmp_path), "--resume", *TINY]) == 0
    assert torch.equal(induction.load_default(tmp_path).W_E, first)


def test_train_defaults_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_TENSORSIM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.main(["train", "induction", *TINY]) == 0
    assert (tmp_path / "tl_tensorsim" / "induction" / "model" / "cfg.json").is_file()


def test_write_shipped_is_explicit(tmp_path, monkeypatch):
    from tl_tensorsim.models import induction

    monkeypatch.setattr(induction, "SHIPPED", tmp_path / "shipped")
    assert cli.main(["train", "induction", "--out", str(tmp_path / "run"), "--write-shipped", *TINY]) == 0
    assert induction.load_default().induction_config.steps == 3  # path=None reads the (patched) shipped folder


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train"], "NAME: expected a model name"),
        (["train", "nope"], "name: unknown model 'nope'"),
        (["train", "backdoor", "--steps", "5"], "unknown BackdoorConfig fields ['steps']"),
        (["train", "induction", "--set", "lr"], "--set: expected KEY=VALUE"),
        (
            ["train", "induction", "--set", "steps=abc"],
            "config: steps: expected an integer (the default is 2000); got 'abc'",
        ),
        (["train", "grokking", "--write-shipped"], "write_shipped: model 'grokking' ships no weights"),
        (["train", "max_of_k", "--set", "betas=[0.9]"], "betas: expected a list of 2 (a number, a number)"),
        (["train", "max_of_k", "--set", 'betas=[0.9, "x"]'], "betas: expected a list of 2 (a number, a number)"),
        (
            ["train", "group_mlp", "--set", "group=S4", "--write-shipped"],
            "the shipped folder group_S5 holds another group's model",
        ),
    ],
)
def test_train_usage_errors(argv, message, capsys, monkeypatch):
    from tl_tensorsim.models import registry

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the arguments were checked")

    for module in registry.available():  # every refusal comes before any training
        monkeypatch.setattr(module, "train", no_training)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
