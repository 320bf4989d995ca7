"""The one way to store a result: `tensors.safetensors` for tensors + `cfg.json` for everything else. Never pickle.

**Declared results.** A result type is a dataclass subclassing `Artifact`; what it stores follows from its fields:
a field holding a `torch.Tensor` goes to `tensors.safetensors` under its name, in its own dtype (float64 for the
similarity results), on the CPU; every other field goes to `cfg.json` under `"fields"`, read back by its annotation
(lists become tuples for `tuple[...]` fields, objects become dataclasses). A field needing another conversion
overrides `_encode_field` / `_decode_field`; `_check()` validates tensor shapes against the other fields on save
and load. Every result carries one `Provenance` (library version, models, hooks, settings, UTC date).

**Kinds.** Each `Artifact` subclass registers under its class name (or `class X(Artifact, kind="name")`), so
`tl_tensorsim.load(dir)` returns the stored type unasked; `Type.load(dir)` also checks the kind. `cfg.json` records
`kind`, `format_version` (`MAJOR.MINOR`), `tl_tensorsim_version`, `provenance`, `tensors` (name -> dtype, shape) and
`fields`. A newer major format is refused; keys this version does not know (a newer minor) are warned about.

**Files.** Writes are atomic (a temporary sibling folder renamed into place) and follow the umask (0755 / 0644
under umask 022) so colleagues can read shared results. Every load error names the folder and what is wrong.
`save_artifact` / `load_artifact` write and read any tensors + JSON pair (network and model weights use them);
settings dataclasses subclass `DictConfig` for `to_dict()` / `from_dict(d)`, their JSON-ready form.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import shutil
import stat
import types
import typing
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

TENSORS_FILE = "tensors.safetensors"
CONFIG_FILE = "cfg.json"
FORMAT_VERSION = "1.0"  # MAJOR.MINOR of the cfg.json layout: a new major cannot be read by older versions
RESERVED_KEYS = ("kind", "format_version", "tl_tensorsim_version")
T = TypeVar("T", bound="Artifact")
C = TypeVar("C", bound="DictConfig")


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
    `format_version` and the library version) to `directory`.

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
    meta = {**config, "kind": kind, "format_version": FORMAT_VERSION, "tl_tensorsim_version": library_version()}
    text = json.dumps(meta, indent=2, sort_keys=True, default=json_default)  # fails before anything is written
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
    try:
        tensors = load_file(str(directory / TENSORS_FILE))
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) for damaged files
        raise ValueError(
            f"directory: {directory}: {TENSORS_FILE} cannot be read ({e}); the file is truncated or damaged, "
            "save the result again"
        ) from None
    return tensors, config


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


# ------------------------------------------------------------------------------------------- declared results
@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a result came from: `library_version`, `models` and `hooks` (names, in order, each once), the
    `settings` that produced it (JSON-ready: dtypes and paths become strings) and the `date` (UTC, ISO 8601).
    Stored as a JSON object in `cfg.json`."""

    library_version: str = dataclasses.field(default_factory=library_version)
    models: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    date: str = dataclasses.field(default_factory=utc_now)

    def __post_init__(self) -> None:
        for name in ("models", "hooks"):
            value = getattr(self, name)
            names = (value,) if isinstance(value, str) else tuple(str(v) for v in value if v is not None)
            object.__setattr__(self, name, tuple(dict.fromkeys(names)))
        settings = json.loads(json.dumps(dict(self.settings), default=_describe))
        object.__setattr__(self, "settings", settings)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_KINDS: dict[str, type[Artifact]] = {}


def load(directory: str | os.PathLike) -> Artifact:
    """The result saved in `directory`, as the type that saved it (`HeadSimilarity`, `TensorSimilarityMatrix`,
    `Circuit`, ...): `tl_tensorsim.load(dir)`. Errors name the folder (see `load_artifact`)."""
    tensors, config = load_artifact(directory)
    kind = config.get("kind")
    # Importing any tl_tensorsim module runs the package's __init__, which imports every analysis, so every
    # shipped kind is registered by now; a kind from a user's own module needs that module imported.
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(
            f"directory: {directory} holds a result of unknown kind {kind!r}; known kinds: {sorted(_KINDS)}; "
            "import the module that defines it, or upgrade tl_tensorsim"
        )
    return _KINDS[kind]._from_stored(Path(directory), tensors, config)


def _from_json(value: Any, tp: Any) -> Any:
    """`value` read from JSON, shaped by the annotation `tp`: lists to tuples, objects to dataclasses."""
    if value is None or tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            o = typing.get_origin(arg) or arg
            mapping = o is dict or dataclasses.is_dataclass(o)
            if arg is not type(None) and (
                (o in (list, tuple)) == isinstance(value, list) and mapping == isinstance(value, dict)
            ):
                return _from_json(value, arg)
        return value
    if isinstance(value, dict) and dataclasses.is_dataclass(tp):
        return tp.from_dict(value) if hasattr(tp, "from_dict") else tp(**value)
    if isinstance(value, list) and (origin or tp) in (list, tuple):
        if (origin or tp) is list:
            return [_from_json(v, args[0] if args else Any) for v in value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(v, args[0]) for v in value)
        if len(args) == len(value):
            return tuple(_from_json(v, a) for v, a in zip(value, args))
        return tuple(value)
    if isinstance(value, dict) and origin is dict and len(args) == 2:
        return {k: _from_json(v, args[1]) for k, v in value.items()}
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: read those fields as plain JSON
        return {}


