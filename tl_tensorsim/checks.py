"""Argument checks shared by every public entry point (core layer: imports nothing from the package).

Each check raises a `TypeError` (wrong kind of value) or `ValueError` (right kind, wrong value) whose message
names the argument, what was expected and what was given, before any work starts. Options are `Literal` aliases
(`Circuit = Literal["QK", "OV"]`); their runtime tuples come from `options(Circuit)` (`typing.get_args`), so
the type annotation and the check can never disagree.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence
from typing import Any, get_args

import torch
from torch import Tensor


class TokenDtypeError(TypeError, ValueError):
    """Token ids of a non-integer dtype: a `TypeError` that is also a `ValueError` (both were raised before)."""


def options(alias: Any) -> tuple[str, ...]:
    """The runtime tuple of a `Literal[...]` alias: `options(Literal["QK", "OV"]) == ("QK", "OV")`."""
    values = get_args(alias)
    if not values:
        raise TypeError(f"alias: expected a typing.Literal; got {alias!r}")
    return values


def check_choice(value: Any, choices: Any, argument: str) -> Any:
    """`value` if it is one of `choices` (a `Literal` alias or a tuple), else a `ValueError` naming `argument`."""
    allowed = tuple(choices) if isinstance(choices, tuple | list) else options(choices)
    if value not in allowed:
        raise ValueError(f"{argument}: expected one of {allowed}; got {value!r}")
    return value


def checked_int(value: Any, argument: str, minimum: int, expected: str) -> int:
    """`value` as a Python int `>= minimum` (bools and non-integers rejected), else a `TypeError` /
    `ValueError` naming `argument` and what was `expected`."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{argument}: expected {expected}; got {value!r} ({type(value).__name__})") from None
    if value < minimum:
        raise ValueError(f"{argument}: expected {expected}; got {value}")
    return value


def checked_number(value: Any, argument: str, low: float, high: float = float("inf")) -> float:
    """`value` (a real number: int, float, numpy scalar or one-element tensor) as a Python float in [low, high]
    (bools, non-numbers and NaN rejected), else a `TypeError` / `ValueError` naming `argument`, the range and the
    given value."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument}: expected a number in [{low}, {high}]; got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{argument}: expected a number in [{low}, {high}]; got {value!r}")
    return float(value)


def as_token_tensor(value: Any, argument: str, *, allow_1d: bool = True) -> Tensor:
    """Token ids as a `LongTensor [batch, pos]`: a tensor, or anything `torch.as_tensor` takes (lists of ints).

    A 1-D `[pos]` input is one sequence (`[1, pos]`) when `allow_1d`. Floating, complex or boolean dtypes are a
    `TypeError`; any other rank is a `ValueError`. Ranges are checked by `check_token_range`.
    """
    if isinstance(value, Tensor):
        t = value
    else:
        try:
            t = torch.as_tensor(value)
        except Exception as exc:  # reported as a TypeError naming the input
            raise TypeError(
                f"{argument}: expected token ids (a LongTensor or a list of ints); got {type(value).__name__}"
            ) from exc
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TokenDtypeError(f"{argument}: expected integer token ids [batch, pos]; got dtype {t.dtype}")
    if t.ndim == 1 and allow_1d:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        one = " (or one sequence [pos])" if allow_1d else ""
        raise ValueError(f"{argument}: expected token ids [batch, pos]{one}; got shape {list(t.shape)}")
    return t.long()


def check_token_range(tokens: Tensor, argument: str, d_vocab: int, n_ctx: int | None = None) -> Tensor:
    """`tokens` unchanged if every id lies in `[0, d_vocab)` and (when `n_ctx` is given) `pos <= n_ctx`."""
    if tokens.numel():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= d_vocab:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{argument}: token id {bad} is out of range for d_vocab={d_vocab} (ids must lie in [0, {d_vocab}); "
                f"got range [{lo}, {hi}])"
            )
    if n_ctx is not None and tokens.shape[-1] > n_ctx:
        raise ValueError(f"{argument}: at most n_ctx={n_ctx} positions; got {tokens.shape[-1]}")
    return tokens


def check_finite(rows: Any, argument: str, hint: str, chunk: int = 2**16, row_ids: Tensor | None = None) -> None:
    """A ValueError naming the first row of `rows` (a tensor or anything sliced into tensors along dim 0, such as
    a memory-mapped `ActivationStore`) that holds NaN or ±inf, with `hint`. Reads `chunk` rows at a time, so a
    memory map is never loaded whole; `row_ids[i]` is the name of row i where `rows` were drawn from a larger array.
    Cost: one pass over the rows."""
    n = len(rows)
    for lo in range(0, n, chunk):
        bad = ~torch.isfinite(rows[lo : lo + chunk]).flatten(1).all(1)
        if bad.any():
            row = lo + int(bad.nonzero()[0])
            where = f"row {row} (of {n})" if row_ids is None else f"row {int(row_ids[row])} (one of {n} drawn)"
            raise ValueError(f"{argument}: expected finite values; {where} holds NaN or inf ({hint})")


def check_finite_weights(weights: dict[str, Tensor], argument: str = "model") -> None:
    """A ValueError naming every entry of `weights` (name -> tensor) that holds NaN or inf."""
    bad = [name for name, w in weights.items() if not bool(torch.isfinite(w).all())]
    if bad:
        raise ValueError(f"{argument}: expected finite weights; NaN or inf in {', '.join(bad)}")


def output_indices(output: int | Sequence[int] | None, d_out: int, argument: str = "output") -> list[int] | None:
    """`output` as a list of indices in `[-d_out, d_out)` (None stays None: every output). An empty selection is a
    `ValueError`: it would sum no output, so every network would have norm 0 and every similarity 0."""
    if output is None:
        return None
    idx = [output] if isinstance(output, int) else list(output)
    if not idx:
        raise ValueError(
            f"{argument}: expected an int or a non-empty sequence of output indices in [0, {d_out}), or None for "
            f"every output; got {output!r}, which selects no output (a zero network, similarity 0). Hint: {argument}=None"
        )
    for c in idx:
        if not -d_out <= int(c) < d_out:
            raise ValueError(f"{argument}: index {c} out of range for d_out={d_out}")
    return [int(c) for c in idx]
