"""`positions=`: which token positions a hook touches.

Every hook factory and `collect_activations` take the same `positions` argument:

- `None`: every position of every row;
- an `int` `p`: position `p` of every row (negative counts from the end, as in Python: `-1` is the last token);
- a `LongTensor[batch]`: one position per row (row `i` at `positions[i]`; negatives count from the end);
- a `BoolTensor[batch, pos]`: any set of positions per row (`True` = touched).

`normalize_positions` checks the type and shape when a hook is made; `check_positions` checks the range
against what is known (the model's `n_ctx` before a forward pass, the real `[batch, pos]` once the input is
known); `positions_mask` turns positions into the boolean mask the hooks index with. Every problem is a
`ValueError` (a wrong type is a `TypeError`) naming the argument and the valid range.
"""

from __future__ import annotations

import operator

import torch
from jaxtyping import Bool
from torch import Tensor

Positions = int | Tensor | None

_EXPECTED = "None, an int, a LongTensor[batch] (one position per row) or a boolean mask [batch, pos]"


def normalize_positions(positions: Positions, argument: str = "positions") -> Positions:
    """Check the type and shape of `positions`; return `None`, an `int`, a 1-D `LongTensor` or a 2-D `BoolTensor`.

    A 0-d integer tensor becomes an `int`. Ranges are checked later, by `check_positions`.
    """
    if positions is None:
        return None
    if isinstance(positions, bool):
        raise TypeError(f"{argument}: expected {_EXPECTED}; got a bool ({positions})")
    if not isinstance(positions, Tensor):
        try:
            return operator.index(positions)  # int, numpy integer
        except TypeError:
            raise TypeError(f"{argument}: expected {_EXPECTED}; got {type(positions).__name__}") from None
    if positions.dtype == torch.bool:
        if positions.ndim != 2:
            raise ValueError(f"{argument}: a boolean mask must be 2-D [batch, pos]; got shape {tuple(positions.shape)}")
        return positions.detach()
    if not positions.dtype.is_floating_point and not positions.dtype.is_complex:
        if positions.ndim == 0:
            return int(positions.item())
        if positions.ndim == 1:
            return positions.detach().long()
        raise ValueError(
            f"{argument}: integer positions must be an int or a 1-D LongTensor[batch] with one position per "
            f"row; got shape {tuple(positions.shape)}. To touch several positions per row pass a boolean "
            "mask [batch, pos]"
        )
    raise TypeError(f"{argument}: expected {_EXPECTED}; got a {positions.dtype} tensor")


def _range_error(argument: str, what: str, bad: int, length: int, of_sequences: bool) -> ValueError:
    where = f"sequences of length {length}" if of_sequences else f"the model's context (n_ctx={length})"
    return ValueError(
        f"{argument}: position {bad}{what} is out of range for {where} (valid: {-length} to {length - 1})"
    )


def check_positions(
    positions: Positions,
    *,
    n_ctx: int | None = None,
    batch: int | None = None,
    seq: int | None = None,
    argument: str = "positions",
) -> None:
    """Raise a `ValueError` if `positions` cannot apply to sequences of length `seq` (when known) or to the model's
    context `n_ctx`, or to a batch of `batch` rows (when known)."""
    positions = normalize_positions(positions, argument)
    if positions is None:
        return
    length, of = (seq, True) if seq is not None else (n_ctx, False)
    if isinstance(positions, int):
        if length is not None and not -length <= positions < length:
            raise _range_error(argument, "", positions, length, of)
        return
    if positions.dtype == torch.bool:
        rows, cols = positions.shape
        if batch is not None and rows != batch:
            raise ValueError(f"{argument}: the mask has {rows} rows but the batch has {batch}")
        if seq is not None and cols != seq:
            raise ValueError(f"{argument}: the mask covers {cols} positions but the sequences have {seq}")
        if seq is None and n_ctx is not None and cols > n_ctx:
            raise ValueError(f"{argument}: the mask covers {cols} positions, more than the model's n_ctx={n_ctx}")
        return
    if batch is not None and positions.shape[0] != batch:
        raise ValueError(
            f"{argument}: {positions.shape[0]} positions (one per row) for a batch of {batch} rows; pass an int "
            "to use the same position in every row"
        )
    if length is not None and positions.numel():
        low, high = int(positions.min()), int(positions.max())
        for bad in (low, high):
            if not -length <= bad < length:
                row = int((positions == bad).nonzero()[0, 0])
                raise _range_error(argument, f" (row {row})", bad, length, of)


def positions_mask(
    positions: Positions, batch: int, seq: int, device: torch.device | str | None = None
) -> Bool[Tensor, "batch seq"] | None:
    """The boolean mask `[batch, seq]` of touched positions, or `None` for every position.

    Raises a `ValueError` if `positions` does not fit a `[batch, seq]` input.
    """
    positions = normalize_positions(positions)
    check_positions(positions, batch=batch, seq=seq)
    if positions is None:
        return None
    if isinstance(positions, int):
        mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        mask[:, positions % seq] = True
        return mask
    if positions.dtype == torch.bool:
        return positions.to(device)
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    index = positions.to(device) % seq
    mask[torch.arange(batch, device=device), index] = True
    return mask


def describe_positions(positions: Positions) -> str:
    """A short text for `repr`s: `all`, `-1`, `LongTensor[8]`, `mask[8, 16]`."""
    if positions is None:
        return "all"
    if isinstance(positions, int):
        return str(positions)
    if positions.dtype == torch.bool:
        return f"mask{list(positions.shape)}"
    return f"LongTensor[{positions.shape[0]}]"
