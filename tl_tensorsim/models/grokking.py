"""The paper's grokking model: modular addition as a tensor network (arXiv 2605.15183, the modular-arithmetic study).

P = 113, input the one-hot pair `[e_a; e_b]` (2P = 226 dims), Bilinear(226 -> 64) then Linear(64 -> 113), no bias;
AdamW lr 1e-3, weight decay 0.3, batch 512, 30% of the P² pairs for training, 100k steps, seed 1337, checkpoints on
the power schedule `floor(steps · (i / (n - 1))^5)` (100 requested, 90 after removing duplicates).

The model is a `HookedTensorNetwork`; training multiplies one-hot inputs by gathering weight rows, which is the
same function (`fast_logits`, checked against `net(one_hot)` in the tests) at a fraction of the cost.

    tl-tensorsim train grokking --out DIR       # paper settings; the checkpoints: training.load_run(DIR/checkpoints, ...)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tl_tensorsim.artifacts import DictConfig
from tl_tensorsim.models import registry
from tl_tensorsim.models.tensor_network import HookedTensorNetwork, bilinear_classifier, load_network, save_network
from tl_tensorsim.training import Losses, TrainingRun, train_loop

# the model registry (`tl-tensorsim train grokking`, see registry.py)
DESCRIPTION = "modular addition (P = 113) as a 1-layer bilinear tensor network (grokking, paper settings)"
SHIPPED = None


@dataclass
class GrokkingConfig(DictConfig):
    p: int = 113
    d_hidden: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.3
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 512
    train_frac: float = 0.3
    steps: int = 100_000
    n_checkpoints: int = 100
    schedule_power: float = 5.0
    seed: int = 1337


CONFIG = GrokkingConfig


def checkpoint_steps(steps: int, n: int = 100, power: float = 5.0) -> list[int]:
    """`floor(steps · (i/(n-1))^power)` for i < n, duplicates removed: the paper's schedule (90 of 100 at 100k,
    including its reported steps 1374, 6901, 13168, ...)."""
    if n < 2:
        return [steps]
    return sorted({int(steps * (i / (n - 1)) ** power) for i in range(n)})


def make_model(cfg: GrokkingConfig) -> HookedTensorNetwork:
    return bilinear_classifier(2 * cfg.p, cfg.d_hidden, cfg.p, cfg.seed, f"grokking_p{cfg.p}")


def all_pairs(p: int) -> tuple[Tensor, Tensor]:
    """Every `(a, b)` pair, `(P², 2)`, and its label `(a + b) mod P`."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], 1)
    return pairs, (pairs[:, 0] + pairs[:, 1]) % p


def one_hot_pairs(pairs: Tensor, p: int) -> Tensor:
    """`[e_a; e_b]`, `(N, 2P)` float."""
    x = torch.zeros(pairs.shape[0], 2 * p)
    x[torch.arange(pairs.shape[0]), pairs[:, 0]] = 1
    x[torch.arange(pairs.shape[0]), p + pairs[:, 1]] = 1
    return x


def split(p: int, train_frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of training and validation pairs (a seeded random `train_frac` of the P² pairs)."""
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n = int(round(train_frac * p * p))
    return perm[:n], perm[n:]


def fast_logits(net: HookedTensorNetwork, pairs: Tensor, p: int) -> Tensor:
    """`net(one_hot_pairs(pairs))` by gathering rows of W_L, W_R (identical function, no dense one-hot product)."""
    mlp = net.blocks[0].mlp
    i, j = pairs[:, 0], p + pairs[:, 1]
    left = mlp.W_L[i] + mlp.W_L[j]
    right = mlp.W_R[i] + mlp.W_R[j]
    return (left * right) @ net.unembed.W_U  # type: ignore[union-attr]


def train(
    cfg: GrokkingConfig | None = None,
    steps_to_save: Sequence[int] | None = None,
    progress: bool = True,
    threads: int | None = 1,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TrainingRun:
    """Train with AdamW on random minibatches (with replacement) of the training pairs (generator seeded by
    `seed + 1`), through `tl_tensorsim.training.train_loop`. At `steps_to_save` (default: the power schedule)
    the run keeps a state dict and records `train_acc`, `val_acc` (over every pair) and `train_loss` (the last
    batch's): `run.steps`, `run.models()`, `run.metric("val_acc")`. `threads`: torch intra-op threads while
    training (None leaves the setting alone). checkpoint_dir / checkpoint_every / resume: as in `train_loop`."""
    cfg = cfg or GrokkingConfig()
    torch.manual_seed(cfg.seed)
    net = make_model(cfg)
    pairs, labels = all_pairs(cfg.p)
    tr, va = split(cfg.p, cfg.train_frac, cfg.seed)
    save = (
        steps_to_save
        if steps_to_save is not None
        else checkpoint_steps(cfg.steps, cfg.n_checkpoints, cfg.schedule_power)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)

    def batch_loss(step: int, gen: torch.Generator) -> Tensor:
        idx = tr[torch.randint(len(tr), (cfg.batch_size,), generator=gen)]
        return torch.nn.functional.cross_entropy(fast_logits(net, pairs[idx], cfg.p), labels[idx])

    def evaluate(step: int, losses: Losses) -> dict[str, float]:
        pred = fast_logits(net, pairs, cfg.p).argmax(-1) == labels
        return {
            "train_acc": float(pred[tr].float().mean()),
            "val_acc": float(pred[va].float().mean()),
            "train_loss": losses.last,
        }

    return train_loop(
        net,
        opt,
        batch_loss,
        cfg.steps,
        seed=cfg.seed + 1,
        config=cfg,
        evaluate=evaluate,
        eval_steps=set(save),
        keep_steps=set(save),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        postfix={"loss": ("train_loss", ".3g"), "val_acc": ("val_acc", ".3f")},
        desc="grokking",
        progress=progress,
        threads=threads,
    )


save = save_network
load = load_network


def load_default(
    path: str | os.PathLike | None = None, device: torch.device | str | None = None
) -> HookedTensorNetwork:
    """The network `tl-tensorsim train grokking --out path` wrote; None: `registry.default_out("grokking")`,
    trained there with the paper's settings if it is not there yet."""
    return load_network(registry.model_folder("grokking", path), device=device)
