"""`tl_tensorsim.training`: the one training loop. Resume gives the uninterrupted run's numbers exactly, an
interrupt leaves the last checkpoint valid, checkpoints refuse other settings, and the thread limit is restored."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tl_tensorsim.artifacts import DictConfig
from tl_tensorsim.training import Losses, TrainingRun, limit_threads, load_run, train_loop


@dataclasses.dataclass
class Cfg(DictConfig):
    steps: int = 12
    lr: float = 0.05
    seed: int = 3


def _setup(cfg: Cfg):
    """A small regression problem with AdamW, a LambdaLR schedule and batches (and noise) from the generator."""
    torch.manual_seed(cfg.seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s))
    x_eval = torch.randn(16, 4, generator=torch.Generator().manual_seed(99))

    def batch_loss(step: int, gen: torch.Generator) -> torch.Tensor:
        x = torch.randn(8, 4, generator=gen)
        y = x.sum(-1, keepdim=True) + 0.1 * torch.randn(8, 1, generator=gen)
        return torch.nn.functional.mse_loss(model(x), y)

    def evaluate(step: int, losses: Losses) -> dict[str, float]:
        return {"eval": float(model(x_eval).square().mean()), "last": losses.last, "mean": losses.mean}

    return model, opt, sched, batch_loss, evaluate


def _train(cfg: Cfg, **kwargs) -> TrainingRun:
    model, opt, sched, batch_loss, evaluate = _setup(cfg)
    kwargs = {"eval_steps": {0, 4, 8, 12}, "keep_steps": {0, 6, 12}, "progress": False, **kwargs}
    return train_loop(
        model, opt, batch_loss, cfg.steps, seed=cfg.seed, config=cfg, scheduler=sched, evaluate=evaluate, **kwargs
    )


def _same(a: TrainingRun, b: TrainingRun) -> None:
    assert a.steps == b.steps and len(a.history) == len(b.history)
    for ra, rb in zip(a.history, b.history):
        assert ra.keys() == rb.keys()
        assert all(ra[k] == rb[k] or (math.isnan(ra[k]) and math.isnan(rb[k])) for k in ra), (ra, rb)
    for (_, sa), (_, sb) in zip(a.checkpoints, b.checkpoints):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_run_records_what_was_asked():
    run = _train(Cfg())
    assert run.steps == [0, 6, 12] and [r["step"] for r in run.history] == [0, 4, 8, 12]
    assert math.isnan(run.history[0]["last"]) and run.metrics_at(4)["mean"] > 0
    assert run.metric("eval") == [r["eval"] for r in run.history]
    assert not run.model.training and len(run.models()) == 3
    assert torch.equal(run.models()[-1][0].weight, run.model[0].weight)
    assert "TrainingRun(Sequential, 12 steps" in repr(run) and list(run.to_dataframe().columns)[0] == "step"
    with pytest.raises(ValueError, match="name: no metric 'nope'"):
        run.metric("nope")
    _same(run, _train(Cfg()))  # seeded: the same numbers again


class _Stop(Exception):
    pass


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, _Stop])
def test_resume_after_an_interrupt_gives_the_uninterrupted_run(tmp_path, interrupt):
    full = _train(Cfg())
    model, opt, sched, batch_loss, evaluate = _setup(Cfg())

    def failing(step, gen):
        if step == 9:  # after the checkpoint at step 8, before the one at 12
            raise interrupt()
        return batch_loss(step, gen)

    with pytest.raises(interrupt):
        train_loop(
            model, opt, failing, 12, seed=3, config=Cfg(), scheduler=sched, evaluate=evaluate,
            eval_steps={0, 4, 8, 12}, keep_steps={0, 6, 12}, checkpoint_dir=tmp_path, checkpoint_every=4, progress=False,
        )  # fmt: skip
    assert [p.name for p in (tmp_path / "resume").iterdir()] == ["step_00000008"]  # the last one, and only it
    resumed = _train(Cfg(), checkpoint_dir=tmp_path, checkpoint_every=4, resume=True)
    _same(resumed, full)
    assert resumed.seconds > 0
    loaded = load_run(tmp_path, torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)))
    _same(loaded, full)
    assert loaded.config == Cfg().to_dict()


def test_checkpoint_folder_guards(tmp_path):
    _train(Cfg(), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint_dir: .* already holds a training run .*resume=True"):
        _train(Cfg(), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="resume: the checkpoint .* was written with .*same settings"):
        _train(Cfg(lr=0.1), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="directory: .* holds no training checkpoint"):
        load_run(tmp_path / "empty", torch.nn.Linear(1, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eval_steps": {13}}, r"eval_steps: expected integers in 0..12; got \[13\]"),
        ({"keep_steps": {-1}}, r"keep_steps: expected integers in 0..12; got \[-1\]"),
        ({"checkpoint_every": 0, "checkpoint_dir": "x"}, "checkpoint_every: expected an integer >= 1"),
        ({"resume": True}, "checkpoint_dir: resume=True and checkpoint_every need a folder"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _train(Cfg(), **kwargs)


def test_limit_threads_restores_the_setting():
    before = torch.get_num_threads()
    with limit_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with limit_threads(None):
        assert torch.get_num_threads() == before
