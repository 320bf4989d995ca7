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
`save_artifact` / `load_artifact` (in `artifact_files`, re-exported here) write and read any tensors + JSON pair
(network and model weights use them);
settings dataclasses subclass `DictConfig` for `to_dict()` / `from_dict(d)`, their JSON-ready form.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from tl_tensorsim.artifact_files import (  # noqa: F401  (the files half, re-exported: one save mechanism)
    CONFIG_FILE,
    FORMAT_VERSION,
    RESERVED_KEYS,
    TENSORS_FILE,
    _describe,
    json_default,
    library_version,
    load_artifact,
    read_config,
    save_artifact,
    utc_now,
)

T = TypeVar("T", bound="Artifact")
C = TypeVar("C", bound="DictConfig")


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


# Where `load` looks for a saved kind that is no `Artifact` (a model): functions kind -> its `load(directory)` or
# None, registered by the layers above (`register_loader`), so that this module imports none of them.
_FINDERS: list[Callable[[str], Callable[[str | os.PathLike], Any] | None]] = []


def register_loader(find: Callable[[str], Callable[[str | os.PathLike], Any] | None]) -> None:
    """Let `load` read saved objects that are not `Artifact`s: `find(kind)` returns the `load(directory)` for a
    kind it knows, else None (`models.tensor_network`, `models.registry` and `training_files` register theirs)."""
    if find not in _FINDERS:
        _FINDERS.append(find)


def load(directory: str | os.PathLike) -> Any:
    """The result saved in `directory`, as the type that saved it (`HeadSimilarity`, `TensorSimilarityMatrix`,
    `Circuit`, ...): `tl_tensorsim.load(dir)`. Errors name the folder (see `load_artifact`).

    A saved model comes back as its own loader returns it: a `HookedTensorNetwork` (`net.save(dir)`) as
    `HookedTensorNetwork.load(dir)`, a trained model of `tl_tensorsim.models` as that module's `load(dir)`."""
    kind = read_config(directory).get("kind")  # the config alone: a model's own loader reads its tensors
    # Importing any tl_tensorsim module runs the package's __init__, which imports every analysis, so every
    # shipped kind is registered by now; a kind from a user's own module needs that module imported.
    if isinstance(kind, str) and kind in _KINDS:
        tensors, config = load_artifact(directory)
        return _KINDS[kind]._from_stored(Path(directory), tensors, config)
    for find in _FINDERS if isinstance(kind, str) else ():
        loader = find(kind)
        if loader is not None:
            return loader(directory)
    raise ValueError(
        f"directory: {directory} holds a result of unknown kind {kind!r}; known kinds: {sorted(_KINDS)}; "
        "import the module that defines it, or upgrade tl_tensorsim"
    )


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


def save_figure(fig: Any, path: str | os.PathLike | None, dpi: int = 110) -> Any:
    """Write a matplotlib figure to `path` (PNG or any suffix matplotlib knows; parent folders created) when a path
    is given, and return the figure: the one way results write their plots."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


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
