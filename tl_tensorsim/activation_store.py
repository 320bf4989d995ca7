"""The activation store: rows `[n, *row_shape]` written in order to memory or a `.npy` file (`RowWriter`), and
a store folder read back as one array (`ActivationStore`, `load_activations`).

A store folder holds one `.npy` part per process (`part_name(rank, world)`) plus `manifest.json`
(`write_manifest`): format `STORE_FORMAT`, the total shape, the dtype, the hook and model names and, per part, its
file, its row count and the sequences `[lo, hi)` it covers. Parts are in rank order, which is sequence order, so the
store reads as exactly the rows one process would collect. `tl_tensorsim.activations.collect_activations(...,
out=FOLDER)` writes stores (under `torch.distributed` each rank its own part); the manifest is written last and
atomically, so a folder without one is an incomplete store. bfloat16 rows (numpy has no bfloat16) are stored as
their raw 16-bit patterns (`uint16` parts, manifest dtype `bfloat16`) and read back as bfloat16, bit for bit; a
plain `.npy` file (`out=x.npy`) cannot hold them. Reading checks the manifest against the parts (dtype, shapes,
row counts, file sizes) and names the file at fault.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tl_tensorsim.distributed import Collectives

_NPY_HEADER_BYTES = 256  # reserved up front so the header can be written once the row count is known
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_BF16_BITS = np.dtype(np.uint16)  # the file dtype of bfloat16 rows: their raw bit patterns (rows are floating)
_TORCH_DTYPES = {
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
}
_PART_RE = re.compile(r"part-\d{5,}-of-\d{5,}\.npy")  # part_name(rank, world)
MANIFEST = "manifest.json"
STORE_FORMAT = "tl_tensorsim.activation_store"


# ---------------------------------------------------------------------------------------------- writing
def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    body = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    room = _NPY_HEADER_BYTES - 10 - 1  # magic (6) + version (2) + length (2); header ends with "\n"
    if len(body) > room:  # pragma: no cover - shapes have at most a few dimensions
        raise ValueError(f"shape {shape} does not fit in the reserved .npy header")
    text = (body + " " * (room - len(body)) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


class RowWriter:
    """Rows `[m, *row_shape]` appended in order (`append`), returned by `finish()`: kept in memory (preallocated
    when `n_rows` is known), or streamed to a `.npy` file (`out`, or a temporary file deleted once mapped when the
    rows outgrow `max_memory_bytes`) and returned as a copy-on-write memory map of it. `abort()` on failure."""

    def __init__(
        self,
        row_shape: tuple[int, ...],
        dtype: torch.dtype | None,
        out: str | os.PathLike | None,
        max_memory_bytes: int,
        n_rows: int | None,
    ):
        self.row_shape = row_shape
        self.row_numel = int(np.prod(row_shape)) if row_shape else 1
        self.dtype = dtype
        self.path: Path | None = Path(out) if out is not None else None
        self.keep_file = out is not None
        self.max_memory_bytes = int(max_memory_bytes)
        self.n_rows = n_rows  # known in advance (tensor input), or None
        self.rows = 0
        self.chunks: list[Tensor] = []
        self.buffer: Tensor | None = None
        self.file = None
        self.check_dtype()

    # --------------------------------------------------------- helpers
    def file_dtype(self) -> np.dtype:
        """The dtype of the `.npy` file: the rows' own, `uint16` bit patterns for bfloat16 (see `write_manifest`)."""
        return _file_dtype(self.dtype if self.dtype in _TORCH_DTYPES.values() else torch.float32)

    def check_dtype(self, dtype: torch.dtype | None = None) -> None:
        """A store part may hold bfloat16 bit patterns (its manifest records the dtype); a `.npy` file of the
        caller's (`out=x.npy`) may not: read later with `np.load`, it would be integers. `dtype`: the rows' dtype
        when known before the first rows (the model's), else this writer's."""
        if (dtype or self.dtype) == torch.bfloat16 and self.keep_file and not _PART_RE.fullmatch(self.path.name):
            raise ValueError(
                f"out: a .npy file cannot hold bfloat16 rows (numpy has no bfloat16); got out={str(self.path)!r} "
                "for bfloat16 activations (the model's dtype, or dtype=). Pass out=FOLDER (an activation store: it "
                "keeps bfloat16 and load_activations reads it back), or dtype=torch.float32 (exact for bfloat16)"
            )

    def _open_file(self) -> None:
        if self.path is None:
            fd, name = tempfile.mkstemp(prefix="tl_tensorsim_activations_", suffix=".npy")
            os.close(fd)
            self.path = Path(name)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "wb")  # closed in finish()/abort()
        self.file.write(b"\0" * _NPY_HEADER_BYTES)
        for chunk in self.chunks:
            self._write(chunk)
        self.chunks = []

    def _write(self, rows: Tensor) -> None:
        array = rows.view(torch.int16).numpy().view(_BF16_BITS) if self.dtype == torch.bfloat16 else rows.numpy()
        np.ascontiguousarray(array.astype(self.file_dtype(), copy=False)).tofile(self.file)

    def _bytes(self, n_rows: int) -> int:
        return n_rows * self.row_numel * torch.empty((), dtype=self.dtype).element_size()

    # --------------------------------------------------------- API
    def append(self, rows: Tensor) -> None:
        if self.dtype is None:
            self.dtype = rows.dtype
            self.check_dtype()
        rows = rows.detach().to("cpu", self.dtype)
        if self.file is None and (
            self.path is not None
            or self._bytes(self.rows + rows.shape[0]) > self.max_memory_bytes
            or (self.n_rows is not None and self._bytes(self.n_rows) > self.max_memory_bytes)
        ):
            self._open_file()
        if self.file is not None:
            self._write(rows)
        elif self.n_rows is not None:
            if self.buffer is None:
                self.buffer = torch.empty((self.n_rows, *self.row_shape), dtype=self.dtype)
            self.buffer[self.rows : self.rows + rows.shape[0]] = rows
        else:
            self.chunks.append(rows.clone())
        self.rows += rows.shape[0]

    def finish(self) -> Tensor:
        dtype = self.dtype or torch.float32
        if self.file is None:
            if self.buffer is not None:
                return self.buffer[: self.rows]
            if not self.chunks:
                return torch.empty((0, *self.row_shape), dtype=dtype)
            return torch.cat(self.chunks)
        self.file.seek(0)
        self.file.write(_npy_header((self.rows, *self.row_shape), self.file_dtype()))
        self.file.close()
        self.file = None
        array = np.load(self.path, mmap_mode="c") if self.rows else np.empty((0, *self.row_shape), self.file_dtype())
        if not self.keep_file:
            try:
                os.unlink(self.path)  # the mapping stays valid; the disk space is freed with the tensor
            except OSError:  # pragma: no cover - e.g. Windows keeps mapped files
                pass
        return _as_tensor(array, dtype)

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            try:
                os.unlink(self.path)
            except OSError:  # pragma: no cover
                pass


