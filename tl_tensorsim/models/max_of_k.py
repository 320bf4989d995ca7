"""The Max-of-K model of Gross et al., *Compact Proofs of Model Performance via Mechanistic Interpretability*
(arXiv 2406.11779, its K = 4 setting): a 1-layer, 1-head, attention-only transformer that
reads K = `n_ctx` tokens from a vocabulary of `d_vocab` and predicts their maximum at the last position.

Paper settings (the defaults): d_vocab = 64, n_ctx = 4, d_model = d_head = 32, no LayerNorm, every bias frozen at
zero; TransformerLens initialisation; AdamW (lr 1e-3, betas 0.9/0.999, torch's default weight decay 0.01), batch
128, 3000 steps on i.i.d. uniform sequences (not max-balanced); the label is the maximum over **all** positions,
the loss the cross-entropy of the last position's logits (computed in float64, the paper's higher-precision
log-softmax). Training runs through `tl_tensorsim.training.train_loop`, seeded by `seed` (model and data).

    tl-tensorsim train max_of_k --out DIR --seed 3     # the paper's model, seed 3 (about 15 s on one CPU core)
    model = max_of_k.load_default(DIR)                 # ... and load it (a HookedTransformer or a bridge)

`tl_tensorsim.proofs.max_of_k` proves accuracy bounds for these models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tl_tensorsim.artifacts import DictConfig
from tl_tensorsim.model_io import build_tl_model
from tl_tensorsim.models import registry
from tl_tensorsim.training import Losses, TrainingRun, train_loop

KIND = "MaxOfKModel"
# the model registry (`tl-tensorsim train max_of_k`, see registry.py)
DESCRIPTION = "Max-of-K: 1-layer 1-head attention-only transformer predicting the max of 4 tokens (arXiv 2406.11779)"
SHIPPED = None


@dataclass
class MaxOfKConfig(DictConfig):
    """Architecture, data and training settings (defaults: the paper's K = 4 model)."""

    d_vocab: int = 64
    n_ctx: int = 4  # K, the sequence length
    d_model: int = 32
    d_head: int = 32
    seed: int = 0
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01  # torch's AdamW default (the paper sets none)
    eval_every: int = 500
    eval_size: int = 1024

    def __post_init__(self) -> None:
        for name, low in (("d_vocab", 2), ("n_ctx", 2), ("d_model", 1), ("d_head", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}; got {value!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps: expected an integer >= 0; got {self.steps!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ValueError(f"eval_every: expected an integer >= 1; got {self.eval_every!r}")

    @property
    def model_name(self) -> str:
        return f"max_of_{self.n_ctx}_v{self.d_vocab}_d{self.d_model}_seed{self.seed}"

    def tl_fields(self) -> dict[str, Any]:
        """The TransformerLens config fields (HookedTransformerConfig / TransformerBridgeConfig)."""
        return {
            "n_layers": 1,
            "n_heads": 1,
            "d_model": self.d_model,
            "d_head": self.d_head,
            "d_vocab": self.d_vocab,
            "n_ctx": self.n_ctx,
            "attn_only": True,
            "normalization_type": None,
            "positional_embedding_type": "standard",
            "seed": self.seed,
            "model_name": self.model_name,
        }


CONFIG = MaxOfKConfig


# ----------------------------------------------------------------------------------------------- data
def make_batch(
    config: MaxOfKConfig, batch_size: int, generator: torch.Generator | None = None
) -> tuple[Int[Tensor, "batch n_ctx"], Int[Tensor, " batch"]]:
    """`batch_size` i.i.d. uniform sequences over `[0, d_vocab)` (int64 `[batch, n_ctx]`, CPU) and their labels,
    the maximum over all positions (int64 `[batch]`)."""
    g = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    tokens = torch.randint(0, config.d_vocab, (batch_size, config.n_ctx), generator=g)
    return tokens, tokens.max(dim=1).values


def last_logits(model: Any, tokens: Int[Tensor, "batch n_ctx"]) -> Float[Tensor, "batch d_vocab"]:
    """The logits at the last position, where the model reads off the maximum."""
    return model(tokens)[:, -1, :]


# ---------------------------------------------------------------------------------------------- model
def build_model(
    config: MaxOfKConfig | None = None, device: str | torch.device | None = None, backend: str | None = None
):
    """A freshly initialised model (TransformerLens initialisation, seeded by `config.seed`), biases zero and
    frozen (`requires_grad=False`). A `HookedTransformer` where TransformerLens has one, else a
    `TransformerBridge.boot_native` model; `backend="hooked"|"bridge"` picks one explicitly."""
    config = config or MaxOfKConfig()
    model = build_tl_model(config.tl_fields(), device=device, backend=backend)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if _is_bias(name):
                p.zero_()
                p.requires_grad_(False)
    model.max_of_k_config = config
    return model


def _is_bias(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf.startswith("b_") or leaf == "bias"


@torch.no_grad()
def evaluate(model: Any, tokens: Tensor, labels: Tensor) -> dict[str, float]:
    """Cross-entropy (float64) and accuracy (argmax == max) of the last position's logits."""
    dev = next(model.parameters()).device
    logits = last_logits(model, tokens.to(dev)).double()
    labels = labels.to(dev)
    return {
        "loss": float(F.cross_entropy(logits, labels)),
        "accuracy": float((logits.argmax(-1) == labels).double().mean()),
    }


# ------------------------------------------------------------------------------------------- training
def train(
    config: MaxOfKConfig | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    backend: str | None = None,
    threads: int | None = 1,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TrainingRun:
    """Train a Max-of-K model from scratch through `train_loop`; deterministic given `config.seed` (same device,
    thread count and torch). AdamW on the non-bias parameters, a fresh uniform batch each step (generator seeded
    by `seed`), cross-entropy of the last position's logits against the maximum, in float64. Evaluated (`history`
    rows `{"step", "loss", "accuracy", "train_loss"}`) on `eval_size` held-out sequences every `eval_every` steps.
    `threads`: torch intra-op threads (1 is fastest for this model). checkpoint_dir / checkpoint_every / resume:
    resumable checkpoints, as in `train_loop`."""
    config = config or MaxOfKConfig()
    device = torch.device(device or "cpu")
    model = build_model(config, device=device, backend=backend)
    eval_tokens, eval_labels = make_batch(config, config.eval_size, torch.Generator().manual_seed(config.seed + 10_000))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)

    def batch_loss(step: int, generator: torch.Generator) -> Tensor:
        tokens, labels = make_batch(config, config.batch_size, generator)
        logits = last_logits(model, tokens.to(device)).double()
        return F.cross_entropy(logits, labels.to(device))

    def score(step: int, losses: Losses) -> dict[str, float]:
        row = evaluate(model, eval_tokens, eval_labels)
        row["train_loss"] = losses.mean if losses.count else row["loss"]
        return row

    return train_loop(
        model,
        opt,
        batch_loss,
        config.steps,
        seed=config.seed,
        config=config,
        evaluate=score,
        eval_steps=set(range(0, config.steps + 1, config.eval_every)) | {config.steps},
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        postfix={"loss": ("loss", ".4f"), "acc": ("accuracy", ".4f")},
        desc=f"train max-of-{config.n_ctx} (seed {config.seed})",
        progress=progress,
        threads=threads,
    )


# ---------------------------------------------------------------------------------------- save / load
def save(run: TrainingRun, directory: str | os.PathLike) -> Path:
    """Write the trained model to `directory` (`save_artifact`): TransformerLens weight names in
    `tensors.safetensors`, the config and a training summary in `cfg.json` (kind "MaxOfKModel")."""
    final = run.history[-1] if run.history else {}
    training = {"final_loss": final.get("loss"), "final_accuracy": final.get("accuracy"), "history": run.history}
    return registry.save_transformer(run, directory, KIND, training, model_name=run.config.model_name)


def load(directory: str | os.PathLike, device: str | torch.device | None = None, backend: str | None = None):
    """The model `save` wrote, in eval mode, with `max_of_k_config` and `training_summary` attached."""
    model, _, meta = registry.load_transformer(
        directory, KIND, MaxOfKConfig, build_model, device=device, backend=backend
    )
    model.training_summary = meta.get("training", {})
    return model


def load_default(
    path: str | os.PathLike | None = None, device: str | torch.device | None = None, backend: str | None = None
):
    """A Max-of-K model in eval mode: `path` a folder written by `tl-tensorsim train max_of_k --out DIR` (or
    `save`); None: `registry.default_out("max_of_k")`, trained there once with the paper's settings (seed 0)."""
    return load(registry.model_folder("max_of_k", path), device=device, backend=backend)
