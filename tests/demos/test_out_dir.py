"""`tl-tensorsim demo --out PATH` where PATH is a file: a usage error (exit 2) naming --out, before any demo runs."""

from __future__ import annotations

import pytest

from tl_tensorsim import cli, demos


@pytest.mark.parametrize("sub", ["", "sub"], ids=["the file itself", "a folder inside it"])
def test_out_that_is_an_existing_file_is_a_usage_error_before_any_demo(tmp_path, calls, capsys, sub):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = afile / sub if sub else afile
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "induction", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--out" in err and "an existing file" in err and str(out) in err
    assert "pass another folder" in err and "Traceback" not in err
    assert calls == [] and afile.read_text() == "x"  # no demo ran, the file is untouched


def test_run_demos_refuses_a_file_as_out_dir(tmp_path, calls):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match=r"out_dir \(--out\): expected a folder"):
        demos.run_demos(["induction"], afile, verbose=False)
    assert calls == []
    demos.run_demos(["induction"], tmp_path / "new" / "report", verbose=False)  # a new folder is made
    assert calls == ["induction"] and (tmp_path / "new" / "report" / "report.md").is_file()
