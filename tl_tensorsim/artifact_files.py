"""Files on disk for the one save mechanism (see `artifacts`): `tensors.safetensors` + `cfg.json` written atomically
(a temporary sibling folder renamed into place, following the umask), read back with errors that name the folder,
and the JSON conversions they share. `artifacts` declares result types on top of these."""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

TENSORS_FILE = "tensors.safetensors"
CONFIG_FILE = "cfg.json"
FORMAT_VERSION = "1.0"  # MAJOR.MINOR of the cfg.json layout: a new major cannot be read by older versions
RESERVED_KEYS = ("kind", "format_version", "tl_tensorsim_version")


@functools.cache
def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tl-tensorsim")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (`2025-01-31T12:00:00+00:00`)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_default(obj: Any) -> Any:
    """`json.dumps(default=)` for configs: paths and dtypes as strings, scalars as numbers, `to_dict()`."""
    if isinstance(obj, (Path, torch.dtype)):
        return str(obj)
    if (isinstance(obj, Tensor) and obj.numel() == 1) or (getattr(obj, "shape", None) == () and hasattr(obj, "item")):
        return obj.item()  # one-element tensors, numpy scalars
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"config value of type {type(obj).__name__} is not JSON-serialisable")


def _major(version: Any, directory: Path) -> int:
    try:
        major, _ = (int(x) for x in str(version).split("."))
        return major
    except ValueError:
        raise ValueError(f"directory: {directory}: format_version: expected 'MAJOR.MINOR'; got {version!r}") from None


# ------------------------------------------------------------------------------------------- files on disk
def _check_replaceable(directory: Path) -> None:
    """`save` replaces the whole folder: refuse a file, a link or a folder holding anything but a saved result."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise ValueError(f"directory: expected a folder to write a result to; {directory} is a file or a link")
    other = (
        sorted(p.name for p in directory.iterdir() if p.name not in (CONFIG_FILE, TENSORS_FILE))
        if directory.is_dir()
        else []
    )
    if other:
        raise ValueError(
            f"directory: {directory} exists and holds other files {other[:5]}; saving replaces the whole folder, "
            "so choose a new or empty folder (or remove it first)"
        )


def _sibling(directory: Path, tag: str) -> Path:
    """A fresh hidden sibling folder made with `os.mkdir(0o777)`, so the umask applies (unlike `mkdtemp`)."""
    path = directory.parent / f".{directory.name}.{tag}-{secrets.token_hex(8)}"
    os.mkdir(path, 0o777)
    return path


def save_artifact(directory: str | os.PathLike, tensors: dict[str, Tensor], config: dict[str, Any], kind: str) -> Path:
    """Write `tensors` (safetensors, each in its own dtype, on the CPU) and `config` (JSON, with `kind`,
    `format_version` and the library version first, then `config`'s keys in their own order) to `directory`.

    The folder is replaced atomically (an existing folder must hold only a saved result); its parent is created
    if needed. Folder and files get the umask's permissions (0755 / 0644 under umask 022).
    """
    directory = Path(directory)
    for k, v in tensors.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"tensors[{k!r}]: expected a torch.Tensor; got {type(v).__name__}")
    reserved = sorted(set(config) & set(RESERVED_KEYS))
    if reserved:
        raise ValueError(f"config: keys {reserved} are written by save_artifact itself; rename them")
    meta = {"kind": kind, "format_version": FORMAT_VERSION, "tl_tensorsim_version": library_version(), **config}
    # Keys keep their insertion order (no sort_keys): mappings such as per-layer results are read back in the order
    # they were built, so a round trip keeps layer order (blocks.2 before blocks.10). Fails before anything is written.
    text = json.dumps(meta, indent=2, default=json_default)
    _check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(directory, "tmp")
    file_mode = stat.S_IMODE(tmp.stat().st_mode) & 0o666  # what the umask leaves of rw-rw-rw-
    try:
        seen, cpu = set(), {}
        for k, v in tensors.items():
            v = v.detach().to("cpu").contiguous()
            ptr = v.untyped_storage().data_ptr()
            cpu[k] = v.clone() if ptr in seen and v.numel() else v  # safetensors refuses shared memory
            seen.add(ptr)
        save_file(cpu, str(tmp / TENSORS_FILE))
        (tmp / CONFIG_FILE).write_text(text)
        for name in (TENSORS_FILE, CONFIG_FILE):
            os.chmod(tmp / name, file_mode)
        old = _sibling(directory, "old") if directory.exists() else None
        if old is not None:
            old.rmdir()
            os.replace(directory, old)  # the previous result waits beside until the new one is in place
        try:
            os.replace(tmp, directory)
        except BaseException:
            if old is not None:
                os.replace(old, directory)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_artifact(directory: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read back what `save_artifact` wrote (tensors on the CPU in their stored dtype, and the JSON config);
    check the stored `kind` when one is given. `FileNotFoundError` for missing files; `ValueError` naming the
    folder for unreadable JSON, a truncated tensors file, a newer major format or another kind."""
    directory = Path(directory)
    config = read_config(directory, kind)
    try:
        tensors = load_file(str(directory / TENSORS_FILE))
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) for damaged files
        raise ValueError(
            f"directory: {directory}: {TENSORS_FILE} cannot be read ({e}); the file is truncated or damaged, "
            "save the result again"
        ) from None
    return tensors, config


def read_config(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """The JSON config of a folder `save_artifact` wrote, checked as `load_artifact` checks it (both files there,
    valid JSON, a format this version reads, the `kind` when one is given), without reading the tensors."""
    directory = Path(directory)
    missing = [n for n in (CONFIG_FILE, TENSORS_FILE) if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"directory: {directory} holds no saved result ({CONFIG_FILE} + {TENSORS_FILE} expected; "
            f"{' and '.join(missing)} missing); check the path, or save the result again"
        )
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"directory: {directory}: {CONFIG_FILE} is not valid JSON ({e}); the file is damaged, save it again"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"directory: {directory}: {CONFIG_FILE}: expected a JSON object; got {type(config).__name__}")
    stored = config.get("format_version", "0.0")  # results written before format versions existed
    if _major(stored, directory) > _major(FORMAT_VERSION, directory):
        raise ValueError(
            f"directory: {directory} was written in result format {stored} (tl_tensorsim "
            f"{config.get('tl_tensorsim_version', '?')}); this tl_tensorsim {library_version()} reads format "
            f"{FORMAT_VERSION} and older: upgrade tl_tensorsim to load it"
        )
    if kind is not None and config.get("kind") != kind:
        raise ValueError(
            f"directory: {directory} holds a {config.get('kind')!r}, not a {kind!r}; "
            "tl_tensorsim.load(directory) returns whatever kind it holds"
        )
    return config


def _describe(obj: Any) -> Any:
    """`json_default`, or for provenance (a record, never read back into objects) a short description."""
    if isinstance(obj, Tensor) and obj.numel() != 1:
        return f"tensor {list(obj.shape)} {str(obj.dtype).removeprefix('torch.')}"
    if isinstance(obj, (range, set, frozenset)):
        return list(obj)
    try:
        return json_default(obj)
    except TypeError:
        return repr(obj)[:200]
