"""`collect_activations`: stream a model's activations at one hook point into a `[n, d]` tensor.

Batches (at most `batch_size` sequences and `batch_tokens` tokens each) run under `torch.no_grad()` with
`stop_at_layer` set just past the hook's block (supported by both `HookedTransformer` and `TransformerBridge`), so
later blocks and the unembedding are skipped. Rows are the selected `(sequence, position)` pairs in order,
flattened. When the result would not fit in `max_memory_bytes`
(or `out=` names a file) it is written as it comes to a `.npy` file and returned as a tensor view of that file
(memory-mapped): a dataset larger than memory streams through.

**Stores over several processes.** When `out` is a folder (no `.npy` suffix) the rows go to an activation store:
one `.npy` part per process plus `manifest.json`, read back as one array by `ActivationStore` (`load_activations`;
both in `tl_tensorsim.activation_store`, re-exported here).
Under `torch.distributed` (e.g. `torchrun --nproc-per-node N`) each rank runs its contiguous share of the sequences
(`tl_tensorsim.distributed.shard_range`) and writes its own part; rank order is sequence order, so the store holds
exactly the rows one process would collect, in the same order. The folder must be visible to every rank.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_tensorsim.activation_store import (
    MANIFEST,
    STORE_FORMAT,
    ActivationStore,
    RowWriter,
    load_activations,
    part_name,
    write_manifest,
)
from tl_tensorsim.adapter import ModelLike, as_view
from tl_tensorsim.checks import as_token_tensor, check_token_range, checked_int
from tl_tensorsim.distributed import Collectives
from tl_tensorsim.positions import Positions, check_positions, normalize_positions, positions_mask

DEFAULT_MAX_MEMORY_BYTES = 4 * 2**30
DEFAULT_BATCH_TOKENS = 8192  # tokens per forward pass: at context 1024, 8 sequences (not batch_size = 32)
TOKEN_COLUMNS = ("tokens", "input_ids")
_EMBED_HOOKS = ("hook_embed", "hook_pos_embed")
__all__ = [  # the store's names are re-exported: they lived here before tl_tensorsim.activation_store
    "DEFAULT_BATCH_TOKENS", "DEFAULT_MAX_MEMORY_BYTES", "MANIFEST", "STORE_FORMAT", "TOKEN_COLUMNS", "ActivationStore",
    "collect_activations", "load_activations", "rows_per_batch",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------- input
def _token_column(columns: Iterable[str], what: str) -> str:
    columns = list(columns)
    for name in TOKEN_COLUMNS:
        if name in columns:
            return name
    raise ValueError(f"{what}: expected a column named one of {TOKEN_COLUMNS}; the columns are {columns}")


def _row_of(item: Any, what: str) -> Tensor:
    if isinstance(item, dict):
        item = item[_token_column(item.keys(), what)]
    return as_token_tensor(item, what)


class _Data:
    """Uniform access to the input: `n_seq`/`seq` when known, and `chunks()` of `[b, pos]` token tensors."""

    def __init__(self, data: Any):
        self.tensor: Tensor | None = None
        self.start = 0  # first sequence of a dataset (this rank's share)
        self.dataset: Any = None
        self.iterable: Any = None
        if isinstance(data, str) or (isinstance(data, (list, tuple)) and data and isinstance(data[0], str)):
            raise TypeError(
                "tokens_or_dataset: text is not accepted; tokenise it first (model.to_tokens(text)) and pass token ids"
            )
        if isinstance(data, Tensor):
            self.tensor = as_token_tensor(data, "tokens_or_dataset")
            self.n_seq, self.seq = int(self.tensor.shape[0]), int(self.tensor.shape[1])
        elif hasattr(data, "column_names") and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            self.dataset = data
            self.column = _token_column(data.column_names, "tokens_or_dataset")
            self.n_seq, self.seq = len(data), None
        elif isinstance(data, Iterable):
            self.iterable = data
            self.n_seq = len(data) if hasattr(data, "__len__") else None
            self.seq = None
        else:
            raise TypeError(
                "tokens_or_dataset: expected token ids [n_seq, pos], a datasets.Dataset with a "
                f"{' or '.join(TOKEN_COLUMNS)} column, or an iterable of sequences; got {type(data).__name__}"
            )

    def shard(self, lo: int, hi: int) -> None:
        """Keep sequences `lo..hi-1` only (this rank's share)."""
        self.start, self.n_seq = lo, hi - lo
        if self.tensor is not None:
            self.tensor = self.tensor[lo:hi]
            self.start = 0
        elif self.iterable is not None:
            self.iterable = itertools.islice(self.iterable, lo, hi)
            self.start = 0

    def chunks(self, batch_size: int) -> Iterator[Tensor]:
        if self.tensor is not None:
            for i in range(0, self.n_seq, batch_size):
                yield self.tensor[i : i + batch_size]
        elif self.dataset is not None:
            start = self.start
            for i in range(start, start + self.n_seq, batch_size):
                rows = self.dataset[i : min(i + batch_size, start + self.n_seq)][self.column]
                if isinstance(rows, Tensor) and rows.ndim == 2:
                    yield as_token_tensor(rows, "tokens_or_dataset")
                else:
                    for row in rows:
                        yield as_token_tensor(row, "tokens_or_dataset")
        else:
            for item in self.iterable:
                yield _row_of(item, "tokens_or_dataset")


def rows_per_batch(seq: int, batch_size: int, batch_tokens: int | None) -> int:
    """Sequences of length `seq` per forward pass: at most `batch_size`, and at most `batch_tokens` tokens (at
    least one sequence, however long)."""
    return batch_size if batch_tokens is None else max(1, min(batch_size, batch_tokens // max(1, seq)))


def _batches(chunks: Iterator[Tensor], batch_size: int, batch_tokens: int | None = None) -> Iterator[Tensor]:
    """Regroup `[b, pos]` chunks into batches of one length, in order: at most `batch_size` rows and at most
    `batch_tokens` tokens each (`rows_per_batch`)."""
    pending: list[Tensor] = []
    rows = 0
    for chunk in chunks:
        if pending and chunk.shape[1] != pending[0].shape[1]:
            yield torch.cat(pending)
            pending, rows = [], 0
        limit = rows_per_batch(int(chunk.shape[1]), batch_size, batch_tokens)
        while chunk.shape[0]:
            take = min(limit - rows, chunk.shape[0])
            pending.append(chunk[:take])
            rows += take
            chunk = chunk[take:]
            if rows == limit:
                yield torch.cat(pending) if len(pending) > 1 else pending[0]
                pending, rows = [], 0
    if pending:
        yield torch.cat(pending) if len(pending) > 1 else pending[0]


# ---------------------------------------------------------------------------------------------- main
def _stop_layer(view: Any, name: str) -> int | None:
    layer = view.hook_layer(name)
    if layer is not None:
        return layer + 1
    if view.canonical_hook_name(name) in _EMBED_HOOKS:
        return 0
    return None


def collect_activations(
    model: ModelLike,
    tokens_or_dataset: Any,
    hook_name: str,
    positions: Positions = None,
    batch_size: int = 32,
    *,
    batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
    head: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    out: str | os.PathLike | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    progress: bool = True,
    distributed: bool | None = None,
) -> Tensor | ActivationStore:
    """The activations of `model` at `hook_name`, one row per selected `(sequence, position)`: `[n, d]`.

    Args:
        model: a `HookedTransformer` or `TransformerBridge` (or a `ModelView` of one).
        tokens_or_dataset: token ids `LongTensor[n_seq, pos]`; a `datasets.Dataset` with a `tokens` or `input_ids`
            column; or an iterable of sequences (LongTensors, lists of ints, or dicts with such a column).
            Sequences of different lengths are run in separate batches. For datasets and iterables the token ids
            and lengths are checked batch by batch (for a tensor, all before the first forward pass).
        hook_name: a hook point whose last axis is the feature axis (`blocks.1.hook_resid_post`,
            `blocks.0.mlp.hook_post`, `blocks.0.attn.hook_z`, ...). A gated hook point (`attn.hook_result`) is
            switched on for the call and restored afterwards.
        positions: rows to keep, as in the hooks: None (every position), an int (`-1`: the last token), a
            `LongTensor[n_seq]` (one position per sequence) or a boolean mask `[n_seq, pos]`.
        batch_size: at most this many sequences per forward pass.
        batch_tokens: at most this many tokens (sequences x positions) per forward pass, at least one sequence
            (default 8192; None: `batch_size` alone). The activation memory of a forward pass grows with its token
            count (and the attention pattern with sequences x positions²), so long contexts run in small batches:
            at context 1024, 8 sequences per pass.
        head: for per-head hook points, keep one head (`[n, d_head]`); without it the rows are `[n, n_heads, d]`.
        device: where the tokens go (default: the model's device). The result is always on the CPU.
        dtype: the result's dtype (default: the activation's).
        out: a `.npy` path to stream the result to; the returned tensor is a (copy-on-write) memory map of it.
            A folder (any path without the `.npy` suffix): write an activation store there (one part per process
            + `manifest.json`) and return it as an `ActivationStore`.
        max_memory_bytes: above this size the result is streamed to a temporary `.npy` file (deleted once
            mapped; the memory map keeps it alive), even without `out`.
        progress: show a tqdm bar (on rank 0 only under `torch.distributed`).
        distributed: when a `torch.distributed` process group with more than one process is up, True makes each
            rank collect its contiguous share of the sequences into its part of the store `out` (a folder every
            rank can see; the input's length must be known); False: every process collects everything. None
            (default): True when `out` is a folder, else False.

    Returns:
        `Tensor[n, d]` (`[n, *feature_shape]` for a per-head hook without `head=`), in sequence-then-position order;
        an `ActivationStore` holding the same rows when `out` is a folder.

    Raises:
        ValueError: an unknown hook name (the nearest names are listed), a hook without a feature axis, a bad
            `head`, or positions out of range, all before any forward pass.
    """
    from tqdm.auto import tqdm

    view = as_view(model)
    model = view.model
    view.check_hook_name(hook_name)
    feature_shape = view.feature_shape(hook_name)
    if head is not None:
        if isinstance(head, bool) or not isinstance(head, int):
            raise TypeError(f"head: expected None or an int head index; got {type(head).__name__}")
        if len(feature_shape) != 2:
            raise ValueError(f"head: {hook_name!r} has no head axis (feature shape {feature_shape})")
        if not 0 <= head < feature_shape[0]:
            raise ValueError(f"head: {head} is out of range for {hook_name!r} with {feature_shape[0]} heads")
    row_shape = feature_shape[1:] if head is not None else feature_shape
    batch_size = checked_int(batch_size, "batch_size", 1, "a positive int")
    if batch_tokens is not None:
        batch_tokens = checked_int(batch_tokens, "batch_tokens", 1, "a positive int or None")
    positions = normalize_positions(positions)
    data = _Data(tokens_or_dataset)
    check_positions(positions, n_ctx=view.cfg.n_ctx, batch=data.n_seq, seq=data.seq)
    if isinstance(positions, Tensor) and data.n_seq is None:
        raise ValueError("positions: a per-sequence LongTensor or mask needs an input of known length (len())")
    if data.tensor is not None:
        if data.seq > view.cfg.n_ctx:
            raise ValueError(
                f"tokens_or_dataset: sequences of length {data.seq} exceed the model's n_ctx={view.cfg.n_ctx}"
            )
        check_token_range(data.tensor, "tokens_or_dataset", view.cfg.d_vocab)
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating dtype; got {dtype}")
    if device is None:
        device = view.device
    folder = Path(out) if out is not None and Path(out).suffix != ".npy" else None
    share = distributed if distributed is not None else folder is not None
    comm = Collectives.current() if share else Collectives.single()
    if comm.distributed:
        if folder is None:
            raise ValueError(
                f"out: under torch.distributed ({comm.world} processes) the rows go to an activation store folder "
                f"that every rank can see; got {out!r}. Pass out=FOLDER, or distributed=False"
            )
        if data.n_seq is None:
            raise ValueError(
                "tokens_or_dataset: under torch.distributed the input's length must be known (a tensor, a dataset "
                "or a sized iterable), so that each rank can take its share"
            )
    shard = comm.shard(data.n_seq) if comm.distributed else (0, data.n_seq)
    if comm.distributed:
        data.shard(*shard)
        if isinstance(positions, Tensor):
            positions = positions[shard[0] : shard[1]]
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if comm.is_main:
            (folder / MANIFEST).unlink(missing_ok=True)  # the store is incomplete until the new manifest
        out = folder / part_name(comm.rank, comm.world)
    progress = progress and comm.is_main

    n_rows = None
    if data.tensor is not None:
        n_rows = (
            int(positions_mask(positions, data.n_seq, data.seq).sum())
            if positions is not None
            else data.n_seq * data.seq
        )
    store = RowWriter(row_shape, dtype, out, max_memory_bytes, n_rows)
    store.check_dtype(dtype or view.dtype)  # a bfloat16 model and out=x.npy: refused before any forward pass
    stop = _stop_layer(view, hook_name)
    captured: list[Tensor] = []

    def capture(activation: Tensor, hook: Any) -> None:
        captured.append(activation.detach())

    done = 0
    bar = tqdm(total=data.n_seq, desc=f"collect {hook_name}", unit="seq", disable=not progress, leave=False)
    try:
        kwargs: dict[str, Any] = {} if stop is None else {"stop_at_layer": stop}
        with view.gates(hook_name), torch.no_grad():  # a gated hook point is switched on for the call only
            for tokens in _batches(data.chunks(batch_size), batch_size, batch_tokens):
                b, seq = tokens.shape
                if data.tensor is None:
                    if seq > view.cfg.n_ctx:
                        raise ValueError(
                            f"tokens_or_dataset: a sequence of length {seq} exceeds n_ctx={view.cfg.n_ctx}"
                        )
                    check_token_range(tokens, "tokens_or_dataset", view.cfg.d_vocab)
                rows_positions = positions[done : done + b] if isinstance(positions, Tensor) else positions
                mask = positions_mask(rows_positions, b, seq)
                captured.clear()
                model.run_with_hooks(tokens.to(device), fwd_hooks=[(hook_name, capture)], **kwargs)
                if len(captured) != 1:
                    raise RuntimeError(f"hook {hook_name!r} fired {len(captured)} times in one forward pass")
                act = captured.pop()
                if head is not None:
                    act = act[:, :, head]
                rows = act.reshape(b * seq, *row_shape) if mask is None else act[mask.to(act.device)]
                store.append(rows if dtype is None else rows.to(dtype))
                done += b
                bar.update(b)
        result = store.finish()
        if folder is None:
            return result
        info = {"shape": list(row_shape), "dtype": store.file_dtype().name, "hook_name": hook_name,
                "model_name": view.cfg.model_name}  # fmt: skip
        write_manifest(folder, comm, len(result), shard, info)
        return ActivationStore(folder)
    except BaseException:
        store.abort()
        raise
    finally:
        bar.close()
        captured.clear()
