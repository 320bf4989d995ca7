"""`GroupMLP`: the one-hidden-layer network trained on a finite group's multiplication table (Chughtai et al. 2023's
architecture, used by Stander et al. 2024 and Wu et al., arXiv 2410.07476).

    tokens [batch, 2] = (x, y) -> embed_left[x] (hook_embed_left), embed_right[y] (hook_embed_right)
    -> concat @ W (hook_pre) -> ReLU (hook_post) -> @ W_U (hook_logits): [batch, order], the label is x ⋆ y

No biases. Init randn/√fan (embeddings √d_embed, W √(2·d_embed), W_U √d_hidden). The embedding and the first linear
map fold into one lookup table per side, `w_l = embed_left @ W[:d_embed]`, `w_r = embed_right @ W[d_embed:]`
(`[order, d_hidden]`), and `w_u = W_U` (`[d_hidden, order]`): logits(x, y) = ReLU(w_l[x] + w_r[y]) @ w_u.
The group and ⋆ are those of `tl_tensorsim.proofs.groups` (table[x, y] = index of x ⋆ y, apply y first).

Recipes (`train_group_mlp(group, seed, recipe=...)`):
- "published" (Chughtai): AdamW lr 1e-3, weight decay 1, betas (0.9, 0.98), full batch, loss in float64, train
  fraction 0.4 (S4, S5) / 0.5 (A5) / 0.3 otherwise, 250 000 steps (on one CPU thread here about 7 min for S4,
  20 min for A5 and an hour for S5; on an H200, `train(config, device="cuda")`, 1.9 ms per S5 step, about 8 min;
  `steps` overrides).
- "fast" (default): the same except lr 1e-2, train fraction 0.6 for S4 (0.4 does not generalise within 6000 steps
  here), and `FAST_STEPS` steps (S4 5000, A5 6000, S5 12 000: at 6000 steps half the S5 seeds were not yet fully
  accurate; 6000 otherwise); measured in the README.

    tl-tensorsim train group_mlp --out DIR --set group=S5 --set seed=3
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

try:  # TransformerLens 3.x exports it at the top level
    from transformer_lens import HookedRootModule
except ImportError:  # pragma: no cover
    from transformer_lens.hook_points import HookedRootModule
from transformer_lens.hook_points import HookPoint

from tl_tensorsim.artifacts import DictConfig, load_artifact, save_artifact
from tl_tensorsim.checks import as_token_tensor, check_token_range
from tl_tensorsim.models import registry
from tl_tensorsim.models.group_table import group_elements, multiplication_table
from tl_tensorsim.training import Losses, TrainingRun, train_loop

KIND = "GroupMLP"
DESCRIPTION = "one-hidden-layer MLP on a finite group's multiplication table (S4, A5, S5, ...; arXiv 2410.07476)"
WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED = WEIGHTS / "group_S5"

PUBLISHED_FRACTION = {"S4": 0.4, "S5": 0.4, "A5": 0.5, "S6": 0.25}
FAST_FRACTION = {"S4": 0.6}
FAST_STEPS = {"S4": 5000, "A5": 6000, "S5": 12_000}


@dataclass
class GroupMLPConfig(DictConfig):
    """Group (by name: "S4", "A5", "S5", "C12", "D6", ...), widths, and training settings."""

    group: str = "S5"
    d_embed: int = 256
    d_hidden: int = 128
    seed: int = 0
    recipe: str = "fast"
    lr: float | None = None  # None: the recipe's
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    train_frac: float | None = None  # None: the published fraction for the group
    steps: int | None = None  # None: the recipe's
    eval_every: int = 500

    def __post_init__(self) -> None:
        if self.recipe not in ("fast", "published"):
            raise ValueError(f"recipe: expected 'fast' or 'published'; got {self.recipe!r}")
        for name in ("d_embed", "d_hidden", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1; got {value!r}")
        if self.train_frac is not None and not 0 < self.train_frac <= 1:
            raise ValueError(f"train_frac: expected a fraction in (0, 1]; got {self.train_frac!r}")

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-2 if self.recipe == "fast" else 1e-3)

    @property
    def resolved_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return FAST_STEPS.get(self.group, 6000) if self.recipe == "fast" else 250_000

    @property
    def resolved_frac(self) -> float:
        if self.train_frac is not None:
            return self.train_frac
        fast = FAST_FRACTION.get(self.group) if self.recipe == "fast" else None
        return fast if fast is not None else PUBLISHED_FRACTION.get(self.group, 0.3)

    @property
    def model_name(self) -> str:
        return f"group_mlp_{self.group}_seed{self.seed}"


CONFIG = GroupMLPConfig


def _table(name: str) -> Tensor:
    return multiplication_table(group_elements(name)[0])


class GroupMLP(HookedRootModule):
    """Chughtai's one-hidden-layer MLP on pairs of group elements (module docstring). `cfg` a `GroupMLPConfig`
    (or a dict of its fields), or the group itself: a name ("S5") or a `Group` (`GroupMLP(symmetric(5),
    d_embed=256, d_hidden=128)`, keywords as in `GroupMLPConfig`). `table` (int64 `[order, order]`) the group's
    multiplication table, the labels (default: the group's). Parameters `embed_left`, `embed_right`
    `[order, d_embed]`, `W` `[2·d_embed, d_hidden]`, `W_U` `[d_hidden, order]`."""

    def __init__(self, cfg: GroupMLPConfig | dict | str | Any, table: Tensor | None = None, **fields: Any):
        super().__init__()
        if hasattr(cfg, "table") and hasattr(cfg, "name"):  # a Group: its name, and its table unless one is given
            table = cfg.table if table is None else table
            cfg = cfg.name
        if isinstance(cfg, str):
            cfg = GroupMLPConfig(group=cfg, **fields)
        elif fields:
            raise TypeError(f"GroupMLP: keywords {sorted(fields)} go with a group (name or Group), not with a config")
        if isinstance(cfg, dict):
            cfg = GroupMLPConfig.from_dict(cfg)
        if not isinstance(cfg, GroupMLPConfig):
            raise TypeError(
                f"cfg: expected a GroupMLPConfig, a dict, a group name or a Group; got {type(cfg).__name__}"
            )
        self.cfg = cfg
        if table is None:
            table = _table(cfg.group)
        if table.shape[0] < 2:
            raise ValueError(
                f"group: expected a group of order >= 2 (with one element there is nothing to predict); "
                f"got {cfg.group} of order {table.shape[0]}"
            )
        self.register_buffer("table", table.clone().long(), persistent=False)
        order, d, h = table.shape[0], cfg.d_embed, cfg.d_hidden
        g = torch.Generator().manual_seed(cfg.seed)
        self.embed_left = nn.Parameter(torch.randn(order, d, generator=g) / math.sqrt(d))
        self.embed_right = nn.Parameter(torch.randn(order, d, generator=g) / math.sqrt(d))
        self.W = nn.Parameter(torch.randn(2 * d, h, generator=g) / math.sqrt(2 * d))
        self.W_U = nn.Parameter(torch.randn(h, order, generator=g) / math.sqrt(h))
        self.hook_embed_left = HookPoint()  # [batch, d_embed]
        self.hook_embed_right = HookPoint()  # [batch, d_embed]
        self.hook_pre = HookPoint()  # [batch, d_hidden]
        self.hook_post = HookPoint()  # [batch, d_hidden]
        self.hook_logits = HookPoint()  # [batch, order]
        self.setup()

    @property
    def order(self) -> int:
        return self.table.shape[0]

    def forward(self, tokens: Int[Tensor, "batch 2"]) -> Float[Tensor, "batch order"]:
        """Logits `[batch, order]` for the pairs `tokens[:, 0] ⋆ tokens[:, 1]`."""
        tokens = as_token_tensor(tokens, "tokens", allow_1d=True).to(self.W.device)
        if tokens.shape[-1] != 2:
            raise ValueError(f"tokens: expected pairs [batch, 2]; got shape {list(tokens.shape)}")
        check_token_range(tokens, "tokens", self.order)
        left = self.hook_embed_left(self.embed_left[tokens[:, 0]])
        right = self.hook_embed_right(self.embed_right[tokens[:, 1]])
        pre = self.hook_pre(torch.cat([left, right], -1) @ self.W)
        return self.hook_logits(self.hook_post(F.relu(pre)) @ self.W_U)

    # ---------------------------------------------------------------- folded tables (what the proofs read)
    @property
    def w_l(self) -> Float[Tensor, "order d_hidden"]:
        return self.embed_left @ self.W[: self.cfg.d_embed]

    @property
    def w_r(self) -> Float[Tensor, "order d_hidden"]:
        return self.embed_right @ self.W[self.cfg.d_embed :]

    @property
    def w_u(self) -> Float[Tensor, "d_hidden order"]:
        return self.W_U

    def fast_logits(self, x: Tensor, y: Tensor) -> Tensor:
        """The same function through the folded tables: ReLU(w_l[x] + w_r[y]) @ w_u (used in evaluation)."""
        return F.relu(self.w_l[x] + self.w_r[y]) @ self.W_U

    def train_loss(self, x: Int[Tensor, " batch"], y: Int[Tensor, " batch"], labels: Int[Tensor, " batch"]) -> Tensor:
        """Mean cross-entropy (float64 scalar) of the logits of the pairs (x, y) against `labels`, the value and
        gradients of `F.cross_entropy(model(tokens).double(), labels)` (to float32 rounding) at about 0.7x its cost
        on S5: the folded tables and one fused backward (`PairLoss`). Cost per step 3·2·batch·d_hidden·order."""
        return PairLoss.apply(self.w_l, self.w_r, self.W_U, x, y, labels)

    def __repr__(self) -> str:
        c = self.cfg
        return f"GroupMLP({c.group}, order {self.order}, d_embed {c.d_embed}, d_hidden {c.d_hidden}, seed {c.seed})"


# ------------------------------------------------------------------------------------------- data / training
class PairLoss(torch.autograd.Function):
    """Fused cross-entropy of ReLU(w_l[x] + w_r[y]) @ w_u (`GroupMLP.train_loss`), forward and backward by hand.

    Forward, with l = the float32 logits `[batch, order]`, l* = l[label], μ = max_j l_j:
        loss = mean( log S - (l* - μ) ),   S = Σ_j e_j,   e_j = exp(l_j - μ) in float32, S summed in float64,
    and l* - μ in float64: the float64 loss of the float32 logits, each term to float32 relative precision.
    Backward: ∂loss/∂l_j = (e_j / S - [j = label]) / batch in float32, the label entry written as
    -Σ_{j ≠ label} e_j / S (no cancellation when the loss is tiny, where a float64 softmax minus 1 keeps only
    1e-16 absolute precision); then ∂w_u = hᵀ g, ∂h = g w_uᵀ masked by h > 0, ∂w_l / ∂w_r by index_add over x / y.
    Three batch x d_hidden x order products per step, the minimum for a full-batch step of this network.
    """

    @staticmethod
    def forward(ctx, wl: Tensor, wr: Tensor, wu: Tensor, x: Tensor, y: Tensor, labels: Tensor) -> Tensor:
        h = (wl.index_select(0, x) + wr.index_select(0, y)).clamp_min_(0)
        logits = h @ wu
        rows = torch.arange(len(x), device=x.device)
        top = logits.amax(1, keepdim=True)
        e = torch.exp(logits - top)
        e_label = e[rows, labels].double()
        e[rows, labels] = 0
        others = e.sum(1, dtype=torch.float64)
        total = others + e_label
        loss = (torch.log(total) - (logits[rows, labels].double() - top[:, 0].double())).mean()
        grad = e.div_(total[:, None].to(e.dtype))
        grad[rows, labels] = (-others / total).to(e.dtype)
        ctx.save_for_backward(h, grad, wu, x, y)
        ctx.order = wl.shape[0]
        return loss

    @staticmethod
    def backward(ctx, g: Tensor):
        h, grad, wu, x, y = ctx.saved_tensors
        g_logits = grad * (g / len(x)).to(grad.dtype)
        g_h = (g_logits @ wu.T).mul_(h > 0)
        zeros = torch.zeros(ctx.order, h.shape[1], dtype=h.dtype, device=h.device)
        return zeros.index_add(0, x, g_h), zeros.index_add(0, y, g_h), h.T @ g_logits, None, None, None


def all_pairs(order: int) -> Int[Tensor, "pairs 2"]:
    """Every pair (x, y), x-major, int64 `[order², 2]`."""
    x, y = torch.meshgrid(torch.arange(order), torch.arange(order), indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def split(order: int, frac: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (into `all_pairs`) of the training and test pairs: a seeded random `frac` of the order² pairs."""
    perm = torch.randperm(order * order, generator=torch.Generator().manual_seed(seed))
    n = int(frac * order * order)
    if n < 1:
        raise ValueError(
            f"train_frac: {frac} of the {order * order} pairs is no training pair; expected a larger fraction"
        )
    return perm[:n], perm[n:]


def train(
    config: GroupMLPConfig | None = None,
    progress: bool = True,
    threads: int | None = 1,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
) -> TrainingRun:
    """Full-batch AdamW on the training pairs, cross-entropy in float64 (`GroupMLP.train_loss`, through
    `train_loop`); history rows
    `{"step", "train_loss", "train_acc", "test_acc", "test_loss"}` and a kept state (`run.checkpoints`) every
    `eval_every` steps and at the end. `device`: where to train (default the CPU; the weights are initialised on
    the CPU first, so a seed gives the same initial model everywhere)."""
    config = config or GroupMLPConfig()
    table = _table(config.group)
    device = torch.device(device or "cpu")
    model = GroupMLP(config, table).to(device)
    pairs = all_pairs(len(table)).to(device)
    labels = table.flatten().to(device)
    tr, te = (ids.to(device) for ids in split(len(table), config.resolved_frac, config.seed))
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.resolved_lr, weight_decay=config.weight_decay, betas=config.betas
    )
    steps = config.resolved_steps

    x_tr, y_tr, labels_tr = pairs[tr, 0], pairs[tr, 1], labels[tr]

    def batch_loss(step: int, generator: torch.Generator) -> Tensor:
        return model.train_loss(x_tr, y_tr, labels_tr)

    def evaluate(step: int, losses: Losses) -> dict[str, float]:
        logits = model.fast_logits(pairs[:, 0], pairs[:, 1]).double()
        ok = logits.argmax(-1) == labels
        return {
            "train_loss": float(F.cross_entropy(logits[tr], labels[tr])),
            "test_loss": float(F.cross_entropy(logits[te], labels[te])) if len(te) else math.nan,
            "train_acc": float(ok[tr].double().mean()),
            "test_acc": float(ok[te].double().mean()) if len(te) else math.nan,
        }

    return train_loop(
        model,
        opt,
        batch_loss,
        steps,
        seed=config.seed,
        config=config,
        evaluate=evaluate,
        eval_steps=set(range(0, steps + 1, config.eval_every)) | {steps},
        keep_steps=set(range(0, steps + 1, config.eval_every)) | {steps},
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        postfix={"loss": ("train_loss", ".2e"), "test": ("test_acc", ".4f")},
        desc=f"train GroupMLP {config.group} (seed {config.seed})",
        progress=progress,
        threads=threads,
    )


