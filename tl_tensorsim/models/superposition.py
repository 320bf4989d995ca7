"""The toy ReLU superposition model of the NDM paper (Huang & Hahn, arXiv 2508.01916, toy experiment; the model
of Elhage et al. 2022): `x' = ReLU(Wᵀ W x + b)` with `W` `[d_hidden, n_features]`.

Features come in mutually exclusive groups: each group is silent with probability `p_inactive`, otherwise exactly
one of its features (uniformly chosen) is active with a value ~ U[0, 1]; groups are independent. The paper's
setting: 40 features in 2 groups of 20, 12 hidden dimensions, Adam lr 3e-3 decaying linearly to 0.1x over
10,000 steps, batch 128, MSE loss, all importances 1 (reported FVU 0.059). NDM then runs on `h = W x`
(`model.hidden(x)`), where each group should occupy a subspace of its own.

    tl-tensorsim train superposition --out DIR          # or superposition.train(SuperpositionConfig(...))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn

from tl_tensorsim.artifacts import DictConfig, load_artifact, save_artifact
from tl_tensorsim.models import registry
from tl_tensorsim.training import Losses, TrainingRun, train_loop

# the model registry (`tl-tensorsim train superposition`, see registry.py)
DESCRIPTION = "toy ReLU superposition model x' = ReLU(WᵀWx + b), 2 exclusive groups of 20 features in 12 dims (NDM)"
SHIPPED = None
KIND = "SuperpositionModel"


@dataclass
class SuperpositionConfig(DictConfig):
    groups: tuple[int, ...] = (20, 20)
    d_hidden: int = 12
    p_inactive: float = 0.25
    lr: float = 3e-3
    final_lr_factor: float = 0.1
    batch_size: int = 128
    steps: int = 10_000
    seed: int = 0

    @property
    def n_features(self) -> int:
        return sum(self.groups)

    def feature_groups(self) -> list[list[int]]:
        """The feature indices of each group, in order."""
        starts = [sum(self.groups[:i]) for i in range(len(self.groups))]
        return [list(range(a, a + g)) for a, g in zip(starts, self.groups)]


CONFIG = SuperpositionConfig


class SuperpositionModel(nn.Module):
    """`x' = ReLU(Wᵀ W x + b)` (row vectors: `relu(x @ Wᵀ @ W + b)`); `W` `[d_hidden, n_features]` has the
    features' directions in the hidden space as its columns."""

    def __init__(self, cfg: SuperpositionConfig):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.seed)
        std = (2.0 / (cfg.d_hidden + cfg.n_features)) ** 0.5  # Xavier normal
        self.W = nn.Parameter(std * torch.randn(cfg.d_hidden, cfg.n_features, generator=g))
        self.b = nn.Parameter(torch.zeros(cfg.n_features))

    def hidden(self, x: Float[Tensor, "*batch n_features"]) -> Float[Tensor, "*batch d_hidden"]:
        """`h = W x`."""
        return x @ self.W.T

    def forward(self, x: Float[Tensor, "*batch n_features"]) -> Float[Tensor, "*batch n_features"]:
        return torch.relu(self.hidden(x) @ self.W + self.b)


def sample_features(cfg: SuperpositionConfig, n: int, generator: torch.Generator) -> Float[Tensor, "n n_features"]:
    """`n` feature vectors: per group, silent with probability `p_inactive`, else one uniformly chosen feature ~ U[0, 1]."""
    x = torch.zeros(n, cfg.n_features)
    rows = torch.arange(n)
    for group in cfg.feature_groups():
        active = torch.rand(n, generator=generator) >= cfg.p_inactive
        which = torch.randint(len(group), (n,), generator=generator) + group[0]
        value = torch.rand(n, generator=generator)
        x[rows[active], which[active]] = value[active]
    return x


def fvu(model: SuperpositionModel, x: Float[Tensor, "n n_features"]) -> float:
    """Fraction of variance unexplained: `Σ (x − x')² / Σ (x − mean x)²`."""
    with torch.no_grad():
        return float((x - model(x)).square().sum() / (x - x.mean(0)).square().sum())


def train(
    cfg: SuperpositionConfig | None = None,
    progress: bool = True,
    threads: int | None = 1,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TrainingRun:
    """Train with Adam (lr decaying linearly to `final_lr_factor` x) on MSE reconstruction of fresh batches, through
    `tl_tensorsim.training.train_loop` (batches from a generator seeded by `seed + 1`); the FVU on 4096 held-out
    samples is evaluated, and the state kept, eleven times. `run.model` is the trained `SuperpositionModel`."""
    cfg = cfg or SuperpositionConfig()
    model = SuperpositionModel(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    decay = 1.0 - cfg.final_lr_factor
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - decay * min(i, cfg.steps) / max(cfg.steps, 1))
    held_out = sample_features(cfg, 4096, torch.Generator().manual_seed(cfg.seed + 2))

    def batch_loss(step: int, gen: torch.Generator) -> Tensor:
        x = sample_features(cfg, cfg.batch_size, gen)
        return (model(x) - x).square().mean()

    def evaluate(step: int, losses: Losses) -> dict[str, float]:
        return {"fvu": fvu(model, held_out), "loss": losses.mean}

    evals = set(range(0, cfg.steps + 1, max(1, cfg.steps // 10))) | {cfg.steps}
    return train_loop(
        model, opt, batch_loss, cfg.steps, seed=cfg.seed + 1, config=cfg, scheduler=sched, evaluate=evaluate,
        eval_steps=evals, keep_steps=evals,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
        postfix={"fvu": ("fvu", ".3f")}, desc="superposition", progress=progress, threads=threads,
    )  # fmt: skip


def save(run: TrainingRun, directory: str | os.PathLike) -> Path:
    """`W`, `b` (safetensors) and the config (JSON)."""
    model = run.model
    tensors = {"W": model.W.detach(), "b": model.b.detach()}
    return save_artifact(directory, tensors, {"config": model.cfg.to_dict()}, kind=KIND)


def load(directory: str | os.PathLike) -> SuperpositionModel:
    """The model `save` wrote, in eval mode."""
    tensors, meta = load_artifact(directory, kind=KIND)
    model = SuperpositionModel(SuperpositionConfig.from_dict(meta["config"]))
    model.load_state_dict(tensors)
    return model.eval()


def load_default(path: str | os.PathLike | None = None) -> SuperpositionModel:
    """The model `tl-tensorsim train superposition --out path` wrote; None: `registry.default_out("superposition")`,
    trained there with the paper's settings if it is not there yet."""
    return load(registry.model_folder("superposition", path))
