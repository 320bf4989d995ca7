"""One report: markdown + PNG figures in an output folder.

Demos add sections (text, tables, figures) to a `Report`; `write()` produces `report.md`
with every figure under `figures/`. A user who runs `tl-tensorsim demo` opens one file.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from tl_tensorsim.artifacts import library_version


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


class Report:
    """Collects markdown blocks and figures; `write()` renders `out_dir/report.md`.

    Figures are saved to `out_dir/figures/NAME.png` as soon as they are added, so a demo that
    fails later still leaves the figures it made.
    """

    def __init__(self, out_dir: str | os.PathLike, title: str = "tl_tensorsim report"):
        self.out_dir = Path(out_dir)
        self.figures_dir = self.out_dir / "figures"
        self.title = title
        self.blocks: list[str] = []
        self.figures: list[Path] = []

    def section(self, title: str, level: int = 2) -> Report:
        self.blocks.append(f"{'#' * level} {title}\n")
        return self

    def text(self, markdown: str) -> Report:
        self.blocks.append(markdown.strip() + "\n")
        return self

    def table(self, rows: Any, columns: list[str] | None = None, caption: str | None = None) -> Report:
        """Add a markdown table from a pandas DataFrame or a list of dicts / sequences."""
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
            columns = [str(c) for c in rows.columns]
            rows = rows.to_dict("records")
        rows = list(rows)
        if rows and isinstance(rows[0], dict):
            columns = columns or list(rows[0].keys())
            rows = [[r.get(c, "") for c in columns] for r in rows]
        if columns is None:
            raise ValueError("columns: required when rows are sequences")
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
        if caption:
            lines.append(f"\n*{caption}*")
        self.blocks.append("\n".join(lines) + "\n")
        return self

    def figure(self, fig: Any, name: str, caption: str = "") -> Path:
        """Save a matplotlib figure as `figures/NAME.png`, close it, and reference it in the report."""
        import matplotlib.pyplot as plt

        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append(path)
        self.blocks.append(
            f"![{caption or name}](figures/{name}.png)\n\n*{caption}*\n"
            if caption
            else f"![{name}](figures/{name}.png)\n"
        )
        return path

    def render(self) -> str:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        head = f"# {self.title}\n\n*tl_tensorsim {library_version()}, written {stamp}*\n"
        return "\n".join([head, *self.blocks])

    def write(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "report.md"
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(self.render())
        os.replace(tmp, path)
        return path
