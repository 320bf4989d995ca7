"""Check hooks against a model before any forward pass.

A hook object is made without a model (`hooks.project(B)`), so it can only check its own arguments. `bind`
checks it against a model and a hook name, raising every problem as a `ValueError` before anything runs:

    model.run_with_hooks(tokens, fwd_hooks=[hooks.bind(model, "blocks.1.hook_resid_post", hooks.project(B))])

- an unknown hook name (the nearest valid names are listed);
- a hook point without a feature axis (attention patterns, scores);
- a gated-off hook point (`attn.hook_result` needs `model.set_use_attn_result(True)`);
- `head=` missing on a per-head hook point, given on one without heads, or out of range;
- a basis (rotation, mean, source) whose feature axis does not match the hook point's;
- positions out of range of the model's `n_ctx`, or, when `tokens` is given, of the input's `[batch, pos]`
  (as is a `source` run whose batch or length differs from the input's).

`validate(model, fwd_hooks, tokens)` does the same for a whole `fwd_hooks` list and `run_with_hooks(model, tokens,
fwd_hooks)` validates then calls `model.run_with_hooks`. Callables that are not tl_tensorsim hooks get the hook
name (and gate) checks only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from jaxtyping import Int
from torch import Tensor

from tl_tensorsim.adapter import ModelLike, ModelView, as_view
from tl_tensorsim.adapter import gate_flag as gate_flag  # re-exported as hooks.gate_flag
from tl_tensorsim.checks import as_token_tensor

from .base import SubspaceHook


def check_gate(model: Any, name: str) -> None:
    """Raise a `ValueError` if hook point `name` is switched off on `model` (e.g. `attn.hook_result` while
    `use_attn_result` is False); the adapter knows the gates (`ModelView.check_gate`)."""
    as_view(model).check_gate(name)


def _input_shape(tokens: Any) -> tuple[int | None, int | None]:
    if tokens is None:
        return None, None
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens: expected a LongTensor [batch, pos] (or None); got {type(tokens).__name__}")
    batch, seq = as_token_tensor(tokens, "tokens").shape
    return int(batch), int(seq)


def _check_one(view: ModelView, name: str, hook_fn: Any, batch: int | None, seq: int | None) -> None:
    view.check_hook_name(name)
    view.check_gate(name)
    if isinstance(hook_fn, SubspaceHook):
        shape = view.feature_shape(name)
        hook_fn.check(shape, name=repr(name), n_ctx=view.cfg.n_ctx, batch=batch, seq=seq)
    elif not callable(hook_fn):
        raise TypeError(f"hook_fn: expected a callable fn(activation, hook); got {type(hook_fn).__name__}")


def bind(
    model: ModelLike, hook_name: str, hook_fn: Callable, tokens: Int[Tensor, "batch pos"] | None = None
) -> tuple[str, Callable]:
    """Check `hook_fn` at `hook_name` on `model` and return the `(hook_name, hook_fn)` pair for `fwd_hooks`.

    Raises `ValueError` (see the module docstring) before any forward pass. Pass the `tokens` the model will run
    on to also check positions (and an interchange source) against the real `[batch, pos]`.
    """
    view = as_view(model)
    batch, seq = _input_shape(tokens)
    _check_one(view, hook_name, hook_fn, batch, seq)
    return hook_name, hook_fn


def validate(
    model: ModelLike,
    fwd_hooks: Iterable[tuple[str | Callable[[str], bool], Callable]],
    tokens: Int[Tensor, "batch pos"] | None = None,
) -> list[tuple[str | Callable[[str], bool], Callable]]:
    """`bind` every `(name, hook_fn)` pair of a `fwd_hooks` list; returns the list unchanged.

    A name may also be a filter `fn(name) -> bool`, as in TransformerLens: the hook is checked at every name it
    selects (and a filter that selects nothing is an error).
    """
    view = as_view(model)
    batch, seq = _input_shape(tokens)
    pairs = list(fwd_hooks)
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"fwd_hooks[{i}]: expected a (hook_name, hook_fn) pair; got {pair!r}")
        name, hook_fn = pair
        if isinstance(name, str):
            _check_one(view, name, hook_fn, batch, seq)
            continue
        if not callable(name):
            raise TypeError(f"fwd_hooks[{i}]: expected a hook name or a filter fn(name) -> bool; got {name!r}")
        selected = [n for n in view.hook_names if name(n)]
        if not selected:
            raise ValueError(f"fwd_hooks[{i}]: the name filter selects no hook point of this {view.kind}")
        for n in selected:
            _check_one(view, n, hook_fn, batch, seq)
    return pairs


def run_with_hooks(
    model: ModelLike,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Iterable[tuple[str | Callable[[str], bool], Callable]] = (),
    **kwargs: Any,
) -> Any:
    """`validate(model, fwd_hooks, tokens)`, then `model.run_with_hooks(tokens, fwd_hooks=..., **kwargs)`."""
    view = as_view(model)
    pairs = validate(view, fwd_hooks, tokens)
    return view.model.run_with_hooks(tokens, fwd_hooks=pairs, **kwargs)
