"""The layer picture of ARCHITECTURE.md, enforced: every import inside the package (module level or inside a
function) must point to the same room or to a lower floor, and analyses never import each other's modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {
    "tl_tensorsim": ROOT / "tl_tensorsim",
    "tl_tensorsim.hooks": ROOT / "hooks",
    "tl_tensorsim.circuits": ROOT / "circuits",
    "tl_tensorsim.demos": ROOT / "demos",
}

# room -> floor, from the ground up (ARCHITECTURE.md "Floors").
CORE = {
    "adapter",
    "artifacts",
    "artifact_files",
    "model_config",
    "linalg",
    "factored",
    "checks",
    "positions",
    "model_io",
    "model_run",
    "weight_files",
}
FLOORS: dict[str, int] = {
    **dict.fromkeys(CORE, 0),
    "activations": 1,
    "training": 1,
    "training_files": 1,
    "distributed": 1,
    "activation_store": 1,
    "hooks": 1,
    "models": 2,
}
ANALYSES = {"similarity", "tensor_networks", "ndm", "interaction", "proofs"}
FLOORS.update(dict.fromkeys(ANALYSES, 3))
FLOORS.update({"circuits": 4, "report": 5, "cli": 5, "fit_ndm_command": 5, "demos": 5, "__init__": 5, "__main__": 5})


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"] if rel.name == "__init__" else list(rel.parts)
            if pkg == "tl_tensorsim" and parts and parts[0] in ("hooks", "circuits", "demos"):
                continue
            name = ".".join([pkg, *parts]) if parts else pkg
            out[name] = path
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found = []
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: no run-time dependency
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from tl_tensorsim import hooks` imports the room `hooks`
            names = [f"{target}.{a.name}" for a in node.names] if target == "tl_tensorsim" else [target]
            found += [(n, node.lineno) for n in names]
    return [(t, line) for t, line in found if t == "tl_tensorsim" or t.startswith("tl_tensorsim.")]


MODULES = _modules()


def test_every_room_has_a_floor():
    rooms = {_room(m) for m in MODULES}
    assert rooms <= set(FLOORS), f"rooms without a floor in ARCHITECTURE.md's picture: {sorted(rooms - set(FLOORS))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    room = _room(module)
    bad = []
    for target, line in _imports(module, MODULES[module]):
        other = _room(target)
        if other == room:
            continue
        if FLOORS[other] > FLOORS[room]:
            bad.append(f"line {line}: {room} (floor {FLOORS[room]}) imports {target} (floor {FLOORS[other]})")
        elif other in ANALYSES and room in ANALYSES:
            bad.append(f"line {line}: analysis {room} imports another analysis's module {target}")
        elif room == "circuits" and other in ANALYSES and target.count(".") > 1:
            bad.append(f"line {line}: {room} reaches into {target}; use the public names of tl_tensorsim.{other}")
    assert not bad, f"{module}:\n" + "\n".join(bad)


def test_checker_catches_a_sideways_import(tmp_path):
    """Negative control: the checker must see a sideways import, relative or absolute."""
    fake = tmp_path / "heads.py"
    fake.write_text("from ..tensor_networks.inner import cosine\nimport tl_tensorsim.ndm.fit\n")
    targets = [t for t, _ in _imports("tl_tensorsim.similarity.heads", fake)]
    assert targets == ["tl_tensorsim.tensor_networks.inner", "tl_tensorsim.ndm.fit"]
