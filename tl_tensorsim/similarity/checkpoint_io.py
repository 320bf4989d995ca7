"""Checkpoint sources for `checkpoint_similarity`, loaded one at a time, and the store of per-checkpoint summaries.

A source is one of:

- a TransformerLens model name with checkpoint indices (Pythia and stanford-crfm GPT-2 runs, via the adapter's
  `load_pretrained`: `HookedTransformer.from_pretrained(name, checkpoint_index=i)`, or
  `TransformerBridge.boot_transformers` on TransformerLens 4);
- a folder (a path to a directory) of state-dict files (`.safetensors`, `.pt`, `.pth`), in the order of the step
  number in their names (which then labels them);
- a training run with `.checkpoints` (`(step, state_dict)` pairs, as `models.induction.TrainingRun`) and `.model`;
- a sequence whose items are models, `ModelView`s, state dicts, state-dict files or zero-argument callables
  returning a model, or `(step, item)` pairs of those (the steps label the checkpoints).

State dicts (either naming convention: TransformerLens names or a bridge's own) are loaded through the adapter
into one private template: a deep copy of the `model=` given (never the user's model itself), or a model built
from a config, so memory holds one checkpoint at a time. Every file is checked (it exists, its header reads)
before anything loads, and every error names the checkpoint (and file).
"""

from __future__ import annotations

import copy
import numbers
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from tl_tensorsim.adapter import ModelView, model_kind
from tl_tensorsim.model_io import load_pretrained

DEFAULT_STORE_BUDGET = 2 << 30  # bytes of per-checkpoint summaries kept in memory before spilling to disk
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
ACCEPTED_ITEMS = (
    "a HookedTransformer / TransformerBridge, a ModelView, a state dict, a state-dict file (.safetensors, .pt, "
    ".pth), a zero-argument callable returning a model, or a (step, one of these) pair"
)
_CONFIG_CLASSES = ("HookedTransformerConfig", "TransformerBridgeConfig")


def load_pretrained_checkpoint(name: str, index: int, **kwargs: Any) -> Any:
    """One training checkpoint of a TransformerLens model: `HookedTransformer.from_pretrained(name,
    checkpoint_index=index, **kwargs)` (default weight processing unless `kwargs` say otherwise), or on
    TransformerLens 4 (no HookedTransformer) `TransformerBridge.boot_transformers(name, checkpoint_index=index)`."""
    return load_pretrained(name, index, **kwargs)


def checkpoint_steps(name: str, indices: Sequence[int]) -> list[int]:
    """Training steps of checkpoint `indices` of a Pythia / stanford-crfm run (TransformerLens' label table, no
    download); the indices themselves when the table is unavailable."""
    try:
        from transformer_lens.loading_from_pretrained import get_checkpoint_labels, get_official_model_name

        official = get_official_model_name(name)
        if not official.startswith(("EleutherAI/pythia", "stanford-crfm/")):  # others list files on the hub
            return list(indices)
        labels, _ = get_checkpoint_labels(official)
        return [int(labels[i]) for i in indices]
    except Exception:  # TransformerLens 4 layout, or an unknown name: index order is still correct
        return list(indices)


