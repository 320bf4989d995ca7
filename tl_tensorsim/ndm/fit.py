"""`fit_ndm`: learn a `SubspacePartition` of a representation space with neighbour distance minimisation
(Huang & Hahn, arXiv 2508.01916, Sec. 3), from activations `[n, d]` or from `(model, hook_name, data)`.

Long runs go through `tl_tensorsim.training.train_loop`: a tqdm bar with the loss, the number of subspaces and the
last mean pairwise MI; with `checkpoint_dir`, checkpoints every `checkpoint_every` steps (atomic, so Ctrl-C leaves
the last one valid) and `resume=True` continuing from the last one with results identical to an uninterrupted run.

Under `torch.distributed` (a process group of W > 1 ranks, e.g. `torchrun --nproc-per-node W`; Gloo on CPUs,
NCCL on GPUs) every rank calls `fit_ndm` with the same arguments: the key pool is sharded (`ndm.sharded`), the
rotation is replicated with its gradient all-reduced, the MI counts are reduced over ranks, so every rank returns the
same partition, equal to a one-process fit within float rounding. Only rank 0 shows progress and writes
checkpoints; `checkpoint_dir` must be one folder every rank sees (a shared filesystem): after a barrier (so that
rank 0's last write is complete) the ranks check that they see the same last checkpoint, and every rank resumes from
rank 0's files (`train_loop(write_checkpoints=False)` on the others).

Checkpoints also record `data_fingerprint(acts)` (shape, dtype and a hash of evenly spaced rows), so `resume=True`
refuses a checkpoint written for other activations instead of returning that run's partition.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.activation_store import ActivationStore
from tl_tensorsim.activations import collect_activations
from tl_tensorsim.adapter import ModelView, as_view
from tl_tensorsim.artifacts import Provenance
from tl_tensorsim.checks import as_token_tensor, check_choice, check_finite, checked_int
from tl_tensorsim.distributed import Collectives
from tl_tensorsim.ndm.objective import Parametrization
from tl_tensorsim.ndm.partition import SubspacePartition, check_sizes, mean_pairwise
from tl_tensorsim.ndm.trainer import NDMSettings, NDMState
from tl_tensorsim.positions import Positions, positions_mask
from tl_tensorsim.training import Losses, latest_checkpoint_step, limit_threads, train_loop

SMALL_STEP = 2**26  # batch x key pool x d below which a step runs on one thread
FINGERPRINT_ROWS = 1024  # rows hashed by `data_fingerprint`
POSTFIX = {"loss": ("loss", ".4g"), "S": ("n_subspaces", "d"), "mi": ("mean_mi", ".3g")}


def selection_mask(tokens: Tensor, positions: Positions, exclude_bos: bool) -> Tensor:
    """The rows an NDM fit on token ids `[n_seq, pos]` uses: a boolean mask `[n_seq, pos]` of `positions`
    (None: all), position 0 left out when `exclude_bos`. `ValueError` when nothing is selected."""
    mask = positions_mask(positions, *tokens.shape)
    if mask is None:
        mask = torch.ones(tokens.shape, dtype=torch.bool)
    if exclude_bos:
        mask = mask.clone()
        mask[:, 0] = False
    if not mask.any():
        raise ValueError(
            f"positions: no position selected in data of shape {list(tokens.shape)} (exclude_bos={exclude_bos})"
        )
    return mask


def data_fingerprint(rows: Tensor | ActivationStore, sample: int = FINGERPRINT_ROWS) -> dict[str, Any]:
    """A cheap record of a data set `[n, ...]` (a tensor, memory-mapped or not, or an `ActivationStore`): its shape,
    dtype and the SHA-256 (first 16 hex digits) of the bytes of `sample` evenly spaced rows, the first and the last
    included. Reads only those rows, so a memory map is never loaded whole; two data sets with the same record are
    taken to be the same (a change confined to rows outside the sample goes unnoticed)."""
    n = int(rows.shape[0])
    ids = torch.linspace(0, n - 1, min(n, sample)).round().long().unique() if n else torch.zeros(0, dtype=torch.long)
    picked = rows[ids.to(getattr(rows, "device", "cpu"))].detach().to("cpu").contiguous()
    digest = hashlib.sha256(picked.view(torch.uint8).numpy().tobytes() if picked.numel() else b"").hexdigest()[:16]
    dtype = str(rows.dtype).removeprefix("torch.")
    return {"shape": [int(v) for v in rows.shape], "dtype": dtype, "rows_hashed": len(ids), "rows_sha256": digest}


def _gather(
    model: Any, hook_name: str, data: Any, positions: Positions, exclude_bos: bool, batch_size: int, progress: bool
) -> Tensor:
    """The activations of `model` at `hook_name` on token ids `data`, position 0 left out when `exclude_bos`."""
    view = as_view(model)
    view.check_hook_name(hook_name)
    tokens = as_token_tensor(data, "data")
    mask = selection_mask(tokens, positions, exclude_bos)
    return collect_activations(
        model, tokens, hook_name, mask, batch_size, dtype=torch.float32, progress=progress, distributed=False
    )


def _check_settings(s: NDMSettings, n: int, d: int) -> NDMSettings:
    positive = ("unit_size", "max_steps", "batch_size", "key_pool", "refresh_every", "rerank", "mi_queries", "mi_keys")
    for name in (*positive, "merge_interval", "stop_at_n_subspaces", "reinit_draws"):
        checked_int(getattr(s, name), name, 1, "a positive int")
    for name in ("merge_start", "seed", "reinit_every", "reinit_until"):
        checked_int(getattr(s, name), name, 0, "a non-negative int")
    if s.reinit_every and n <= s.batch_size:
        raise ValueError(f"reinit_every: the re-initialisation needs more rows than batch_size={s.batch_size}; got {n}")
    if s.reinit_every and s.sizes is None and s.merge_start <= s.reinit_until:
        raise ValueError(
            f"merge_start: merging starts after the re-initialisation phase (reinit_until={s.reinit_until}); got "
            f"{s.merge_start}; pass merge_start > reinit_until"
        )
    check_choice(s.parametrization, Parametrization, "parametrization")
    check_choice(s.dtype, ("float32", "float64"), "dtype")
    check_choice(s.search_dtype, ("float32", "float64", "bfloat16"), "search_dtype")
    if s.sizes is not None:
        check_sizes(s.sizes, d, "sizes")
    elif d % s.unit_size:
        raise ValueError(
            f"unit_size: must divide d={d} (the partition starts from equal blocks); got {s.unit_size}; "
            f"choose a divisor of {d} or pass sizes=[...] for a fixed partition"
        )
    for name in ("merge_threshold", "lr", "grad_clip"):
        if not float(getattr(s, name)) > 0:
            raise ValueError(f"{name}: expected a positive number; got {getattr(s, name)!r}")
    if n < 2:
        raise ValueError(f"acts: expected at least 2 rows (a query and a neighbour); got {n}")
    return s


def fit_ndm(
    acts_or_model: Float[Tensor, "n d"] | Any,
    hook_name: str | None = None,
    data: Any = None,
    *,
    positions: Positions = None,
    exclude_bos: bool = True,
    unit_size: int = 32,
    sizes: Sequence[int] | None = None,
    merge_threshold: float = 0.04,
    merge_start: int = 20_000,
    merge_interval: int = 8_000,
    max_steps: int = 100_000,
    stop_at_n_subspaces: int = 1,
    reinit_every: int = 0,
    reinit_until: int = 0,
    reinit_draws: int = 50,
    batch_size: int = 128,
    lr: float = 3e-4,
    grad_clip: float = 100.0,
    key_pool: int = 409_600,
    refresh_every: int = 8,
    rerank: int = 4,
    search_dtype: torch.dtype = torch.float32,
    parametrization: Parametrization = "cayley",
    mi_queries: int = 12_800,
    mi_keys: int = 98_304,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1_000,
    resume: bool = False,
    log_every: int = 200,
    collect_batch_size: int = 32,
    threads: int | None = None,
    progress: bool = True,
    distributed: bool | None = None,
) -> SubspacePartition:
    """Fit an NDM subspace partition (arXiv 2508.01916, Sec. 3; defaults: the paper's GPT-2 settings).

    Minimises `L(R) = (1/S) Σ_s mean_b ‖ĥ_b^(s) − ĥ_{n*}^(s)‖₂` (nearest neighbour `n*` inside subspace s over a
    pool of keys, never the query) over orthogonal `R` (`ĥ = h @ R`, initialised at the identity) with Adam; from
    `merge_start`, every `merge_interval` steps, merges subspace pairs whose KSG mutual information per dimension
    `I / (d_i + d_j)` exceeds `merge_threshold` (at most max(1, S // 8) per round) and stops at the first check
    with no merge, or at `max_steps`.

    Args:
        acts_or_model: activations `Tensor[n, d]` (any float dtype; in memory or memory-mapped from
            `collect_activations`, rows are read as drawn), an `ActivationStore` (read as one array), or a model
            (`HookedTransformer`/`TransformerBridge`).
        hook_name, data: with a model, the hook point and token ids `[n_seq, pos]`; activations are gathered with
            `collect_activations` at `positions` (None: all), leaving out position 0 when `exclude_bos`.
        unit_size: width of the initial equal blocks (must divide d). sizes: a fixed partition instead (no merging).
        merge_threshold, merge_start, merge_interval: the merge schedule. max_steps: the step limit.
        stop_at_n_subspaces: never merge below this many subspaces (a check that cannot merge ends the fit).
        reinit_every, reinit_until, reinit_draws: the paper's toy procedure against poor local minima (0: off):
            every `reinit_every` steps up to `reinit_until`, keep the best R so far (loss averaged over
            `reinit_draws` fixed draws of queries and keys), then randomly rotate the worst subspace together with
            an MI-weighted partner; at `reinit_until` continue from the best R (merging must start after it).
        batch_size: queries per step. lr, grad_clip: Adam's learning rate and the gradient-norm clip.
        key_pool: candidate neighbours per query (random rows, redrawn at every refresh; all rows when fewer).
        refresh_every: steps between re-rotations of the key pool for the search; rerank: candidates per query and
            subspace re-scored exactly with the current R (`1, 1`: the paper's exact search every step).
        search_dtype: dtype of the rotated key pool and of the search's scores (`torch.bfloat16` halves the pool's
            memory and the cost of rotating it; candidates are still re-scored in `dtype`).
        parametrization: `"cayley"` or `"matrix_exp"` (the reference's) map from skew matrices to rotations.
        mi_queries, mi_keys: rows of each merge check's KSG estimate. seed: every random draw.
        dtype: float32 or float64 for the training arithmetic. device: default the activations' (model's) device.
        checkpoint_dir, checkpoint_every, resume: checkpoints (see the module docstring); `resume=True` refuses a
            checkpoint written with other settings or for other activations (`data_fingerprint`).
        log_every: steps per entry of `history` and per progress-bar update.
        threads: torch intra-op threads during the fit (None: one thread for small problems, where
            synchronisation costs more than it saves, else torch's setting).
        distributed: None (default): share the fit among the ranks of the `torch.distributed` process group when
            one with more than one process is up (see the module docstring; with a model, each rank collects the
            activations itself); False: this process alone.

    Returns:
        A `SubspacePartition` (`method="ndm"`) with the final loss (mean over the last `log_every` steps), the
        pairwise MI of the final partition, `history`, and provenance (model, hook, every setting).
    """
    models: tuple[str, ...] = ()
    comm = Collectives.single() if distributed is False else Collectives.current()
    if isinstance(acts_or_model, (Tensor, ActivationStore)):
        if hook_name is not None or data is not None:
            raise ValueError("hook_name, data: only used with a model; pass activations alone, or a model with both")
        acts = acts_or_model
        hooks: tuple[str, ...] = ()
        if isinstance(acts, ActivationStore):  # the store knows where its rows came from
            models, hooks = (acts.manifest.get("model_name"),), (acts.manifest.get("hook_name"),)
    else:
        if not isinstance(acts_or_model, (torch.nn.Module, ModelView)):
            kind = type(acts_or_model)
            hint = "; convert an array with torch.from_numpy(array)" if kind.__module__ == "numpy" else ""
            raise TypeError(
                "acts_or_model: expected activations as a torch.Tensor [rows, d] (or an ActivationStore), or a "
                f"model with hook_name and token ids; got {kind.__module__}.{kind.__qualname__}{hint}"
            )
        if hook_name is None or data is None:
            raise ValueError(
                f"hook_name, data: a model ({type(acts_or_model).__name__}) needs a hook name and token ids, e.g. "
                "fit_ndm(model, 'blocks.0.hook_resid_post', tokens); or pass activations [n, d]"
            )
        acts = _gather(acts_or_model, hook_name, data, positions, exclude_bos, collect_batch_size, progress)
        models, hooks = (as_view(acts_or_model).cfg.model_name,), (hook_name,)
        device = as_view(acts_or_model).device if device is None else device
    if acts.ndim != 2 or not acts.dtype.is_floating_point:
        raise ValueError(f"acts: expected a float tensor [n, d]; got shape {list(acts.shape)} dtype {acts.dtype}")
    check_finite(acts, "acts", "look at the model's dtype and the data: float16 activations can overflow")
    settings = NDMSettings(
        unit_size=unit_size, sizes=None if sizes is None else tuple(int(s) for s in sizes),
        merge_threshold=merge_threshold, merge_start=merge_start, merge_interval=merge_interval, max_steps=max_steps,
        stop_at_n_subspaces=stop_at_n_subspaces, reinit_every=reinit_every, reinit_until=reinit_until,
        reinit_draws=reinit_draws, batch_size=batch_size, lr=lr, grad_clip=grad_clip,
        key_pool=key_pool, refresh_every=refresh_every, rerank=rerank,
        search_dtype=str(search_dtype).removeprefix("torch."), parametrization=parametrization,
        mi_queries=mi_queries, mi_keys=mi_keys, seed=seed, dtype=str(dtype).removeprefix("torch."),
    )  # fmt: skip
    _check_settings(settings, *acts.shape)
    checkpoint_every = checked_int(checkpoint_every, "checkpoint_every", 1, "a positive int")
    log_every = checked_int(log_every, "log_every", 1, "a positive int")
    if resume and checkpoint_dir is None:
        raise ValueError("resume: needs checkpoint_dir=, the folder the interrupted run wrote its checkpoints to")
    if comm.distributed and min(key_pool, acts.shape[0]) < comm.world:
        raise ValueError(
            f"key_pool: each of the {comm.world} processes needs at least one key; got a pool of "
            f"{min(key_pool, acts.shape[0])}"
        )
    if threads is None:
        threads = 1 if batch_size * min(key_pool, acts.shape[0]) * acts.shape[1] < SMALL_STEP else None
    state = NDMState(acts, settings, torch.device(acts.device if device is None else device), comm)
    if checkpoint_dir is not None and comm.distributed:
        _check_shared_folder(checkpoint_dir, comm)
    fingerprint = None if checkpoint_dir is None else data_fingerprint(acts)
    run = _train(
        state, log_every, checkpoint_dir, checkpoint_every, resume, progress and comm.is_main, threads, fingerprint
    )
    end = int(state.done_step) if state.done else settings.max_steps
    mi = state.last_mi() if state.done else None
    if mi is None:
        with limit_threads(threads):
            mi = state.estimate_mi(end)
    history = _columns([row for row in run.history if row["step"] <= end])
    provenance = Provenance(models=models, hooks=hooks, settings={**settings.to_dict(), "n_rows": int(acts.shape[0])})
    return state.partition(
        loss=history["loss"][-1] if history["loss"] else None,
        mi=mi,
        history=history,
        provenance=provenance,
    )


def _check_shared_folder(checkpoint_dir: str | os.PathLike, comm: Collectives) -> None:
    """Wait until every rank is here (rank 0's last checkpoint write is then complete), then check that every rank
    sees the same last checkpoint in `checkpoint_dir` (rank 0 writes, all resume from it); `ValueError` on every
    rank otherwise, before any training collective (so no rank is left waiting)."""
    comm.barrier()
    step = latest_checkpoint_step(checkpoint_dir)
    seen = comm.all_gather(torch.tensor(-1 if step is None else step)).tolist()
    if len(set(seen)) > 1:
        shown = ", ".join(f"rank {r}: {'none' if s < 0 else f'step {s}'}" for r, s in enumerate(seen))
        raise ValueError(
            f"checkpoint_dir: every process must see the same folder (rank 0 writes the checkpoints, every rank "
            f"resumes from them); the last checkpoint in {checkpoint_dir} differs across ranks ({shown}): use a "
            "folder on a filesystem shared by every process"
        )


def _train(
    state: NDMState,
    log_every: int,
    checkpoint_dir: str | os.PathLike | None,
    checkpoint_every: int,
    resume: bool,
    progress: bool,
    threads: int | None,
    fingerprint: dict[str, Any] | None = None,
):
    """Run `state` through `train_loop`: an evaluation every `log_every` steps, at every merge check and at the end;
    `fingerprint` (of the activations) is recorded in the checkpoints and checked on resume."""
    s = state.settings
    merge_steps, reinit_steps = set(s.merge_steps()), set(s.reinit_steps())
    eval_steps = set(range(log_every, s.max_steps + 1, log_every)) | merge_steps | reinit_steps | {s.max_steps}

    def evaluate(step: int, losses: Losses) -> dict[str, Any]:
        row: dict[str, Any] = {"loss": losses.mean, "n_subspaces": len(state.sizes)}
        if step in reinit_steps:
            row.update(state.reinit(step))
        if step in merge_steps and not state.done:
            row.update(state.merge_check(step))
        known = ~state.mi.diagonal().isnan()
        mi = mean_pairwise(state.mi[known][:, known]) if known.any() else None
        return {**row, "mean_mi": float("nan") if mi is None else mi}

    return train_loop(
        state, state.optimizer, state.batch_loss, s.max_steps, seed=s.seed, config=s, evaluate=evaluate,
        eval_steps=eval_steps, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every if checkpoint_dir is not None else None, resume=resume, data=fingerprint,
        write_checkpoints=state.comm.is_main, postfix=POSTFIX,
        desc="fit_ndm", progress=progress, threads=threads,
    )  # fmt: skip


def _columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    """The loop's evaluation rows as columns (step, loss, n_subspaces, mean_mi) plus the merge checks."""
    out: dict[str, list] = {k: [row[k] for row in rows] for k in ("step", "loss", "n_subspaces")}
    out["mean_mi"] = [None if math.isnan(row["mean_mi"]) else row["mean_mi"] for row in rows]  # None: no check yet
    out["checks"] = [{k: row[k] for k in ("step", "mean_mi", "merged", "sizes")} for row in rows if "merged" in row]
    return out
