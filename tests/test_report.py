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
