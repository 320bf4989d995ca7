"""Metrics of the circuit tasks, per prompt, from the logits `[batch, pos, d_vocab]`.

- IOI (Wang et al. 2022): `logit_diff` = logit[END, IO] − logit[END, S];
- greater-than (Hanna et al. 2023): `greater_than_prob_diff` = Σ_{y > YY} p(y) − Σ_{y ≤ YY} p(y) over the two-digit
  year tokens at END (in [−1, 1]);
- induction: `induction_logit`, the mean logit of the correct next token over the query positions (and
  `induction_accuracy`, the top-1 rate);
- `normalised_score` = (patched − corrupted) / (clean − corrupted): 1 on the clean run, 0 on the corrupted one.

`task_metric(prompts)` picks the task's metric for a `PromptSet` (a `TaskMetric`: `logits -> [batch]`). Metrics are
computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.checks import check_choice

from .datasets.base import PromptSet

MetricName = Literal["logit_diff", "prob_diff", "induction_logit", "induction_accuracy"]
TASK_METRIC = {"ioi": "logit_diff", "greater_than": "prob_diff", "induction": "induction_logit"}

__all__ = [
    "CleanCorrupted",
    "MetricName",
    "TaskMetric",
    "greater_than_prob_diff",
    "induction_accuracy",
    "induction_logit",
    "logit_diff",
    "normalised_score",
    "task_metric",
]


class CleanCorrupted:
    """Mixin for patching results holding per-prompt metrics `clean`, `corrupted` `[batch]`: their means."""

    clean: Tensor
    corrupted: Tensor

    @property
    def clean_mean(self) -> float:
        return float(self.clean.mean())

    @property
    def corrupted_mean(self) -> float:
        return float(self.corrupted.mean())


def _check_logits(logits: Tensor, batch: int) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 3 or logits.shape[0] != batch:
        got = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected [batch={batch}, pos, d_vocab]; got {got}")


def _at(logits: Tensor, end: Tensor) -> Tensor:
    """`logits[b, end[b]]` `[batch, d_vocab]` in float64."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, end.to(logits.device)].double()


def logit_diff(
    logits: Float[Tensor, "batch pos vocab"],
    end: Int[Tensor, " batch"],
    io: Int[Tensor, " batch"],
    s: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """logit[b, end[b], io[b]] − logit[b, end[b], s[b]] (float64)."""
    _check_logits(logits, len(end))
    at = _at(logits, end)
    return at.gather(1, io.to(at.device)[:, None])[:, 0] - at.gather(1, s.to(at.device)[:, None])[:, 0]


def greater_than_prob_diff(
    logits: Float[Tensor, "batch pos vocab"],
    end: Int[Tensor, " batch"],
    yy: Int[Tensor, " batch"],
    year_ids: Int[Tensor, "100"],
) -> Float[Tensor, " batch"]:
    """Σ_{y > YY} p(y) − Σ_{y ≤ YY} p(y), p the softmax over the whole vocabulary at END, y over the tokens
    "00".."99" (`year_ids`); float64, in [−1, 1]."""
    _check_logits(logits, len(end))
    year_ids = torch.as_tensor(year_ids, dtype=torch.long)
    if year_ids.shape != (100,):
        raise ValueError(f"year_ids: expected the 100 ids of '00'..'99'; got shape {list(year_ids.shape)}")
    probs = _at(logits, end).softmax(-1)[:, year_ids.to(logits.device)]  # [batch, 100]
    greater = torch.arange(100, device=probs.device)[None, :] > yy.to(probs.device)[:, None]
    return (probs * greater).sum(-1) - (probs * ~greater).sum(-1)


def _query_logits(logits: Tensor, queries: Tensor, nxt: Tensor) -> Tensor:
    _check_logits(logits, queries.shape[0])
    lq = logits.gather(1, queries.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1])).double()
    return lq, nxt.to(logits.device)


def induction_logit(
    logits: Float[Tensor, "batch pos vocab"], queries: Int[Tensor, "batch k"], nxt: Int[Tensor, "batch k"]
) -> Float[Tensor, " batch"]:
    """The logit of the correct next token `nxt` at each query position, averaged over the k queries (float64)."""
    lq, nxt = _query_logits(logits, queries, nxt)
    return lq.gather(2, nxt[..., None])[..., 0].mean(-1)


