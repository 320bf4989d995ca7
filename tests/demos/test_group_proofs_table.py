"""The group_proofs demo's results table is well-formed markdown: the header, delimiter and every row have as many
cells as there are columns (its headers once held raw pipes, `|B_l|`)."""

from __future__ import annotations

import re

from tl_tensorsim import Report


def test_group_proofs_table_rows_have_matching_cell_counts(tmp_path):
    import tl_tensorsim.demos.group_proofs as demo
    from tl_tensorsim.proofs import groups

    model, _ = groups.handbuilt(*groups.tetra_circuits())  # S4, two ρ-set circuits: proved in a few seconds
    row, _ = demo._prove(model)
    text = Report(tmp_path).table([row, row]).render()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    counts = [len(re.split(r"(?<!\\)\|", line)[1:-1]) for line in lines]
    assert len(lines) == 4 and counts == [len(row)] * 4, counts
