"""`hooks/`, `circuits/`, `demos/` install as `tl_tensorsim.hooks|circuits|demos`; nothing else at top level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("hooks", "circuits", "demos")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=out)
    (path,) = out.glob("tl_tensorsim-*.whl")
    return path


def test_normal_install_has_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"tl_tensorsim"}, top
    for sub in SUBPACKAGES:
        assert f"tl_tensorsim/{sub}/__init__.py" in names, sub
    assert "tl_tensorsim/circuits/data/ioi.json" in names
    assert any(n.startswith("tl_tensorsim/models/weights/") and n.endswith(".safetensors") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tl-tensorsim = tl_tensorsim.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_package_imports_the_same_names(tmp_path):
    """Run from a folder outside the source tree, so only the installed package (editable or not) is seen."""
    code = (
        "import importlib.util, tl_tensorsim, tl_tensorsim.hooks, tl_tensorsim.circuits, tl_tensorsim.demos\n"
        "assert all(importlib.util.find_spec(n) is None for n in ('hooks', 'circuits', 'demos'))\n"
        "print(tl_tensorsim.hooks.__name__, tl_tensorsim.circuits.__name__, tl_tensorsim.demos.__name__)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["tl_tensorsim.hooks", "tl_tensorsim.circuits", "tl_tensorsim.demos"]
