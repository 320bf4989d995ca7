"""The one way to store a result: `*.safetensors` for tensors + `cfg.json` for settings. Never pickle.

Settings dataclasses subclass `DictConfig` for `to_dict()` / `from_dict(d)`, the JSON-ready form they are
stored in. A result type subclasses `Artifact` and implements `_tensors()`, `_config()` and
`_from_parts(tensors, config)`; it then gets `save(dir)` / `load(dir)`. The JSON records the
library version, the result type, and whatever settings the result puts in its config (hook
name, model names, circuit, level, ...).

Writes are atomic: files go to a temporary sibling folder which is renamed into place, so an
exception never leaves a half-written result behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

TENSORS_FILE = "tensors.safetensors"
CONFIG_FILE = "cfg.json"
T = TypeVar("T", bound="Artifact")
C = TypeVar("C", bound="DictConfig")


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


class DictConfig:
    """Mixin for dataclass configs: `to_dict()` (`dataclasses.asdict`) and `Type.from_dict(d)`.

    `from_dict` rejects keys that are not fields (naming them and the expected ones) and turns lists back into
    tuples for the fields whose default is a tuple (JSON has no tuples), so `from_dict(json round trip)` is equal.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        names = {f.name for f in fields}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"config: unknown {cls.__name__} fields {sorted(unknown)}; expected a subset of {sorted(names)}"
            )
        tuples = {f.name for f in fields if isinstance(f.default, tuple)}
        return cls(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in d.items()})