# ---------------------------------------------------------------------------------------------- reading
def _as_tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    """`array` as a tensor sharing its memory; `uint16` bit patterns reinterpreted as bfloat16."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _file_dtype(dtype: torch.dtype) -> np.dtype:
    return _BF16_BITS if dtype == torch.bfloat16 else np.dtype(_NUMPY_DTYPES[dtype])


def _read_npy(path: Path, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype, manifest: Path) -> Tensor:
    """Part `path` memory-mapped, checked against what the manifest records (`rows`, `row_shape`, `dtype`)."""
    expected = _file_dtype(dtype)
    if rows == 0:  # a process with no sequences writes no file (one there is from an earlier collection)
        return _as_tensor(np.empty((0, *row_shape), expected), dtype)
    if not path.is_file():
        raise FileNotFoundError(
            f"directory: part {path} listed in {manifest} is missing; the store is incomplete (a part was deleted "
            "or not copied): copy the whole folder, or collect it again"
        )
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version} is not one this store writes")
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, file_dtype = read_header(f)
            header = f.tell()
    except (ValueError, OSError, SyntaxError) as e:
        raise ValueError(f"directory: part {path} is not a readable .npy file ({e}); collect the store again") from None
    got = [int(n) for n in shape]
    if file_dtype != expected:
        want = str(dtype).removeprefix("torch.") + (" (stored as uint16 bits)" if dtype == torch.bfloat16 else "")
        raise ValueError(
            f"directory: part {path} holds {file_dtype}; {manifest} records dtype {want}; the part was replaced or the "
            "manifest edited: collect the store again"
        )
    if got != [rows, *row_shape]:
        raise ValueError(
            f"directory: part {path} holds shape {got}; {manifest} expects {[rows, *row_shape]}; the part was "
            "replaced or the manifest edited: collect the store again"
        )
    size, need = path.stat().st_size, header + int(np.prod(got)) * expected.itemsize
    if size < need:
        raise ValueError(
            f"directory: part {path} is truncated: {size} bytes, where shape {got} of {expected} needs {need}; "
            "an interrupted write or copy: collect the store (or copy the part) again"
        )
    return _as_tensor(np.load(path, mmap_mode="c"), dtype)


def _read_manifest(path: Path) -> tuple[tuple[int, ...], int, torch.dtype, list[dict[str, Any]], dict[str, Any]]:
    """`(row_shape, total rows, dtype, parts, manifest)` from `manifest.json`, else a `ValueError` naming it."""
    hint = "the manifest was edited or damaged: collect the store again"
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"directory: {path} is not valid JSON ({e}); {hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"directory: {path} is not a {STORE_FORMAT} manifest; got {got!r}")
    shape, dtype, parts = manifest.get("shape"), manifest.get("dtype"), manifest.get("parts")
    if not (isinstance(shape, list) and shape and all(type(n) is int and n >= 0 for n in shape)):
        raise ValueError(f"directory: {path} records shape {shape!r}; expected a list of sizes [n, *row_shape]; {hint}")
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"directory: {path} records dtype {dtype!r}; expected one of {sorted(_TORCH_DTYPES)}; {hint}")
    if not (isinstance(parts, list) and parts) or not all(
        isinstance(p, dict) and isinstance(p.get("file"), str) and type(p.get("rows")) is int and p["rows"] >= 0
        for p in parts
    ):
        got = "no 'parts'" if parts is None else f"parts {str(parts)[:120]}"
        raise ValueError(
            f"directory: {path} has {got}; expected a non-empty list of {{'file': name, 'rows': count}}; {hint}"
        )
    rows = sum(p["rows"] for p in parts)
    if rows != shape[0]:
        raise ValueError(
            f"directory: {path} records {shape[0]} rows (shape {shape}), but its parts hold {rows} "
            f"({[p['rows'] for p in parts]}); {hint}"
        )
    return tuple(shape[1:]), rows, _TORCH_DTYPES[dtype], parts, manifest


class ActivationStore:
    """An activation store folder (`manifest.json` + one memory-mapped `.npy` part per process), read as one
    array `[n, *row_shape]` on the CPU: rows in part order, which is sequence order.

    Indexing reads only the rows asked for: `store[i]`, `store[a:b]`, `store[ids]` (a 1-D integer tensor, list
    or array; any order, repeats allowed). `shape`, `dtype`, `ndim`, `device` and `len()` behave as for a tensor;
    `tensor()` is the whole array (the memory map itself when there is one part, else a copy in memory) and
    `to(...)` is `tensor().to(...)`. `fit_ndm` and `subspace_mutual_information` take a store wherever they take
    activations.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"directory: {self.directory} is not an activation store (no {MANIFEST}); write one with "
                "collect_activations(..., out=FOLDER)"
            )
        row_shape, rows, dtype, parts, self.manifest = _read_manifest(path)
        self.parts: list[Tensor] = [
            _read_npy(self.directory / part["file"], part["rows"], row_shape, dtype, path) for part in parts
        ]
        self.offsets = torch.tensor([0, *itertools.accumulate(len(p) for p in self.parts)])
        self.shape = torch.Size([rows, *row_shape])
        self.dtype = dtype
        self.device = torch.device("cpu")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def tensor(self) -> Tensor:
        """All rows as one tensor (the memory map itself for a one-part store)."""
        return self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts)

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.tensor().to(*args, **kwargs)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Tensor:
        n = len(self)
        if isinstance(index, slice):
            index = torch.arange(n)[index]
        elif isinstance(index, int) or (isinstance(index, Tensor) and index.ndim == 0):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"index: row {i} is out of range for a store of {n} rows")
            return self[torch.tensor([i % n])][0]
        ids = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if len(ids) and (int(ids.min()) < -n or int(ids.max()) >= n):
            raise IndexError(f"index: rows must lie in [-{n}, {n}); got {int(ids.min())}..{int(ids.max())}")
        ids = ids % max(n, 1)
        part = torch.searchsorted(self.offsets[1:], ids, right=True)
        out = torch.empty((len(ids), *self.shape[1:]), dtype=self.dtype)
        for p in part.unique().tolist():
            sel = (part == p).nonzero().squeeze(1)
            out[sel] = self.parts[p][ids[sel] - self.offsets[p]]
        return out

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.directory)!r}, shape={list(self.shape)}, dtype={self.dtype}, {len(self.parts)} parts)"


