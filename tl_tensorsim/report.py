"""One report: markdown + PNG figures in an output folder.

Demos add sections (text, tables, figures) to a `Report`; `write()` produces `report.md`
with every figure under `figures/`. A user who runs `tl-tensorsim demo` opens one file.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from tl_tensorsim.artifacts import library_version, save_figure


def markdown_cell(text: Any) -> str:
    """`text` as one cell of a markdown table (header or body): pipes escaped (`\\|`), line breaks as spaces, so
    that every row keeps its number of cells."""
    return " ".join(str(text).replace("|", "\\|").splitlines())


def _cell(v: Any) -> str:
    return markdown_cell(f"{v:.4g}" if isinstance(v, float) else v)


def check_out_dir(out_dir: str | os.PathLike, arg: str = "out_dir (--out)") -> Path:
    """`out_dir` as a `Path` when a report folder can be made there (it is a folder, or does not exist yet and no
    part of it is a file); otherwise a ValueError naming `arg`, the path and what is in the way."""
    path = Path(out_dir)
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            if part.is_dir():
                return path
            what = "an existing file" if part == path else f"whose parent {str(part)!r} is an existing file"
            raise ValueError(
                f"{arg}: expected a folder for the report (new, or an existing folder); got {str(path)!r}, {what}; "
                "pass another folder (the report goes to FOLDER/report.md, FOLDER/figures/) or move the file away"
            )
    return path


# words of headline keys spelled out in the summary table ("induction_acc" -> "induction accuracy")
_WORDS = {
    "acc": "accuracy",
    "attn": "attention",
    "prev": "previous",
    "sim": "similarity",
    "rep": "repeated",
    "n": "number of",
    **{w: w.upper() for w in ("tn", "qk", "ov")},
}
_SUMMARY_FIELDS = ("demo", "title", "status", "seconds")


def headline_label(key: str) -> str:
    """A headline key as words: `acc_patch_prev_token_subspace` -> `accuracy patch previous token subspace`,
    `train_seconds` -> `train time (s)`."""
    words = [_WORDS.get(word, word) for word in str(key).split("_")]
    return " ".join(words[:-1] + ["time (s)"] if words[-1] == "seconds" and len(words) > 1 else words)


def headline_value(value: Any) -> str | None:
    """A headline value for the summary table: numbers (3 significant digits) and short strings; None for lists,
    dicts and long strings (they are in summary.json)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (int, str)) and len(str(value)) <= 40:
        return str(value)
    return None


def headline_items(run: dict[str, Any]) -> list[tuple[str, str]]:
    """`(label, value)` for every scalar headline of a demo run; a dict of scalars gives one item per entry
    (`delta: tensor`); lists and longer structures are left to summary.json."""
    items = []
    for key, value in run.items():
        if key in _SUMMARY_FIELDS:
            continue
        entries = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in entries:
            shown = headline_value(v)
            if shown is not None:
                items.append((headline_label(key) + ("" if sub is None else f": {sub}"), shown))
    return items


class Report:
    """Collects markdown blocks and figures; `write()` renders `out_dir/report.md`.

    Figures are saved to `out_dir/figures/NAME.png` as soon as they are added, so a demo that
    fails later still leaves the figures it made.
    """

    def __init__(self, out_dir: str | os.PathLike, title: str = "tl_tensorsim report"):
        self.out_dir = check_out_dir(out_dir)
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
        lines = ["| " + " | ".join(markdown_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
        if caption:
            lines.append(f"\n*{caption}*")
        self.blocks.append("\n".join(lines) + "\n")
        return self

    def summary(self, runs: list[dict[str, Any]], caption: str | None = None) -> Report:
        """A table of demo runs, one row per headline number (`{"demo", "status", "seconds", **headline}` each):
        demo, status and time once per demo, then each scalar headline (`headline_items`) as words and its value;
        lists are left to summary.json."""
        rows = []
        for run in runs:
            items = headline_items(run) or [("", "")]
            status = str(run.get("status", "")).split(":")[0]
            for i, (label, value) in enumerate(items):
                first = i == 0
                rows.append(
                    {
                        "demo": run["demo"] if first else "",
                        "status": status if first else "",
                        "time": f"{run['seconds']:.1f} s" if first and "seconds" in run else "",
                        "headline": label,
                        "value": value,
                    }
                )
        return self.table(rows, columns=["demo", "status", "time", "headline", "value"], caption=caption)

    def figure(self, fig: Any, name: str, caption: str = "") -> Path:
        """Save a matplotlib figure as `figures/NAME.png`, close it, and reference it in the report."""
        import matplotlib.pyplot as plt

        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{name}.png"
        save_figure(fig, path)
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
        check_out_dir(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "report.md"
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(self.render())
        os.replace(tmp, path)
        return path
