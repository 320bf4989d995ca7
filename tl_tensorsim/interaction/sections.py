"""Node layers and the sections between them: what the interaction basis reads from a TransformerLens model.

A node layer is a hook name (`blocks.L.hook_resid_pre/mid/post`, `blocks.L.mlp.hook_post`, `ln_final.hook_normalized`,
...) or `"output"` (the logits). Its activations `f [batch, pos, d]` get a constant last coordinate 1 (the folded
bias: `f_aug = [f, 1]`, `[batch, pos, d + 1]`). Node layers from `last_pos_from` on keep the last position only, as
the `rib` library's modular-addition configs do after attention.

The section from node layer `l` to `l + 1` is `ModelView.forward_between(hook_l, hook_l+1, tokens)` (or `run_from`
for the logits) on fixed tokens; positions not kept at layer `l` come from the clean run. With `fold_bias=True` the
section is extended to the constant coordinate as the degree-one homogeneous map `F_aug(x, c) = (c F(x / c), c)`
(`c` per position), which equals the network with every bias folded into its weights for affine and ReLU
sections (the `rib` library's bias folding) and equals `(F(x), 1)` at `c = 1`; with `fold_bias=False` the
constant coordinate is an input the section ignores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

OUTPUT = "output"


@dataclass(frozen=True)
class NodeLayers:
    """Checked node layers: `names` (hook names, the last may be `"output"`) and `last` (per layer: keeps the
    last position only)."""

    names: tuple[str, ...]
    last: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.names)


def check_node_layers(view: Any, node_layers: Any, last_pos_from: str | None) -> NodeLayers:
    """`node_layers` as `NodeLayers`, checked against the model before any work: at least two names, hook names
    of the model (`"output"` only last), strictly in forward order; `last_pos_from` one of them or None."""
    if isinstance(node_layers, str) or not isinstance(node_layers, Sequence):
        raise TypeError(f"node_layers: expected a sequence of hook names (and 'output' last); got {node_layers!r}")
    names = tuple(node_layers)
    if len(names) < 2:
        raise ValueError(f"node_layers: expected at least two node layers (a section between them); got {list(names)}")
    for k, name in enumerate(names):
        if name == OUTPUT:
            if k != len(names) - 1:
                raise ValueError(f"node_layers: {OUTPUT!r} (the logits) must be the last node layer; got {list(names)}")
            continue
        view.check_hook_name(name, "node_layers")
        view.feature_shape(name)  # a [batch, pos, d] activation
        if len(view.feature_shape(name)) != 1:
            raise ValueError(f"node_layers: {name!r} is per head; expected a [batch, pos, d] hook point")
    for a, b in zip(names, names[1:]):
        if b != OUTPUT:
            try:
                view.forward_between(a, b, torch.zeros(1, 1, dtype=torch.long))
            except ValueError as exc:
                raise ValueError(f"node_layers: expected names in forward order; {exc}") from None
    if last_pos_from is not None and last_pos_from not in names:
        raise ValueError(f"last_pos_from: expected one of the node layers {list(names)} or None; got {last_pos_from!r}")
    start = names.index(last_pos_from) if last_pos_from is not None else len(names)
    return NodeLayers(names, tuple(k >= start for k in range(len(names))))


def width(view: Any, name: str) -> int:
    """Feature size `d` of node layer `name` (for the logits: the unembedding's width, `d_vocab_out`, which can be
    below `d_vocab`)."""
    return int(view.weight("W_U").shape[-1]) if name == OUTPUT else int(view.feature_shape(name)[0])


def collect(view: Any, layers: NodeLayers, tokens: Int[Tensor, "batch pos"]) -> list[Tensor]:
    """The augmented activations `[batch, pos_l, d_l + 1]` of every node layer on `tokens` (positions kept per
    layer), detached, in the model's dtype."""
    hooks = [n for n in layers.names if n != OUTPUT]
    with torch.no_grad():
        logits, cache = view.run_with_cache(tokens, hooks)
    out = []
    for name, last in zip(layers.names, layers.last):
        a = logits if name == OUTPUT else cache[name]
        if last:
            a = a[:, -1:]
        out.append(torch.cat([a, torch.ones_like(a[..., :1])], -1))
    return out


def section(
    view: Any,
    layers: NodeLayers,
    l: int,
    tokens: Int[Tensor, "batch pos"],
    clean_in: Float[Tensor, "batch pos d_in"] | None,
    fold_bias: bool = True,
) -> Callable[[Float[Tensor, "batch pos_in d_in1"]], Float[Tensor, "batch pos_out d_out1"]]:
    """`F_aug`: augmented activations at node layer `l` -> augmented activations at node layer `l + 1` (module
    docstring). `clean_in`: the clean activation at layer `l`, all positions, needed when layer `l` keeps the last
    position only (the others are held at it)."""
    name, nxt = layers.names[l], layers.names[l + 1]
    if nxt == OUTPUT:
        raw = lambda a: view.run_from(name, a, tokens)  # noqa: E731
    else:
        raw = view.forward_between(name, nxt, tokens)
    last_in, last_out = layers.last[l], layers.last[l + 1]
    if last_in and clean_in is None:
        raise ValueError(f"clean_in: node layer {name!r} keeps the last position; its clean activation is needed")

    def f(x_aug: Tensor) -> Tensor:
        x, c = x_aug[..., :-1], x_aug[..., -1:]
        if fold_bias:
            x = x / c
        full = torch.cat([clean_in[:, :-1].to(x.dtype), x], 1) if last_in else x
        y = raw(full)
        if last_out:
            y = y[:, -1:]
        c_out = c[:, -1:] if last_out and not last_in else c
        if fold_bias:
            return torch.cat([c_out * y, c_out], -1)
        return torch.cat([y, torch.ones_like(y[..., :1])], -1)

    return f


def full_activation(view: Any, name: str, tokens: Int[Tensor, "batch pos"]) -> Tensor:
    """The clean activation at hook `name` on `tokens`, all positions (detached)."""
    with torch.no_grad():
        _, cache = view.run_with_cache(tokens, [name])
    return cache[name]
