"""The demo runner checks every optional dependency of every selected demo before running any of them."""

from __future__ import annotations

import ast
import inspect
import sys
import types

import pytest

from tl_tensorsim import cli, demos

# tl_tensorsim's core dependencies by import name (pyproject.toml [project] dependencies)
CORE = {"torch", "einops", "jaxtyping", "datasets", "safetensors", "tqdm", "numpy", "pandas", "matplotlib"}
CORE |= {"transformer_lens", "tl_tensorsim"}


def _without(monkeypatch, *absent):
    real = demos._importable
    monkeypatch.setattr(demos, "_importable", lambda m: m not in absent and real(m))


def test_install_metadata_matplotlib_core_scikit_learn_in_demos():
    """A plain `pip install .` brings matplotlib (plots, demo figures); the `demos` extra brings scikit-learn."""
    from importlib.metadata import requires

    reqs = [r.replace(" ", "") for r in requires("tl-tensorsim") or []]
    assert any(r.startswith("matplotlib") and ";" not in r for r in reqs), reqs
    assert any(r.startswith("scikit-learn") and 'extra=="demos"' in r for r in reqs), reqs


def test_backdoor_needs_scikit_learn_and_every_demo_matplotlib():
    assert "sklearn" in demos.requirements(demos.get("backdoor"))
    for module in demos.available():
        assert "matplotlib" in demos.requirements(module)


def test_missing_module_fails_before_any_demo_runs(monkeypatch, tmp_path, calls):
    _without(monkeypatch, "sklearn")
    out = tmp_path / "report"
    with pytest.raises(demos.MissingDependency) as e:
        demos.run_demos(None, out, verbose=False)
    msg = str(e.value)
    assert "scikit-learn" in msg and "backdoor" in msg and 'pip install "tl-tensorsim[demos]"' in msg
    assert e.value.missing == {"sklearn": ["backdoor"]}
    assert calls == [] and not out.exists()  # nothing ran, nothing was written


def test_every_missing_module_is_named_at_once(monkeypatch, tmp_path, calls):
    _without(monkeypatch, "sklearn", "matplotlib")
    with pytest.raises(demos.MissingDependency) as e:
        demos.run_demos(["induction", "backdoor"], tmp_path, verbose=False)
    assert e.value.missing == {"matplotlib": ["induction", "backdoor"], "sklearn": ["backdoor"]}
    assert calls == []


def test_only_the_selected_demos_are_checked(monkeypatch, tmp_path, calls):
    _without(monkeypatch, "sklearn")
    demos.run_demos(["induction"], tmp_path, verbose=False)  # induction does not need scikit-learn
    assert calls == ["induction"]


def test_cli_reports_the_missing_extra(monkeypatch, tmp_path, calls, capsys):
    _without(monkeypatch, "sklearn")
    assert cli.main(["demo", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "scikit-learn" in err and "tl-tensorsim[demos]" in err and "no demo was run" in err
    assert calls == []


def test_a_demo_can_declare_its_own_requirements(monkeypatch, tmp_path):
    ran = []
    fake = types.SimpleNamespace(
        __name__="tl_tensorsim.demos.fake",
        TITLE="F",
        ORDER=1,
        DEFAULT=True,
        REQUIRES=("tl_tensorsim_no_such_module",),
        run=lambda report, full=False: ran.append(1),
    )
    monkeypatch.setattr(demos, "available", lambda: [fake])
    with pytest.raises(demos.MissingDependency, match="tl_tensorsim_no_such_module"):
        demos.run_demos(None, tmp_path, verbose=False)
    assert ran == []


@pytest.mark.parametrize("module", demos.available(), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_import_in_a_demo_is_core_or_checked(module):
    """A demo importing an optional package must list it (in `REQUIRES` or the runner's table)."""
    tree = ast.parse(inspect.getsource(module))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    optional = imported - CORE - set(sys.stdlib_module_names) - {"__future__"}
    assert optional <= set(demos.requirements(module)), optional
