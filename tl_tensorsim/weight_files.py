"""State-dict files (`.safetensors`, `.pt`, `.pth`): checked before any work, read whole, or opened lazily so that
an analysis reads only the tensors it needs.

Core layer, beside `model_io.py` (whose name conversion it uses). `open_state_file(path, cfg)` returns a read-only
mapping in TransformerLens naming (`blocks.0.attn.W_Q` `[head, d_model, d_head]`, ...) over a file in either naming
convention (TransformerLens names, or a `boot_native` bridge's `state_dict()` names): the keys and shapes come from
the file's header (safetensors) or a memory-mapped `torch.load(mmap=True)` (zip-format `.pt`), and a tensor is read
from disk only when it is looked up. So comparing attention heads across checkpoints reads `W_Q`/`W_K` (or
`W_V`/`W_O`), never `W_E`, `W_U` or the MLPs, and needs no model to load the weights into.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from tl_tensorsim.model_io import _BUFFER_RE, _native_keys, _tl_from_native, naming_convention, tl_weight_keys

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")

__all__ = ["CHECKPOINT_SUFFIXES", "LazyStateFile", "check_checkpoint_file", "open_state_file", "read_state_dict"]


def check_checkpoint_file(path: str | os.PathLike, argument: str = "checkpoints") -> Path:
    """`path` as a `Path` if it names a readable state-dict file, else an error naming `argument` and the file:
    `ValueError` for another suffix or an unreadable header, `FileNotFoundError` for a missing file. Reads only
    the header (safetensors) or the archive's table of contents (`torch.save`)."""
    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"{argument}: {path} is not a checkpoint file; expected .safetensors, .pt or .pth "
            "(hint: pass a folder of such files, or state dicts)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(
                f"{argument}: cannot read the safetensors header of {path}: {exc} (hint: a truncated or "
                "partly written file; write it again with safetensors.torch.save_file)"
            ) from exc
        return path
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(n.endswith("data.pkl") for n in archive.namelist()):
                return path
    else:
        with open(path, "rb") as f:
            if f.read(2) == b"\x80\x02":  # torch.save's legacy (pre-1.6) pickle format
                return path
    raise ValueError(
        f"{argument}: cannot read {path} as a torch.save file (neither a torch zip archive nor a legacy pickle); "
        "hint: save state dicts with torch.save(model.state_dict(), path) or safetensors"
    )


def read_state_dict(path: str | os.PathLike, argument: str = "checkpoints") -> dict[str, Tensor]:
    """The state dict in a `.safetensors` / `.pt` / `.pth` file (on the CPU; `torch.load(weights_only=True)`)."""
    path = check_checkpoint_file(path, argument)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{argument}: cannot load {path}: {exc}") from exc
    return dict(_torch_load(path, argument))


def _torch_load(path: Path, argument: str, mmap: bool = False) -> Mapping[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise ValueError(f"{argument}: cannot load {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"{argument}: {path} holds a {type(state).__name__}, not a state dict")
    return state


class LazyStateFile(Mapping):
    """A state-dict file as a read-only mapping in TransformerLens naming; each tensor is read (and converted from
    a bridge's `nn.Linear` layout when the file uses bridge names) on first lookup, then kept (the mapping lives as
    long as the analysis of one checkpoint). CPU tensors in the file's dtype."""

    def __init__(
        self,
        path: str | os.PathLike,
        cfg: Any,
        argument: str = "checkpoints",
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ):
        self.path = check_checkpoint_file(path, argument)
        self.argument = argument
        if self.path.suffix == ".safetensors":  # one open handle: the header is parsed once
            self._file = safe_open(str(self.path), framework="pt")
            raw = {k: torch.empty(self._file.get_slice(k).get_shape(), device="meta") for k in self._file.keys()}
            self._mmap = None
        else:  # zip-format torch.save files map lazily; the legacy format is read whole
            self._mmap = _torch_load(self.path, argument, mmap=zipfile.is_zipfile(self.path))
            raw = {k: torch.empty(v.shape, device="meta") for k, v in self._mmap.items()}
        found: dict[str, tuple[int, ...]] = {}  # TL name -> shape
        if naming_convention(raw) == "transformer_lens":
            self._source = {k: (k, None) for k in raw if not _BUFFER_RE.search(k)}
            found = {k: tuple(raw[k].shape) for k in self._source}
        else:  # file key -> native name -> TL name(s): the conversion run on shapes only (meta tensors)
            native = _native_keys({k: k for k in raw})  # native name -> file key
            self._source = {}
            for nat, key in native.items():
                for tl, meta in _tl_from_native({nat: raw[key]}, cfg).items():
                    self._source[tl], found[tl] = (key, nat), tuple(meta.shape)
        expected = tl_weight_keys(cfg)
        if set(self._source) != set(expected):
            raise ValueError(
                f"{argument}: the weights in {self.path} differ from this model's: missing "
                f"{sorted(set(expected) - set(self._source))[:5]}, unexpected "
                f"{sorted(set(self._source) - set(expected))[:5]} (hint: a checkpoint of another architecture; "
                "compare n_layers, attn_only, normalization_type)"
            )
        wrong = {k: (found[k], tuple(v)) for k, v in (shapes or {}).items() if k in found and found[k] != tuple(v)}
        if wrong:
            k, (got, want) = next(iter(wrong.items()))
            raise ValueError(
                f"{argument}: {self.path} holds {k} of shape {list(got)}, this model's is {list(want)} "
                f"({len(wrong)} mismatched tensors; hint: a checkpoint of another architecture)"
            )
        self.cfg = cfg
        self._cache: dict[str, Tensor] = {}

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._cache:
            file_key, native = self._source[key]  # KeyError for unknown names, as a dict
            value = self._mmap[file_key] if self._mmap is not None else self._file.get_tensor(file_key)
            self._cache[key] = value if native is None else _tl_from_native({native: value}, self.cfg)[key]
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)


def open_state_file(
    path: str | os.PathLike,
    cfg: Any,
    argument: str = "checkpoints",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> LazyStateFile:
    """The weights in `path` as a lazily read mapping in TransformerLens naming (see `LazyStateFile`), checked
    against the model config `cfg` (every key of `model_io.tl_weight_keys(cfg)`, no other) and, when given, the
    expected `shapes` (TL name -> shape) before any tensor is read. Raises `ValueError` naming `argument` and the
    file."""
    return LazyStateFile(path, cfg, argument, shapes)
