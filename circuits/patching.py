"""Subspace patching: interchange one subspace of an activation with its value in a corrupted run, for every
subspace of a partition (the NDM paper's validation protocol, arXiv 2508.01916 §4; `shared/papers/ndm.md` §2.1).

For subspace s with orthonormal basis B_s `[d, d_s]` (P_s = B_s B_sᵀ), at the test's positions of the test's hook:

    x_patched = x_clean + P_s (x_corrupted − x_clean)      (elsewhere x_patched = x_clean)

and the rest of the model runs on the clean prompt. The whole space (P = I, i.e. x_corrupted at those positions) is
the reference. Batched: the clean and corrupted activations are cached once per chunk of prompts (runs stopped after
the patched block, `run_with_cache(stop_at_layer=)`); then k subspaces at a time are evaluated in one forward pass
over the batch repeated k times, with the patched activation put in at the hook (`ModelView.forward_between`), so a
partition of S subspaces costs ⌈(S + 1) / k⌉ passes per chunk instead of S + 1 hooked runs. The pass stops at
`unembed.hook_in` and only the positions the metric reads are unembedded (for GPT-2: one position of 50,257 logits
per prompt instead of all of them). Cost per chunk of b prompts: 2 partial + ⌈(S + 1) b / batch_size⌉ forward
passes, plus O(S b pos d d_s) for the projections.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.adapter import as_view
from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure
from tl_tensorsim.checks import checked_int
from tl_tensorsim.ndm import SubspacePartition

from .datasets.base import PromptSet
from .gini import gini
from .metrics import TASK_METRIC, CleanCorrupted, MetricName, normalised_score, task_metric

__all__ = ["PatchingTest", "SubspacePatching", "subspace_patching"]


@dataclass(frozen=True)
class PatchingTest:
    """One subspace-patching test: prompts, the corruption to patch from, the hook and positions, the metric.

    `positions`: names in `prompts.positions` (e.g. `("IO+1", "S1+1")`); `metric`: a `metrics.MetricName` (default:
    the task's). Example (the paper's test 1): `PatchingTest("t1", "blocks.4.hook_resid_post", ioi, "swap",
    ("IO+1", "S1+1"))`.
    """

    name: str
    hook_name: str
    prompts: PromptSet
    corruption: str
    positions: tuple[str, ...]
    metric: MetricName | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, PromptSet):
            raise TypeError(f"prompts: expected a PromptSet (circuits.datasets); got {type(self.prompts).__name__}")
        object.__setattr__(
            self, "positions", (self.positions,) if isinstance(self.positions, str) else tuple(self.positions)
        )
        self.prompts.corruption(self.corruption)  # ValueError naming the corruptions there are
        self.prompts.mask(self.positions)  # ValueError naming the positions there are
        task_metric(self.prompts, self.metric)  # ValueError for a metric the task cannot compute

    @property
    def metric_name(self) -> str:
        return self.metric or TASK_METRIC[self.prompts.task]


@dataclass(repr=False)
class SubspacePatching(Artifact, CleanCorrupted):
    """Per-subspace patching results of one test (float64).

    `per_prompt` `[S + 1, batch]`: the metric on each prompt with subspace s interchanged (row S: the whole space);
    `clean`, `corrupted` `[batch]`: the metric on the unpatched runs; `sizes`: the subspace widths; `method`: the
    partition's (`ndm`, `identity`, `random`, `pca_ascending`, `pca_descending`, `official`, ...); `variances`
    (optional `[S]`): each subspace's activation variance, for the per-variance Gini.
    `effects` = mean clean − mean patched (the paper's "drop"), `whole_effect` the same for the whole space;
    `scores` = the normalised patching score (patched − corrupted) / (clean − corrupted) of the means.
    """

    test: str
    hook_name: str
    method: str
    metric: str
    corruption: str
    positions: tuple[str, ...]
    sizes: tuple[int, ...]
    per_prompt: Tensor
    clean: Tensor
    corrupted: Tensor
    variances: Tensor | None = None
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        n = self.clean.shape[0]
        expect_shape("per_prompt", self.per_prompt, (len(self.sizes) + 1, n), "[n_subspaces + 1, batch]")
        expect_shape("corrupted", self.corrupted, (n,), "[batch]")
        if self.variances is not None:
            expect_shape("variances", self.variances, (len(self.sizes),), "[n_subspaces]")

    # ------------------------------------------------------------------------------------ numbers
    @property
    def n_subspaces(self) -> int:
        return len(self.sizes)

    @property
    def patched(self) -> Float[Tensor, " S"]:
        return self.per_prompt[:-1].mean(1)

    @property
    def whole(self) -> float:
        return float(self.per_prompt[-1].mean())

    @property
    def effects(self) -> Float[Tensor, " S"]:
        """Drop of the mean metric when subspace s is interchanged: mean clean − mean patched `[S]`."""
        return self.clean_mean - self.patched

    @property
    def whole_effect(self) -> float:
        return self.clean_mean - self.whole

    @property
    def scores(self) -> Float[Tensor, " S"]:
        """Normalised patching score of each subspace's mean: (patched − corrupted) / (clean − corrupted)."""
        return normalised_score(self.patched, self.clean_mean, self.corrupted_mean)

    @property
    def best(self) -> int:
        """The subspace with the largest |effect|."""
        return int(self.effects.abs().argmax())

    def gini(self, normalize: str | None = None) -> float:
        """The paper's Gini of |effects| (`normalize=None`, `"dim"` or `"var"`; see `circuits.gini`)."""
        var = self.variances.tolist() if self.variances is not None else None
        return gini(self.effects, sizes=self.sizes, variances=var, normalize=normalize)

    def __repr__(self) -> str:
        return (
            f"SubspacePatching(test={self.test!r}, method={self.method!r}, hook={self.hook_name!r}, "
            f"sizes={list(self.sizes)}, clean={self.clean_mean:.4g}, corrupted={self.corrupted_mean:.4g}, "
            f"whole effect={self.whole_effect:.4g}, best=s{self.best} ({float(self.effects[self.best]):.4g}), "
            f"gini={self.gini():.3f})"
        )

    # ------------------------------------------------------------------------------------ views
    def to_dataframe(self) -> Any:
        """One row per subspace and one for the whole space: size, mean patched metric, effect (drop), share of the
        whole space's effect, normalised score."""
        import pandas as pd

        whole = self.whole_effect
        rows = []
        for s in range(self.n_subspaces):
            e = float(self.effects[s])
            rows.append({"subspace": f"s{s}", "size": self.sizes[s], "patched": float(self.patched[s]), "effect": e,
                         "share of whole": e / whole if whole else math.nan})  # fmt: skip
        rows.append({"subspace": "whole", "size": sum(self.sizes), "patched": self.whole, "effect": whole,
                     "share of whole": 1.0 if whole else math.nan})  # fmt: skip
        df = pd.DataFrame(rows)
        gap = self.clean_mean - self.corrupted_mean
        df["normalised score"] = (df["patched"] - self.corrupted_mean) / gap if gap else math.nan
        return df

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None, label: str | None = None) -> Any:
        """Bar plot of the per-subspace effects, the whole space's as a dashed line; saved to `path` when given;
        returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * self.n_subspaces + 2), 3))
        else:
            fig = ax.figure
        ax.bar(range(self.n_subspaces), self.effects.numpy(), color="C0", label=label or self.method)
        ax.axhline(self.whole_effect, color="k", ls="--", lw=0.8, label="whole space")
        ax.set_xticks(range(self.n_subspaces), [f"s{i}\n{d}" for i, d in enumerate(self.sizes)], fontsize=7)
        ax.set_xlabel("subspace (width)")
        ax.set_ylabel(f"drop in {self.metric}")
        ax.set_title(f"{self.test}: {self.hook_name} at {'+'.join(self.positions)} ({self.method})", fontsize=9)
        ax.legend(fontsize=7)
        return save_figure(fig, path)


def _bases(partition: SubspacePartition, dtype: torch.dtype, device: torch.device, whole: bool) -> list[Tensor]:
    out = [partition.basis(i, dtype=dtype, device=device) for i in range(partition.n_subspaces)]
    if whole:
        out.append(torch.eye(partition.d, dtype=dtype, device=device))
    return out


def patched_activation(
    x: Float[Tensor, "batch pos d"], source: Float[Tensor, "batch pos d"], mask: Tensor, basis: Float[Tensor, "d k"]
) -> Float[Tensor, "batch pos d"]:
    """`x + (source − x) B Bᵀ` at the positions where `mask` `[batch, pos]` is True, `x` elsewhere (the formula of
    `hooks.interchange`; a full basis gives `source` exactly)."""
    new = source if basis.shape[1] == basis.shape[0] else x + ((source - x) @ basis) @ basis.T
    return torch.where(mask[..., None], new, x)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the activation it needs has been captured."""


