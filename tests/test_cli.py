"""`tl-tensorsim demo`: listing, argument errors, `python -m tl_tensorsim`, and failing demos."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

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
    assert "## A" in text and "## B" in text and "RuntimeError: boom" in text and "x=1.5" in text
    assert text.index("| demo |") < text.index("## A")  # the summary table comes first
    path = demos.run_demos(["a"], tmp_path / "only_a", verbose=False)
    assert path.read_text().count("## ") == 1


def test_train_induction_subcommand_passes_its_arguments(monkeypatch, tmp_path):
    from tl_tensorsim.models import induction

    seen = {}
    monkeypatch.setattr(
        induction, "retrain", lambda out, steps=None, seed=None: seen.update(out=out, steps=steps, seed=seed)
    )
    assert cli.main(["train-induction", "--out", str(tmp_path), "--steps", "7", "--seed", "3"]) == 0
    assert seen == {"out": str(tmp_path), "steps": 7, "seed": 3}