def induction_accuracy(
    logits: Float[Tensor, "batch pos vocab"], queries: Int[Tensor, "batch k"], nxt: Int[Tensor, "batch k"]
) -> Float[Tensor, " batch"]:
    """The fraction of query positions whose top-1 prediction is `nxt` (float64)."""
    lq, nxt = _query_logits(logits, queries, nxt)
    return (lq.argmax(-1) == nxt).double().mean(-1)


def normalised_score(patched: Tensor | float, clean: Tensor | float, corrupted: Tensor | float) -> Tensor | float:
    """(patched − corrupted) / (clean − corrupted): 1 means the patched run behaves as the clean one, 0 as the
    corrupted one (ARENA's IOI noising metric). A `ValueError` when clean == corrupted (nothing to normalise by)."""
    gap = clean - corrupted
    if (torch.as_tensor(gap) == 0).any():
        raise ValueError(f"clean, corrupted: the clean and corrupted metrics are equal ({clean}); nothing to normalise")
    return (patched - corrupted) / gap


class TaskMetric:
    """A task's metric for one `PromptSet`: `metric(logits)` from the full logits `[batch, pos, d_vocab]`, or
    `metric.at(logits_at)` from the logits at the positions it reads only (`read` `[batch, k]`: END for IOI and
    greater-than, the queries for induction), which lets a caller skip the unembedding elsewhere."""

    def __init__(self, name: str, read: Tensor, fn: Callable[[Tensor], Tensor]):
        self.name, self.read, self._fn = name, read, fn

    def at(self, logits_at: Float[Tensor, "batch k vocab"]) -> Float[Tensor, " batch"]:
        _check_logits(logits_at, self.read.shape[0])
        if logits_at.shape[1] != self.read.shape[1]:
            raise ValueError(f"logits_at: expected {self.read.shape[1]} read positions; got {logits_at.shape[1]}")
        return self._fn(logits_at)

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        _check_logits(logits, self.read.shape[0])
        read = self.read.to(logits.device)
        return self._fn(logits.gather(1, read[..., None].expand(-1, -1, logits.shape[-1])))

    def __repr__(self) -> str:
        return f"TaskMetric({self.name!r}, read={list(self.read.shape)})"


def task_metric(prompts: PromptSet, metric: MetricName | None = None) -> TaskMetric:
    """The metric `logits -> [batch]` (float64) for `prompts` (a `PromptSet`): its task's (IOI `logit_diff`,
    greater-than `prob_diff`, induction `induction_logit`) or the named one."""
    if not isinstance(prompts, PromptSet):
        raise TypeError(f"prompts: expected a PromptSet (circuits.datasets); got {type(prompts).__name__}")
    name = metric if metric is not None else TASK_METRIC.get(prompts.task)
    check_choice(name, MetricName, "metric")
    pos, ans = prompts.positions, prompts.answers
    first = torch.zeros(len(prompts), dtype=torch.long)
    if name == "logit_diff":
        if "IO" not in ans:
            raise ValueError(f"metric: 'logit_diff' needs IOI prompts (answers IO, S); got task {prompts.task!r}")
        return TaskMetric(name, pos["END"][:, None], lambda la: logit_diff(la, first, ans["IO"], ans["S"]))
    if name == "prob_diff":
        if "YY" not in ans:
            raise ValueError(f"metric: 'prob_diff' needs greater-than prompts; got task {prompts.task!r}")
        year_ids = torch.tensor(prompts.meta["year_ids"])
        return TaskMetric(name, pos["END"][:, None], lambda la: greater_than_prob_diff(la, first, ans["YY"], year_ids))
    if "next" not in ans:
        raise ValueError(f"metric: {name!r} needs induction prompts; got task {prompts.task!r}")
    fn = induction_logit if name == "induction_logit" else induction_accuracy
    local = torch.arange(pos["queries"].shape[1]).expand(len(prompts), -1)
    return TaskMetric(name, pos["queries"], lambda la: fn(la, local, ans["next"]))
