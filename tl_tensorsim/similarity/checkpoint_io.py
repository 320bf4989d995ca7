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

State dicts and files (either naming convention: TransformerLens names or a native bridge's own) are read through
the adapter with the config of the `model=` given (only read, never modified) or of a model built from a config:
`ModelView.with_weights` opens a file lazily, so only the tensors the metric needs are read from disk (the heads'
`W_Q`/`W_K` or `W_V`/`W_O`; `W_E`, `W_U`, `W_pos` only at the token level), with no model to load them into.
(A bridge over a Hugging Face model still loads each state dict into one private copy.) Memory holds one
checkpoint's needed tensors at a time. Every file is checked (it exists, its header reads) before anything loads,
and every error names the checkpoint (and file).
"""

from __future__ import annotations

import numbers
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from tl_tensorsim.adapter import ModelView, model_kind
from tl_tensorsim.model_io import load_pretrained
from tl_tensorsim.weight_files import CHECKPOINT_SUFFIXES, check_checkpoint_file, read_state_dict

DEFAULT_STORE_BUDGET = 2 << 30  # bytes of per-checkpoint summaries kept in memory before spilling to disk
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
        try:  # TransformerLens 2.x / 3.x
            from transformer_lens.loading_from_pretrained import get_checkpoint_labels, get_official_model_name
        except ImportError:  # 4.x moved both
            from transformer_lens.supported_models import get_official_model_name
            from transformer_lens.tools.model_registry.checkpoints import get_checkpoint_labels

        official = get_official_model_name(name)
        if not official.startswith(("EleutherAI/pythia", "stanford-crfm/")):  # others list files on the hub
            return list(indices)
        labels, _ = get_checkpoint_labels(official)
        return [int(labels[i]) for i in indices]
    except Exception:  # an unknown name, or another TransformerLens layout: index order is still correct
        return list(indices)


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


def _template_view(model: Any) -> ModelView:
    """The model whose config and class read the state dicts: `model` itself (only read, never written), or one
    built from a config."""
    if model is None:
        raise ValueError(
            "model: state dicts and state-dict files need a model (or config) to read them with; got None "
            "(hint: model=the run's model or its config; the model is not modified)"
        )
    if isinstance(model, ModelView) or model_kind(model) is not None:
        return model if isinstance(model, ModelView) else ModelView(model)
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
    checkpoints: Any,
    checkpoint_indices: Sequence[int] | None,
    model: Any,
    pretrained_kwargs: dict | None,
    runnable: bool = False,
) -> tuple[list[Callable[[], Any]], list[Any] | None]:
    """(loaders, default steps): one zero-argument loader per checkpoint, called in order. Every argument and
    file is checked first. `runnable=True`: state dicts and files are loaded into a private copy of the template
    (the metric runs the model), else read lazily as weights-only views. A loaded model is referenced only while its summary is taken (TransformerLens models
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
        _template_view(None)  # raises the error naming `model`
    template: list[ModelView] = []

    def load_into(state: Mapping[str, Tensor] | Path, i: int, where: str) -> ModelView:
        """Checkpoint `i` as a view: read lazily with the template's config (files: only the tensors the analysis
        looks up), or loaded into a private copy (a metric that runs the model; a bridge over a Hugging Face
        model)."""
        if not template:
            template.append(_template_view(model))
        view = template[0]
        try:
            if view.takes_tl_weights and not runnable:
                return view.with_weights(state, f"checkpoints[{i}]{where}")
            if not isinstance(state, Mapping):
                state = read_state_dict(state, f"checkpoints[{i}]")
            if len(template) == 1:
                template.append(view.copy())
            return template[1].load_state_dict(state)
        except (ValueError, TypeError) as e:
            raise ValueError(f"checkpoints[{i}]{where}: state dict does not fit the model given as `model`: {e}") from e

    loaders: list[Callable[[], Any]] = []
    for i, (item, kind) in enumerate(zip(items, kinds, strict=True)):
        if kind == "file":
            loaders.append(lambda p=item, i=i: load_into(Path(p), i, f" ({p})"))
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
