"""What the grokking and backdoor models share: the 1-layer bilinear classifier, a run of checkpoints, and the
training loop that saves them.

Each model module keeps only its data, its loss and its metrics: it builds the network (`bilinear_classifier`),
the optimizer and the seeded generator its batches draw from, then hands `train_with_checkpoints` a
`batch_loss(step)` and an `evaluate(step, loss)`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from tl_tensorsim.tensor_networks.network import HookedTensorNetwork, TensorNetworkConfig

R = TypeVar("R", bound="CheckpointRun")
_CLASSIFIER: dict[str, Any] = {"n_layers": 1, "embed": False, "down_proj": False, "bias": False}


def bilinear_classifier(d_in: int, d_hidden: int, d_out: int, seed: int | None, name: str) -> HookedTensorNetwork:
    """Bilinear(d_in -> d_hidden) then Linear(d_hidden -> d_out): one layer, no embed, no down projection, no bias."""
    cfg = TensorNetworkConfig(d_in=d_in, d_hidden=d_hidden, d_out=d_out, seed=seed, model_name=name, **_CLASSIFIER)
    return HookedTensorNetwork(cfg)


@dataclass
class CheckpointRun:
    """Checkpoints (`steps`, cloned state dicts) of one training run; subclasses add their metric lists (one entry
    per checkpoint, filled by `train_with_checkpoints` from the names `evaluate` returns), `new_model()`, and in
    `POSTFIX` the metrics the progress bar shows: label -> (metric name, format spec)."""

    POSTFIX: ClassVar[dict[str, tuple[str, str]]] = {}
    cfg: Any
    steps: list[int] = field(default_factory=list)
    states: list[dict[str, Tensor]] = field(default_factory=list)

    def new_model(self) -> HookedTensorNetwork:
        """A freshly initialised network of this run's architecture."""
        raise NotImplementedError

    def models(self) -> list[HookedTensorNetwork]:
        """One network per checkpoint, in order."""
        nets = []
        for state in self.states:
            net = self.new_model()
            net.load_state_dict(state)
            nets.append(net)
        return nets


def train_with_checkpoints(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    run: R,
    total_steps: int,
    save_steps: Collection[int],
    batch_loss: Callable[[int], Tensor],
    evaluate: Callable[[int, float], Mapping[str, float]],
    *,
    desc: str,
    progress: bool,
    callback: Callable[[int, float], None] | None = None,
) -> R:
    """Take `total_steps` optimizer steps on `batch_loss(step)`, and at each step in `save_steps` (0..total_steps
    inclusive) record into `run` the step, a clone of the state dict and `evaluate(step, last training loss)` (no
    grad; nan before the first step), each value appended to the run's list of that name. A tqdm bar (`desc`, the
    run's `POSTFIX` metrics) when `progress`; `callback(step, loss)` after every optimizer step."""
    save = set(save_steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc=desc, mininterval=2.0)
    loss_val = float("nan")
    for step in range(total_steps + 1):
        if step in save:
            with torch.no_grad():
                metrics = evaluate(step, loss_val)
            run.steps.append(step)
            run.states.append({k: v.detach().clone() for k, v in net.state_dict().items()})
            for name, value in metrics.items():
                getattr(run, name).append(value)
            if bar is not None:
                bar.set_postfix(**{label: format(metrics[name], fmt) for label, (name, fmt) in run.POSTFIX.items()})
        if step == total_steps:
            break
        loss = batch_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_val = float(loss.detach())
        if callback is not None:
            callback(step, loss_val)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return run
