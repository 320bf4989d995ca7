"""The embedded default model: a 2-layer attention-only transformer that carries the induction circuit.

Trained by `train()` on sequences `BOS + tokens` in which one random segment occurs twice; the loss is on every
next-token prediction. Only the second copy of the segment is predictable, and only by induction (find the
earlier occurrence of the current token, copy the token after it), so the model grows the textbook circuit: a
previous-token head in layer 0 whose output the keys of an induction head in layer 1 read (K-composition).

    tl-tensorsim train-induction                    # retrain and rewrite weights/induction_2l.{safetensors,json}

`load_default()` loads the shipped weights; `build_model()` gives a fresh model with the toy tokenizer
(`t0 ... t63` and `<|endoftext|>` as BOS), so `to_tokens`, `to_str_tokens` and `head_detector.detect_head` work.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from tl_tensorsim.artifacts import DictConfig
from tl_tensorsim.models._threads import limit_threads
from tl_tensorsim.models.toy import build_tl_model, load_tl_state_dict, tl_state_dict, toy_tokenizer

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_NAME = "induction_2l"
CACHE_DIR = Path(os.environ.get("TL_TENSORSIM_CACHE", Path.home() / ".cache" / "tl_tensorsim"))
MODEL_NAME = "tl_tensorsim-induction-2l"


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
    """The `InductionConfig` a model was built with (`load_default`, `load_weights`, `train`), else the default."""
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
@dataclass
class TrainingRun:
    """What `train()` returns: the trained model, state-dict copies at the requested steps, and the history.

    `checkpoints`: `[(step, model.state_dict())]` (CPU copies), step 0 = initialisation; each loads back with
    `build_model(run.config).load_state_dict(state_dict)` (same backend). `tl_tensorsim.models.toy.tl_state_dict`
    gives the backend-independent TransformerLens weight names of a model.
    `history`: one dict per evaluation, `{"step", "loss", "induction_accuracy", "train_loss"}`, at every
    `eval_every` steps and at every checkpoint step (`train_loss` is the mean over the steps since the last row).
    """

    model: Any
    config: InductionConfig
    checkpoints: list[tuple[int, dict[str, Tensor]]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def metrics_at(self, step: int) -> dict[str, float]:
        for row in self.history:
            if row["step"] == step:
                return row
        raise ValueError(f"step: no evaluation at step {step}; evaluated at {[r['step'] for r in self.history]}")

    def accuracy_at(self, step: int) -> float:
        return self.metrics_at(step)["induction_accuracy"]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.history)

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (
            f"TrainingRun({self.config.steps} steps in {self.seconds:.1f}s, {len(self.checkpoints)} checkpoints, "
            f"final loss {last.get('loss', float('nan')):.3f}, induction accuracy {last.get('induction_accuracy', float('nan')):.3f})"
        )


def _lr_factor(config: InductionConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, constant, then cosine decay from `decay_start * steps` to
    `min_lr_factor` at `steps`."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    start = config.decay_start * config.steps
    progress = min(1.0, max(0.0, (step - start) / max(1.0, config.steps - start)))
    return config.min_lr_factor + (1 - config.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    config: InductionConfig | None = None,
    checkpoint_steps: list[int] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    backend: str | None = None,
    threads: int | None = 1,
) -> TrainingRun:
    """Train the induction model from scratch; deterministic given `config.seed` (same device, thread count, torch).

    AdamW: linear warm-up, constant `lr`, cosine decay to `min_lr_factor * lr` over the last `1 - decay_start` of
    the steps; a fresh batch from `make_batch` every step, loss on every next-token prediction.
    `checkpoint_steps`: steps (0..config.steps) at which to keep a copy of the weights and evaluate.
    device: defaults to CPU. threads: torch intra-op threads while training (1: fastest for this small model on
    a shared machine, and reproducible; None leaves the setting alone).
    """
    config = config or InductionConfig()
    steps_wanted = sorted(set(checkpoint_steps or []))
    bad = [s for s in steps_wanted if not isinstance(s, int) or not 0 <= s <= config.steps]
    if bad:
        raise ValueError(f"checkpoint_steps: expected integers in 0..{config.steps}; got {bad}")
    with limit_threads(threads):
        return _train(config, steps_wanted, progress, torch.device(device or "cpu"), backend)


def _train(
    config: InductionConfig, steps_wanted: list[int], progress: bool, device: torch.device, backend: str | None
) -> TrainingRun:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    model = build_model(config, device=device, backend=backend)
    model.induction_config = config
    model.train()
    gen = torch.Generator().manual_seed(config.seed)
    eval_tokens, eval_mask = make_batch(config, config.eval_size, torch.Generator().manual_seed(config.seed + 10_000))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, config))
    run = TrainingRun(model=model, config=config)
    recent: list[float] = []

    def record(step: int) -> None:
        model.eval()
        row = {"step": step, **evaluate(model, eval_tokens, eval_mask)}
        row["train_loss"] = sum(recent) / len(recent) if recent else row["loss"]
        recent.clear()
        run.history.append(row)
        model.train()
        if step in steps_wanted:
            run.checkpoints.append((step, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}))

    record(0)
    bar = tqdm(range(1, config.steps + 1), desc="train induction model", disable=not progress)
    for step in bar:
        tokens = make_batch(config, config.batch_size, gen)[0].to(device)
        logits = model(tokens)[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent.append(loss.item())
        if step in steps_wanted or step % config.eval_every == 0 or step == config.steps:
            record(step)
            bar.set_postfix(
                loss=f"{run.history[-1]['loss']:.3f}", ind_acc=f"{run.history[-1]['induction_accuracy']:.3f}"
            )
    model.eval()
    run.seconds = time.perf_counter() - t0
    return run


# ---------------------------------------------------------------------------------------- save / load
def save_weights(run: TrainingRun, directory: str | os.PathLike = WEIGHTS_DIR, name: str = WEIGHTS_NAME) -> Path:
    """Write `NAME.safetensors` (TL-named weights) and `NAME.json` (config + training summary)."""
    from importlib.metadata import version

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = run.history[-1]
    meta = {
        "model_name": MODEL_NAME,
        "format": "TransformerLens parameter names (HookedTransformer.state_dict / TransformerBridge.tl_parameters)",
        "config": run.config.to_dict(),
        "training": {
            "steps": run.config.steps,
            "seconds": round(run.seconds, 1),
            "final_loss": round(final["loss"], 4),
            "final_induction_accuracy": round(final["induction_accuracy"], 4),
            "induction_accuracy_heldout": round(induction_accuracy(run.model, config=run.config), 4),
            "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in run.history],
            "torch": torch.__version__,
            "transformer_lens": version("transformer_lens"),
        },
    }
    tmp = directory / f".{name}.safetensors.tmp"
    save_file(tl_state_dict(run.model), str(tmp), metadata={"model_name": MODEL_NAME})
    os.replace(tmp, directory / f"{name}.safetensors")
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory / f"{name}.safetensors"


def load_weights(path: str | os.PathLike, device: str | torch.device | None = None, backend: str | None = None):
    """A model in eval mode from `path` (`*.safetensors` beside its `*.json`), as written by `save_weights`."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    config = InductionConfig.from_dict(meta["config"])
    model = build_model(config, device=device, backend=backend)
    load_tl_state_dict(model, load_file(str(path), device="cpu"))
    model.induction_config = config
    model.training_summary = meta.get("training", {})
    return model.eval()