class Artifact:
    """Base of result dataclasses: `save(dir)`, `Type.load(dir)` and `tl_tensorsim.load(dir)`, derived from the
    dataclass fields (tensors -> `tensors.safetensors`, the rest -> `cfg.json`; see the module docstring)."""

    _kind: ClassVar[str] = "Artifact"

    def __init_subclass__(cls, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = kind or cls.__name__
        old = _KINDS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(
                f"kind: {name!r} is already registered by {old.__module__}.{old.__qualname__}; "
                f"declare {cls.__qualname__} under another name: class {cls.__name__}(..., kind='...')"
            )
        cls._kind = name
        _KINDS[name] = cls

    def _check(self) -> None:
        """Validate tensor shapes against the other fields (a `ValueError` naming the field); run on save/load."""

    def _encode_field(self, name: str, value: Any) -> Any:
        """What field `name` stores: a tensor (to safetensors) or a JSON-ready value."""
        return value

    @classmethod
    def _decode_field(cls, name: str, value: Any) -> Any:
        """Field `name` back from what `_encode_field` stored (a tensor, or a value read from JSON)."""
        return value if isinstance(value, Tensor) else _from_json(value, _field_types(cls).get(name, Any))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write this result to `directory` (replaced atomically); returns the folder."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__}: an Artifact must be a dataclass (decorate it with @dataclass)")
        self._check()
        tensors, fields = {}, {}
        for f in dataclasses.fields(self):
            value = self._encode_field(f.name, getattr(self, f.name))
            if isinstance(value, Tensor):
                tensors[f.name] = value
            elif f.name != "provenance":
                try:
                    json.dumps(value, default=json_default)
                except (TypeError, ValueError) as e:
                    msg = f"{f.name}: {e}; store tensors or JSON-ready values (or override _encode_field)"
                    raise TypeError(msg) from None
                fields[f.name] = value
        provenance = getattr(self, "provenance", None) or Provenance()
        config = {"provenance": provenance, "tensors": _listing(tensors), "fields": fields}
        return save_artifact(directory, tensors, config, kind=self._kind)

    @classmethod
    def load(cls: type[T], directory: str | os.PathLike) -> T:
        """The result saved in `directory`; a `ValueError` when it holds another kind."""
        if cls is Artifact:
            return load(directory)  # type: ignore[return-value]
        tensors, config = load_artifact(directory, kind=cls._kind)
        return cls._from_stored(Path(directory), tensors, config)

    @classmethod
    def _from_stored(cls: type[T], directory: Path, tensors: dict[str, Tensor], config: dict[str, Any]) -> T:
        where = f"directory: {directory}"
        declared = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "provenance"}  # type: ignore
        fields, provenance = _unpack(where, config, tensors)
        extra = sorted((set(fields) | set(tensors)) - set(declared)) + _unknown(config, provenance)
        if extra:
            warnings.warn(
                f"{where}: {CONFIG_FILE} (format {config.get('format_version', '0.0')}, tl_tensorsim "
                f"{config.get('tl_tensorsim_version', '?')}) has keys {extra} that this tl_tensorsim "
                f"{library_version()} does not know; ignored",
                UserWarning,
                stacklevel=3,
            )
        stored = {**fields, **tensors}
        missing = [n for n, f in declared.items() if n not in stored and _required(f)]
        if missing:
            raise ValueError(
                f"{where}: {cls._kind} field(s) {missing} missing from {CONFIG_FILE} and {TENSORS_FILE}; expected "
                f"fields {sorted(declared)}; the files were edited or written by another tool, save the result again"
            )
        try:
            kwargs = {n: cls._decode_field(n, stored[n]) for n in declared if n in stored}
            if any(f.name == "provenance" for f in dataclasses.fields(cls)):  # type: ignore[arg-type]
                kwargs["provenance"] = Provenance.from_dict(provenance)
            obj = cls(**kwargs)
            obj._check()
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError) as e:
            raise ValueError(f"{where} holds an invalid {cls._kind}: {e}; save the result again") from None
        return obj


def _listing(tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
    return {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)} for k, v in tensors.items()}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _unknown(config: Mapping[str, Any], provenance: Mapping[str, Any]) -> list[str]:
    """Top-level and provenance keys this version does not know (a newer minor format)."""
    if "fields" not in config:
        return []
    top = set(config) - {*RESERVED_KEYS, "provenance", "tensors", "fields"}
    prov = set(provenance) - {f.name for f in dataclasses.fields(Provenance)}
    return sorted(top) + [f"provenance.{k}" for k in sorted(prov)]


def _unpack(where: str, config: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[dict, dict]:
    """`(fields, provenance)` of a stored result, after checking the tensors file against the listing."""
    if "fields" not in config:  # written before format 1.0: fields at the top level, no provenance
        fields = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
        return fields, {"library_version": str(config.get("tl_tensorsim_version", "unknown")), "date": "unknown"}
    fields, listing, provenance = config["fields"], config.get("tensors", {}), config.get("provenance", {})
    if not all(isinstance(x, dict) for x in (fields, listing, provenance)):
        raise ValueError(f"{where}: {CONFIG_FILE}: 'fields', 'tensors' and 'provenance' must be JSON objects")
    got = _listing(tensors)
    for name, entry in listing.items():
        if name not in got:
            raise ValueError(f"{where}: {TENSORS_FILE} lacks tensor {name!r}, which {CONFIG_FILE} lists; save again")
        if entry != got[name]:
            raise ValueError(
                f"{where}: {name}: {CONFIG_FILE} records {entry}; {TENSORS_FILE} holds {got[name]}; "
                "the two files do not belong together, save the result again"
            )
    return fields, provenance


def expect_shape(name: str, value: Any, shape: tuple[int, ...], meaning: str = "") -> None:
    """A `ValueError` naming `name` unless `value` is a tensor of exactly `shape` (for `Artifact._check`)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {list(shape)}; got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        why = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name}: expected shape {list(shape)}{why}; got {list(value.shape)}")


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
