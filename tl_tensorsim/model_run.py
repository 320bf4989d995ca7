"""Running a model through its hook points, for either TransformerLens class: the adapter's half that runs.

Core layer, behind `ModelView` (`view.gates(...)`, `view.run_with_cache(...)`, `view.forward_between(...)`,
`view.run_from(...)` call these functions; nothing else in the package needs them directly):

- **gated hooks**: `attn.hook_result`, `hook_{q,k,v}_input`, `hook_attn_in` and `hook_mlp_in` fire only while a
  config flag is on; `gates` switches the flags a list of hook names needs on for a `with` block and restores
  every previous value on exit, exceptions included;
- **forward order**: `hook_order` places a hook name in the forward pass (`(stage, step)`: stage -1 before the
  blocks, `l` in block `l`, `n_layers` after them), so that "`hook_out` comes after `hook_in`" is checked before
  anything runs;
- **segments**: `forward_between` returns the pure function `activation at hook_in -> activation at hook_out`
  (tokens and every other input held fixed) that `torch.func.vmap` / `jvp` / `vjp` / `jacrev` transform;
  `run_from` runs from a hook point to the logits; `run_with_cache` stops at a layer.

Functions take a `ModelView` (duck-typed: `view.model`, `view.kind`, `view.cfg`, `view.check_hook_name`), so
this module imports nothing from the adapter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.checks import as_token_tensor, check_token_range, checked_int

LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


FEATURE_RULES = (
    (re.compile(r"(^|\.)hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)$"), ("d_model",)),
    (re.compile(r"^hook_(embed|pos_embed)$"), ("d_model",)),
    (re.compile(r"\.mlp\.hook_(pre|post|pre_linear)$"), ("d_mlp",)),
    (re.compile(r"\.attn\.hook_(q|k|v|z)$"), ("n_heads", "d_head")),
    (re.compile(r"\.attn\.hook_result$"), ("n_heads", "d_model")),
)


def feature_rule(name: str) -> tuple[str, ...] | None:
    """The config fields that give the feature shape at hook `name` (`("n_heads", "d_head")` for `hook_z`)."""
    for pattern, rule in FEATURE_RULES:
        if pattern.search(name):
            return rule
    return None


# hook-name suffix -> the config flag that gates it (the setter is `model.set_<flag>`)
_GATES = (
    ("attn.hook_result", "use_attn_result"),
    ("hook_q_input", "use_split_qkv_input"),
    ("hook_k_input", "use_split_qkv_input"),
    ("hook_v_input", "use_split_qkv_input"),
    ("hook_attn_in", "use_attn_in"),
    ("hook_mlp_in", "use_hook_mlp_in"),
)
GATE_FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")

# forward order of a block's hook points (TransformerLens names); names on one line run in parallel
_BLOCK_ORDER = (
    ("hook_resid_pre",),
    ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input"),
    ("ln1.hook_scale",),
    ("ln1.hook_normalized",),
    ("attn.hook_q", "attn.hook_k", "attn.hook_v"),
    ("attn.hook_rot_q", "attn.hook_rot_k"),
    ("attn.hook_attn_scores",),
    ("attn.hook_pattern",),
    ("attn.hook_z",),
    ("attn.hook_result",),
    ("hook_attn_out",),
    ("hook_resid_mid",),
    ("hook_mlp_in",),
    ("ln2.hook_scale",),
    ("ln2.hook_normalized",),
    ("mlp.hook_pre", "mlp.hook_pre_linear"),
    ("mlp.hook_post",),
    ("hook_mlp_out",),
    ("hook_resid_post",),
)
_BLOCK_STEP = {name: step for step, names in enumerate(_BLOCK_ORDER) for name in names}
_BEFORE_BLOCKS = {"hook_embed": 0, "hook_pos_embed": 0}
_AFTER_BLOCKS = {"ln_final.hook_scale": 0, "ln_final.hook_normalized": 1, "unembed.hook_in": 2, "unembed.hook_out": 3}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


# ---------------------------------------------------------------------------------------------- gates
def gate_flag(name: str) -> str | None:
    """The config flag (`use_attn_result`, ...) hook point `name` needs switched on, or None."""
    for suffix, flag in _GATES:
        if name.endswith(suffix):
            return flag
    return None


def gate_state(view: Any) -> dict[str, bool]:
    """Every gate flag's current value on the model."""
    return {flag: bool(getattr(view.model.cfg, flag, False)) for flag in GATE_FLAGS}