def load_activations(directory: str | os.PathLike) -> ActivationStore:
    """The activation store `collect_activations(..., out=directory)` wrote (any number of processes)."""
    return ActivationStore(directory)


def part_name(rank: int, world: int) -> str:
    """The file name of rank `rank`'s part in a store written by `world` processes."""
    return f"part-{rank:05d}-of-{world:05d}.npy"


def write_manifest(folder: Path, comm: Collectives, rows: int, seqs: tuple[int, int], info: dict[str, Any]) -> None:
    """Rank 0 writes `manifest.json` (atomically) once every rank's part is complete; every rank waits for it.
    `rows`: this rank's row count; `seqs`: the sequences `[lo, hi)` it covered; `info`: `shape` (of a row),
    `dtype` (`RowWriter.file_dtype().name`: `uint16`, the bit patterns of bfloat16 rows, is recorded as
    `bfloat16`) and any other entries (`hook_name`, `model_name`). Parts of an earlier collection with another
    world size are removed."""
    if info.get("dtype") == _BF16_BITS.name:  # activation rows are floating: uint16 parts are bfloat16 bits
        info = {**info, "dtype": "bfloat16"}
    counts = comm.all_gather(torch.tensor([rows, *seqs], dtype=torch.long)).tolist()
    if comm.is_main:
        parts = [{"file": part_name(r, comm.world), "rows": c[0], "sequences": c[1:]} for r, c in enumerate(counts)]
        manifest = {"format": STORE_FORMAT, "version": 1, **info, "parts": parts}
        manifest["shape"] = [sum(c[0] for c in counts), *info["shape"]]
        tmp = folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder / MANIFEST)
        keep = {p["file"] for p in parts}
        for stale in folder.glob("part-*.npy"):  # parts of an earlier collection with another world size
            if stale.name not in keep:
                stale.unlink()
    comm.barrier()
