"""The activation store with bfloat16 rows (stored as their bit patterns, read back exactly) and damaged stores:
`load_activations` names the file at fault and the problem instead of numpy's or json's bare errors."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

import tl_tensorsim as ts
from tests.conftest import SMALL, needs_hooked_transformer
from tl_tensorsim.activation_store import MANIFEST, RowWriter

RESID = "blocks.0.hook_resid_post"
PART = "part-00000-of-00001.npy"


def collect(model, tokens, **kw):
    return ts.collect_activations(model, tokens, RESID, progress=False, **kw)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int16)


@pytest.fixture
def tokens():
    return torch.randint(0, SMALL["d_vocab"], (5, 6), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------- bfloat16
@pytest.fixture(params=[pytest.param("hooked", marks=needs_hooked_transformer), "bridge"])
def bf16_model(request):
    view = ts.ModelView.build({**SMALL, "seed": 0, "dtype": torch.bfloat16}, backend=request.param)
    assert view.dtype == torch.bfloat16
    return view.model


def test_bf16_rows_are_stored_bit_for_bit(bf16_model, tokens, tmp_path, monkeypatch):
    expected = collect(bf16_model, tokens)
    assert expected.dtype == torch.bfloat16 and expected.shape == (30, 32)
    store = collect(bf16_model, tokens, out=tmp_path / "store", batch_size=2)  # used to raise TypeError
    assert store.dtype == torch.bfloat16 and store.shape == (30, 32)
    assert torch.equal(bits(store.tensor()), bits(expected)) and torch.equal(
        bits(store[[4, 0, 4]]), bits(expected[[4, 0, 4]])
    )
    manifest = json.loads((tmp_path / "store" / MANIFEST).read_text())
    assert manifest["dtype"] == "bfloat16" and np.load(tmp_path / "store" / PART).dtype == np.uint16
    loaded = ts.load_activations(tmp_path / "store")
    assert loaded.dtype == torch.bfloat16 and torch.equal(bits(loaded.tensor()), bits(expected))
    # too big for memory: spills to a temporary file, mapped back as bfloat16
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "spill"))
    (tmp_path / "spill").mkdir()
    for data in (tokens, (row for row in tokens)):  # known and unknown size
        spilled = collect(bf16_model, data, max_memory_bytes=100, batch_size=2)
        assert spilled.dtype == torch.bfloat16 and torch.equal(bits(spilled), bits(expected))
    assert os.listdir(tmp_path / "spill") == []


def test_bf16_requested_from_a_float32_model(model, tokens, tmp_path):
    expected = collect(model, tokens).to(torch.bfloat16)
    store = collect(model, tokens, dtype=torch.bfloat16, out=tmp_path / "store")
    assert store.dtype == torch.bfloat16 and torch.equal(bits(store.tensor()), bits(expected))


def test_a_single_npy_file_refuses_bf16(bf16_model, model, tokens, tmp_path, monkeypatch):
    with pytest.raises(
        ValueError, match=r"out: a \.npy file cannot hold bfloat16 rows .*got out='.*x\.npy'.*out=FOLDER"
    ):
        collect(bf16_model, tokens, out=tmp_path / "x.npy")
    assert not (tmp_path / "x.npy").exists()

    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(model, "run_with_hooks", forbidden)
    with pytest.raises(ValueError, match="dtype=torch.float32"):  # an explicit dtype is refused up front
        collect(model, tokens, dtype=torch.bfloat16, out=tmp_path / "y.npy")


def test_row_writer_keeps_every_bf16_bit_pattern(tmp_path):
    rows = torch.randn(50, 3, 4).to(torch.bfloat16)
    rows.view(-1)[:6] = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 1e-40, -3e38]).to(torch.bfloat16)
    for out, limit in ((tmp_path / "part-00000-of-00001.npy", 1 << 30), (None, 10), (None, 1 << 30)):
        writer = RowWriter((3, 4), None, out, limit, None)
        for chunk in rows.split(7):
            writer.append(chunk)
        got = writer.finish()
        assert got.dtype == torch.bfloat16 and torch.equal(bits(got), bits(rows))


# ------------------------------------------------------------------------------------------- damaged stores
@pytest.fixture
def good_store(bridge_model, tokens, tmp_path):
    store = collect(bridge_model, tokens, out=tmp_path / "good")
    assert store.shape == (30, 32)
    return tmp_path / "good"


def _damaged(good, tmp_path, mutate):
    folder = tmp_path / "damaged"
    shutil.copytree(good, folder)
    mutate(folder)
    return folder


def _edit(key, value):
    def mutate(folder):
        manifest = json.loads((folder / MANIFEST).read_text())
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value(manifest) if callable(value) else value
        (folder / MANIFEST).write_text(json.dumps(manifest))

    return mutate


def _truncate(folder):
    with open(folder / PART, "r+b") as f:
        f.truncate(1000)


def _replace(dtype):
    def mutate(folder):
        np.save(folder / PART, np.load(folder / PART).astype(dtype))

    return mutate


DAMAGE = {
    "truncated part": (_truncate, rf"{PART} is truncated: 1000 bytes, where shape \[30, 32\] of float32 needs"),
    "garbage manifest": (
        lambda folder: (folder / MANIFEST).write_text("{not json"),
        rf".*{MANIFEST} is not valid JSON \(Expecting property name.*collect the store again",
    ),
    "manifest is a list": (lambda folder: (folder / MANIFEST).write_text("[]"), "is not a .* manifest; got 'list'"),
    "no parts": (_edit("parts", None), rf".*{MANIFEST} has no 'parts'; expected a non-empty list"),
    "empty parts": (_edit("parts", []), r"has parts \[\]; expected a non-empty list"),
    "part without rows": (_edit("parts", [{"file": PART}]), "has parts .*expected a non-empty list"),
    "manifest dtype": (_edit("dtype", "float16"), rf"{PART} holds float32; .*{MANIFEST} records dtype float16"),
    "manifest dtype bf16": (_edit("dtype", "bfloat16"), r"holds float32; .* records dtype bfloat16 \(stored as uint16"),
    "unknown dtype": (_edit("dtype", "int8"), r"records dtype 'int8'; expected one of \['bfloat16', 'float16'"),
    "total rows": (_edit("shape", [5, 32]), r"records 5 rows \(shape \[5, 32\]\), but its parts hold 30 \(\[30\]\)"),
    "part rows": (_edit("parts", lambda m: [{**m["parts"][0], "rows": 10}]), r"records 30 rows .*parts hold 10"),
    "row shape": (_edit("shape", [30, 16]), rf"{PART} holds shape \[30, 32\]; .* expects \[30, 16\]"),
    "bad shape": (_edit("shape", "30x32"), r"records shape '30x32'; expected a list of sizes"),
    "part float64": (_replace(np.float64), rf"{PART} holds float64; .* records dtype float32"),
    "part int64": (_replace(np.int64), rf"{PART} holds int64; .* records dtype float32"),
    "part not npy": (lambda folder: (folder / PART).write_bytes(b"junk" * 100), rf"{PART} is not a readable \.npy"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_store_names_the_file_and_the_problem(good_store, tmp_path, case):
    mutate, match = DAMAGE[case]
    folder = _damaged(good_store, tmp_path, mutate)
    with pytest.raises(ValueError, match=f"directory: (part )?{re.escape(str(tmp_path))}.*" + match):
        ts.load_activations(folder)


def test_missing_part_is_named(good_store, tmp_path):
    folder = _damaged(good_store, tmp_path, lambda folder: (folder / PART).unlink())
    with pytest.raises(FileNotFoundError, match=rf"{PART} listed in .*{MANIFEST} is missing; .*copy the whole"):
        ts.load_activations(folder)


def test_a_good_store_still_loads(good_store, bridge_model, tokens):
    store = ts.load_activations(good_store)
    assert store.dtype == torch.float32 and torch.equal(store.tensor(), collect(bridge_model, tokens))
    assert store.manifest["hook_name"] == RESID