def check_gate(view: Any, name: str) -> None:
    """Raise a `ValueError` if hook point `name` is switched off (e.g. `attn.hook_result` while `use_attn_result`
    is False)."""
    flag = gate_flag(name)
    if flag is not None and not bool(getattr(view.model.cfg, flag, False)):
        raise ValueError(
            f"hook_name: {name!r} is switched off on this model ({flag}=False); call model.set_{flag}(True) first "
            "(or run inside `with ModelView(model).gates(hook_name):`)"
        )


def _set_flag(view: Any, flag: str, value: bool, why: str) -> None:
    try:
        getattr(view.model, f"set_{flag}")(value)
    except (NotImplementedError, AssertionError, ValueError, AttributeError) as exc:
        raise ValueError(f"{why} is not available on this {view.kind}: {exc or type(exc).__name__}") from exc


@contextmanager
def gates(view: Any, hook_names: Iterable[str] = (), **flags: bool) -> Iterator[dict[str, bool]]:
    """Within the block, the gate flags that `hook_names` need are on, and every flag given by keyword
    (`use_attn_result=False`, ...) has that value; on exit (exceptions included) each flag changed gets its previous
    value back. Yields the flags' values inside the block.

    Raises `ValueError` for an unknown flag, for a name needing a flag that a keyword switches off, or when the
    model cannot switch a flag (e.g. a bridge whose attention has no per-head fork)."""
    wanted: dict[str, tuple[bool, str]] = {}
    for flag, value in flags.items():
        if flag not in GATE_FLAGS:
            raise ValueError(f"{flag}: expected a gate flag, one of {GATE_FLAGS}; got {flag!r}")
        wanted[flag] = (bool(value), f"{flag}={bool(value)}")
    for name in hook_names:
        flag = gate_flag(name)
        if flag is None:
            continue
        if flag in wanted and not wanted[flag][0]:
            raise ValueError(f"{flag}: hook point {name!r} needs {flag}=True; got {flag}=False")
        wanted.setdefault(flag, (True, f"hook_name: {name!r}"))
    previous = gate_state(view)
    changed: list[str] = []
    try:
        for flag, (value, why) in sorted(wanted.items(), key=lambda kv: kv[1][0]):  # switch off before on
            if previous[flag] != value:
                _set_flag(view, flag, value, why)  # the setters check before they change anything
                changed.append(flag)
        yield gate_state(view)
    finally:
        for flag in reversed(changed):
            getattr(view.model, f"set_{flag}")(previous[flag])


# ---------------------------------------------------------------------------------------------- order
def hook_order(view: Any, name: str) -> tuple[int, int] | None:
    """Where hook point `name` fires in the forward pass: `(stage, step)` with stage -1 before the blocks, `l` in
    block `l`, `n_layers` after them; None for a name whose place is unknown (bridge-only names without a
    TransformerLens alias). Hook points with equal places run in parallel (`attn.hook_q` and `attn.hook_k`)."""
    for alias in _aliases(view, name):
        if alias in _BEFORE_BLOCKS:
            return -1, _BEFORE_BLOCKS[alias]
        if alias in _AFTER_BLOCKS:
            return view.cfg.n_layers, _AFTER_BLOCKS[alias]
        m = _BLOCK_RE.match(alias)
        if m and m.group(2) in _BLOCK_STEP:
            return int(m.group(1)), _BLOCK_STEP[m.group(2)]
    return None


def _aliases(view: Any, name: str) -> list[str]:
    """`name` first, then every other name of the same hook point (a bridge registers several)."""
    point = view.model.hook_dict[name]
    return [name] + [n for n, p in view.model.hook_dict.items() if p is point and n != name]


def _stop_after(view: Any, name: str) -> int | None:
    """The `stop_at_layer` that still runs hook point `name`: its block + 1, 0 before the blocks, None after."""
    place = hook_order(view, name)
    stage = place[0] if place is not None else view.hook_layer(name)
    if stage is None or stage >= view.cfg.n_layers:
        return None
    return stage + 1


