"""Subspace hooks: project, ablate, interchange.

Each factory returns a hook object (a `SubspaceHook`, see `base.py`) with TransformerLens' signature
`fn(activation, hook)`, usable in `model.run_with_hooks(fwd_hooks=[(name, fn)])`, `with model.hooks(fwd_hooks=...)`
and `model.add_hook(name, fn)` on a `HookedTransformer` or a `TransformerBridge`. With `P = B Bᵀ` the orthogonal
projector onto span(B) (B `[d, k]`, orthonormal columns):

=================================  ==========================================
`project(B)`                       `x -> P x`
`ablate(B)` (mode="zero")          `x -> x - P x`
`ablate(B, mode="mean", mean=m)`   `x -> x - P x + P m`
`interchange(B, source=s)`         `x -> x - P x + P s`  (subspace activation patching)
=================================  ==========================================

Activations are row vectors, so `P x` is computed as `(x @ B) @ Bᵀ` (cost `2dk`, never a `[d, d]` matrix).
Only the positions selected by `positions=` and the head selected by `head=` change. At call time the basis is
cast to the activation's dtype and device; the tensor is used as given (not copied or detached), so a learnable
basis (DAS) receives gradients. A full basis (`k == d`) and an empty one (`k == 0`) are exact: `project` returns
`x`, `interchange` returns `source`. Change-of-basis hooks (`rotate`, `unrotate`) are in `rotation.py`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.checks import check_choice
from tl_tensorsim.positions import Positions

from .base import SubspaceHook, _as_float_tensor, _shape, check_basis

AblationMode = Literal["zero", "mean"]


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
        mean: Float[Tensor, "*pos d"] | None = None,
        positions: Positions = None,
        head: int | None = None,
        atol: float | None = None,
    ):
        check_choice(mode, AblationMode, "mode")
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
        source: Float[Tensor, "*batch_pos d"],
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
    mean: Float[Tensor, "*pos d"] | None = None,
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
    source: Float[Tensor, "*batch_pos d"],
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
