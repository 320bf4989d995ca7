"""Path patching (Wang et al. 2022, arXiv 2211.00593 §3.1; Goldowsky-Dill et al. 2023): the effect of one attention
head (the sender) on the metric through one set of paths only, to find which heads form a circuit.

For a sender head h and receivers R, on clean prompts x and their corruption x':

1. run x with every head's output `hook_z` frozen to its clean value, except h's, which takes its value on x'
   (MLP outputs frozen too, where the model has MLPs), and record the receivers' inputs;
2. for `receivers="logits"` the metric of that run is the answer (h's direct effect on the logits: nothing but h
   changed in the residual stream); otherwise run x again with only the receivers' inputs (`attn.hook_q`, `hook_k` or
   `hook_v` of the receiver heads, at the named positions) replaced by the values recorded in step 1. Only the
   receivers strictly above h's layer are patched: h can reach no other (their recorded inputs equal the clean
   ones), so receivers spread over several layers are each tested with every head below them.

`PathPatching.effects` = mean patched − mean clean metric per sender `[layer, head]`, and `relative` the same divided
by (mean clean − mean corrupted): −1 when the paths carry the whole difference between the runs. Cost: per prompt
chunk, 2 forward passes plus 1 (logits) or 2 (head inputs) per sender.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.adapter import as_view
from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure
from tl_tensorsim.checks import checked_int

from .datasets.base import PromptSet
from .metrics import CleanCorrupted, MetricName, task_metric

HeadInput = Literal["q", "k", "v"]
INPUTS: tuple[str, ...] = ("q", "k", "v")

__all__ = ["IOI_CLASS_NAMES", "HeadInput", "PathPatching", "Receiver", "discover_circuit", "path_patching"]


@dataclass(frozen=True)
class Receiver:
    """One receiver of path patching: input `input` (`"q"`, `"k"` or `"v"`) of head `head` in block `layer`, at the
    prompt positions `position` (a name in `PromptSet.positions`, e.g. `"END"`; None: every position)."""

    layer: int
    head: int
    input: HeadInput
    position: str | None = None

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.attn.hook_{self.input}"

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}.{self.input}" + (f"@{self.position}" if self.position else "")


@dataclass(repr=False)
class PathPatching(Artifact, CleanCorrupted):
    """Path-patching results (float64): `per_prompt` `[n_layers, n_heads, batch]` the metric with sender (layer,
    head) patched along the paths to `receivers` (NaN for heads that were not senders, or not below any receiver),
    `clean` / `corrupted` `[batch]` the unpatched metrics."""

    receivers: tuple[str, ...]
    metric: str
    corruption: str
    per_prompt: Tensor
    clean: Tensor
    corrupted: Tensor
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        if self.per_prompt.ndim != 3:
            raise ValueError(f"per_prompt: expected [n_layers, n_heads, batch]; got {list(self.per_prompt.shape)}")
        n = self.per_prompt.shape[-1]
        expect_shape("clean", self.clean, (n,), "[batch]")
        expect_shape("corrupted", self.corrupted, (n,), "[batch]")

    @property
    def effects(self) -> Float[Tensor, "layer head"]:
        """Mean patched − mean clean metric per sender `[n_layers, n_heads]` (NaN where not a sender)."""
        return self.per_prompt.mean(-1) - self.clean_mean

    @property
    def relative(self) -> Float[Tensor, "layer head"]:
        """`effects / (mean clean − mean corrupted)`: −1 when the sender's paths carry the whole clean-corrupted gap."""
        gap = self.clean_mean - self.corrupted_mean
        return self.effects / gap if gap else torch.full_like(self.effects, math.nan)

    def heads(self, threshold: float = 0.1, sign: int = -1) -> list[tuple[int, int]]:
        """Senders whose `relative` effect is at least `threshold` in the direction `sign` (−1: patching them lowers
        the metric, the circuit's positive heads; +1: raises it, e.g. negative name movers), strongest first."""
        if sign not in (-1, 1):
            raise ValueError(f"sign: expected -1 or +1; got {sign!r}")
        rel = torch.nan_to_num(self.relative * sign, nan=-math.inf)
        found = [(int(i), int(j)) for i, j in (rel >= threshold).nonzero().tolist()]
        return sorted(found, key=lambda h: -float(rel[h]))

    def __repr__(self) -> str:
        rel = torch.nan_to_num(self.relative, nan=0.0)
        i = int(rel.abs().argmax())
        layer, head = divmod(i, rel.shape[1])
        return (
            f"PathPatching(receivers={list(self.receivers)}, metric={self.metric!r}, corruption={self.corruption!r}, "
            f"clean={self.clean_mean:.4g}, corrupted={self.corrupted_mean:.4g}, strongest=L{layer}H{head} "
            f"({float(rel[layer, head]):+.3f})"
        )

    def to_dataframe(self) -> Any:
        """One row per sender: layer, head, effect, relative effect."""
        import pandas as pd

        eff, rel = self.effects, self.relative
        rows = [
            {"sender": f"L{i}H{j}", "layer": i, "head": j, "effect": float(eff[i, j]), "relative": float(rel[i, j])}
            for i in range(eff.shape[0])
            for j in range(eff.shape[1])
            if not math.isnan(float(eff[i, j]))
        ]
        return pd.DataFrame(rows)

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None, title: str | None = None) -> Any:
        """Heat map of the relative effects `[layer, head]` (blue: the metric falls when the sender is patched);
        saved to `path` when given; returns the figure."""
        import matplotlib.pyplot as plt

        rel = self.relative.numpy()
        if ax is None:
            fig, ax = plt.subplots(figsize=(1.0 + 0.45 * rel.shape[1], 0.8 + 0.4 * rel.shape[0]))
        else:
            fig = ax.figure
        lim = max(1e-9, float(abs(torch.nan_to_num(self.relative)).max()))
        im = ax.imshow(rel, cmap="RdBu", vmin=-lim, vmax=lim)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(rel.shape[1]))
        ax.set_yticks(range(rel.shape[0]))
        ax.set_title(title or f"path patching -> {', '.join(self.receivers)}", fontsize=8)
        fig.colorbar(im, ax=ax, label="relative effect")
        return save_figure(fig, path)