def check_forward_order(view: Any, hook_in: str, hook_out: str) -> None:
    """Raise a `ValueError` unless `hook_out` fires strictly after `hook_in` in the forward pass."""
    if view.model.hook_dict[hook_in] is view.model.hook_dict[hook_out]:
        raise ValueError(f"hook_out: {hook_out!r} is the same hook point as hook_in {hook_in!r}; pick a later one")
    a, b = hook_order(view, hook_in), hook_order(view, hook_out)
    if a is None or b is None:
        unknown = hook_in if a is None else hook_out
        raise ValueError(
            f"{'hook_in' if a is None else 'hook_out'}: cannot place {unknown!r} in the forward pass of this "
            f"{view.kind}; use a TransformerLens hook name (blocks.L.hook_resid_pre, blocks.L.attn.hook_z, "
            "blocks.L.mlp.hook_post, ln_final.hook_normalized, ...)"
        )
    if b <= a:
        how = "runs in parallel with" if a == b else "comes before"
        raise ValueError(
            f"hook_out: {hook_out!r} {how} hook_in {hook_in!r} in the forward pass, so it does not depend on it; "
            f"expected a hook point after {hook_in!r} (e.g. swap the two names)"
        )


# ---------------------------------------------------------------------------------------------- runs
def checked_tokens(view: Any, tokens: Any, argument: str = "tokens") -> Tensor:
    """`tokens` as a `LongTensor [batch, pos]` on the model's device, ids and length checked."""
    tokens = as_token_tensor(tokens, argument)
    check_token_range(tokens, argument, view.cfg.d_vocab, view.cfg.n_ctx)
    return tokens.to(view.device)


def _check_like(activation: Tensor, value: Tensor, name: str, tokens: Tensor) -> None:
    if tuple(activation.shape) != tuple(value.shape):
        raise ValueError(
            f"activation: expected shape {list(activation.shape)} (the activation at {name!r} for tokens "
            f"{list(tokens.shape)}); got {list(value.shape)}"
        )
    if activation.dtype != value.dtype:
        raise TypeError(f"activation: expected dtype {activation.dtype} (the model's at {name!r}); got {value.dtype}")
    if activation.device != value.device:
        raise ValueError(
            f"activation: expected a tensor on {activation.device} (the model's device); got one on {value.device} "
            "(hint: .to(view.device))"
        )


def _replace_with(view: Any, value: Tensor, name: str, tokens: Tensor) -> list[tuple[str, Callable[..., Tensor]]]:
    """The `fwd_hooks` that make `value` the activation at hook point `name` for everything downstream.

    One hook replacing the activation, except at a bridge's `hook_resid_mid`: that is an alias of `ln2.hook_in`,
    the MLP branch's input only (the block adds its attention output to the residual it already holds), so the
    skip path is patched too, through the attention output: `attn_out <- value - resid_pre` (exact derivative; the
    residual stream then equals `value` up to one rounding)."""

    def replace(activation: Tensor, hook: Any = None) -> Tensor:
        _check_like(activation, value, name, tokens)
        return value

    layer = view.hook_layer(name)
    if view.kind != "TransformerBridge" or layer is None or f"blocks.{layer}.ln2.hook_in" not in _aliases(view, name):
        return [(name, replace)]
    block_in: list[Tensor] = []

    def keep_block_input(activation: Tensor, hook: Any = None) -> None:
        block_in[:] = [activation]

    def skip_path(activation: Tensor, hook: Any = None) -> Tensor:
        _check_like(activation, value, name, tokens)
        return value - block_in[0]

    return [
        (f"blocks.{layer}.hook_in", keep_block_input),
        (f"blocks.{layer}.attn.hook_out", skip_path),
        (name, replace),
    ]


