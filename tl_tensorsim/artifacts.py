"""The one way to store a result: `*.safetensors` for tensors + `cfg.json` for settings. Never pickle.

A result type subclasses `Artifact` and implements `_tensors()`, `_config()` and
`_from_parts(tensors, config)`; it then gets `save(dir)` / `load(dir)`. The JSON records the
library version, the result type, and whatever settings the result puts in its config (hook
name, model names, circuit, level, ...).

Writes are atomic: files go to a temporary sibling folder which is renamed into place, so an
exception never leaves a half-written result behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

TENSORS_FILE = "tensors.safetensors"
CONFIG_FILE = "cfg.json"
T = TypeVar("T", bound="Artifact")


def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tl-tensorsim")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def save_artifact(directory: str | os.PathLike, tensors: dict[str, Tensor], config: dict[str, Any], kind: str) -> Path:
    """Write `tensors` (safetensors) and `config` (JSON, with `kind` and the library version) to `directory`.

    The folder is replaced atomically; its parent is created if needed.
    """
    directory = Path(directory)
    for k, v in tensors.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"tensors[{k!r}]: expected a torch.Tensor; got {type(v).__name__}")
    meta = {"kind": kind, "tl_tensorsim_version": library_version(), **config}
    text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)  # fails before anything is written
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / TENSORS_FILE))
        (tmp / CONFIG_FILE).write_text(text)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_artifact(directory: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read back what `save_artifact` wrote; check the stored `kind` when one is given."""
    directory = Path(directory)
    cfg_path, tensor_path = directory / CONFIG_FILE, directory / TENSORS_FILE
    if not cfg_path.is_file() or not tensor_path.is_file():
        raise FileNotFoundError(
            f"directory: {directory} holds no saved result ({CONFIG_FILE} + {TENSORS_FILE} expected)"
        )
    config = json.loads(cfg_path.read_text())
    if kind is not None and config.get("kind") != kind:
        raise ValueError(f"directory: {directory} holds a {config.get('kind')!r}, not a {kind!r}")
    return load_file(str(tensor_path)), config


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"config value of type {type(obj).__name__} is not JSON-serialisable")


class Artifact:
    """Mixin giving a result type `save(dir)` and `Type.load(dir)` through `save_artifact`/`load_artifact`."""

    def _tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_parts(cls: type[T], tensors: dict[str, Tensor], config: dict[str, Any]) -> T:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> Path:
        return save_artifact(directory, self._tensors(), self._config(), kind=type(self).__name__)

    @classmethod
    def load(cls: type[T], directory: str | os.PathLike) -> T:
        tensors, config = load_artifact(directory, kind=cls.__name__)
        config = {k: v for k, v in config.items() if k not in ("kind", "tl_tensorsim_version")}
        return cls._from_parts(tensors, config)
