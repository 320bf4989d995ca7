"""Subspace hooks: project, ablate, interchange, rotate.

Each factory returns a hook object with TransformerLens' signature `fn(activation, hook)`, usable in
`model.run_with_hooks(fwd_hooks=[(name, fn)])`, `with model.hooks(fwd_hooks=...)` and `model.add_hook(name, fn)`
on a `HookedTransformer` or a `TransformerBridge`. The hook acts on the last (feature) axis of the activation:

- `[batch, pos, d]` for the residual stream, `attn_out`, `mlp_out`, `mlp.hook_pre/post`;
- `[batch, pos, n_heads, d]` for per-head hooks (`attn.hook_z`, `attn.hook_result`, `hook_q/k/v`): pass `head=`
  to act on one head; the other heads are returned unchanged.

With `P = B Bᵀ` the orthogonal projector onto span(B) (B `[d, k]`, orthonormal columns):

=================================  ==========================================
`project(B)`                       `x -> P x`
`ablate(B)` (mode="zero")          `x -> x - P x`
`ablate(B, mode="mean", mean=m)`   `x -> x - P x + P m`
`interchange(B, source=s)`         `x -> x - P x + P s`  (subspace activation patching)
`rotate(R)` / `unrotate(R)`        `x -> x R` / `x -> x R⁻¹`
=================================  ==========================================

Activations are row vectors, so `P x` is computed as `(x @ B) @ Bᵀ` (cost `2dk`, never a `[d, d]` matrix).
Only the positions selected by `positions=` (see `tl_tensorsim.hooks.positions`) and the head selected by
`head=` change; every other entry of the returned tensor is bit-identical to the input. The input tensor is
never modified in place.

Bases are validated when the hook is made: 2-D `[d, k]` (a 1-D `[d]` vector is one direction), floating,
finite, with orthonormal columns, checked in float64 as `max |BᵀB - I| <= atol` (default
`max(1e-5, 16 * eps(basis.dtype))`). At call time the basis is cast to the activation's dtype and device;
the tensor is used as given (not copied or detached), so a learnable basis (DAS) receives gradients. A full
basis (`k == d`) and an empty one (`k == 0`) are exact: `project` returns `x`, `interchange` returns `source`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .positions import Positions, check_positions, describe_positions, normalize_positions, positions_mask

ORTHONORMAL_ATOL = 1e-5
"""Default tolerance on `max |BᵀB - I|` (raised to `16 * eps` for half-precision bases)."""

_ABLATION_MODES = ("zero", "mean")


# --------------------------------------------------------------------------------------------- validation
def _as_float_tensor(value: Any, argument: str) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except Exception as exc:  # noqa: BLE001 - reported as a TypeError naming the argument
            raise TypeError(f"{argument}: expected a tensor; got {type(value).__name__}") from exc
    if not value.dtype.is_floating_point:
        raise TypeError(f"{argument}: expected a floating-point tensor; got dtype {value.dtype}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{argument}: contains NaN or infinite entries")
    return value


def default_atol(dtype: torch.dtype) -> float:
    """The orthonormality tolerance used for a basis of `dtype` when `atol` is not given."""
    return max(ORTHONORMAL_ATOL, 16 * torch.finfo(dtype).eps)


def check_basis(basis: Any, atol: float | None = None, argument: str = "basis") -> Tensor:
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
    tol = default_atol(basis.dtype) if atol is None else float(atol)
    with torch.no_grad():
        b64 = basis.detach().to(torch.float64)
        err = float((b64.T @ b64 - torch.eye(k, dtype=torch.float64, device=b64.device)).abs().max()) if k else 0.0
    if err > tol:
        raise ValueError(
            f"{argument}: columns are not orthonormal (max |BᵀB - I| = {err:.3g} > atol={tol:.3g}); "
            "orthonormalise it first, e.g. torch.linalg.qr(B).Q, or raise atol="
        )
    return basis


def _check_head(head: Any) -> int | None:
    if head is None:
        return None
    try:
        if isinstance(head, bool):
            raise TypeError
        head = operator.index(head)
    except TypeError:
        raise TypeError(f"head: expected None or an int head index; got {type(head).__name__}") from None
    if head < 0:
        raise ValueError(f"head: expected a head index >= 0; got {head}")
    return head


def _hook_name(hook: Any) -> str:
    name = getattr(hook, "name", None)
    return repr(name) if name else "this hook point"


def _shape(t: Tensor | None) -> str:
    return "None" if t is None else str(list(t.shape))


# --------------------------------------------------------------------------------------------- base class
class SubspaceHook:
    """Base class of the hook objects: selects the head and positions, calls `_transform` on the selected rows,
    and writes them back into a copy of the activation.

    Subclasses set `feature_dim` (the `d` their tensors expect), may return extra `[batch, pos, d]` operands from
    `_operands` (a source run, a mean), and implement `_transform(x, **operands)`, where `x` and each operand are
    the selected rows `[..., d]`.
    """

    op = "hook"

    def __init__(self, positions: Positions = None, head: int | None = None):
        self.positions = normalize_positions(positions)
        self.head = _check_head(head)

    # ------------------------------------------------------------------ to override
    @property
    def feature_dim(self) -> int | None:  # pragma: no cover - overridden
        return None

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

    def _check_head_against(self, feature_shape: tuple[int, ...], name: str) -> None:
        if len(feature_shape) == 2:
            n_heads = feature_shape[0]
            if self.head is None:
                raise ValueError(
                    f"head: {name} is a per-head hook (activations [batch, pos, n_heads={n_heads}, "
                    f"{feature_shape[1]}]); pass head= (0 to {n_heads - 1}) to choose the head this hook acts on"
                )
            if self.head >= n_heads:
                raise ValueError(
                    f"head: {self.head} is out of range for {name} with {n_heads} heads (0 to {n_heads - 1})"
                )
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
        if expected is not None and expected != d:
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
            if self.head >= n_heads:
                raise ValueError(
                    f"head: {self.head} is out of range for {name} with {n_heads} heads (0 to {n_heads - 1})"
                )
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
        if mask is None:
            new = self._transform(x, **operands)
            if self.head is None:
                return new
            out = activation.clone()
            out[:, :, self.head] = new
            return out
        out = activation.clone()
        target = out if self.head is None else out[:, :, self.head]
        target[mask] = self._transform(x[mask], **{k: v[mask] for k, v in operands.items()})
        return out

    def __repr__(self) -> str:
        extra = self._describe()
        bits = [extra] if extra else []
        bits.append(f"positions={describe_positions(self.positions)}")
        if self.head is not None:
            bits.append(f"head={self.head}")
        return f"{self.op}({', '.join(bits)})"


class _BasisHook(SubspaceHook):
    def __init__(self, basis: Any, positions: Positions = None, head: int | None = None, atol: float | None = None):
        super().__init__(positions=positions, head=head)
        self.basis = check_basis(basis, atol=atol)
        self.atol = atol

    @property
    def feature_dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def _basis_like(self, x: Tensor) -> Tensor:
        return self.basis.to(dtype=x.dtype, device=x.device)

    def _project(self, v: Tensor, b: Tensor) -> Tensor:
        """`P v = (v @ B) @ Bᵀ` for row vectors `v`."""
        return (v @ b) @ b.T

    def _describe(self) -> str:
        return f"basis={_shape(self.basis)}"


# --------------------------------------------------------------------------------------------- hooks
class Project(_BasisHook):
    """`x -> P x`: keep only the component of the activation in span(basis). See `project`."""

    op = "project"

    def _transform(self, x):
        if self.rank == self.feature_dim:
            return x.clone()
        if self.rank == 0:
            return torch.zeros_like(x)
        return self._project(x, self._basis_like(x))


class Ablate(_BasisHook):
    """`x -> x - P x` (zero) or `x -> x - P x + P mean` (mean). See `ablate`."""

    op = "ablate"

    def __init__(
        self,
        basis: Any,
        mode: str = "zero",
        mean: Tensor | None = None,
        positions: Positions = None,
        head: int | None = None,
        atol: float | None = None,
    ):
        if mode not in _ABLATION_MODES:
            raise ValueError(f"mode: expected one of {_ABLATION_MODES}; got {mode!r}")
        super().__init__(basis, positions=positions, head=head, atol=atol)
        self.mode = mode
        if mode == "mean":
            if mean is None:
                raise ValueError(
                    "mean: mode='mean' needs the mean activation, a [d] tensor (or [pos, d] per position), e.g. "
                    "tl_tensorsim.collect_activations(model, tokens, hook_name).mean(0)"
                )
            mean = _as_float_tensor(mean, "mean")
            if mean.ndim not in (1, 2):
                raise ValueError(f"mean: expected a [d] or [pos, d] tensor; got shape {list(mean.shape)}")
            if mean.shape[-1] != self.feature_dim:
                raise ValueError(
                    f"mean: has {mean.shape[-1]} features but the basis has {self.feature_dim} rows "
                    f"(mean {list(mean.shape)}, basis {list(self.basis.shape)})"
                )
        elif mean is not None:
            raise ValueError("mean: only used with mode='mean'; pass mode='mean' or leave mean=None")
        self.mean = mean

    def _check_tensors(self, *, name, feature_shape, batch, seq, n_ctx):
        if self.mean is not None and self.mean.ndim == 2:
            self._check_mean_positions(self.mean.shape[0], seq=seq, n_ctx=n_ctx, name=name)

    def _check_mean_positions(self, rows: int, *, seq: int | None, n_ctx: int | None, name: str) -> None:
        if seq is not None and rows != seq:
            raise ValueError(f"mean: a per-position mean has {rows} positions but the input at {name} has {seq}")
        if seq is None and n_ctx is not None and rows > n_ctx:
            raise ValueError(f"mean: a per-position mean has {rows} positions, more than the model's n_ctx={n_ctx}")

    def _operands(self, activation, x, name):
        if self.mean is None:
            return {}
        batch, seq, d = x.shape
        mean = self.mean.to(dtype=x.dtype, device=x.device)
        if mean.ndim == 2:
            self._check_mean_positions(mean.shape[0], seq=seq, n_ctx=None, name=name)
            return {"mean": mean.unsqueeze(0).expand(batch, seq, d)}
        return {"mean": mean.expand(batch, seq, d)}

    def _transform(self, x, mean=None):
        if self.rank == self.feature_dim:
            return torch.zeros_like(x) if mean is None else mean.clone(memory_format=torch.contiguous_format)
        if self.rank == 0:
            return x.clone()
        b = self._basis_like(x)
        if mean is None:
            return x - self._project(x, b)
        return x - self._project(x - mean, b)

    def _describe(self) -> str:
        return f"basis={_shape(self.basis)}, mode={self.mode!r}"


class Interchange(_BasisHook):
    """`x -> x - P x + P source`: subspace activation patching. See `interchange`."""

    op = "interchange"

    def __init__(
        self,
        basis: Any,
        source: Tensor,
        positions: Positions = None,
        head: int | None = None,
        atol: float | None = None,
    ):
        super().__init__(basis, positions=positions, head=head, atol=atol)
        if type(source).__name__ == "ActivationCache":
            raise TypeError("source: pass one entry of the cache, e.g. source=cache[hook_name], not the whole cache")
        source = _as_float_tensor(source, "source")
        if source.ndim not in (3, 4):
            raise ValueError(
                "source: expected the source run's activation at this hook, [batch, pos, d] or "
                f"[batch, pos, n_heads, d]; got shape {list(source.shape)}"
            )
        if source.shape[-1] != self.feature_dim:
            raise ValueError(
                f"source: has {source.shape[-1]} features but the basis has {self.feature_dim} rows "
                f"(source {list(source.shape)}, basis {list(self.basis.shape)})"
            )
        if source.ndim == 4 and self.head is None:
            raise ValueError(
                f"head: source {list(source.shape)} is per head ([batch, pos, n_heads, d]); pass head= to choose one"
            )
        self.source = source

    def _check_tensors(self, *, name, feature_shape, batch, seq, n_ctx):
        src = self.source
        if src.ndim == 4 and tuple(src.shape[2:]) != feature_shape:
            raise ValueError(
                f"source: shape {list(src.shape)} does not fit {name} ([batch, pos, {', '.join(map(str, feature_shape))}])"
            )
        if batch is not None and src.shape[0] != batch:
            raise ValueError(
                f"source: batch of {src.shape[0]} rows but the input has {batch}; the source run must have the same "
                "batch (row i of the input is patched from row i of the source)"
            )
        if seq is not None and src.shape[1] != seq:
            raise ValueError(f"source: {src.shape[1]} positions but the input has {seq}")
        if seq is None and n_ctx is not None and src.shape[1] > n_ctx:
            raise ValueError(f"source: {src.shape[1]} positions, more than the model's n_ctx={n_ctx}")

    def _operands(self, activation, x, name):
        src = self.source
        if src.ndim == 4:
            if src.shape != activation.shape:
                raise ValueError(
                    f"source: shape {list(src.shape)} does not match the activation at {name} {list(activation.shape)}"
                    + self._batch_hint(src.shape[0], activation.shape[0])
                )
            src = src[:, :, self.head]
        elif src.shape != x.shape:
            raise ValueError(
                f"source: shape {list(src.shape)} does not match the activation at {name} {list(x.shape)}"
                + self._batch_hint(src.shape[0], x.shape[0])
            )
        return {"source": src.to(dtype=x.dtype, device=x.device)}

    @staticmethod
    def _batch_hint(source_batch: int, batch: int) -> str:
        if source_batch == batch:
            return ""
        return f" (the source run has {source_batch} rows, the patched run {batch}; they must be the same)"

    def _transform(self, x, source):
        if self.rank == self.feature_dim:
            return source.clone(memory_format=torch.contiguous_format)
        if self.rank == 0:
            return x.clone()
        return x + self._project(source - x, self._basis_like(x))

    def _describe(self) -> str:
        return f"basis={_shape(self.basis)}, source={_shape(self.source)}"


class Rotate(SubspaceHook):
    """`x -> x R` (or `x -> x R⁻¹` with `inverse=True`). See `rotate`."""

    op = "rotate"

    def __init__(
        self,
        rotation: Any,
        inverse: bool = False,
        positions: Positions = None,
        head: int | None = None,
        atol: float | None = None,
    ):
        super().__init__(positions=positions, head=head)
        rotation = _as_float_tensor(rotation, "rotation")
        if rotation.ndim != 2 or rotation.shape[0] != rotation.shape[1]:
            raise ValueError(f"rotation: expected a square [d, d] matrix; got shape {list(rotation.shape)}")
        self.rotation = rotation
        self.inverse = bool(inverse)
        tol = default_atol(rotation.dtype) if atol is None else float(atol)
        with torch.no_grad():
            r64 = rotation.detach().to(torch.float64)
            d = r64.shape[0]
            err = float((r64.T @ r64 - torch.eye(d, dtype=torch.float64, device=r64.device)).abs().max()) if d else 0.0
            self.orthogonal = err <= tol
            if not self.orthogonal:
                s = torch.linalg.svdvals(r64)
                if d and float(s.min()) <= 1e-10 * float(s.max()):
                    raise ValueError(
                        f"rotation: the matrix is singular (condition number {float(s.max() / s.min()):.3g}); a change "
                        "of basis must be invertible"
                    )
        self._inverse64: Tensor | None = None
        if self.inverse and not self.orthogonal and not rotation.requires_grad:
            self._inverse64 = torch.linalg.inv(rotation.detach().to(torch.float64))

    @property
    def feature_dim(self) -> int:
        return int(self.rotation.shape[0])

    def _tensor_name(self) -> str:
        return "rotation"

    def matrix(self) -> Tensor:
        """The matrix the hook multiplies by on the right: `R`, or `R⁻¹` (`Rᵀ` when `R` is orthogonal)."""
        r = self.rotation
        if not self.inverse:
            return r
        if self.orthogonal:
            return r.T
        if self._inverse64 is not None:
            return self._inverse64
        return torch.linalg.inv(r.to(torch.float64))

    def _transform(self, x):
        return x @ self.matrix().to(dtype=x.dtype, device=x.device)

    def _describe(self) -> str:
        kind = "orthogonal" if self.orthogonal else "invertible"
        return f"rotation={_shape(self.rotation)} ({kind}), inverse={self.inverse}"


# --------------------------------------------------------------------------------------------- factories
def project(basis: Any, *, positions: Positions = None, head: int | None = None, atol: float | None = None) -> Project:
    """Hook that keeps only the span of `basis`: `x -> (x @ B) @ Bᵀ`.

    Args:
        basis: `[d, k]` with orthonormal columns (`d` = the hook's feature size; a `[d]` vector is one direction).
        positions: which positions to touch (None = all; int; `LongTensor[batch]`; bool mask `[batch, pos]`).
        head: for per-head hooks (`attn.hook_z`, `attn.hook_result`), the head to act on.
        atol: tolerance of the orthonormality check (default `max(1e-5, 16 eps)`).

    Example:
        >>> model.run_with_hooks(tokens, fwd_hooks=[hooks.bind(model, "blocks.1.hook_resid_post", hooks.project(B))])
    """
    return Project(basis, positions=positions, head=head, atol=atol)


def ablate(
    basis: Any,
    mode: str = "zero",
    mean: Tensor | None = None,
    *,
    positions: Positions = None,
    head: int | None = None,
    atol: float | None = None,
) -> Ablate:
    """Hook that removes the span of `basis` (`mode="zero"`: `x - P x`) or replaces it by that of `mean`
    (`mode="mean"`: `x - P x + P mean`, `mean` a `[d]` tensor or `[pos, d]` per position, e.g.
    `collect_activations(model, tokens, hook_name).mean(0)`)."""
    return Ablate(basis, mode=mode, mean=mean, positions=positions, head=head, atol=atol)


def interchange(
    basis: Any,
    source: Tensor,
    *,
    positions: Positions = None,
    head: int | None = None,
    atol: float | None = None,
) -> Interchange:
    """Hook that replaces the component in span(basis) with that of `source`: `x - P x + P source`.

    `source` is the source run's activation at the same hook (e.g. `cache[hook_name]` from
    `model.run_with_cache(source_tokens)`), with the same `[batch, pos, ...]` shape as the patched run; for a
    per-head hook it is the full `[batch, pos, n_heads, d]` entry or the head's `[batch, pos, d]` slice. This is
    subspace activation patching (interchange intervention), as used by DAS and NDM validation: with a full
    basis the result is `source`, with `source` equal to the activation it is the activation, and the
    component orthogonal to span(basis) never changes.
    """
    return Interchange(basis, source, positions=positions, head=head, atol=atol)


def rotate(
    rotation: Any,
    *,
    inverse: bool = False,
    positions: Positions = None,
    head: int | None = None,
    atol: float | None = None,
) -> Rotate:
    """Hook that expresses the activation in another basis: `x -> x @ R` (`inverse=True`: `x -> x @ R⁻¹`).

    `R` is `[d, d]` and must be invertible; it need not be orthogonal (an interaction basis usually is not). When
    it is orthogonal (to `atol`), the inverse is `Rᵀ`; otherwise it is computed once in float64. `rotate(R)` then
    `unrotate(R)` on the same hook point is the identity (up to rounding), with any edit in between acting in
    the rotated coordinates.
    """
    return Rotate(rotation, inverse=inverse, positions=positions, head=head, atol=atol)


def unrotate(
    rotation: Any, *, positions: Positions = None, head: int | None = None, atol: float | None = None
) -> Rotate:
    """The inverse of `rotate(rotation)`: `x -> x @ R⁻¹`."""
    return Rotate(rotation, inverse=True, positions=positions, head=head, atol=atol)
