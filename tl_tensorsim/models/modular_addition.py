"""Modular addition (P = 113) on a one-layer TransformerLens transformer: the `rib` library's interaction-basis model.

Architecture as in the `rib` library's training config (paper note `interaction_basis.md` §7): 1 layer, d_model 128,
4 heads of d_head 32, d_mlp 512, ReLU, no LayerNorm, n_ctx 3, vocabulary 114 (`0..112` and `=` = 113), 113 output
classes; inputs `(a, b, =)`, label `(a + b) mod P` at the last position; `train_frac` of the P² pairs for training.
The library trained full batch for 60k epochs; the default here (`ModularAdditionConfig()`, the shipped weights in
`weights/modular_addition_p113/`) trains minibatches of 256 with learning rate 3e-3 for 2000 steps (about 2 minutes
on one CPU thread; test accuracy 1.0 from step 1250); `batch_size=0, lr=1e-3, steps=60_000` is the library's
schedule. AdamW, weight decay 1.0, betas (0.9, 0.98).

    tl-tensorsim train modular_addition --out DIR
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tl_tensorsim.artifacts import DictConfig, save_artifact
from tl_tensorsim.model_io import build_tl_model, tl_state_dict
from tl_tensorsim.models import registry
from tl_tensorsim.training import TrainingRun, train_loop

DESCRIPTION = "modular addition (P = 113) on a 1-layer ReLU transformer without LayerNorm (the rib library's model)"
SHIPPED = Path(__file__).resolve().parent / "weights" / "modular_addition_p113"
KIND = "ModularAdditionModel"


@dataclass
class ModularAdditionConfig(DictConfig):
    p: int = 113
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    train_frac: float = 0.3
    lr: float = 3e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    batch_size: int = 256  # 0: full batch (the rib library)
    steps: int = 2000
    eval_every: int = 250
    seed: int = 0


CONFIG = ModularAdditionConfig


def model_config(cfg: ModularAdditionConfig) -> dict[str, Any]:
    """The TransformerLens config fields of the model."""
    return dict(
        n_layers=1,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        act_fn="relu",
        normalization_type=None,
        n_ctx=3,
        d_vocab=cfg.p + 1,
        d_vocab_out=cfg.p,
        seed=cfg.seed,
        model_name=f"modular_addition_p{cfg.p}",
    )


def dataset(p: int = 113) -> tuple[Tensor, Tensor]:
    """Every `(a, b, =)` token triple `[P², 3]` (a-major) and its label `(a + b) mod P` `[P²]`."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], 1)
    return tokens, (tokens[:, 0] + tokens[:, 1]) % p


def split(p: int, train_frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the training and test pairs (a seeded random `train_frac` of the P² pairs)."""
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n = int(round(train_frac * p * p))
    return perm[:n], perm[n:]


def accuracy(model: Any, tokens: Tensor, labels: Tensor, batch_size: int = 4096) -> float:
    """Accuracy of the last-position prediction."""
    hits = 0
    with torch.no_grad():
        for i in range(0, len(tokens), batch_size):
            hits += int((model(tokens[i : i + batch_size])[:, -1].argmax(-1) == labels[i : i + batch_size]).sum())
    return hits / max(1, len(tokens))


def train(
    config: ModularAdditionConfig | None = None,
    *,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    threads: int | None = 1,
) -> TrainingRun:
    """Train through `tl_tensorsim.training.train_loop`; records `train_acc`, `test_acc`, `train_loss` every
    `eval_every` steps."""
    cfg = config or ModularAdditionConfig()
    torch.manual_seed(cfg.seed)
    model = build_tl_model(model_config(cfg))
    tokens, labels = dataset(cfg.p)
    tr, te = split(cfg.p, cfg.train_frac, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)

    def batch_loss(step: int, gen: torch.Generator) -> Tensor:
        idx = tr if cfg.batch_size <= 0 else tr[torch.randint(len(tr), (cfg.batch_size,), generator=gen)]
        return F.cross_entropy(model(tokens[idx])[:, -1].float(), labels[idx])

    def evaluate(step: int, losses: Any) -> dict[str, float]:
        model.eval()
        out = {
            "train_acc": accuracy(model, tokens[tr], labels[tr]),
            "test_acc": accuracy(model, tokens[te], labels[te]),
            "train_loss": losses.last,
        }
        model.train()
        return out

    evals = set(range(0, cfg.steps + 1, max(1, cfg.eval_every))) | {cfg.steps}
    run = train_loop(
        model,
        opt,
        batch_loss,
        cfg.steps,
        seed=cfg.seed + 1,
        config=cfg,
        evaluate=evaluate,
        eval_steps=evals,
        keep_steps={cfg.steps},
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        postfix={"loss": ("train_loss", ".3g"), "test_acc": ("test_acc", ".3f")},
        desc="modular addition",
        progress=progress,
        threads=threads,
    )
    return run


def save(run: TrainingRun, directory: str | os.PathLike) -> Path:
    """The trained model's weights (TransformerLens names) and its config."""
    cfg = run.config
    return save_artifact(
        directory, tl_state_dict(run.model), {"config": cfg.to_dict(), "history": run.history[-1:]}, kind=KIND
    )


def load(directory: str | os.PathLike, device: torch.device | str | None = None) -> Any:
    """The model `save` wrote, in eval mode (a HookedTransformer where TransformerLens has one, else a bridge)."""
    build = lambda cfg, device: build_tl_model(model_config(cfg), device=device)  # noqa: E731
    return registry.load_transformer(directory, KIND, ModularAdditionConfig, build, device=device)[0]


def load_default(path: str | os.PathLike | None = None, device: torch.device | str | None = None) -> Any:
    """The model `tl-tensorsim train modular_addition --out path` wrote (trained there first if absent)."""
    return load(registry.model_folder("modular_addition", path), device=device)
