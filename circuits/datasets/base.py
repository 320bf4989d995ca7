"""`PromptSet`: what every circuit dataset returns, the clean prompts, their corruptions and the token positions.

All prompts of a set are right-padded to one length (`lengths` holds the real ones), so that a batch of prompts of
different template lengths runs in one forward pass; every corruption has the same positions as the clean prompt
(the datasets check this), so position `positions["END"][b]` means the same token slot in every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

__all__ = ["PromptSet"]


@dataclass
class PromptSet:
    """Clean prompts `[batch, pos]`, corrupted versions of them, and named token positions.

    Fields: `task` (`"ioi"`, `"greater_than"`, `"induction"`); `clean` `LongTensor [batch, pos]` (right-padded with
    `pad_token_id`); `corrupted` `{name: LongTensor [batch, pos]}` (same shape, same positions); `positions`
    `{name: LongTensor [batch]}` or `[batch, k]` for k positions per prompt (IOI: `IO`, `IO+1`, `S1`, `S1+1`, `S2`, `END`; greater-than: `XX1`, `YY`,
    `END`; induction: `keys`, `queries` `[batch, L - 1]`; counted with the BOS when `prepend_bos`); `answers` `{name: LongTensor [batch]}` (IOI: `IO`, `S` token
    ids; greater-than: `YY` as an int 0..99); `lengths` `[batch]`; `texts` (the clean prompts); `meta` (per-prompt
    lists such as `prompt_type`, `template`; and settings).
    """

    task: str
    clean: Int[Tensor, "batch pos"]
    corrupted: dict[str, Tensor]
    positions: dict[str, Tensor]
    answers: dict[str, Tensor]
    lengths: Int[Tensor, " batch"]
    texts: list[str]
    pad_token_id: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def __repr__(self) -> str:
        return (
            f"PromptSet(task={self.task!r}, n={len(self)}, pos={self.clean.shape[1]}, "
            f"corruptions={list(self.corrupted)}, positions={list(self.positions)})"
        )

    def mask(self, names: str | Sequence[str]) -> Bool[Tensor, "batch pos"]:
        """Bool mask `[batch, pos]`, True at the named positions of each prompt (e.g. `["IO+1", "S1+1"]`), for
        `positions=` of the subspace hooks."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.positions]
        if not names or unknown:
            raise ValueError(f"names: expected position names from {list(self.positions)}; got {names}")
        out = torch.zeros(self.clean.shape, dtype=torch.bool)
        rows = torch.arange(len(self))
        for n in names:
            p = self.positions[n]
            out[rows[:, None].expand_as(p) if p.ndim == 2 else rows, p] = True
        return out

    def corruption(self, name: str) -> Int[Tensor, "batch pos"]:
        if name not in self.corrupted:
            raise ValueError(f"corruption: expected one of {list(self.corrupted)}; got {name!r}")
        return self.corrupted[name]

    def subset(self, index: Sequence[int] | Sequence[bool] | slice | Tensor, trim: bool = True) -> PromptSet:
        """The prompts at `index` (a slice, a list of ints or a LongTensor, or a boolean mask `[batch]` such as
        `ds.lengths == 21`, selecting the prompts where it is True), trimmed to their longest length (`trim=False`:
        the set's width kept)."""
        idx = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index)
        if idx.dtype == torch.bool:
            if idx.shape != (len(self),):
                raise ValueError(
                    f"index: expected a boolean mask of shape [{len(self)}] (one entry per prompt); got shape "
                    f"{list(idx.shape)}; build it from this set, e.g. ds.lengths == 21"
                )
            idx = idx.nonzero().flatten()
        idx = idx.long()
        if idx.numel() == 0 and trim:
            raise ValueError("index: selects no prompts; expected at least one (or trim=False for an empty set)")
        width = int(self.lengths[idx].max()) if trim else self.clean.shape[1]
        return PromptSet(
            task=self.task,
            clean=self.clean[idx, :width],
            corrupted={k: v[idx, :width] for k, v in self.corrupted.items()},
            positions={k: v[idx] for k, v in self.positions.items()},
            answers={k: v[idx] for k, v in self.answers.items()},
            lengths=self.lengths[idx],
            texts=[self.texts[i] for i in idx.tolist()],
            pad_token_id=self.pad_token_id,
            meta={
                k: [v[i] for i in idx.tolist()] if isinstance(v, list) and len(v) == len(self) else v
                for k, v in self.meta.items()
            },  # fmt: skip
        )

    def to_hf_dataset(self) -> Any:
        """The prompts as a `datasets.Dataset` (one row per prompt: text, token ids, every corruption, position and
        answer), e.g. to save with `save_to_disk` or share."""
        from datasets import Dataset

        rows: dict[str, list] = {"text": self.texts}
        n = self.lengths.tolist()
        rows["clean"] = [r[:k] for r, k in zip(self.clean.tolist(), n)]
        for name, t in self.corrupted.items():
            rows[f"corrupted_{name}"] = [r[:k] for r, k in zip(t.tolist(), n)]
        for name, t in {**self.positions, **{f"answer_{k}": v for k, v in self.answers.items()}}.items():
            rows[name] = t.tolist()
        for name, v in self.meta.items():
            if isinstance(v, list) and len(v) == len(self):
                rows[name] = v
        return Dataset.from_dict(rows)