def train_group_mlp(group: str, seed: int = 0, recipe: str = "fast", progress: bool = True, **overrides) -> TrainingRun:
    """`train(GroupMLPConfig(group=group, seed=seed, recipe=recipe, **overrides))`: "fast" or "published"."""
    if not isinstance(group, str):
        name = getattr(group, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"group: expected a group name ('S5') or a Group; got {type(group).__name__}")
        group = name
    return train(GroupMLPConfig(group=group, seed=seed, recipe=recipe, **overrides), progress=progress)


# ---------------------------------------------------------------------------------------------- save / load
def check_shipped(config: GroupMLPConfig, target: Path | None = None) -> None:
    """A ValueError unless a model of `config` may be written to the shipped folder `target` (`weights/group_<G>`
    holds a model of group G only; default `SHIPPED`); `registry.train_and_save(write_shipped=True)` asks before
    training."""
    target = SHIPPED if target is None else target
    if target.name != f"group_{config.group}":
        raise ValueError(
            f"group: the shipped folder {target.name} holds another group's model; got group={config.group!r} (a "
            f"{config.group} model ships as weights/group_{config.group}; hint: drop --write-shipped)"
        )


def save(run: TrainingRun, directory: str | os.PathLike) -> Path:
    """The trained model's parameters (float32 safetensors) and config + training summary (kind "GroupMLP")."""
    target = Path(directory)
    if target.resolve().parent == WEIGHTS.resolve():
        check_shipped(run.config, target)
    final = run.history[-1] if run.history else {}
    meta = {
        "model_name": run.config.model_name,
        "config": run.config.to_dict(),
        "training": {"steps": run.config.resolved_steps, "seconds": round(run.seconds, 1), "final": final},
    }
    state = {k: v for k, v in run.model.state_dict().items() if k != "table"}
    return save_artifact(directory, state, meta, kind=KIND)