def default_weights_path() -> Path:
    return WEIGHTS_DIR / f"{WEIGHTS_NAME}.safetensors"


def load_default(device: str | torch.device | None = None, backend: str | None = None):
    """The embedded induction model in eval mode: the shipped weights, or (if they are missing) weights trained
    once with the default config and cached under `~/.cache/tl_tensorsim` (`$TL_TENSORSIM_CACHE`)."""
    for path in (default_weights_path(), CACHE_DIR / f"{WEIGHTS_NAME}.safetensors"):
        if path.is_file() and path.with_suffix(".json").is_file():
            return load_weights(path, device=device, backend=backend)
    run = train(InductionConfig())
    save_weights(run, CACHE_DIR)
    return load_weights(CACHE_DIR / f"{WEIGHTS_NAME}.safetensors", device=device, backend=backend)


def retrain(out: str | Path = WEIGHTS_DIR, steps: int | None = None, seed: int | None = None) -> Path:
    """Retrain the embedded model from scratch and rewrite `induction_2l.{safetensors,json}` in `out`
    (`tl-tensorsim train-induction`). Returns the weights path."""
    run = train(InductionConfig(**{k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}))
    path = save_weights(run, out)
    heldout = json.loads(path.with_suffix(".json").read_text())["training"]["induction_accuracy_heldout"]
    print(f"{run!r}\nheld-out induction accuracy {heldout:.4f}\nwrote {path} and {path.with_suffix('.json').name}")
    return path