class _Unembed:
    """The metric of a forward pass started from an activation, with the unembedding computed only at the positions
    the metric reads: the run is stopped at `unembed.hook_in` (the final normalised residual stream) and those rows
    are multiplied by `W_U` (+ `b_U`), which equals the model's logits there (checked in the tests on both model
    classes). Models whose logits are not `h W_U + b_U` (a logit soft cap) or without that hook point take the full
    forward pass (`ModelView.run_from`)."""

    HOOK = "unembed.hook_in"

    def __init__(self, view: Any):
        self.view = view
        cap = view.config_value("output_logits_soft_cap", None)
        self.fast = self.HOOK in view.model.hook_dict and not (cap is not None and float(cap) > 0)
        if self.fast:
            self.W_U = view.W_U
            self.b_U = view.weight("b_U") if view.has_weight("b_U") else None

    def final_residual(self, hook: str, acts: Tensor, tokens: Tensor) -> Tensor:
        captured: list[Tensor] = []

        def grab(h: Tensor, hook: Any = None) -> None:
            captured.append(h)
            raise _Stop

        f = self.view.forward_between(hook, self.HOOK, tokens)
        try:
            with self.view.model.hooks(fwd_hooks=[(self.HOOK, grab)]):
                f(acts)
        except _Stop:
            pass
        if len(captured) != 1:
            raise RuntimeError(f"{self.HOOK!r} fired {len(captured)} times in one forward pass; expected once")
        return captured[0]

    def metric(self, metric: Any, hook: str, acts: Tensor, tokens: Tensor, repeats: int = 1) -> Tensor:
        """`metric` on the run from `acts` at `hook` (`repeats` copies of the prompt chunk stacked on the batch)."""
        read = metric.read.to(acts.device).repeat(repeats, 1)
        if not self.fast:
            logits = self.view.run_from(hook, acts, tokens)
            logits_at = logits.gather(1, read[..., None].expand(-1, -1, logits.shape[-1]))
        else:
            h = self.final_residual(hook, acts, tokens)
            h_at = h.gather(1, read[..., None].expand(-1, -1, h.shape[-1]))
            logits_at = h_at @ self.W_U.to(h_at.dtype) + (0 if self.b_U is None else self.b_U.to(h_at.dtype))
        n = metric.read.shape[0]
        return torch.cat([metric.at(part) for part in logits_at.split(n)])


