"""Loading damaged, foreign or newer saved results: one clear error naming the folder and what is wrong."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from safetensors.torch import save_file

import tl_tensorsim as ts
from tl_tensorsim.artifacts import CONFIG_FILE, TENSORS_FILE, save_artifact


def _sim() -> ts.HeadSimilarity:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(2, 3, generator=g, dtype=torch.float64)
    return ts.HeadSimilarity(values, ["L0H0", "L0H1"], ["L0H0", "L0H1", "L0H2"], "QK", "residual", inner=values)


def _edit_json(path, edit) -> None:
    meta = json.loads((path / CONFIG_FILE).read_text())
    edit(meta)
    (path / CONFIG_FILE).write_text(json.dumps(meta))


def _where(path) -> str:
    return f"directory: {re.escape(str(path))}"


@pytest.fixture
def saved(tmp_path):
    return _sim().save(tmp_path / "sim")


def test_missing_files_name_the_path(saved):
    (saved / TENSORS_FILE).unlink()
    with pytest.raises(
        FileNotFoundError, match=_where(saved) + r" holds no saved result .*tensors.safetensors missing"
    ):
        ts.load(saved)
    with pytest.raises(FileNotFoundError, match="nowhere holds no saved result"):
        ts.HeadSimilarity.load(saved.parent / "nowhere")


def test_truncated_tensors_file(saved):
    data = (saved / TENSORS_FILE).read_bytes()
    (saved / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=_where(saved) + r": tensors.safetensors cannot be read .*truncated"):
        ts.HeadSimilarity.load(saved)


def test_bad_json(saved):
    (saved / CONFIG_FILE).write_text('{"kind": "HeadSimilarity", ')
    with pytest.raises(ValueError, match=_where(saved) + r": cfg.json is not valid JSON \(.*line 1"):
        ts.load(saved)
    (saved / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=_where(saved) + r": cfg.json: expected a JSON object; got list"):
        ts.load(saved)


def test_missing_field(saved):
    _edit_json(saved, lambda m: m["fields"].pop("labels_b"))
    with pytest.raises(ValueError, match=_where(saved) + r": HeadSimilarity field\(s\) \['labels_b'\] missing from"):
        ts.load(saved)


def test_wrong_field_type(saved):
    _edit_json(saved, lambda m: m["fields"].update(labels_a=5))
    with pytest.raises(ValueError, match=_where(saved) + " holds an invalid HeadSimilarity: .*int"):
        ts.load(saved)


def test_wrong_shaped_tensor(saved):
    """Before: a `values` that disagrees with the labels loaded, and `repr` then raised IndexError."""
    bad = torch.zeros(2, 2, dtype=torch.float64)
    save_file({"values": bad, "inner": _sim().inner.clone()}, str(saved / TENSORS_FILE))
    with pytest.raises(ValueError, match=_where(saved) + r": values: cfg.json records .*\[2, 3\].*holds .*\[2, 2\]"):
        ts.load(saved)  # the tensors file does not match the listing in cfg.json
    _edit_json(saved, lambda m: m["tensors"].update(values={"dtype": "float64", "shape": [2, 2]}))
    with pytest.raises(
        ValueError,
        match=_where(saved) + r" holds an invalid HeadSimilarity: values: expected shape \[2, 3\] "
        r"\(\[n_heads_a, n_heads_b\] from labels_a, labels_b\); got \[2, 2\]",
    ):
        ts.load(saved)  # consistent files, but values disagree with the labels (_check)


def test_missing_tensor(saved):
    save_file({"values": _sim().values}, str(saved / TENSORS_FILE))
    with pytest.raises(ValueError, match=_where(saved) + r": tensors.safetensors lacks tensor 'inner'"):
        ts.load(saved)


def test_unknown_kind_names_the_known_ones(tmp_path):
    path = save_artifact(tmp_path / "mystery", {}, {}, kind="Mystery")
    with pytest.raises(
        ValueError, match=_where(path) + r" holds a result of unknown kind 'Mystery'; known kinds: \[.*"
    ):
        ts.load(path)
    try:
        ts.load(path)
    except ValueError as e:
        for kind in ("Circuit", "CheckpointSimilarity", "HeadSimilarity", "PerOutputSimilarity", "TensorValue"):
            assert f"'{kind}'" in str(e), kind


def test_newer_major_format_is_refused(saved):
    _edit_json(saved, lambda m: m.update(format_version="2.0", tl_tensorsim_version="9.0.0"))
    with pytest.raises(
        ValueError, match=_where(saved) + r" was written in result format 2.0 \(tl_tensorsim 9.0.0\).*upgrade"
    ):
        ts.load(saved)
    _edit_json(saved, lambda m: m.update(format_version="two"))
    with pytest.raises(ValueError, match=r"format_version: expected 'MAJOR.MINOR'; got 'two'"):
        ts.load(saved)


def test_newer_minor_format_warns_about_unknown_keys(saved):
    def newer(m):
        m.update(format_version="1.9", checksum="abc")
        m["fields"]["colour"] = "blue"
        m["provenance"]["git_commit"] = "123"

    _edit_json(saved, newer)
    with pytest.warns(UserWarning, match=r"has keys \['colour', 'checksum', 'provenance.git_commit'\] .*ignored"):
        back = ts.load(saved)
    assert torch.equal(back.values, _sim().values) and back.labels_b == _sim().labels_b


def test_results_saved_before_format_versions_still_load(tmp_path):
    """The 0.1 layout: settings at the top level of cfg.json, no format version, no provenance."""
    sim, path = _sim(), tmp_path / "old"
    path.mkdir()
    save_file({"values": sim.values, "inner": sim.inner.clone()}, str(path / TENSORS_FILE))
    old = {"kind": "HeadSimilarity", "tl_tensorsim_version": "0.1.0", "labels_a": sim.labels_a}
    old.update(labels_b=sim.labels_b, circuit="QK", level="residual", metric="tensor", settings={})
    (path / CONFIG_FILE).write_text(json.dumps(old))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = ts.load(path)
    assert torch.equal(back.values, sim.values) and back.provenance.library_version == "0.1.0"
