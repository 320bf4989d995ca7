"""The files of a training run (`training.train_loop`): `checkpoint_dir/resume/step_N` (model, optimizer,
scheduler, generators and history, kind `TrainingCheckpoint`) and `checkpoint_dir/states/step_N` (a kept model
state, kind `TrainingState`), written with `artifacts.save_artifact`; optimizer state dicts are stored as JSON with
their tensors beside them (`_encode` / `_decode`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from tl_tensorsim.artifacts import load_artifact, register_loader

CHECKPOINT_KIND = "TrainingCheckpoint"
STATE_KIND = "TrainingState"


def _refuse(kind: str) -> Any:
    """For `tl_tensorsim.load`: a checkpoint folder is one step of a run, read with `training.load_run`."""
    if kind not in (CHECKPOINT_KIND, STATE_KIND):
        return None

    def refuse(directory: Any) -> Any:
        raise ValueError(
            f"directory: {directory} holds a {kind!r}, which tl_tensorsim.load does not read; read it with "
            "tl_tensorsim.training.load_run(run_folder, model) (it is one step of a training run)"
        )

    return refuse


register_loader(_refuse)


def _folder(step: int) -> str:
    return f"step_{step:08d}"


def _latest_step(directory: Path) -> int | None:
    steps = [int(p.name[5:]) for p in (directory / "resume").glob("step_*") if p.name[5:].isdigit()]
    return max(steps, default=None)


def _latest(directory: Path) -> tuple[int | None, dict[str, Tensor], dict[str, Any]]:
    """The newest resume checkpoint in `directory`: (step, tensors, meta), or (None, {}, {}) when there is none."""
    step = _latest_step(directory)
    if step is None:
        return None, {}, {}
    tensors, meta = load_artifact(directory / "resume" / _folder(step), kind=CHECKPOINT_KIND)
    return step, tensors, meta


def _kept(directory: Path, steps: list[int]) -> list[tuple[int, dict[str, Tensor]]]:
    return [(s, load_artifact(directory / "states" / _folder(s), kind=STATE_KIND)[0]) for s in steps]


def _take(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    """A JSON-ready copy of a state dict (nested dicts, lists, tuples, numbers, strings, None, tensors): each
    tensor moves into `tensors` under `path` and becomes `{"tensor": path}`; dicts keep their key types."""
    if isinstance(obj, Tensor):
        tensors[path] = obj.detach().to("cpu", copy=True)
        return {"tensor": path}
    if isinstance(obj, dict):
        return {"dict": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {"tuple": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"state dict value at {path}: expected tensors, numbers, strings or None; got {type(obj).__name__}")


def _decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """The inverse of `_encode`."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "tensor" in obj:
            return tensors[obj["tensor"]]
        if "tuple" in obj:
            return tuple(_decode(v, tensors) for v in obj["tuple"])
        return {k: _decode(v, tensors) for k, v in obj["dict"]}
    return obj
