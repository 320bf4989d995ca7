"""The one report: markdown with tables and PNG figures."""

from __future__ import annotations

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
