"""Checkpoint sources for `checkpoint_similarity`, loaded one at a time, and the store of per-checkpoint summaries.

A source is a TransformerLens model name with checkpoint indices (Pythia and stanford-crfm GPT-2 runs, via
`HookedTransformer.from_pretrained(name, checkpoint_index=i)`, or `TransformerBridge.boot_transformers` on
TransformerLens 4), or a sequence whose items are models, `ModelView`s, state dicts, state-dict files
(`.safetensors`, `.pt`/`.pth`) or zero-argument callables returning a model. State dicts are loaded into one
template model (given, or built from a config), so memory holds one model at a time.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from tl_tensorsim.adapter import ModelView

DEFAULT_STORE_BUDGET = 2 << 30  # bytes of per-checkpoint summaries kept in memory before spilling to disk


def load_pretrained_checkpoint(name: str, index: int, **kwargs: Any) -> Any:
    """One training checkpoint of a TransformerLens model: `HookedTransformer.from_pretrained(name,
    checkpoint_index=index, **kwargs)` (default weight processing unless `kwargs` say otherwise), or on
    TransformerLens 4 (no HookedTransformer) `TransformerBridge.boot_transformers(name, checkpoint_index=index)`."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:  # TransformerLens 4 removed HookedTransformer
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(name, checkpoint_index=index, **kwargs)
    return HookedTransformer.from_pretrained(name, checkpoint_index=index, **kwargs)


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


def _build_template(model: Any) -> Any:
    """A model to load state dicts into: the model itself, or one built from a config / dict of config fields."""
    if model is None:
        raise ValueError("model: state dicts and state-dict files need a model (or config) to load them into")
    if isinstance(model, ModelView):
        return model.model
    if hasattr(model, "state_dict") and hasattr(model, "cfg"):
        return model
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:  # TransformerLens 4: native bridge
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        cfg = TransformerBridgeConfig(**model) if isinstance(model, Mapping) else model
        return TransformerBridge.boot_native(cfg)
    cfg = HookedTransformerConfig(**model) if isinstance(model, Mapping) else model
    with warnings.catch_warnings():  # TransformerLens 3.x deprecation notice; the class is what the user asked for
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoints: no state-dict file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_checkpoints(
    checkpoints: Any, checkpoint_indices: Sequence[int] | None, model: Any, pretrained_kwargs: dict | None
) -> tuple[list[Callable[[], Any]], list[int] | None]:
    """(loaders, default steps): one zero-argument loader per checkpoint, called in order. A loaded model is
    referenced only while its summary is taken (TransformerLens models hold no reference cycles), so it is
    freed before the next one loads."""
    if isinstance(checkpoints, str):
        if not checkpoint_indices:
            raise ValueError("checkpoint_indices: a model name needs a list of checkpoint indices")
        kw = dict(pretrained_kwargs or {})
        loaders = [lambda i=int(i): load_pretrained_checkpoint(checkpoints, i, **kw) for i in checkpoint_indices]
        return loaders, checkpoint_steps(checkpoints, checkpoint_indices)
    if checkpoint_indices is not None:
        raise ValueError("checkpoint_indices: only used with a model name (str) as checkpoints")
    if not isinstance(checkpoints, Sequence) or len(checkpoints) == 0:
        raise ValueError(
            f"checkpoints: expected a model name or a non-empty sequence; got {type(checkpoints).__name__}"
        )
    template: list[Any] = []

    def load_into(state: Mapping[str, Tensor]) -> Any:
        if not template:
            template.append(_build_template(model))
        try:
            template[0].load_state_dict(dict(state), strict=True)
        except RuntimeError as e:
            raise ValueError(f"checkpoints: state dict does not fit the model given as `model`: {e}") from e
        return template[0]

    loaders = []
    for i, item in enumerate(checkpoints):
        if isinstance(item, (str, os.PathLike)):
            loaders.append(lambda p=item: load_into(read_state_dict(p)))
        elif isinstance(item, Mapping):
            loaders.append(lambda sd=item: load_into(sd))
        elif callable(item) and not hasattr(item, "cfg"):
            loaders.append(item)
        elif isinstance(item, ModelView) or hasattr(item, "cfg"):
            loaders.append(lambda m=item: m)
        else:
            raise TypeError(
                f"checkpoints[{i}]: expected a model, ModelView, state dict, state-dict file or callable; "
                f"got {type(item).__name__}"
            )
    return loaders, None


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
        self.bytes = 0

    def plan(self, first: dict[str, Tensor], n_checkpoints: int) -> None:
        """Choose memory or disk from the first summary's size."""
        size = sum(t.numel() * t.element_size() for t in first.values())
        if self.mode == "auto":
            self.mode = "disk" if size * n_checkpoints > self.budget else "memory"
        if self.mode == "disk":
            self._dir = tempfile.TemporaryDirectory(prefix="tl_tensorsim_ckpt_")

    def add(self, summary: dict[str, Tensor]) -> None:
        summary = {k: v.detach().to("cpu").contiguous().clone() for k, v in summary.items()}
        self.bytes += sum(t.numel() * t.element_size() for t in summary.values())
        if self._dir is None:
            self._memory.append(summary)
        else:
            path = os.path.join(self._dir.name, f"{len(self._files)}.safetensors")
            save_file(summary, path)
            self._files.append(path)

    def __len__(self) -> int:
        return len(self._memory) + len(self._files)

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
