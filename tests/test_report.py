"""The one report: markdown with tables and PNG figures."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tl_tensorsim import Report


def test_report_writes_markdown_tables_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = Report(tmp_path / "out", title="T")
    rep.section("Numbers").text("Some *text*.")
    rep.table([{"a": 1, "b": 0.123456}], caption="cap")
    rep.table(pd.DataFrame({"x": [1, 2]}))
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = rep.figure(fig, "line", caption="a line")
    path = rep.write()
    text = path.read_text()
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert "# T" in text and "## Numbers" in text and "| a | b |" in text and "0.1235" in text
    assert "![a line](figures/line.png)" in text and "| x |" in text


def test_table_needs_columns_for_sequences(tmp_path):
    with pytest.raises(ValueError, match="columns"):
        Report(tmp_path).table([[1, 2]])


def test_summary_spells_out_each_headline_on_its_own_row(tmp_path):
    runs = [
        {"demo": "induction", "title": "I", "status": "ok", "seconds": 3.14159, "induction_acc": 0.99876,
         "prev_token_head": "L0H0", "history": [1, 2], "train_seconds": 41.0, "delta": {"tensor": 0.13712},
         "ov_token_jump_step": 600},
        {"demo": "broken", "title": "B", "status": "failed: RuntimeError: boom", "seconds": 0.2},
    ]  # fmt: skip
    text = Report(tmp_path).summary(runs).render()
    assert "| demo | status | time | headline | value |" in text
    assert "| induction | ok | 3.1 s | induction accuracy | 0.999 |" in text
    assert "|  |  |  | previous token head | L0H0 |" in text and "|  |  |  | train time (s) | 41 |" in text
    assert "|  |  |  | delta: tensor | 0.137 |" in text and "|  |  |  | OV token jump step | 600 |" in text
    assert "| broken | failed | 0.2 s |  |  |" in text
    assert "=" not in text and "history" not in text  # no raw key=value pairs; lists stay in summary.json


def _cells(row: str) -> list[str]:
    """The cells of a markdown table row, split at pipes that are not escaped (GitHub's rule)."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


@pytest.mark.parametrize(
    "columns",
    [["a", "b"], ["circuits (irrep: |B_l|x|B_r|)", "b"], ["x|y", "two\nlines", "|"]],
    ids=["plain", "pipes in a header", "pipes and a line break"],
)
def test_pipes_in_headers_and_cells_keep_every_row_the_same_width(tmp_path, columns):
    rows = [{c: v for c, v in zip(columns, ["a|b", 0.5, "c\nd"])}, {c: "|" for c in columns}]
    text = Report(tmp_path).table(rows, columns=columns).render()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 4 and all(len(_cells(line)) == len(columns) for line in lines), lines
    assert _cells(lines[0])[0].strip().replace("\\|", "|") == columns[0].replace("\n", " ")  # text kept, escaped


def test_out_dir_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad, what in ((afile, "an existing file"), (afile / "sub", f"whose parent {str(afile)!r} is an existing")):
        with pytest.raises(ValueError, match="--out") as e:
            Report(bad)
        assert str(bad) in str(e.value) and what in str(e.value) and "pass another folder" in str(e.value)
    rep = Report(tmp_path / "later")
    (tmp_path / "later").write_text("x")  # a file appeared after the report was made
    with pytest.raises(ValueError, match="an existing file"):
        rep.write()
    assert afile.read_text() == "x" and (tmp_path / "later").read_text() == "x"
