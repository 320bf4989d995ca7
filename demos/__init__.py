"""The demos behind `tl-tensorsim demo`: one module per demo, found by `pkgutil.iter_modules`.

A demo module (`demos/<name>.py`, installed as `tl_tensorsim.demos.<name>`) defines

    TITLE: str                    # its section title in the report
    ORDER: int                    # position in the report (smaller first)
    DEFAULT: bool                 # run by a bare `tl-tensorsim demo`
    def run(report: tl_tensorsim.Report, full: bool = False) -> dict: ...   # headline numbers

`run` adds its subsections (level 3 and below), tables and figures to `report`; the section title is
added for it. `full=True` asks for the slow version (retraining, bigger sweeps). Adding a demo needs no
change here. A demo may also define `REQUIRES: tuple[str, ...]`, the modules it imports (directly or through
the library) beyond the core dependencies; `run_demos` checks those, for every selected demo, before running
any of them (`MissingDependency`). Demos that do not define it are covered by `_REQUIRES` below.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_OUT = "tl_tensorsim_report"
_REQUIRED = ("TITLE", "ORDER", "DEFAULT", "run")

# Modules every demo needs (figures), and each demo's own extra ones (a demo's `REQUIRES` adds to these).
_REQUIRES_ALL = ("matplotlib",)
_REQUIRES = {"backdoor": ("sklearn",)}  # scikit-learn's bundled 8x8 digits (tl_tensorsim.models.backdoor)
# import name -> (distribution to pip install, the tl-tensorsim extra that brings it)
_DISTRIBUTIONS = {"matplotlib": ("matplotlib", "demos"), "sklearn": ("scikit-learn", "demos")}


class MissingDependency(ImportError):
    """A selected demo needs a module that is not installed; raised before any demo runs."""

    def __init__(self, missing: dict[str, list[str]]):
        self.missing = missing  # module -> the selected demos that need it
        extras = sorted({_DISTRIBUTIONS.get(m, (m, "demos"))[1] for m in missing})
        needs = "; ".join(
            f"{_DISTRIBUTIONS.get(m, (m,))[0]} (import {m!r}) for {', '.join(demos)}" for m, demos in missing.items()
        )
        install = " ".join(f'"tl-tensorsim[{e}]"' for e in extras)
        local = '".[' + ",".join(extras) + ']"'
        super().__init__(
            f"demos: missing optional dependencies: {needs}. Install them with: pip install {install} "
            f"(from a checkout: pip install {local}); no demo was run"
        )


class DemoFailed(RuntimeError):
    """One or more demos raised; the report (with their errors noted) was written anyway."""

    def __init__(self, failed: list[str], report_path: Path):
        self.failed = failed
        self.report_path = report_path
        super().__init__(f"demos failed: {', '.join(failed)} (errors noted in {report_path})")


def _name(module: ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[-1]


def available() -> list[ModuleType]:
    """Every demo module in this package, sorted by `ORDER` (then name)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, attr) for attr in _REQUIRED):
            found.append(module)
    return sorted(found, key=lambda m: (m.ORDER, _name(m)))


def get(name: str) -> ModuleType:
    """The demo module called `name` (its file name without `.py`)."""
    demos = {_name(m): m for m in available()}
    if name not in demos:
        raise ValueError(f"demo name: unknown demo {name!r}; available: {sorted(demos)}")
    return demos[name]


def _importable(module: str) -> bool:
    """Whether `module` can be imported (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken entry in sys.modules
        return False


def requirements(module: ModuleType) -> tuple[str, ...]:
    """The modules demo `module` needs beyond the core dependencies (`_REQUIRES_ALL`, its own, `REQUIRES`)."""
    own = tuple(getattr(module, "REQUIRES", ()))
    return tuple(dict.fromkeys((*_REQUIRES_ALL, *_REQUIRES.get(_name(module), ()), *own)))


def check_requirements(modules: list[ModuleType]) -> None:
    """Raise `MissingDependency` naming every module some demo in `modules` needs and cannot import."""
    missing: dict[str, list[str]] = {}
    for module in modules:
        for req in requirements(module):
            if not _importable(req):
                missing.setdefault(req, []).append(_name(module))
    if missing:
        raise MissingDependency(missing)


def run_demos(
    names: list[str] | None = None, out_dir: str | os.PathLike = DEFAULT_OUT, full: bool = False, verbose: bool = True
) -> Path:
    """Run demos (`names`, or every `DEFAULT` demo) into one report; return the path of `out_dir/report.md`.

    Each demo gets a section. A demo that raises has its traceback noted in its section; the others still run,
    the report (a summary table first: status, seconds and the scalar headline numbers of each demo) and
    `summary.json` (every headline value) are written, and then
    `DemoFailed` is raised. Every optional dependency of every selected demo is checked first: a missing one
    raises `MissingDependency` (naming the extra to install) before any demo runs or anything is written; so is
    `out_dir`: an existing file there (or in its path) is a ValueError naming `--out`.
    """
    from tl_tensorsim.report import Report, check_out_dir

    modules = [m for m in available() if m.DEFAULT] if names is None else [get(n) for n in names]
    if not modules:
        raise ValueError("names: no demo to run")
    check_out_dir(out_dir)
    check_requirements(modules)
    report = Report(out_dir, title="tl_tensorsim demo report")
    summary: list[dict[str, Any]] = []
    for module in modules:
        name = _name(module)
        if verbose:
            print(f"[tl-tensorsim] {name}: {module.TITLE} ...", flush=True)
        report.section(module.TITLE)
        t0 = time.perf_counter()
        try:
            headline = dict(module.run(report, full=full) or {})
            status = "ok"
        except Exception as exc:  # noted in the report, re-raised as DemoFailed below
            headline, status = {}, f"failed: {type(exc).__name__}: {exc}"
            report.text(f"**This demo failed.**\n\n```\n{traceback.format_exc()}```")
        seconds = time.perf_counter() - t0
        summary.append({"demo": name, "title": module.TITLE, "status": status, "seconds": seconds, **headline})
        if verbose:
            print(f"[tl-tensorsim] {name}: {status} in {seconds:.1f}s", flush=True)
    head = Report(out_dir).text(f"Summary (`full={full}`; every value is in `summary.json`):").summary(summary)
    report.blocks[:0] = head.blocks  # the summary goes first
    path = report.write()
    (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    failed = [s["demo"] for s in summary if s["status"] != "ok"]
    if failed:
        raise DemoFailed(failed, path)
    return path