def subspace_patching(
    model: Any,
    partition: SubspacePartition,
    test: PatchingTest,
    *,
    batch_size: int = 128,
    variances: Sequence[float] | Tensor | None = None,
    progress: bool = False,
) -> SubspacePatching:
    """Interchange each subspace of `partition` (and the whole space) from the corrupted run at `test`'s hook and
    positions; the metric on every prompt. See the module docstring for the equation and the cost.

    Args:
        model: a HookedTransformer, TransformerBridge or `ModelView`.
        partition: a `SubspacePartition` of the hook's `d` (NDM, a baseline, or the released matrices).
        test: a `PatchingTest`.
        batch_size: rows per forward pass (prompts x subspaces evaluated together); also the prompt chunk size.
        variances: per-subspace activation variances `[S]`, stored for `gini(normalize="var")`.
    Returns a `SubspacePatching` (float64 metrics, on the CPU).
    """
    from tqdm.auto import tqdm

    view = as_view(model)
    if not isinstance(partition, SubspacePartition):
        raise TypeError(f"partition: expected a SubspacePartition; got {type(partition).__name__}")
    if not isinstance(test, PatchingTest):
        raise TypeError(f"test: expected a PatchingTest; got {type(test).__name__}")
    hook = view.check_hook_name(test.hook_name, "test.hook_name")
    if view.feature_shape(hook) != (partition.d,):
        raise ValueError(
            f"partition: has d={partition.d} but {hook!r} has features {list(view.feature_shape(hook))}; fit or load "
            "the partition at this hook"
        )
    batch_size = checked_int(batch_size, "batch_size", 1, "a positive number of rows per forward pass")
    if variances is not None:
        variances = torch.as_tensor(variances, dtype=torch.float64).cpu()
        expect_shape("variances", variances, (partition.n_subspaces,), "one per subspace")
    prompts = test.prompts
    n = len(prompts)
    mask_all = prompts.mask(test.positions)
    corrupt_all = prompts.corruption(test.corruption)
    bases = _bases(partition, view.dtype, view.device, whole=True)
    per_prompt = torch.empty(len(bases), n, dtype=torch.float64)
    clean_m, corrupt_m = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    chunks = [(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]
    bar = tqdm(total=len(chunks) * len(bases), desc=f"patching {test.name}", disable=not progress, leave=False)
    stop = view.hook_layer(hook)
    stop = None if stop is None else stop + 1
    unembed = _Unembed(view)
    with torch.no_grad():
        for a, b in chunks:
            sub = prompts.subset(slice(a, b), trim=False)
            metric = task_metric(sub, test.metric)
            tokens, corrupt = sub.clean.to(view.device), corrupt_all[a:b].to(view.device)
            mask = mask_all[a:b].to(view.device)
            x = view.run_with_cache(tokens, names=[hook], stop_at_layer=stop)[1][hook]
            src = view.run_with_cache(corrupt, names=[hook], stop_at_layer=stop)[1][hook]
            clean_m[a:b] = unembed.metric(metric, hook, x, tokens).cpu()
            corrupt_m[a:b] = unembed.metric(metric, hook, src, corrupt).cpu()
            k = max(1, batch_size // (b - a))
            for g in range(0, len(bases), k):
                group = bases[g : g + k]
                acts = torch.cat([patched_activation(x, src, mask, basis) for basis in group])
                values = unembed.metric(metric, hook, acts, tokens.repeat(len(group), 1), repeats=len(group))
                per_prompt[g : g + len(group), a:b] = values.view(len(group), b - a).cpu()
                bar.update(len(group))
    bar.close()
    return SubspacePatching(
        test=test.name,
        hook_name=hook,
        method=partition.method,
        metric=test.metric_name,
        corruption=test.corruption,
        positions=test.positions,
        sizes=partition.sizes,
        per_prompt=per_prompt,
        clean=clean_m,
        corrupted=corrupt_m,
        variances=variances,
        provenance=Provenance(
            models=(view.cfg.model_name,),
            hooks=(hook,),
            settings={"n_prompts": n, "batch_size": batch_size, "task": prompts.task, "description": test.description},
        ),
    )
