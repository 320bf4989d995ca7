"""README.md's self-contained Python examples run as written (each in a fresh namespace, in a temporary folder),
on whichever TransformerLens is installed: a HookedTransformer on 3.x, a TransformerBridge on 4.x."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
PRELUDE = "import torch\nimport tl_tensorsim as ts\n"


def _block(first_line: str) -> str:
    """The README's ```python block whose code starts with `first_line` (exactly one must)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"README: expected one python block starting with {first_line!r}; found {len(found)}"
    return found[0]


@pytest.mark.parametrize(
    "first_line, expect",
    [
        ("view = ts.ModelView.build(", {"logits": (2, 8, 100), "jac": (2, 8, 64, 2, 8, 64)}),
        ("from tl_tensorsim.models import max_of_k as mok", {}),
        ("from tl_tensorsim.models import group_mlp", {}),
    ],
    ids=["adapter", "max_of_k", "group_proofs"],
)
def test_readme_example_runs(first_line, expect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write their plots to the working folder
    code, namespace = _block(first_line), {}
    exec(compile(PRELUDE + code, f"README.md ({first_line})", "exec"), namespace)
    for name, shape in expect.items():
        assert tuple(namespace[name].shape) == shape, name
    for name in ("frontier.png", "a5_rho_sets.png"):
        if name in code:
            assert (tmp_path / name).stat().st_size > 0, name