def run_with_cache(
    view: Any, tokens: Any, names: str | Sequence[str] | None = None, stop_at_layer: int | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run on `tokens` and keep the activations at `names` (detached), switching gated hooks on for the run."""
    tokens = checked_tokens(view, tokens)
    n_layers = view.cfg.n_layers
    if stop_at_layer is not None:
        stop_at_layer = checked_int(stop_at_layer, "stop_at_layer", -n_layers, f"an int in [-{n_layers}, {n_layers}]")
        if stop_at_layer > n_layers:
            raise ValueError(f"stop_at_layer: expected an int in [-{n_layers}, {n_layers}]; got {stop_at_layer}")
        if stop_at_layer < 0:  # counts from the end, as in TransformerLens
            stop_at_layer += n_layers
    explicit = names is not None
    if names is None:
        names = [n for n in view.hook_names if gate_flag(n) is None and _fires_before(view, n, stop_at_layer)]
    elif isinstance(names, str):
        names = [names]
    names = [view.check_hook_name(n, "names") for n in names]
    late = [n for n in names if not _fires_before(view, n, stop_at_layer)]
    if late:
        raise ValueError(
            f"names: {late[:5]} do not run with stop_at_layer={stop_at_layer} (the forward pass stops before block "
            f"{stop_at_layer}); drop them or raise stop_at_layer"
        )
    cache: dict[str, Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(activation: Tensor, hook: Any = None) -> None:
            cache[name] = activation.detach()

        return hook

    with gates(view, names):
        out = view.model.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in names], stop_at_layer=stop_at_layer)
    missing = [n for n in names if n not in cache]
    if missing and explicit:
        raise ValueError(f"names: {missing[:5]} did not fire in the forward pass of this {view.kind}")
    return out, cache


def _fires_before(view: Any, name: str, stop_at_layer: int | None) -> bool:
    if stop_at_layer is None:
        return True
    place = hook_order(view, name)
    stage = place[0] if place is not None else view.hook_layer(name)
    return stage is not None and stage < stop_at_layer


def forward_between(
    view: Any, hook_in: str, hook_out: str, tokens: Any
) -> Callable[[Float[Tensor, "batch pos *d_in"]], Float[Tensor, "batch pos *d_out"]]:
    """`f(activation at hook_in) -> activation at hook_out` on `tokens`, everything else held fixed."""
    hook_in = view.check_hook_name(hook_in, "hook_in")
    hook_out = view.check_hook_name(hook_out, "hook_out")
    check_forward_order(view, hook_in, hook_out)
    tokens = checked_tokens(view, tokens)
    stop = _stop_after(view, hook_out)
    model = view.model

    def f(activation: Float[Tensor, "batch pos *d_in"]) -> Float[Tensor, "batch pos *d_out"]:
        if not isinstance(activation, Tensor):
            raise TypeError(f"activation: expected a tensor (the activation at {hook_in!r}); got {type(activation)}")
        grabbed: list[Tensor] = []

        def grab(out: Tensor, hook: Any = None) -> None:
            grabbed.append(out)

        with gates(view, (hook_in, hook_out)):
            model.run_with_hooks(
                tokens,
                fwd_hooks=[*_replace_with(view, activation, hook_in, tokens), (hook_out, grab)],
                stop_at_layer=stop,
            )
        if len(grabbed) != 1:
            raise RuntimeError(f"hook_out: {hook_out!r} fired {len(grabbed)} times in one forward pass; expected once")
        return grabbed[0]

    f.__name__ = f"forward_between[{hook_in} -> {hook_out}]"
    f.__doc__ = (
        f"Activation at {hook_in!r} [batch, pos, ...] -> activation at {hook_out!r}, on fixed tokens of shape "
        f"{list(tokens.shape)}."
    )
    return f


def run_from(view: Any, hook_name: str, activation: Tensor, tokens: Any) -> Float[Tensor, "batch pos d_vocab"]:
    """The logits with the activation at `hook_name` replaced by `activation` (earlier inputs from `tokens`)."""
    hook_name = view.check_hook_name(hook_name)
    tokens = checked_tokens(view, tokens)
    if not isinstance(activation, Tensor):
        raise TypeError(f"activation: expected a tensor (the activation at {hook_name!r}); got {type(activation)}")
    with gates(view, (hook_name,)):
        return view.model.run_with_hooks(tokens, fwd_hooks=_replace_with(view, activation, hook_name, tokens))
