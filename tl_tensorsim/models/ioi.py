"""A small attention-only transformer trained on indirect object identification (IOI) sentences, whose circuit is
then found by path patching (`tl_tensorsim.circuits.path_patching`) and recorded as `circuits.known("ioi_3l",
"ioi")`.

The training sentences are the IOI dataset's templates (the 15 BABA templates of Wang et al. 2022 and their ABBA
mirrors) plus `DUPLICATE_FIRST_TEMPLATES` (a fraction `duplicate_first` of each batch; see `ioi_text`), filled with
the dataset's 100 first names, places and objects, over a word-level vocabulary (`ioi_tokenizer()`): BOS + sentence
+ the indirect object. The loss is next-token cross-entropy on every position, as in language modelling; only the
answer (the name that occurs once) is a task, the rest is template text and random names.

    tl-tensorsim train ioi --out DIR          # retrain (default ~/.cache/tl_tensorsim/ioi)
    model = ioi.load_default()                # the shipped weights (`weights/ioi_3l/`)
    ioi.evaluate(model, ioi.make_batch(config_of(model), 500, generator))   # logit difference and accuracy

Because the model's vocabulary is word-level, `circuits.ioi_dataset(model.tokenizer, ...)` builds the paper's prompt
sets (positions IO, S1, S2, END; the swap / S-name / random corruptions) for it unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_tensorsim.artifacts import DictConfig
from tl_tensorsim.model_io import build_tl_model
from tl_tensorsim.models import registry
from tl_tensorsim.models.ioi_text import (
    BABA_TEMPLATES,
    DUPLICATE_FIRST_TEMPLATES,
    NAMES,
    OBJECTS,
    PLACES,
    SLOTS,
    mirror,
    split_words,
    vocabulary,
)
from tl_tensorsim.models.toy import toy_tokenizer
from tl_tensorsim.training import TrainingRun, train_loop, warmup_cosine

MODEL_NAME = "tl_tensorsim-ioi-3l"
KIND = "IOIModel"
DESCRIPTION = "3-layer attention-only transformer trained on IOI sentences (word-level vocabulary)"
SHIPPED = Path(__file__).resolve().parent / "weights" / "ioi_3l"

__all__ = [
    "CONFIG",
    "IOIBatch",
    "IOIConfig",
    "build_model",
    "config_of",
    "evaluate",
    "ioi_tokenizer",
    "load",
    "load_default",
    "make_batch",
    "save",
    "train",
]


def ioi_tokenizer() -> Any:
    """The IOI model's word-level tokenizer: `ioi_text.vocabulary()` (ids 0..160, words and punctuation split as
    `ioi_text.split_words` does) plus `<|endoftext|>` as BOS / PAD (id 161)."""
    return toy_tokenizer(vocabulary(), split_punctuation=True, name="ioi")


@dataclass
class IOIConfig(DictConfig):
    """Architecture, data and training settings of the IOI model (defaults: the shipped model)."""

    # architecture (TransformerLens config fields)
    n_layers: int = 3
    n_heads: int = 4
    d_model: int = 64
    d_head: int = 16
    n_ctx: int = 24
    normalization_type: str | None = "LN"
    # data: a fraction `duplicate_first` of each batch from DUPLICATE_FIRST_TEMPLATES, the rest from the paper's;
    # each sentence in its BABA or ABBA order with probability 1/2
    duplicate_first: float = 1 / 3
    # training
    seed: int = 0
    steps: int = 2500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    decay_start: float = 0.75
    min_lr_factor: float = 0.1
    eval_every: int = 250
    eval_size: int = 500

    def __post_init__(self) -> None:
        if not 0.0 <= self.duplicate_first <= 1.0:
            raise ValueError(f"duplicate_first: expected a fraction in [0, 1]; got {self.duplicate_first}")
        need = 2 + max(len(_compiled(t)) for t in _templates(True))  # BOS + sentence + answer
        if self.n_ctx < need:
            raise ValueError(f"n_ctx: the longest training sentence needs {need} positions; got n_ctx={self.n_ctx}")

    @property
    def d_vocab(self) -> int:
        return len(vocabulary()) + 1

    @property
    def bos_token_id(self) -> int:
        return len(vocabulary())

    def tl_fields(self) -> dict[str, Any]:
        """The TransformerLens config fields (HookedTransformerConfig / TransformerBridgeConfig)."""
        names = ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab", "normalization_type", "seed")
        out = {k: getattr(self, k) for k in names}
        out.update(attn_only=True, positional_embedding_type="standard", model_name=MODEL_NAME)
        return out


CONFIG = IOIConfig


# ----------------------------------------------------------------------------------------------- data
def _templates(duplicate_first: bool) -> tuple[str, ...]:
    """The paper's templates in both orders (BABA and ABBA), or DUPLICATE_FIRST_TEMPLATES as written (their
    mirrors would repeat a name in a row: "... [A] met [A]")."""
    if duplicate_first:
        return DUPLICATE_FIRST_TEMPLATES
    return tuple(t for b in BABA_TEMPLATES for t in (b, mirror(b)))


def _compiled(template: str) -> list[str]:
    """The template without its final ` [A]` as words and slot markers."""
    body = template[: template.rindex(" [A]")]
    for slot in SLOTS:
        body = body.replace(slot, f" {slot} ")
    out = []
    for piece in body.split():
        out.extend([piece] if piece in SLOTS else split_words(piece))
    return out


@dataclass(frozen=True)
class IOIBatch:
    """Training / evaluation sentences: `tokens` `[batch, n_ctx]` (BOS + sentence + answer, right-padded with BOS),
    `valid` `[batch, n_ctx]` (True where the next token is part of the sentence, the targets of the loss), `end`
    `[batch]` (the position whose next token is the answer), `io`, `s` `[batch]` (the answer and the subject token
    ids), `duplicate_first` `[batch]` (True for a sentence from `DUPLICATE_FIRST_TEMPLATES`)."""

    tokens: Int[Tensor, "batch n_ctx"]
    valid: Bool[Tensor, "batch n_ctx"]
    end: Int[Tensor, " batch"]
    io: Int[Tensor, " batch"]
    s: Int[Tensor, " batch"]
    duplicate_first: Bool[Tensor, " batch"]


def make_batch(
    config: IOIConfig, batch_size: int, generator: torch.Generator | None = None, duplicate_first: float | None = None
) -> IOIBatch:
    """`batch_size` sentences drawn with `generator` (default seeded by `config.seed`): each picks the template
    family (DUPLICATE_FIRST with probability `duplicate_first`, default `config.duplicate_first`), a template (a
    paper template in BABA or ABBA order), two distinct names (IO, S), a place and an object. Cost O(batch · n_ctx), no tokenizer."""
    c = config
    g = generator if generator is not None else torch.Generator().manual_seed(c.seed)
    frac = c.duplicate_first if duplicate_first is None else duplicate_first
    ids = {w: i for i, w in enumerate(vocabulary())}
    families = [[_compiled(t) for t in _templates(flag)] for flag in (False, True)]
    dup = torch.rand(batch_size, generator=g) < frac
    pick = torch.randint(0, 1 << 30, (batch_size, 5), generator=g).tolist()
    tokens = torch.full((batch_size, c.n_ctx), c.bos_token_id, dtype=torch.long)
    valid = torch.zeros(batch_size, c.n_ctx, dtype=torch.bool)
    end, io_ids, s_ids = (torch.zeros(batch_size, dtype=torch.long) for _ in range(3))
    for b, (t, a, s, p, o) in enumerate(pick):
        family = families[int(dup[b])]
        a, s = a % len(NAMES), s % (len(NAMES) - 1)
        s += s >= a
        fill = {"[A]": ids[NAMES[a]], "[B]": ids[NAMES[s]], "[PLACE]": ids[PLACES[p % len(PLACES)]]}
        fill["[OBJECT]"] = ids[OBJECTS[o % len(OBJECTS)]]
        row = [c.bos_token_id] + [fill[w] if w in fill else ids[w] for w in family[t % len(family)]] + [fill["[A]"]]
        tokens[b, : len(row)] = torch.tensor(row)
        valid[b, : len(row) - 1] = True
        end[b], io_ids[b], s_ids[b] = len(row) - 2, fill["[A]"], fill["[B]"]
    return IOIBatch(tokens, valid, end, io_ids, s_ids, dup)


# ---------------------------------------------------------------------------------------------- model
def build_model(config: IOIConfig | None = None, device: str | torch.device | None = None, backend: str | None = None):
    """A freshly initialised model (seeded by `config.seed`) with `ioi_tokenizer()` attached; a `HookedTransformer`
    where TransformerLens has one, else `TransformerBridge.boot_native` (`backend=` picks one)."""
    config = config or IOIConfig()
    return build_tl_model(config.tl_fields(), tokenizer=ioi_tokenizer(), device=device, backend=backend)


def config_of(model: Any) -> IOIConfig:
    """The `IOIConfig` a model was built with (`train`, `load`), else the default."""
    cfg = getattr(model, "ioi_config", None)
    return cfg if isinstance(cfg, IOIConfig) else IOIConfig()


def answer_logits(logits: Float[Tensor, "batch pos vocab"], batch: IOIBatch) -> tuple[Tensor, Tensor]:
    """`(logit diff, top-1 hit)` `[batch]` at each sentence's `end`: logit[IO] − logit[S] (float64) and whether IO
    is the arg-max."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    at = logits[rows, batch.end.to(logits.device)].double()
    diff = at[rows, batch.io.to(logits.device)] - at[rows, batch.s.to(logits.device)]
    return diff, at.argmax(-1) == batch.io.to(logits.device)