def _receivers(receivers: Any, view: Any, prompts: PromptSet) -> list[Receiver] | None:
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(f"receivers: expected 'logits' or a list of Receiver; got {receivers!r}")
        return None
    out = list(receivers)
    if not out or not all(isinstance(r, Receiver) for r in out):
        raise TypeError("receivers: expected 'logits' or a non-empty list of circuits.path_patching.Receiver")
    for r in out:
        if r.input not in INPUTS:
            raise ValueError(f"receivers: input of {r.label!r}: expected one of {INPUTS}; got {r.input!r}")
        if not 0 <= r.layer < view.cfg.n_layers or not 0 <= r.head < view.cfg.n_heads:
            raise ValueError(
                f"receivers: {r.label!r} is outside the model ({view.cfg.n_layers} layers x {view.cfg.n_heads} heads)"
            )
        if r.position is not None and r.position not in prompts.positions:
            raise ValueError(
                f"receivers: position {r.position!r} of {r.label!r}; expected one of {list(prompts.positions)}"
            )
    return out


def path_patching(
    model: Any,
    prompts: PromptSet,
    corruption: str = "random",
    receivers: str | Sequence[Receiver] = "logits",
    *,
    senders: Sequence[tuple[int, int]] | None = None,
    metric: MetricName | None = None,
    batch_size: int = 256,
) -> PathPatching:
    """Path-patch every sender head into `receivers` (see the module docstring for the two steps).

    Args:
        model: a HookedTransformer, TransformerBridge or `ModelView` (multi-head attention with `attn.hook_z`; the
            receivers' `hook_k` / `hook_v` must have one slot per query head).
        prompts: a `PromptSet`; `corruption`: one of its corruptions (IOI: `"random"`, the ABC prompts of Wang et al.).
        receivers: `"logits"` (direct effects) or `Receiver`s, head inputs of later layers.
        senders: `(layer, head)` pairs, each below at least one receiver (default: every head below the highest
            receiver's layer; all heads for logits). A sender is patched into the receivers above its layer only.
        metric: a `metrics.MetricName` (default: the task's).
    Returns a `PathPatching` (float64, CPU). Cost: see the module docstring.
    """
    return _path_patching(model, prompts, corruption, [receivers], senders, metric, batch_size)[0]


