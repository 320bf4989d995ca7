"""Shared machinery of the subspace hooks: argument checks and the `SubspaceHook` base class.

A `SubspaceHook` has TransformerLens' hook signature `fn(activation, hook)` and acts on the last (feature) axis of
the activation:

- `[batch, pos, d]` for the residual stream, `attn_out`, `mlp_out`, `mlp.hook_pre/post`;
- `[batch, pos, n_heads, d]` for per-head hooks (`attn.hook_z`, `attn.hook_result`, `hook_q/k/v`): pass `head=`
  to act on one head; the other heads are returned unchanged.

Only the positions selected by `positions=` (see `tl_tensorsim.positions`) and the head selected by
`head=` change; every other entry of the returned tensor is bit-identical to the input. The input tensor is
never modified in place. The concrete hooks live in `subspace.py` (project, ablate, interchange) and
`rotation.py` (rotate, unrotate).

Bases are validated when the hook is made (`check_basis`): 2-D `[d, k]` (a 1-D `[d]` vector is one direction),
floating, finite, with orthonormal columns, checked in float64 as `max |BᵀB - I| <= atol` (default
`max(1e-5, 16 * eps(basis.dtype))`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.checks import checked_int
from tl_tensorsim.linalg import check_orthonormal
from tl_tensorsim.positions import Positions, check_positions, describe_positions, normalize_positions, positions_mask


# --------------------------------------------------------------------------------------------- validation
def _as_float_tensor(value: Any, argument: str) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except Exception as exc:  # reported as a TypeError naming the argument
            raise TypeError(f"{argument}: expected a tensor; got {type(value).__name__}") from exc
    if not value.dtype.is_floating_point:
        raise TypeError(f"{argument}: expected a floating-point tensor; got dtype {value.dtype}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{argument}: contains NaN or infinite entries")
    return value


def check_basis(basis: Any, atol: float | None = None, argument: str = "basis") -> Float[Tensor, "d k"]:
    """Return `basis` as a `[d, k]` tensor after checking it has orthonormal columns.

    A 1-D `[d]` vector is taken as one direction (`[d, 1]`, it must have unit norm). Raises `ValueError`
    for a wrong shape, `k > d`, NaN/inf, or `max |BᵀB - I| > atol` (computed in float64).
    """
    basis = _as_float_tensor(basis, argument)
    if basis.ndim == 1:
        basis = basis.unsqueeze(-1)
    if basis.ndim != 2:
        raise ValueError(
            f"{argument}: expected a [d, k] matrix whose k columns span the subspace (or a [d] direction); "
            f"got shape {tuple(basis.shape)}"
        )
    d, k = basis.shape
    if k > d:
        raise ValueError(
            f"{argument}: {k} columns cannot be orthonormal in {d} dimensions (shape {tuple(basis.shape)}: "
            "is it transposed? The basis is [d, k] with the feature axis first)"
        )
    check_orthonormal(basis, atol, argument)
    return basis


def _check_head(head: Any) -> int | None:
    return None if head is None else checked_int(head, "head", 0, "None or an int head index >= 0")


def _hook_name(hook: Any) -> str:
    name = getattr(hook, "name", None)
    return repr(name) if name else "this hook point"


def _shape(t: Tensor | None) -> str:
    return "None" if t is None else str(list(t.shape))


# --------------------------------------------------------------------------------------------- base class
class SubspaceHook:
    """Base class of the hook objects: selects the head, calls `_transform` on its `[batch, pos, d]` features and
    keeps the transformed rows only at the selected positions (`torch.where`, so shapes never depend on the data
    and the hook works under `torch.func` transforms); the input is never modified in place.

    Subclasses set `feature_dim` (the `d` their tensors expect), may return extra `[batch, pos, d]` operands from
    `_operands` (a source run, a mean), and implement `_transform(x, **operands)`, row-wise on `[..., d]` tensors.
    """

    op = "hook"

    def __init__(self, positions: Positions = None, head: int | None = None):
        self.positions = normalize_positions(positions)
        self.head = _check_head(head)

    # ------------------------------------------------------------------ to override
    @property
    def feature_dim(self) -> int:
        """The size `d` of the feature axis this hook's tensors expect."""
        raise NotImplementedError

    def _operands(self, activation: Tensor, x: Tensor, name: str) -> dict[str, Tensor]:
        """Extra `[batch, pos, d]` tensors `_transform` needs, in `x`'s dtype and device (selected like `x`)."""
        return {}

    def _transform(self, x: Tensor, **operands: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_tensors(
        self, *, name: str, feature_shape: tuple[int, ...], batch: int | None, seq: int | None, n_ctx: int | None
    ) -> None:
        """Subclass checks of `source`/`mean` against what is known before a forward pass."""

    def _describe(self) -> str:
        return ""

    # ------------------------------------------------------------------ checks
    def check(
        self,
        feature_shape: Sequence[int],
        *,
        name: str = "this hook point",
        n_ctx: int | None = None,
        batch: int | None = None,
        seq: int | None = None,
    ) -> None:
        """Raise a `ValueError` if this hook cannot act on activations `[batch, seq, *feature_shape]`.

        `feature_shape` is `ModelView.feature_shape(name)`: `(d,)` or `(n_heads, d)`. `n_ctx` bounds the positions
        when the input's length `seq` is not known. `tl_tensorsim.hooks.bind` calls this before any forward pass.
        """
        feature_shape = tuple(int(s) for s in feature_shape)
        self._check_head_against(feature_shape, name)
        self._check_feature_dim(feature_shape[-1], name)
        check_positions(self.positions, n_ctx=n_ctx, batch=batch, seq=seq)
        self._check_tensors(name=name, feature_shape=feature_shape, batch=batch, seq=seq, n_ctx=n_ctx)

    def _check_head_in_range(self, n_heads: int, name: str) -> None:
        if self.head >= n_heads:
            raise ValueError(f"head: {self.head} is out of range for {name} with {n_heads} heads (0 to {n_heads - 1})")

    def _check_head_against(self, feature_shape: tuple[int, ...], name: str) -> None:
        if len(feature_shape) == 2:
            n_heads = feature_shape[0]
            if self.head is None:
                raise ValueError(
                    f"head: {name} is a per-head hook (activations [batch, pos, n_heads={n_heads}, "
                    f"{feature_shape[1]}]); pass head= (0 to {n_heads - 1}) to choose the head this hook acts on"
                )
            self._check_head_in_range(n_heads, name)
        elif len(feature_shape) == 1:
            if self.head is not None:
                raise ValueError(
                    f"head: {name} has no head axis (activations [batch, pos, {feature_shape[0]}]); head= is only for "
                    "per-head hooks such as attn.hook_z and attn.hook_result"
                )
        else:
            raise ValueError(f"{name}: unsupported feature shape {feature_shape}")

    def _check_feature_dim(self, d: int, name: str) -> None:
        expected = self.feature_dim
        if expected != d:
            what = "per-head feature axis" if self.head is not None else "feature axis"
            raise ValueError(
                f"{self._tensor_name()}: has {expected} rows but the {what} of {name} has size {d} "
                f"({self._tensor_name()} must be [{d}, ...], feature axis first)"
            )

    def _tensor_name(self) -> str:
        return "basis"

    # ------------------------------------------------------------------ call
    def _features(self, activation: Tensor, name: str) -> Tensor:
        if not isinstance(activation, Tensor):
            raise TypeError(f"{self.op}: expected the activation tensor at {name}; got {type(activation).__name__}")
        if activation.ndim == 4:
            n_heads = activation.shape[2]
            if self.head is None:
                raise ValueError(
                    f"head: the activation at {name} is per head ({list(activation.shape)} = [batch, pos, n_heads, d]); "
                    f"pass head= (0 to {n_heads - 1})"
                )
            self._check_head_in_range(n_heads, name)
            return activation[:, :, self.head]
        if activation.ndim == 3:
            if self.head is not None:
                raise ValueError(
                    f"head: the activation at {name} has no head axis ({list(activation.shape)} = [batch, pos, d]); "
                    "head= is only for per-head hooks such as attn.hook_z and attn.hook_result"
                )
            return activation
        raise ValueError(
            f"{self.op}: expected a [batch, pos, d] or [batch, pos, n_heads, d] activation at {name}; "
            f"got shape {list(activation.shape)}"
        )

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        name = _hook_name(hook)
        x = self._features(activation, name)
        batch, seq, d = x.shape
        self._check_feature_dim(d, name)
        mask = positions_mask(self.positions, batch, seq, device=x.device)
        operands = self._operands(activation, x, name)
        new = self._transform(x, **operands)
        if mask is not None:  # select with torch.where: fixed shapes, so the hook works under torch.func / compile
            new = torch.where(mask[..., None], new, x)
        if self.head is None:
            return new
        out = activation.clone()
        out[:, :, self.head] = new
        return out

    def __repr__(self) -> str:
        extra = self._describe()
        bits = [extra] if extra else []
        bits.append(f"positions={describe_positions(self.positions)}")
        if self.head is not None:
            bits.append(f"head={self.head}")
        return f"{self.op}({', '.join(bits)})"
