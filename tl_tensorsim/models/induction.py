"""The embedded default model: a 2-layer attention-only transformer that carries the induction circuit.

Trained by `train()` on sequences `BOS + tokens` in which one random segment occurs twice; the loss is on every
next-token prediction. Only the second copy of the segment is predictable, and only by induction (find the
earlier occurrence of the current token, copy the token after it), so the model grows the textbook circuit: a
previous-token head in layer 0 whose output the keys of an induction head in layer 1 read (K-composition).

    tl-tensorsim train induction --out DIR          # retrain into DIR (default ~/.cache/tl_tensorsim/induction)
    ts.load_induction_model(DIR)                    # ... and load it; ts.load_induction_model(): the shipped one

`load_default()` loads the shipped weights (`weights/induction_2l/`, written by `save` through
`tl_tensorsim.artifacts`; the default config retrains them bit for bit); `build_model()` gives a fresh model with
the toy tokenizer (`t0 ... t63` and `<|endoftext|>` as BOS), so `to_tokens`, `to_str_tokens` and
`head_detector.detect_head` work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_tensorsim.artifacts import DictConfig
from tl_tensorsim.model_io import build_tl_model
from tl_tensorsim.models import registry
from tl_tensorsim.models.toy import toy_tokenizer
from tl_tensorsim.training import TrainingRun, train_loop, warmup_cosine

MODEL_NAME = "tl_tensorsim-induction-2l"
KIND = "InductionModel"
# the model registry (`tl-tensorsim train induction`, see registry.py)
DESCRIPTION = "2-layer attention-only transformer with an induction circuit (the embedded default model)"
SHIPPED = Path(__file__).resolve().parent / "weights" / "induction_2l"


@dataclass
class InductionConfig(DictConfig):
    """Architecture, data and training settings of the induction model (defaults: the shipped model)."""

    # architecture (TransformerLens config fields)
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: int = 16
    n_ctx: int = 48
    n_tokens: int = 64  # ordinary tokens t0..t63; d_vocab = n_tokens + 1 (BOS)
    attn_only: bool = True
    d_mlp: int | None = None  # only when attn_only=False (default 4 * d_model)
    normalization_type: str | None = "LN"
    positional_embedding_type: str = "standard"
    # data: BOS + (n_ctx - 1) distinct tokens, one segment of min_repeat..max_repeat tokens occurring twice
    min_repeat: int = 4
    max_repeat: int = 23
    # training
    seed: int = 0
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    decay_start: float = 0.75  # fraction of the steps after which the learning rate decays
    min_lr_factor: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 50
    eval_every: int = 100
    eval_size: int = 256

    def __post_init__(self) -> None:
        body = self.n_ctx - 1
        if not 2 <= self.min_repeat <= self.max_repeat or 2 * self.max_repeat > body:
            raise ValueError(
                f"min_repeat/max_repeat: expected 2 <= min_repeat <= max_repeat <= (n_ctx - 1) // 2 = {body // 2}; "
                f"got {self.min_repeat}, {self.max_repeat}"
            )
        if body - self.min_repeat > self.n_tokens:
            raise ValueError(
                f"n_tokens: a sequence holds up to {body - self.min_repeat} distinct tokens; got n_tokens={self.n_tokens}"
            )

    @property
    def d_vocab(self) -> int:
        return self.n_tokens + 1

    @property
    def bos_token_id(self) -> int:
        return self.n_tokens

    def words(self) -> list[str]:
        return [f"t{i}" for i in range(self.n_tokens)]

    def tl_fields(self) -> dict[str, Any]:
        """The TransformerLens config fields (HookedTransformerConfig / TransformerBridgeConfig)."""
        names = ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab", "attn_only", "normalization_type")
        out = {k: getattr(self, k) for k in (*names, "positional_embedding_type", "seed")}
        out["model_name"] = MODEL_NAME
        if not self.attn_only:
            out.update(d_mlp=self.d_mlp or 4 * self.d_model, act_fn="gelu_new")
        return out


CONFIG = InductionConfig


# ----------------------------------------------------------------------------------------------- data
def make_batch(
    config: InductionConfig, batch_size: int, generator: torch.Generator | None = None
) -> tuple[Int[Tensor, "batch n_ctx"], Bool[Tensor, "batch n_ctx"]]:
    """`batch_size` training sequences and the positions where the next token is predictable by induction.

    Each sequence is BOS then `n_ctx - 1` tokens: a segment `s` of length L (uniform in min_repeat..max_repeat)
    placed twice at random non-overlapping places, every other token distinct from each other and from `s`.
    `mask[b, j]` is True where `tokens[b, j + 1]` is predictable by induction: j runs over the second copy
    of `s` but its last token (the token after `s[i]`'s earlier occurrence is `s[i + 1]`).
    Returns int64 tokens `[batch, n_ctx]` and a bool mask `[batch, n_ctx]` (CPU).
    """
    c = config
    g = generator if generator is not None else torch.Generator().manual_seed(c.seed)
    body = c.n_ctx - 1
    tokens = torch.full((batch_size, c.n_ctx), c.bos_token_id, dtype=torch.long)
    mask = torch.zeros(batch_size, c.n_ctx, dtype=torch.bool)
    lengths = torch.randint(c.min_repeat, c.max_repeat + 1, (batch_size,), generator=g)
    for b in range(batch_size):
        L = int(lengths[b])
        free = body - 2 * L
        u, v = sorted(torch.randint(0, free + 1, (2,), generator=g).tolist())  # u, v - u, free - v fillers
        perm = torch.randperm(c.n_tokens, generator=g)[: body - L]
        seg, filler = perm[:L], perm[L:]
        tokens[b, 1:] = torch.cat([filler[:u], seg, filler[u:v], seg, filler[v:]])  # copies at u and v + L
        mask[b, 1 + v + L : v + 2 * L] = True  # sequence positions 1+q .. q+L-1 (q = v + L) predict s[1] .. s[L-1]
    return tokens, mask


def repeated_tokens(
    config: InductionConfig, batch_size: int, length: int | None = None, seed: int = 0
) -> Int[Tensor, "batch seq"]:
    """The classic induction probe: BOS + A + A, A `length` distinct random tokens (default (n_ctx - 1) // 2)."""
    length = length or (config.n_ctx - 1) // 2
    if not 1 <= length <= min(config.n_tokens, (config.n_ctx - 1) // 2):
        raise ValueError(f"length: expected 1..{min(config.n_tokens, (config.n_ctx - 1) // 2)}; got {length}")
    g = torch.Generator().manual_seed(seed)
    a = torch.stack([torch.randperm(config.n_tokens, generator=g)[:length] for _ in range(batch_size)])
    bos = torch.full((batch_size, 1), config.bos_token_id, dtype=torch.long)
    return torch.cat([bos, a, a], dim=1)


# ---------------------------------------------------------------------------------------------- model
def build_model(
    config: InductionConfig | None = None, device: str | torch.device | None = None, backend: str | None = None
):
    """A freshly initialised model (seeded by `config.seed`) with the toy tokenizer attached.

    A `HookedTransformer` where TransformerLens has one (2.16+/3.x), else `TransformerBridge.boot_native`;
    `backend="hooked"|"bridge"` picks one explicitly.
    """
    config = config or InductionConfig()
    tokenizer = toy_tokenizer(config.words())
    return build_tl_model(config.tl_fields(), tokenizer=tokenizer, device=device, backend=backend)


def config_of(model: Any) -> InductionConfig:
    """The `InductionConfig` a model was built with (`load_default`, `load`, `train`), else the default."""
    cfg = getattr(model, "induction_config", None)
    return cfg if isinstance(cfg, InductionConfig) else InductionConfig()


def masked_accuracy(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"]
) -> float:
    """Top-1 next-token accuracy of `logits` at the positions where `mask` is True (as `make_batch` returns)."""
    hit = logits[:, :-1].argmax(-1) == tokens[:, 1:]
    return float(hit[mask[:, :-1]].float().mean())


@torch.no_grad()
def evaluate(model: Any, tokens: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean next-token loss over all positions and top-1 accuracy on the induction-predictable ones."""
    dev = next(model.parameters()).device
    tokens, mask = tokens.to(dev), mask.to(dev)
    logits = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))
    return {"loss": float(loss), "induction_accuracy": masked_accuracy(logits, tokens, mask)}


def induction_accuracy(model: Any, n: int = 512, seed: int = 12345, config: InductionConfig | None = None) -> float:
    """Top-1 accuracy on induction-predictable tokens of `n` fresh sequences from `make_batch` (seeded)."""
    config = config or config_of(model)
    tokens, mask = make_batch(config, n, torch.Generator().manual_seed(seed))
    return evaluate(model, tokens, mask)["induction_accuracy"]


# ------------------------------------------------------------------------------------------- training
def _lr_factor(config: InductionConfig, step: int) -> float:
    return warmup_cosine(step, config.steps, config.warmup_steps, config.decay_start, config.min_lr_factor)


def train(
    config: InductionConfig | None = None,
    checkpoint_steps: list[int] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    backend: str | None = None,
    threads: int | None = 1,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TrainingRun:
    """Train the induction model from scratch through `tl_tensorsim.training.train_loop`; deterministic given
    `config.seed` (same device, thread count, torch).

    AdamW (betas 0.9, 0.98): linear warm-up, constant `lr`, cosine decay to `min_lr_factor * lr` over the last
    `1 - decay_start` of the steps; a fresh batch from `make_batch` every step (generator seeded by `config.seed`),
    cross-entropy on every next-token prediction. Evaluated (`history` rows `{"step", "loss",
    "induction_accuracy", "train_loss"}`, `train_loss` the mean since the last row) on `eval_size` held-out
    sequences every `eval_every` steps and at every checkpoint step.
    `checkpoint_steps`: steps (0..config.steps) at which to keep a copy of the weights (`run.checkpoints`, CPU,
    loadable with `build_model(run.config).load_state_dict`). device: defaults to CPU. threads: torch intra-op
    threads while training (1: fastest for this small model on a shared machine; None leaves the setting alone).
    checkpoint_dir / checkpoint_every / resume: resumable checkpoints, as in `train_loop`.
    """
    config = config or InductionConfig()
    steps_wanted = sorted(set(checkpoint_steps or []))
    bad = [s for s in steps_wanted if not isinstance(s, int) or not 0 <= s <= config.steps]
    if bad:
        raise ValueError(f"checkpoint_steps: expected integers in 0..{config.steps}; got {bad}")
    device = torch.device(device or "cpu")
    model = build_model(config, device=device, backend=backend)
    model.induction_config = config
    eval_tokens, eval_mask = make_batch(config, config.eval_size, torch.Generator().manual_seed(config.seed + 10_000))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, config))

    def batch_loss(step: int, generator: torch.Generator) -> Tensor:
        tokens = make_batch(config, config.batch_size, generator)[0].to(device)
        logits = model(tokens)[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    def score(step: int, losses) -> dict[str, float]:
        row = evaluate(model, eval_tokens, eval_mask)
        row["train_loss"] = losses.mean if losses.count else row["loss"]
        return row

    every = set(range(0, config.steps + 1, config.eval_every))
    return train_loop(
        model,
        opt,
        batch_loss,
        config.steps,
        seed=config.seed,
        config=config,
        scheduler=sched,
        evaluate=score,
        eval_steps=every | set(steps_wanted) | {config.steps},
        keep_steps=steps_wanted,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        postfix={"loss": ("loss", ".3f"), "ind_acc": ("induction_accuracy", ".3f")},
        desc="train induction model",
        progress=progress,
        threads=threads,
    )


# ---------------------------------------------------------------------------------------- save / load
def save(run: TrainingRun, directory: str | os.PathLike) -> Path:
    """Write the trained model to `directory` through `save_artifact`: `tensors.safetensors` (TransformerLens
    weight names, the same whichever model class trained it) and `cfg.json` (kind "InductionModel", the config and
    a training summary with the evaluation history)."""
    final = run.history[-1]
    training = {
        "final_loss": round(final["loss"], 4),
        "final_induction_accuracy": round(final["induction_accuracy"], 4),
        "induction_accuracy_heldout": round(induction_accuracy(run.model, config=run.config), 4),
        "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in run.history],
    }
    fmt = "TransformerLens parameter names (HookedTransformer.state_dict / TransformerBridge.tl_parameters)"
    return registry.save_transformer(run, directory, KIND, training, model_name=MODEL_NAME, format=fmt)


def load(directory: str | os.PathLike, device: str | torch.device | None = None, backend: str | None = None):
    """A model in eval mode from a folder `save` wrote, with `induction_config` and `training_summary` attached."""
    model, config, meta = registry.load_transformer(
        directory, KIND, InductionConfig, build_model, device=device, backend=backend
    )
    model.induction_config = config
    model.training_summary = meta.get("training", {})
    return model


def load_default(
    path: str | os.PathLike | None = None, device: str | torch.device | None = None, backend: str | None = None
):
    """The induction model in eval mode. `path`: a folder written by `tl-tensorsim train induction --out DIR`
    (or `save`); None: the shipped weights, else (if they are missing) weights trained once with the default
    config and cached in `registry.default_out("induction")` (`~/.cache/tl_tensorsim/induction`)."""
    return load(registry.model_folder("induction", path), device=device, backend=backend)
