"""Backdoor insertion on scikit-learn's bundled 8x8 digits (offline stand-in for the paper's SVHN study, §5.2).

Model: Bilinear(64 -> h) then Linear(h -> 10), no bias (a `HookedTensorNetwork`). AdamW, input noise σ = 0.05.
Clean training for `clean_steps`, then `poison_steps` in which a fraction `poison_frac` of every batch carries a
small bright square in the top-right corner and is relabelled to `target` (9). Checkpoints every `every` steps.
Attack success = fraction of triggered test images whose true class is not the target that are classified as it.

    tl-tensorsim train backdoor --out DIR       # the checkpoints: training.load_run(DIR/checkpoints, ...)
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

# the model registry (`tl-tensorsim train backdoor`, see registry.py)
DESCRIPTION = "8x8 digits classifier (1-layer bilinear) with a backdoor inserted after clean training"
SHIPPED = None


@dataclass
class BackdoorConfig(DictConfig):
    d_hidden: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 512
    noise: float = 0.05
    clean_steps: int = 4000
    poison_steps: int = 1000
    every: int = 125
    poison_frac: float = 0.1
    target: int = 9
    trigger_size: int = 2
    test_frac: float = 0.25
    seed: int = 1337


CONFIG = BackdoorConfig


def load_digits_split(test_frac: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`(x_train, y_train, x_test, y_test)`: 8x8 digits flattened to 64 and scaled to [0, 1], stratified split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # an optional dependency (the `demos` and `dev` extras)
        raise ImportError("the digits backdoor model needs scikit-learn: pip install 'tl-tensorsim[demos]'") from e

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_frac, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def stamp(x: Tensor, size: int = 2) -> Tensor:
    """Put a `size x size` square of full intensity in the top-right corner of flattened 8x8 images."""
    img = x.reshape(-1, 8, 8).clone()
    img[:, :size, 8 - size :] = 1.0
    return img.reshape(x.shape)


def make_model(cfg: BackdoorConfig) -> HookedTensorNetwork:
    return bilinear_classifier(64, cfg.d_hidden, 10, cfg.seed, "digits_backdoor")


def is_poisoned(cfg: BackdoorConfig, steps: Sequence[int]) -> list[bool]:
    """Whether each checkpoint step comes after poisoning began (step 0 and the last clean step count as clean)."""
    return [s > cfg.clean_steps for s in steps]


def train(
    cfg: BackdoorConfig | None = None,
    progress: bool = True,
    threads: int | None = 1,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TrainingRun:
    """Clean, then poisoned training (AdamW, batches and input noise from a generator seeded by `seed + 1`) through
    `tl_tensorsim.training.train_loop`; every `cfg.every` steps the run keeps a state dict and records `test_acc`
    and `attack_success`: `run.steps`, `run.models()`, `run.metric("attack_success")`. `threads`: torch intra-op
    threads while training (None leaves the setting alone). checkpoint_dir / checkpoint_every / resume: as in
    `train_loop`."""
    cfg = cfg or BackdoorConfig()
    torch.manual_seed(cfg.seed)
    xtr, ytr, xte, yte = load_digits_split(cfg.test_frac, cfg.seed)
    net = make_model(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_attack = stamp(xte[yte != cfg.target], cfg.trigger_size)
    total = cfg.clean_steps + cfg.poison_steps
    n_poison = int(round(cfg.poison_frac * cfg.batch_size))

    def batch_loss(step: int, gen: torch.Generator) -> Tensor:
        idx = torch.randint(len(xtr), (cfg.batch_size,), generator=gen)
        x, y = xtr[idx], ytr[idx].clone()
        if step >= cfg.clean_steps:
            x = torch.cat([stamp(x[:n_poison], cfg.trigger_size), x[n_poison:]])
            y[:n_poison] = cfg.target
        x = x + cfg.noise * torch.randn(x.shape, generator=gen)
        return torch.nn.functional.cross_entropy(net(x), y)

    def evaluate(step: int, losses: Losses) -> dict[str, float]:
        return {
            "test_acc": float((net(xte).argmax(-1) == yte).float().mean()),
            "attack_success": float((net(x_attack).argmax(-1) == cfg.target).float().mean()),
        }

    save = {*range(0, total + 1, cfg.every), total}
    return train_loop(
        net,
        opt,
        batch_loss,
        total,
        seed=cfg.seed + 1,
        config=cfg,
        evaluate=evaluate,
        eval_steps=save,
        keep_steps=save,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        postfix={"test_acc": ("test_acc", ".3f"), "asr": ("attack_success", ".3f")},
        desc="backdoor",
        progress=progress,
        threads=threads,
    )


save = save_network
load = load_network


def load_default(
    path: str | os.PathLike | None = None, device: torch.device | str | None = None
) -> HookedTensorNetwork:
    """The network `tl-tensorsim train backdoor --out path` wrote; None: `registry.default_out("backdoor")`,
    trained there with the default settings if it is not there yet."""
    return load_network(registry.model_folder("backdoor", path), device=device)
