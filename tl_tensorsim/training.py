"""The one training loop (`train_loop`) behind every model the project trains, and the run it returns.

    run = train_loop(model, optimizer, batch_loss, steps=2000, seed=0, evaluate=evaluate, eval_steps=range(0, 2001, 100),
                     checkpoint_dir="runs/x", checkpoint_every=500)          # Ctrl-C, then the same call with
    run = train_loop(..., resume=True)                                      # resume=True: the same numbers

Step `s` means "after `s` optimizer steps": `batch_loss(i, generator)` computes the loss of update `i + 1`
(`i = 0 .. steps - 1`) from batches drawn from `generator`, seeded once by `seed`. At each step in `eval_steps`
(0 included: before training) the model, in eval mode and without gradients, is scored by `evaluate(step, losses)`;
at each step in `keep_steps` a CPU copy of its state dict is kept. A tqdm bar shows the chosen metrics.

**Checkpoints** (when `checkpoint_dir` is given), through `tl_tensorsim.artifacts.save_artifact`:
`checkpoint_dir/resume/step_XXXXXXXX/` every `checkpoint_every` steps and at the end (model, optimizer, scheduler,
the data generator, the global torch RNG, the history), and `checkpoint_dir/states/step_XXXXXXXX/` for each kept
state. Each folder is written atomically under a new name and the previous resume folder is removed only after,
so an interrupt (Ctrl-C) leaves the last checkpoint valid; `resume=True` continues from it and gives results
identical to an uninterrupted run (same device, thread count and torch version). `load_run` reads a finished run.
`resume=True` refuses a checkpoint written with other settings (`config`, `steps`) or, when the caller describes
its training data (`data=`, e.g. `tl_tensorsim.ndm.fit.data_fingerprint`), for other data.

**Several processes, one folder.** With `write_checkpoints=False` the loop reads `checkpoint_dir` (resume, and the
refusal to overwrite a run) but writes nothing there: under `torch.distributed` every rank passes the same shared
folder and only rank 0 writes, so every rank resumes from rank 0's files. The caller makes sure rank 0's last write
is finished before the others read (a barrier) and that every rank sees the same folder: `latest_checkpoint_step`.

**Threads.** The loop runs under `limit_threads(threads)`: the models trained here are tiny, and extra intra-op
threads only add synchronisation (on a shared, loaded 2-core machine a training step was 30-90x slower with two).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tl_tensorsim.artifacts import save_artifact
from tl_tensorsim.training_files import (
    CHECKPOINT_KIND,
    STATE_KIND,
    _decode,
    _encode,
    _folder,
    _kept,
    _latest,
    _latest_step,
    _take,
)


@contextmanager
def limit_threads(n: int | None = 1) -> Iterator[None]:
    """Use at most `n` torch intra-op threads inside the block, restoring the setting afterwards (None: leave
    the setting alone)."""
    before = torch.get_num_threads()
    if n is not None and n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Losses:
    """Training losses seen by `evaluate(step, losses)`: `last`, the loss of update `step`, and `mean`, the mean
    over the updates since the previous evaluation (`count` of them); nan when there were none (step 0)."""

    last: float
    mean: float
    count: int


@dataclass
class TrainingRun:
    """What `train_loop` returns: the trained model (eval mode), the kept state dicts and the evaluations.

    `checkpoints`: `[(step, state_dict)]`, CPU copies at the requested `keep_steps` (step 0 = initialisation).
    `history`: one row per evaluation, `{"step": s, **evaluate(s, losses)}`. `config`: the settings that
    produced the run (a `DictConfig`). `seconds`: training time, summed over resumed sessions.
    """

    model: nn.Module
    config: Any
    checkpoints: list[tuple[int, dict[str, Tensor]]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps(self) -> list[int]:
        """The steps of the kept checkpoints, in order."""
        return [s for s, _ in self.checkpoints]

    @property
    def states(self) -> list[dict[str, Tensor]]:
        """The kept state dicts, in order."""
        return [sd for _, sd in self.checkpoints]

    def models(self) -> list[nn.Module]:
        """One copy of the model per kept checkpoint (eval mode), in order."""
        out = []
        for _, state in self.checkpoints:
            model = copy.deepcopy(self.model)
            model.load_state_dict(state)
            out.append(model.eval())
        return out

    def metric(self, name: str) -> list[float]:
        """`name` at every evaluation, in order (`[row[name] for row in history]`)."""
        known = sorted({k for row in self.history for k in row})
        if name not in known:
            raise ValueError(f"name: no metric {name!r} in this run's history; expected one of {known}")
        return [row[name] for row in self.history]

    def metrics_at(self, step: int) -> dict[str, float]:
        """The history row of `step`."""
        for row in self.history:
            if row["step"] == step:
                return row
        raise ValueError(f"step: no evaluation at step {step}; evaluated at {[r['step'] for r in self.history]}")

    def to_dataframe(self):
        """The history as a pandas DataFrame, one row per evaluation."""
        import pandas as pd

        return pd.DataFrame(self.history)

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step" and isinstance(v, float))
        return (
            f"TrainingRun({type(self.model).__name__}, {last.get('step', 0)} steps in {self.seconds:.1f}s, "
            f"{len(self.checkpoints)} kept checkpoints{', final ' + shown if shown else ''})"
        )


def warmup_cosine(step: int, steps: int, warmup_steps: int, decay_start: float, min_lr_factor: float) -> float:
    """Learning-rate factor at `step` of `steps`: linear warm-up over `warmup_steps`, constant, then cosine decay from
    `decay_start * steps` to `min_lr_factor` at `steps` (for `torch.optim.lr_scheduler.LambdaLR`)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    start = decay_start * steps
    progress = min(1.0, max(0.0, (step - start) / max(1.0, steps - start)))
    return min_lr_factor + (1 - min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[int, torch.Generator], Tensor],
    steps: int,
    *,
    seed: int,
    config: Any = None,
    scheduler: Any = None,
    evaluate: Callable[[int, Losses], Mapping[str, float]] | None = None,
    eval_steps: Collection[int] = (),
    keep_steps: Collection[int] = (),
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    data: Mapping[str, Any] | None = None,
    write_checkpoints: bool = True,
    postfix: Mapping[str, tuple[str, str]] | None = None,
    desc: str = "train",
    progress: bool = True,
    threads: int | None = 1,
) -> TrainingRun:
    """Take `steps` optimizer steps on `batch_loss(i, generator)`; evaluate, keep states and checkpoint on the way.

    Each update: `loss = batch_loss(i, generator)`, `optimizer.zero_grad(set_to_none=True)`, `loss.backward()`,
    `optimizer.step()`, then `scheduler.step()` when a scheduler is given. `generator` is a CPU `torch.Generator`
    seeded with `seed`; the model is built (and seeded) by the caller. `config`: the settings, recorded in the run
    and in checkpoints (`resume=True` refuses a checkpoint written with other settings). `postfix`: progress-bar
    label -> (metric name, format spec). `threads`: torch intra-op threads while training (None: leave alone).
    `data`: a JSON-ready description of the training data (shape, a hash, ...), recorded in checkpoints:
    `resume=True` refuses a checkpoint whose description differs (one written without any is not checked).
    `write_checkpoints=False`: read `checkpoint_dir` (resume) but write no file there (the non-zero ranks of a
    distributed run). Module docstring: checkpoint layout, resume, interrupts, several processes.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0; got {steps!r}")
    for name, value in (("eval_steps", eval_steps), ("keep_steps", keep_steps)):
        bad = [s for s in value if not isinstance(s, int) or not 0 <= s <= steps]
        if bad:
            raise ValueError(f"{name}: expected integers in 0..{steps}; got {sorted(bad, key=str)}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every: expected an integer >= 1 or None; got {checkpoint_every!r}")
    if (resume or checkpoint_every is not None) and checkpoint_dir is None:
        raise ValueError("checkpoint_dir: resume=True and checkpoint_every need a folder for the checkpoints; got None")
    if not isinstance(write_checkpoints, bool):
        raise TypeError(f"write_checkpoints: expected a bool; got {type(write_checkpoints).__name__}")
    settings = json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config, default=str))
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(f"data: expected a mapping describing the training data, or None; got {type(data).__name__}")
    with limit_threads(threads):
        loop = _Loop(model, optimizer, scheduler, torch.Generator().manual_seed(seed), config, settings, steps)
        loop.data = None if data is None else json.loads(json.dumps(dict(data), default=str))
        if checkpoint_dir is not None:
            loop.open(Path(checkpoint_dir), resume, write_checkpoints)
        return loop.run(
            batch_loss, evaluate, set(eval_steps), set(keep_steps), checkpoint_every, postfix, desc, progress
        )


def latest_checkpoint_step(directory: str | Path) -> int | None:
    """The step of the newest resume checkpoint `train_loop(checkpoint_dir=directory)` left (None: none)."""
    return _latest_step(Path(directory))


def load_run(directory: str | Path, model: nn.Module, config: Any = None) -> TrainingRun:
    """The run whose checkpoints `train_loop(checkpoint_dir=directory)` wrote, as of its last checkpoint: `model`
    (built like the trained one) gets the checkpoint's weights. `config`: the settings object to attach (the
    stored settings dict when None)."""
    step, tensors, meta = _latest(Path(directory))
    if step is None:
        raise FileNotFoundError(f"directory: {directory} holds no training checkpoint (resume/step_* expected)")
    model.load_state_dict(_take(tensors, "model/"))
    run = TrainingRun(model.eval(), meta["config"] if config is None else config, history=meta["history"])
    run.seconds = meta["seconds"]
    run.checkpoints = _kept(Path(directory), meta["kept"])
    return run


# ------------------------------------------------------------------------------------------------ the loop
class _Loop:
    def __init__(self, model, optimizer, scheduler, generator, config, settings, steps) -> None:
        self.model, self.optimizer, self.scheduler, self.generator = model, optimizer, scheduler, generator
        self.settings, self.steps, self.start = settings, steps, 0
        self.run_ = TrainingRun(model, config)
        self.loss_sum, self.loss_count, self.loss_last = 0.0, 0, math.nan
        self.dir: Path | None = None  # where checkpoints are read from
        self.writes = False  # whether this loop writes checkpoints and kept states to `dir`
        self.step = 0  # updates taken so far
        self.data: dict[str, Any] | None = None  # the description of the training data, checked on resume

    def open(self, directory: Path, resume: bool, write: bool = True) -> None:
        """Use `directory` for checkpoints (written only when `write`); with `resume`, restore the state of its
        last checkpoint."""
        self.dir, self.writes = directory, write
        step, tensors, meta = _latest(directory)
        if step is None:
            return
        if not resume:
            raise ValueError(
                f"checkpoint_dir: {directory} already holds a training run (checkpoint at step {step}); pass "
                "resume=True to continue it, or choose a new folder (or delete this one) to start over"
            )
        if meta["config"] != self.settings or meta["steps"] != self.steps:
            raise ValueError(
                f"resume: the checkpoint in {directory} was written with steps={meta['steps']} and config "
                f"{meta['config']}; got steps={self.steps} and config {self.settings}: resume with the same settings"
            )
        old = meta.get("data")
        if old is not None and self.data is not None and old != self.data:
            keys = [k for k in {**old, **self.data} if old.get(k) != self.data.get(k)]
            shown = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {self.data.get(k)!r} given" for k in keys)
            raise ValueError(
                f"checkpoint_dir: {directory} holds a run on other training data ({shown}); resume with the data "
                "it was trained on, or choose a new folder (or delete this one) to train on this data"
            )
        self.model.load_state_dict(_take(tensors, "model/"))
        self.optimizer.load_state_dict(_decode(meta["optimizer"], tensors))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(_decode(meta["scheduler"], tensors))
        self.generator.set_state(tensors["rng/data"])
        torch.set_rng_state(tensors["rng/torch"])
        if torch.cuda.is_available() and "rng/cuda/0" in tensors:
            torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(torch.cuda.device_count())])
        self.start = self.step = step
        self.loss_sum, self.loss_count, self.loss_last = meta["loss_sum"], meta["loss_count"], meta["loss_last"]
        self.run_.history, self.run_.seconds = meta["history"], meta["seconds"]
        self.run_.checkpoints = _kept(directory, meta["kept"])

    def run(self, batch_loss, evaluate, eval_steps, keep_steps, checkpoint_every, postfix, desc, progress):
        from tqdm.auto import tqdm

        model, opt, run = self.model, self.optimizer, self.run_
        t0, seconds0 = time.perf_counter(), run.seconds
        bar = tqdm(total=self.steps, initial=self.start, desc=desc, disable=not progress, mininterval=1.0)
        try:
            model.train()
            if self.start == 0:
                self._observe(0, evaluate, eval_steps, keep_steps, postfix, bar)
            for i in range(self.start, self.steps):
                loss = batch_loss(i, self.generator)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.loss_last = loss.item()
                self.loss_sum += self.loss_last
                self.loss_count += 1
                step = self.step = i + 1
                self._observe(step, evaluate, eval_steps, keep_steps, postfix, bar)
                bar.update(1)
                run.seconds = seconds0 + time.perf_counter() - t0
                if self.writes and (step == self.steps or (checkpoint_every and step % checkpoint_every == 0)):
                    self._checkpoint(step)
        except KeyboardInterrupt:
            last = _latest_step(self.dir) if self.dir is not None else None
            where = (
                f"the checkpoint at step {last} in {self.dir} continues with resume=True" if last else "no checkpoint"
            )
            print(f"\n{desc}: interrupted after step {self.step}; {where}", file=sys.stderr)
            raise
        finally:
            bar.close()
        if self.writes and self.start == self.steps == 0:
            self._checkpoint(0)
        run.seconds = seconds0 + time.perf_counter() - t0
        model.eval()
        return run

    def _observe(self, step, evaluate, eval_steps, keep_steps, postfix, bar) -> None:
        """Evaluate (eval mode, no grad) and keep a state copy at `step` where asked."""
        if evaluate is not None and step in eval_steps:
            mean = self.loss_sum / self.loss_count if self.loss_count else math.nan
            self.model.eval()
            with torch.no_grad():
                metrics = dict(evaluate(step, Losses(self.loss_last, mean, self.loss_count)))
            self.model.train()
            self.loss_sum, self.loss_count = 0.0, 0
            self.run_.history.append({"step": step, **metrics})
            if postfix:
                bar.set_postfix({label: format(metrics[name], fmt) for label, (name, fmt) in postfix.items()})
        if step in keep_steps:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.run_.checkpoints.append((step, state))
            if self.writes:
                save_artifact(self.dir / "states" / _folder(step), state, {"step": step}, kind=STATE_KIND)

    def _checkpoint(self, step: int) -> None:
        """Write `resume/step_{step}` atomically, then remove the older resume folders."""
        tensors = {f"model/{k}": v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        tensors["rng/data"] = self.generator.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        meta = {
            "step": step,
            "steps": self.steps,
            "config": self.settings,
            "data": self.data,
            "history": self.run_.history,
            "seconds": self.run_.seconds,
            "kept": self.run_.steps,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "loss_last": self.loss_last,
            "optimizer": _encode(self.optimizer.state_dict(), "optimizer", tensors),
            "scheduler": None if self.scheduler is None else _encode(self.scheduler.state_dict(), "scheduler", tensors),
        }
        assert self.dir is not None
        save_artifact(self.dir / "resume" / _folder(step), tensors, meta, kind=CHECKPOINT_KIND)
        for old in (self.dir / "resume").glob("step_*"):
            if old.name != _folder(step):
                shutil.rmtree(old, ignore_errors=True)
