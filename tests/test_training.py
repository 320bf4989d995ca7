"""`tl_tensorsim.training`: the one training loop. Resume gives the uninterrupted run's numbers exactly, an
interrupt leaves the last checkpoint valid, checkpoints refuse other settings, and the thread limit is restored."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tl_tensorsim.artifacts import DictConfig
from tl_tensorsim.training import Losses, TrainingRun, latest_checkpoint_step, limit_threads, load_run, train_loop


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


def _interrupted(folder, interrupt: type[BaseException]) -> None:
    """The run of `_train(Cfg())` with checkpoints every 4 steps in `folder`, interrupted in update 10 (after the
    checkpoint at step 8, before the one at 12)."""
    model, opt, sched, batch_loss, evaluate = _setup(Cfg())

    def failing(step, gen):
        if step == 9:
            raise interrupt()
        return batch_loss(step, gen)

    with pytest.raises(interrupt):
        train_loop(
            model, opt, failing, 12, seed=3, config=Cfg(), scheduler=sched, evaluate=evaluate,
            eval_steps={0, 4, 8, 12}, keep_steps={0, 6, 12}, checkpoint_dir=folder, checkpoint_every=4, progress=False,
        )  # fmt: skip


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, _Stop])
def test_resume_after_an_interrupt_gives_the_uninterrupted_run(tmp_path, interrupt, capsys):
    full = _train(Cfg())
    _interrupted(tmp_path, interrupt)
    assert [p.name for p in (tmp_path / "resume").iterdir()] == ["step_00000008"]  # the last one, and only it
    assert latest_checkpoint_step(tmp_path) == 8 and latest_checkpoint_step(tmp_path / "none") is None
    if interrupt is KeyboardInterrupt:
        assert "train: interrupted after step 9; the checkpoint at step 8 in" in capsys.readouterr().err
    resumed = _train(Cfg(), checkpoint_dir=tmp_path, checkpoint_every=4, resume=True)
    _same(resumed, full)
    assert resumed.seconds > 0
    loaded = load_run(tmp_path, torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)))
    _same(loaded, full)
    assert loaded.config == Cfg().to_dict()


def _files(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_a_loop_that_does_not_write_resumes_from_the_shared_folder(tmp_path):
    """The other ranks of a distributed run: `write_checkpoints=False` reads the folder rank 0 writes, never
    writes into it, and resumes from rank 0's checkpoint with the uninterrupted run's numbers."""
    full = _train(Cfg())
    quiet = _train(Cfg(), checkpoint_dir=tmp_path / "quiet", checkpoint_every=4, write_checkpoints=False)
    assert not (tmp_path / "quiet").exists()
    _same(quiet, full)
    shared = tmp_path / "shared"
    _interrupted(shared, _Stop)
    before = _files(shared)
    assert sorted(str(p) for p in before if len(p.parts) == 2) == [
        "resume/step_00000008", "states/step_00000000", "states/step_00000006"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="already holds a training run"):  # the same refusal as the writing rank's
        _train(Cfg(), checkpoint_dir=shared, write_checkpoints=False)
    reader = _train(Cfg(), checkpoint_dir=shared, checkpoint_every=4, resume=True, write_checkpoints=False)
    assert _files(shared) == before  # nothing written, moved or removed
    writer = _train(Cfg(), checkpoint_dir=shared, checkpoint_every=4, resume=True)
    _same(reader, full)
    _same(writer, full)
    assert latest_checkpoint_step(shared) == 12
    with pytest.raises(TypeError, match="write_checkpoints: expected a bool; got str"):
        _train(Cfg(), write_checkpoints="no")


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