# ---------------------------------------------------------------------------------------------- files
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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{argument}: cannot load {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"{argument}: {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def checkpoint_folder(folder: str | os.PathLike) -> tuple[list[Path], list[int] | None]:
    """The checkpoint files in `folder` (not recursive) and their steps: with a number in every file name, in the
    order of the last number in each name (the steps); otherwise in name order, without steps."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
    if not files:
        raise ValueError(
            f"checkpoints: the folder {folder} has no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}); "
            f"it holds {sorted(p.name for p in folder.iterdir())[:5]}"
        )
    numbers_ = [re.findall(r"\d+", p.stem) for p in files]
    steps = [int(n[-1]) for n in numbers_] if all(numbers_) else None
    if steps is None or len(set(steps)) != len(steps):
        return sorted(files, key=lambda p: p.name), None
    order = sorted(range(len(files)), key=steps.__getitem__)
    return [files[i] for i in order], [steps[i] for i in order]


# ---------------------------------------------------------------------------------------------- sources
def _is_step(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _split_pairs(items: Sequence[Any]) -> tuple[list[Any], list[Any] | None]:
    """`(step, item)` pairs -> (items, steps); plain items -> (items, None)."""
    is_pair = [isinstance(x, tuple) and len(x) == 2 and _is_step(x[0]) for x in items]
    if not any(is_pair):
        return list(items), None
    if not all(is_pair):
        i = is_pair.index(False)
        raise ValueError(
            f"checkpoints[{i}]: expected a (step, checkpoint) pair like the other items; got {type(items[i]).__name__} "
            "(give every item a step, or none)"
        )
    return [x[1] for x in items], [x[0] for x in items]


def _check_template_source(model: Any) -> None:
    if model is None or isinstance(model, (ModelView, Mapping)) or model_kind(model) is not None:
        return
    if type(model).__name__ in _CONFIG_CLASSES:
        return
    raise TypeError(
        "model: expected a HookedTransformer / TransformerBridge, a ModelView (copied, never modified), a "
        "HookedTransformerConfig / TransformerBridgeConfig or a dict of config fields; got "
        f"{type(model).__module__}.{type(model).__name__}"
    )


def _make_template(model: Any) -> ModelView:
    """A private model to load state dicts into: a deep copy of `model`, or one built from a config."""
    if model is None:
        raise ValueError(
            "model: state dicts and state-dict files need a model (or config) to load them into; got None "
            "(hint: model=the run's model or its config; the model is copied, not modified)"
        )
    if isinstance(model, ModelView) or model_kind(model) is not None:
        return ModelView(copy.deepcopy(model.model if isinstance(model, ModelView) else model))
    return ModelView.build(model)


def _check_item(item: Any, i: int) -> str:
    """What kind of checkpoint `item` is ("file", "state", "model", "callable"); files are checked here."""
    if isinstance(item, (str, os.PathLike)):
        check_checkpoint_file(item, f"checkpoints[{i}]")
        return "file"
    if isinstance(item, Mapping):
        return "state"
    if isinstance(item, ModelView) or model_kind(item) is not None:
        return "model"
    if callable(item) and not isinstance(item, torch.nn.Module):
        return "callable"
    raise TypeError(f"checkpoints[{i}]: expected {ACCEPTED_ITEMS}; got {type(item).__module__}.{type(item).__name__}")


def resolve_checkpoints(
    checkpoints: Any, checkpoint_indices: Sequence[int] | None, model: Any, pretrained_kwargs: dict | None
) -> tuple[list[Callable[[], Any]], list[Any] | None]:
    """(loaders, default steps): one zero-argument loader per checkpoint, called in order. Every argument and
    file is checked first. A loaded model is referenced only while its summary is taken (TransformerLens models
    hold no reference cycles), so it is freed before the next one loads."""
    _check_template_source(model)
    if hasattr(checkpoints, "checkpoints") and not isinstance(checkpoints, (str, os.PathLike, Sequence)):
        if model is None and getattr(checkpoints, "model", None) is not None:  # a training run: its model is
            model = checkpoints.model  # the template (copied)
            _check_template_source(model)
        checkpoints = list(checkpoints.checkpoints)
    folder_steps = None
    if isinstance(checkpoints, (str, os.PathLike)) and Path(checkpoints).is_dir():
        if checkpoint_indices is not None:
            raise ValueError("checkpoint_indices: only used with a model name; got a folder of checkpoint files")
        checkpoints, folder_steps = checkpoint_folder(checkpoints)
    elif isinstance(checkpoints, str):
        if not checkpoint_indices:
            raise ValueError(
                f"checkpoint_indices: a model name needs a list of checkpoint indices; got {checkpoint_indices!r} "
                f"(hint: {checkpoints!r} is not a folder either)"
            )
        kw = dict(pretrained_kwargs or {})
        loaders = [lambda i=int(i): load_pretrained_checkpoint(checkpoints, i, **kw) for i in checkpoint_indices]
        return loaders, checkpoint_steps(checkpoints, checkpoint_indices)
    if checkpoint_indices is not None:
        raise ValueError("checkpoint_indices: only used with a model name (str) as checkpoints")
    if isinstance(checkpoints, os.PathLike) or not isinstance(checkpoints, Sequence) or len(checkpoints) == 0:
        raise ValueError(
            "checkpoints: expected a model name, a folder of checkpoint files, a training run or a non-empty "
            f"sequence; got {checkpoints!r}"[:300]
        )
    items, pair_steps = _split_pairs(checkpoints)
    kinds = [_check_item(item, i) for i, item in enumerate(items)]
    if {"file", "state"} & set(kinds) and model is None:
        _make_template(None)  # raises the error naming `model`
    template: list[ModelView] = []

    def load_into(state: Mapping[str, Tensor], i: int, where: str) -> ModelView:
        if not template:
            template.append(_make_template(model))
        try:
            return template[0].load_state_dict(state)
        except (ValueError, TypeError) as e:
            raise ValueError(f"checkpoints[{i}]{where}: state dict does not fit the model given as `model`: {e}") from e

    loaders: list[Callable[[], Any]] = []
    for i, (item, kind) in enumerate(zip(items, kinds, strict=True)):
        if kind == "file":
            arg = f"checkpoints[{i}]"
            loaders.append(lambda p=item, i=i, a=arg: load_into(read_state_dict(p, a), i, f" ({p})"))
        elif kind == "state":
            loaders.append(lambda sd=item, i=i: load_into(sd, i, ""))
        elif kind == "callable":
            loaders.append(item)
        else:
            loaders.append(lambda m=item: m)
    return loaders, pair_steps if pair_steps is not None else folder_steps


class SummaryStore:
    """Per-checkpoint dicts of tensors, in memory or (past `budget` bytes, or `mode="disk"`) as safetensors files
    in a temporary folder, read back whole or by rows of the leading (head) axis."""

    def __init__(self, mode: str = "auto", budget: float = DEFAULT_STORE_BUDGET):
        if mode not in ("auto", "memory", "disk"):
            raise ValueError(f"store: expected 'auto', 'memory' or 'disk'; got {mode!r}")
        self.mode, self.budget = mode, budget
        self._memory: list[dict[str, Tensor]] = []
        self._dir: tempfile.TemporaryDirectory | None = None
        self._files: list[str] = []

    def plan(self, first: dict[str, Tensor], n_checkpoints: int) -> None:
        """Choose memory or disk from the first summary's size."""
        size = sum(t.numel() * t.element_size() for t in first.values())
        if self.mode == "auto":
            self.mode = "disk" if size * n_checkpoints > self.budget else "memory"
        if self.mode == "disk":
            self._dir = tempfile.TemporaryDirectory(prefix="tl_tensorsim_ckpt_")

    def add(self, summary: dict[str, Tensor]) -> None:
        summary = {k: v.detach().to("cpu").contiguous().clone() for k, v in summary.items()}
        if self._dir is None:
            self._memory.append(summary)
        else:
            path = os.path.join(self._dir.name, f"{len(self._files)}.safetensors")
            save_file(summary, path)
            self._files.append(path)

    def get(self, t: int, rows: slice | None = None) -> dict[str, Tensor]:
        if self._dir is None:
            return {k: (v if rows is None else v[rows]) for k, v in self._memory[t].items()}
        with safe_open(self._files[t], framework="pt") as f:
            return {k: (f.get_tensor(k) if rows is None else f.get_slice(k)[rows]) for k in f.keys()}

    def close(self) -> None:
        self._memory.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
