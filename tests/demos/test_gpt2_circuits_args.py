"""`python -m tl_tensorsim.demos.gpt2_circuits`: paths given are checked before anything loads (a usage error, exit 2),
`--random-weights` refuses the flags it would ignore, and GPT-2 that cannot be loaded from the hub exits non-zero.
Nothing here loads GPT-2 or touches the network."""

from __future__ import annotations

import pytest

import tl_tensorsim.demos.gpt2_circuits as demo
from tl_tensorsim import Report


@pytest.fixture
def loads(monkeypatch, no_network):
    """Record every attempt to load a model (GPT-2 or the random one) instead of loading it."""
    seen: list[str] = []

    def refuse(*args, **kwargs):
        seen.append("load")
        raise AssertionError("nothing should load here")

    monkeypatch.setattr(demo, "load_gpt2", refuse)
    monkeypatch.setattr(demo, "random_gpt2_setup", refuse)
    return seen


def _usage_error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def _partition_folder(tmp_path, skip=()):
    folder = tmp_path / "parts"
    folder.mkdir()
    for layer in demo.LAYERS:
        for name in (f"R-gpt2-x{layer}.post.pt", f"R_config-gpt2-x{layer}.post.json"):
            if name not in skip:
                (folder / name).write_text("")
    return folder


@pytest.mark.parametrize(
    "flag, path, expected",
    [
        ("--model-path", "missing", "which does not exist"),
        ("--model-path", "empty_dir", "has no config.json"),
        ("--partitions", "missing", "which does not exist"),
        ("--partitions", "partial_parts", "lacks R-gpt2-x8.post.pt"),
        ("--text", "missing", "which does not exist"),
        ("--text", "empty_dir", "which is a folder"),
    ],
)
def test_a_path_given_that_is_not_there_is_refused_up_front(tmp_path, capsys, loads, flag, path, expected):
    (tmp_path / "empty_dir").mkdir()
    if path == "partial_parts":
        target = _partition_folder(tmp_path, skip=("R-gpt2-x8.post.pt",))
    else:
        target = tmp_path / path
    out = tmp_path / "report"
    err = _usage_error(capsys, [flag, str(target), "--out", str(out)])
    assert f"({flag})" in err and expected in err and str(target) in err and "Traceback" not in err
    assert loads == [] and not (out / "report.md").exists()


@pytest.mark.parametrize(
    "extra",
    [["--partitions", "P"], ["--text", "a.txt"], ["--quick"], ["--model-path", "M"], ["--quick", "--text", "a.txt"]],
)
def test_random_weights_refuses_the_flags_it_would_ignore(tmp_path, capsys, loads, extra):
    err = _usage_error(capsys, ["--random-weights", "4", *extra, "--out", str(tmp_path / "r")])
    order = ["--model-path", "--partitions", "--text", "--quick"]
    given = sorted((a for a in extra if a.startswith("--")), key=order.index)
    assert "--random-weights" in err and f"got {', '.join(given)} with it" in err
    assert "takes none of --model-path, --partitions, --text, --quick" in err
    assert loads == []


def test_random_weights_needs_a_positive_count(tmp_path, capsys, loads):
    err = _usage_error(capsys, ["--random-weights", "0", "--out", str(tmp_path / "r")])
    assert "--random-weights: expected a number of prompts per task >= 1; got 0" in err and loads == []


def test_out_that_is_a_file_is_refused_up_front(tmp_path, capsys, loads):
    (tmp_path / "afile").write_text("x")
    err = _usage_error(capsys, ["--out", str(tmp_path / "afile")])
    assert "--out" in err and "an existing file" in err and loads == []


def test_run_checks_the_paths_it_is_given(tmp_path, loads):
    with pytest.raises(FileNotFoundError, match=r"model_path \(--model-path\)"):
        demo.run(Report(tmp_path), model_path=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="lacks R_config-gpt2-x4.post.json"):
        demo.run(Report(tmp_path), partitions=str(_partition_folder(tmp_path, skip=("R_config-gpt2-x4.post.json",))))
    assert loads == []


def test_complete_partition_folder_passes_the_check(tmp_path):
    parts = demo.official_partitions(str(_partition_folder(tmp_path)))
    assert sorted(parts) == list(demo.LAYERS) and all(r.is_file() and c.is_file() for r, c in parts.values())


def test_hub_failure_is_noted_in_the_report_and_exits_non_zero(tmp_path, capsys, monkeypatch, no_network):
    """The hub path is kept (no --model-path loads GPT-2 from the hub); when it cannot, the demo run notes it in the
    report, and the script says so on stderr and exits 1."""
    asked = []

    def offline(model_path=None, **kwargs):
        asked.append(model_path)
        raise OSError("no hub")

    monkeypatch.setattr(demo, "load_gpt2", offline)
    out = demo.run(Report(tmp_path / "a"))
    assert out == {"loaded": False, "error": "OSError: no hub"} and asked == [None]
    with pytest.raises(SystemExit) as e:
        demo.main(["--quick", "--out", str(tmp_path / "b")])
    captured = capsys.readouterr()
    assert e.value.code == 1 and "could not be loaded from the model hub (OSError: no hub)" in captured.err
    assert "--model-path" in captured.err and asked == [None, None]
    assert "could not be loaded from the model hub" in (tmp_path / "b" / "report.md").read_text()
