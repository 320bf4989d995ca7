"""The activation store: rows `[n, *row_shape]` written in order to memory or a `.npy` file (`RowWriter`), and
a store folder read back as one array (`ActivationStore`, `load_activations`).

A store folder holds one `.npy` part per process (`part_name(rank, world)`) plus `manifest.json`
(`write_manifest`): format `STORE_FORMAT`, the total shape, the dtype, the hook and model names and, per part, its
file, its row count and the sequences `[lo, hi)` it covers. Parts are in rank order, which is sequence order, so the
store reads as exactly the rows one process would collect. `tl_tensorsim.activations.collect_activations(...,
out=FOLDER)` writes stores (under `torch.distributed` each rank its own part); the manifest is written last and
atomically, so a folder without one is an incomplete store.
"""

from __future__ import annotations

import itertools
import json
import os
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

    # --------------------------------------------------------- helpers
    def file_dtype(self) -> np.dtype:
        return np.dtype(_NUMPY_DTYPES.get(self.dtype, np.float32))

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
        np.ascontiguousarray(rows.numpy().astype(self.file_dtype(), copy=False)).tofile(self.file)

    def _bytes(self, n_rows: int) -> int:
        return n_rows * self.row_numel * torch.empty((), dtype=self.dtype).element_size()

    # --------------------------------------------------------- API
    def append(self, rows: Tensor) -> None:
        if self.dtype is None:
            self.dtype = rows.dtype
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
        return torch.from_numpy(array)

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            try:
                os.unlink(self.path)
            except OSError:  # pragma: no cover
                pass


# ---------------------------------------------------------------------------------------------- reading
def _read_npy(path: Path, rows: int, row_shape: tuple[int, ...], dtype: np.dtype) -> Tensor:
    if rows == 0:  # nothing to map
        return torch.from_numpy(np.empty((0, *row_shape), dtype))
    return torch.from_numpy(np.load(path, mmap_mode="c"))


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
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != STORE_FORMAT:
            raise ValueError(f"directory: {path} is not a {STORE_FORMAT} manifest; got {self.manifest.get('format')}")
        row_shape = tuple(self.manifest["shape"][1:])
        dtype = np.dtype(self.manifest["dtype"])
        self.parts: list[Tensor] = []
        for part in self.manifest["parts"]:
            array = _read_npy(self.directory / part["file"], part["rows"], row_shape, dtype)
            if tuple(array.shape) != (part["rows"], *row_shape):
                raise ValueError(
                    f"directory: part {part['file']} holds shape {list(array.shape)}; the manifest expects "
                    f"{[part['rows'], *row_shape]}"
                )
            self.parts.append(array)
        self.offsets = torch.tensor([0, *itertools.accumulate(len(p) for p in self.parts)])
        self.shape = torch.Size([int(self.offsets[-1]), *row_shape])
        self.dtype = self.parts[0].dtype if self.parts else torch.float32
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
    `dtype` (numpy name) and any other entries (`hook_name`, `model_name`). Parts of an earlier collection with
    another world size are removed."""
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