def _path_patching(
    model: Any,
    prompts: PromptSet,
    corruption: str,
    receiver_sets: Sequence[str | Sequence[Receiver]],
    senders: Sequence[tuple[int, int]] | None,
    metric: MetricName | None,
    batch_size: int,
) -> list[PathPatching]:
    """One `PathPatching` per receiver set, sharing the clean and corrupted runs and, per sender, the frozen run
    (whose logits are the direct effect and which records the inputs of every set's receivers at once)."""
    view = as_view(model)
    if not isinstance(prompts, PromptSet):
        raise TypeError(f"prompts: expected a PromptSet (circuits.datasets); got {type(prompts).__name__}")
    prompts.corruption(corruption)
    task_metric(prompts, metric)
    sets = [_receivers(r, view, prompts) for r in receiver_sets]
    batch_size = checked_int(batch_size, "batch_size", 1, "a positive number of prompts per forward pass")
    n_layers, n_heads = view.cfg.n_layers, view.cfg.n_heads
    # a sender must lie below some receiver of some set: below the highest receiver's layer (logits: any layer)
    top = max(n_layers if recv is None else max(r.layer for r in recv) for recv in sets)
    senders = [(i, j) for i in range(top) for j in range(n_heads)] if senders is None else list(senders)
    bad = [s for s in senders if not (isinstance(s, tuple) and len(s) == 2 and 0 <= s[0] < top and 0 <= s[1] < n_heads)]
    if bad or not senders:
        raise ValueError(
            f"senders: expected (layer, head) pairs with layer < {top} (below a receiver) and head < {n_heads}; "
            f"got {bad or senders}; a head reaches only the receivers of later layers"
        )
    z_names = [view.check_hook_name(f"blocks.{i}.attn.hook_z", "model") for i in range(n_layers)]
    mlp_names = [] if view.config_value("attn_only", False) else [f"blocks.{i}.hook_mlp_out" for i in range(n_layers)]
    frozen_names = z_names + [view.check_hook_name(h, "model") for h in mlp_names]
    recv_names = sorted({r.hook_name for recv in sets for r in recv or []})
    for name in recv_names:
        view.check_hook_name(name, "receivers")
    n = len(prompts)
    per_prompt = torch.full((len(sets), n_layers, n_heads, n), math.nan, dtype=torch.float64)
    clean_m, corrupt_m = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    run = view.model.run_with_hooks
    with torch.no_grad():
        for a in range(0, n, batch_size):
            b = min(n, a + batch_size)
            sub = prompts.subset(slice(a, b), trim=False)
            score = task_metric(sub, metric)
            tokens, corrupt = sub.clean.to(view.device), prompts.corruption(corruption)[a:b].to(view.device)
            logits, clean = view.run_with_cache(tokens, names=frozen_names)
            clean_m[a:b] = score(logits).cpu()
            logits, dirty = view.run_with_cache(corrupt, names=z_names)
            corrupt_m[a:b] = score(logits).cpu()
            for layer, head in senders:
                sender = z_names[layer]
                fwd = [
                    (name, _freeze(clean[name], dirty[name] if name == sender else None, head)) for name in frozen_names
                ]
                seen: dict[str, Tensor] = {}
                direct = score(run(tokens, fwd_hooks=fwd + [(name, _record(seen, name)) for name in recv_names]))
                for k, recv in enumerate(sets):
                    if recv is None:
                        per_prompt[k, layer, head, a:b] = direct.cpu()
                        continue
                    above = [r for r in recv if r.layer > layer]  # the receivers this sender can reach
                    if above:  # else: no path from this sender to the set, left NaN
                        patch = [(r.hook_name, _patch_input(r, seen, sub)) for r in above]
                        per_prompt[k, layer, head, a:b] = score(run(tokens, fwd_hooks=patch)).cpu()
    return [
        PathPatching(
            receivers=("logits",) if recv is None else tuple(r.label for r in recv),
            metric=metric or task_metric(prompts.subset(slice(0, 1)), metric).name,
            corruption=corruption,
            per_prompt=per_prompt[k],
            clean=clean_m.clone(),
            corrupted=corrupt_m.clone(),
            provenance=Provenance(
                models=(view.cfg.model_name,),
                hooks=tuple(sorted({r.hook_name for r in recv or []})),
                settings={"n_prompts": n, "senders": [list(s) for s in senders], "task": prompts.task},
            ),
        )
        for k, recv in enumerate(sets)
    ]