@torch.no_grad()
def evaluate(model: Any, batch: IOIBatch) -> dict[str, float]:
    """Mean next-token loss over the sentences, and at the answer: mean logit difference IO − S, accuracy (IO is the
    top-1 token) and the fraction with a positive logit difference, over all of `batch` and over its
    paper-template sentences alone (`ioi_*`)."""
    dev = next(model.parameters()).device
    tokens = batch.tokens.to(dev)
    logits = model(tokens)
    target = tokens[:, 1:].masked_fill(~batch.valid[:, :-1].to(dev), -100)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100)
    diff, hit = answer_logits(logits, batch)
    paper = ~batch.duplicate_first.to(dev)
    out = {"loss": float(loss), "logit_diff": float(diff.mean()), "accuracy": float(hit.double().mean())}
    if paper.any():
        out.update(ioi_logit_diff=float(diff[paper].mean()), ioi_accuracy=float(hit[paper].double().mean()))
    return out


# ------------------------------------------------------------------------------------------- training
def train(
    config: IOIConfig | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    backend: str | None = None,
    threads: int | None = 1,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TrainingRun:
    """Train the IOI model from scratch through `tl_tensorsim.training.train_loop`; deterministic given `config.seed`
    (same device, thread count, torch).

    AdamW (betas 0.9, 0.98), linear warm-up, constant `lr`, cosine decay over the last `1 - decay_start` of the steps
    (`training.warmup_cosine`); a fresh `make_batch` every step; next-token cross-entropy on every sentence position.
    `history` rows (every `eval_every` steps, on `eval_size` held-out sentences): `evaluate`'s metrics and
    `train_loss`.
    """
    config = config or IOIConfig()
    device = torch.device(device or "cpu")
    model = build_model(config, device=device, backend=backend)
    model.ioi_config = config
    held_out = make_batch(config, config.eval_size, torch.Generator().manual_seed(config.seed + 10_000))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    c = config
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, c.steps, c.warmup_steps, c.decay_start, c.min_lr_factor)
    )

    def batch_loss(step: int, generator: torch.Generator) -> Tensor:
        batch = make_batch(config, config.batch_size, generator)
        tokens = batch.tokens.to(device)
        logits = model(tokens)[:, :-1]
        target = tokens[:, 1:].masked_fill(~batch.valid[:, :-1].to(device), -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    def score(step: int, losses) -> dict[str, float]:
        row = evaluate(model, held_out)
        row["train_loss"] = losses.mean if losses.count else row["loss"]
        return row

    return train_loop(
        model,
        opt,
        batch_loss,
        config.steps,
        seed=config.seed,
        config=config,
        scheduler=sched,
        evaluate=score,
        eval_steps=set(range(0, config.steps + 1, config.eval_every)) | {config.steps},
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        postfix={"loss": ("loss", ".3f"), "logit_diff": ("logit_diff", ".2f"), "acc": ("accuracy", ".3f")},
        desc="train IOI model",
        progress=progress,
        threads=threads,
    )


# ---------------------------------------------------------------------------------------- save / load
def save(run: TrainingRun, directory: str | os.PathLike) -> Path:
    """Write the trained model to `directory` (`registry.save_transformer`: TransformerLens weight names, kind
    "IOIModel", the config and a training summary with the evaluation history)."""
    training = {
        "final": {k: round(v, 4) for k, v in run.history[-1].items() if isinstance(v, float)},
        "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in run.history],
    }
    return registry.save_transformer(run, directory, KIND, training, model_name=MODEL_NAME)


def load(directory: str | os.PathLike, device: str | torch.device | None = None, backend: str | None = None):
    """A model in eval mode from a folder `save` wrote, with `ioi_config` and `training_summary` attached."""
    model, config, meta = registry.load_transformer(directory, KIND, IOIConfig, build_model, device=device,
                                                    backend=backend)  # fmt: skip
    model.ioi_config = config
    model.training_summary = meta.get("training", {})
    return model


def load_default(
    path: str | os.PathLike | None = None, device: str | torch.device | None = None, backend: str | None = None
):
    """The IOI model in eval mode: `path` (a folder from `tl-tensorsim train ioi --out DIR` or `save`), else the
    shipped weights (else trained once with the default config into the user cache)."""
    return load(registry.model_folder("ioi", path), device=device, backend=backend)
