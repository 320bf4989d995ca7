"""`.ci/run` runs README.md's test commands verbatim, and both constraints files pin a CPU torch."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line for line in lines if "pip install" in line]


def test_every_ci_leg_is_a_readme_command_verbatim():
    commands = _ci_commands()
    assert len(commands) == 2, commands  # leg 1: TransformerLens 3.9, leg 2: TransformerLens 4.3
    readme_lines = set((ROOT / "README.md").read_text().splitlines())
    for command in commands:
        assert command in readme_lines, command
    assert "constraints.txt" in commands[0] and "ruff check ." in commands[0]
    assert "constraints-tl4.txt" in commands[1] and commands[1].rstrip(")").endswith("tl-tensorsim demo")


def test_each_leg_runs_in_a_subshell():
    """`a && b` under `set -e` does not stop the script when `a` fails; a subshell's status does."""
    for command in _ci_commands():
        assert command.startswith("(") and command.endswith(")"), command


def test_constraints_pin_torch_and_transformer_lens():
    for name, tl_major in (("constraints.txt", "3"), ("constraints-tl4.txt", "4")):
        pins = dict(
            line.split("==", 1) for line in (ROOT / name).read_text().splitlines() if "==" in line and "#" not in line
        )
        pins = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}
        assert pins["torch"] == "2.13.0", name  # no local label: the same pin as the CPU wheel
        assert pins["transformer-lens"].split(".")[0] == tl_major, name
        assert "tl-tensorsim" not in pins, name