def load(directory: str | os.PathLike, device: str | torch.device | None = None) -> GroupMLP:
    """The model `save` wrote, in eval mode, with `training_summary` attached."""
    tensors, meta = load_artifact(directory, kind=KIND)
    model = GroupMLP(GroupMLPConfig.from_dict(meta["config"]))
    expected = set(model.state_dict())  # the table (not persistent) is the group's, rebuilt from its name
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise ValueError(
            f"directory: {directory} does not hold a {meta['config'].get('group')} GroupMLP's weights (missing "
            f"{missing}, unexpected {extra}; hint: a folder written by group_mlp.save or `tl-tensorsim train`)"
        )
    model.load_state_dict(tensors, strict=False)
    model.training_summary = meta.get("training", {})
    return model.to(device or "cpu").eval()


def shipped(group: str = "S5") -> list[Path]:
    """The shipped model folders for `group` (`weights/group_<group>*`), sorted."""
    return sorted(p for p in WEIGHTS.glob(f"group_{group}*") if p.is_dir())


def load_default(path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> GroupMLP:
    """A GroupMLP in eval mode: `path` a folder from `tl-tensorsim train group_mlp --out DIR`; None: the shipped
    S5 model (trained with the default config if missing)."""
    return load(registry.model_folder("group_mlp", path), device=device)
