"""The models `tl-tensorsim train NAME` trains, found the way the demos are: every module of `tl_tensorsim.models`
(`pkgutil.iter_modules`) that defines

    DESCRIPTION: str                     # one line for `tl-tensorsim train --list`
    CONFIG: type[DictConfig]             # its settings; the defaults train the shipped (or the paper's) model
    SHIPPED: Path | None                 # the folder of its shipped weights; None: nothing is shipped
    def train(config, *, progress, checkpoint_dir, checkpoint_every, resume) -> tl_tensorsim.training.TrainingRun
    def save(run, directory) -> Path     # the trained model, as `load(directory)` reads it
    def load(directory, **kwargs)        # the model in eval mode
    def load_default(path=None, **kwargs)   # `load(model_folder(NAME, path))`
    def check_shipped(config)            # optional: a ValueError when `config`'s model may not overwrite SHIPPED

Adding a model needs no change here. Retraining never writes inside the installed package: `train_and_save` writes
to the folder the user names (`out/model/` and `out/checkpoints/`), by default `default_out(NAME)` under the user
cache (`$TL_TENSORSIM_CACHE`, else `$XDG_CACHE_HOME/tl_tensorsim`, else `~/.cache/tl_tensorsim`). The shipped
weights change only with `write_shipped=True` (`tl-tensorsim train NAME --write-shipped`, for developers).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import typing
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType, UnionType
from typing import Any

from tl_tensorsim.artifacts import CONFIG_FILE, load_artifact, register_loader, save_artifact
from tl_tensorsim.model_io import load_tl_state_dict, tl_state_dict

_REQUIRED = ("DESCRIPTION", "CONFIG", "SHIPPED", "train", "save", "load", "load_default")
MODEL_FOLDER = "model"
CHECKPOINT_FOLDER = "checkpoints"
CHECKPOINT_EVERY = 1000  # default steps between resumable checkpoints


def _name(module: ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[-1]


def available() -> list[ModuleType]:
    """Every trainable model module in `tl_tensorsim.models`, sorted by name."""
    package = importlib.import_module(__name__.rsplit(".", 1)[0])
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "registry":
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if all(hasattr(module, attr) for attr in _REQUIRED):
            found.append(module)
    return sorted(found, key=_name)


def loader_for(kind: str) -> Any:
    """The `load` of the model module whose `KIND` is `kind`, or None: how `tl_tensorsim.load` (and `tl-tensorsim
    fit-ndm MODEL`) read a saved model."""
    return next((m.load for m in available() if getattr(m, "KIND", None) == kind), None)


register_loader(loader_for)


def get(name: str) -> ModuleType:
    """The model module called `name` (its file name without `.py`)."""
    models = {_name(m): m for m in available()}
    if name not in models:
        raise ValueError(f"name: unknown model {name!r}; expected one of {sorted(models)}")
    return models[name]


def cache_root() -> Path:
    """`$TL_TENSORSIM_CACHE`, else `$XDG_CACHE_HOME/tl_tensorsim`, else `~/.cache/tl_tensorsim` (read at each call)."""
    if os.environ.get("TL_TENSORSIM_CACHE"):
        return Path(os.environ["TL_TENSORSIM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tl_tensorsim"


def default_out(name: str) -> Path:
    """Where `tl-tensorsim train NAME` writes without `--out`: `cache_root() / NAME`."""
    return cache_root() / name


def make_config(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """`CONFIG` of model `name` with `overrides` (field -> value; strings are parsed as JSON where they parse,
    so "3e-3", "true", "null" and "[0.9, 0.98]" work from the command line)."""
    module = get(name)
    values = {k: _parse(v) for k, v in (overrides or {}).items()}
    hints = typing.get_type_hints(module.CONFIG)
    for key, value in values.items():
        if key in hints and not _fits(value, hints[key]):
            raise ValueError(
                f"config: {key}: expected {_describe(hints[key])} (the default is {getattr(module.CONFIG(), key)!r}); "
                f"got {value!r}"
            )
    return module.CONFIG.from_dict({**module.CONFIG().to_dict(), **values})


def _parse(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


_SCALARS = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _fits(value: Any, tp: Any) -> bool:
    """Whether an override fits a config field's annotation: scalars by type (bool is not an int, an int is a
    float), unions and Optional by any member, Literal by membership, tuples and lists as JSON lists; anything else
    is left to the config's own checks."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if tp in _SCALARS:
        return isinstance(value, _SCALARS[tp]) and (tp is bool or not isinstance(value, bool))
    if tp in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[float, float]: that many, each fitting
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)  # list[int], tuple[int, ...]
    return True


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if tp in (tuple, list) or origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
        return f"a list of values, each {_describe(args[0])}" if args else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def train_and_save(
    name: str,
    config: Any = None,
    out: str | os.PathLike | None = None,
    *,
    checkpoint_every: int | None = CHECKPOINT_EVERY,
    resume: bool = False,
    progress: bool = True,
    write_shipped: bool = False,
) -> Path:
    """Train model `name` (`config`, default `CONFIG()`) with checkpoints in `out/checkpoints/` and save it to
    `out/model/` (`out` defaults to `default_out(name)`); with `write_shipped`, also overwrite the shipped weights
    in the package. Returns the folder the model was saved to (`out/model`)."""
    module = get(name)
    if write_shipped and module.SHIPPED is None:
        raise ValueError(f"write_shipped: model {name!r} ships no weights; nothing to overwrite")
    out = Path(out) if out is not None else default_out(name)
    config = config if config is not None else module.CONFIG()
    if write_shipped and hasattr(module, "check_shipped"):  # a model whose shipped folder holds one config only
        module.check_shipped(config)  # refused before any training, not after it
    run = module.train(
        config,
        progress=progress,
        checkpoint_dir=out / CHECKPOINT_FOLDER,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    path = module.save(run, out / MODEL_FOLDER)
    if write_shipped:
        module.save(run, module.SHIPPED)
    if progress:
        print(
            f"{run!r}\nsaved {name} to {path}"
            + (f" and to the shipped weights {module.SHIPPED}" if write_shipped else "")
        )
    return Path(path)


def model_folder(name: str, path: str | os.PathLike | None = None) -> Path:
    """The saved-model folder `load_default(path)` of model `name` reads.

    `path`: a folder written by `tl-tensorsim train NAME --out DIR` (its `model/` is used) or a folder `save`
    wrote. None: the shipped weights; where the model ships none (or they are missing), `default_out(name)/model`,
    trained there once with the default config (resuming an interrupted run) if it is not there yet.
    """
    if path is not None:
        path = Path(path)
        for folder in (path / MODEL_FOLDER, path):
            if (folder / CONFIG_FILE).is_file():
                return folder
        raise FileNotFoundError(
            f"path: {path} holds no saved {name} model ({MODEL_FOLDER}/{CONFIG_FILE} or {CONFIG_FILE} expected); "
            f"train one with `tl-tensorsim train {name} --out {path}`, or pass path=None for the default"
        )
    module = get(name)
    if module.SHIPPED is not None and (Path(module.SHIPPED) / CONFIG_FILE).is_file():
        return Path(module.SHIPPED)
    cached = default_out(name) / MODEL_FOLDER
    if not (cached / CONFIG_FILE).is_file():
        train_and_save(name, resume=True)
    return cached


# ---------------------------------------------------------------------------------- TransformerLens models
def save_transformer(
    run: Any, directory: str | os.PathLike, kind: str, training: Mapping[str, Any], **meta: Any
) -> Path:
    """A trained TransformerLens model of the registry through `save_artifact`: `tensors.safetensors` (TransformerLens
    weight names, the same whichever model class trained it) and `cfg.json` (`meta`, `run.config.to_dict()` and a
    training summary: steps, seconds, `training`, the torch and TransformerLens versions)."""
    from importlib.metadata import version

    import torch

    record = {
        **meta,
        "config": run.config.to_dict(),
        "training": {
            "steps": run.config.steps,
            "seconds": round(run.seconds, 1),
            **training,
            "torch": torch.__version__,
            "transformer_lens": version("transformer_lens"),
        },
    }
    return save_artifact(directory, tl_state_dict(run.model), record, kind=kind)


def load_transformer(directory: str | os.PathLike, kind: str, config_cls: Any, build: Any, **build_kwargs: Any):
    """`(model, config, meta)` from a folder `save_transformer` wrote: the config read back as `config_cls`, the
    model made by `build(config, **build_kwargs)`, the weights loaded, eval mode."""
    tensors, meta = load_artifact(directory, kind=kind)
    config = config_cls.from_dict(meta["config"])
    model = build(config, **build_kwargs)
    load_tl_state_dict(model, tensors)
    return model.eval(), config, meta