def _freeze(clean: Tensor, dirty: Tensor | None, head: int):
    """Hook returning `clean` (a frozen hook point); with `dirty` (the sender's `hook_z`), head `head` from it.
    Hooks are keyed by the name they were registered under (a TransformerBridge reports its own alias)."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        out = clean.clone()
        if dirty is not None:
            out[:, :, head] = dirty[:, :, head]
        return out

    return hook


def _record(seen: dict[str, Tensor], name: str):
    def hook(act: Tensor, hook: Any) -> None:
        seen[name] = act.clone()

    return hook


def _patch_input(r: Receiver, seen: dict[str, Tensor], prompts: PromptSet):
    """Hook putting the recorded input of receiver `r` in place at its head and positions."""
    mask = None if r.position is None else prompts.mask(r.position)

    def hook(act: Tensor, hook: Any) -> Tensor:
        new = seen[r.hook_name][:, :, r.head]
        old = act[:, :, r.head]
        act = act.clone()
        act[:, :, r.head] = new if mask is None else torch.where(mask.to(act.device)[..., None], new, old)
        return act

    return hook


# Wang et al.'s IOI classes, defined by the path through which a head acts: on the logits directly (name movers,
# negative name movers), or through the name movers' queries (S-inhibition heads).
IOI_CLASS_NAMES: dict[str, str] = {
    "direct": "name mover",
    "negative direct": "negative name mover",
    "q input of name mover": "S-inhibition",
}


def discover_circuit(
    model: Any,
    prompts: PromptSet,
    corruption: str = "random",
    *,
    threshold: float = 0.1,
    depth: int = 2,
    inputs: Sequence[HeadInput] = INPUTS,
    class_names: dict[str, str] | None = None,
    batch_size: int = 256,
) -> tuple[dict[str, tuple[tuple[int, int], ...]], dict[str, PathPatching]]:
    """The heads of a circuit, class by class, by iterated path patching (Wang et al. §3).

    Level 1: `path_patching(..., "logits")`; heads whose relative effect is ≤ −threshold form class `"direct"`,
    ≥ +threshold `"negative direct"`. Level k + 1: for each input in `inputs`, path patching into that input (every
    position) of the heads of each level-k class C; every head strictly below a receiver's layer is tested as a
    sender into the receivers above it (so a layer-1 head is tested through a layer-2 member of C even when C also
    holds layer-1 heads), and the layer-0 heads of C, with nothing below them, are no receivers (a class wholly in
    layer 0 ends the search there). The heads found form class `"{input} input of {C}"`. Classes
    are renamed by `class_names` (default `IOI_CLASS_NAMES`: direct -> name mover, queries of the name movers ->
    S-inhibition); later levels use the renamed parent. Returns `(classes, results)`: `{class: ((layer, head), ...)}`
    (non-empty classes, strongest head first) and the `PathPatching` of every step keyed by its receivers' class
    and input (`"logits"`, `"q input of name mover"`, ...). Cost: per (level, class), the
    clean and corrupted runs and one frozen run per sender shared by all `inputs`, plus one patched run per input and
    sender.
    """
    names = IOI_CLASS_NAMES if class_names is None else dict(class_names)
    depth = checked_int(depth, "depth", 1, "at least 1 level")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold: expected a relative effect in (0, 1); got {threshold!r}")
    bad = [i for i in inputs if i not in INPUTS]
    if bad or not inputs:
        raise ValueError(f"inputs: expected a non-empty subset of {INPUTS}; got {list(inputs)}")
    first = path_patching(model, prompts, corruption, "logits", batch_size=batch_size)
    results = {"logits": first}
    classes: dict[str, tuple[tuple[int, int], ...]] = {}
    level = {}
    for raw, sign in (("direct", -1), ("negative direct", 1)):
        found = tuple(first.heads(threshold, sign))
        if found:
            level[names.get(raw, raw)] = found
    classes.update(level)
    for _ in range(depth - 1):
        nxt = {}
        for parent, heads in level.items():
            receivers = [h for h in heads if h[0] > 0]  # a layer-0 head has no heads below it
            if not receivers:
                continue
            sets = [[Receiver(i, j, inp) for i, j in receivers] for inp in inputs]
            for inp, res in zip(inputs, _path_patching(model, prompts, corruption, sets, None, None, batch_size)):
                raw = f"{inp} input of {parent}"
                results[raw] = res
                found = tuple(h for h in res.heads(threshold, -1) if h not in classes.get(names.get(raw, raw), ()))
                if found:
                    nxt[names.get(raw, raw)] = found
        classes.update(nxt)
        level = nxt
    return classes, results
