"""Change-of-basis hooks: `rotate(R)` (`x -> x R`) and `unrotate(R)` (`x -> x R⁻¹`).

`R` is `[d, d]` and must be invertible, not necessarily orthogonal. The hooks are `SubspaceHook`s (see `base.py`):
they accept `positions=` and `head=` like `project`/`ablate`/`interchange`, and everything not selected is returned
bit-identical.

`rotate(basis, keep=k)` also takes an affine, non-square basis with a folded-bias coordinate, such as one node layer
of an interaction basis (`ib.node(name)`: anything exposing `C` `[d + 1, m]` and `C_pinv` `[m, d + 1]`, or the pair
`(C, C_pinv)`): the activation is expressed in that basis, `f̂ = [x, 1] C`, every direction not in `keep` is zeroed
(node ablation), and it is mapped back, `x' = (f̂ C⁺)[:d]`. This module imports nothing from the analyses.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.linalg import is_orthonormal
from tl_tensorsim.positions import Positions

from .base import SubspaceHook, _as_float_tensor, _shape


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
        self.orthogonal = is_orthonormal(rotation, atol)
        with torch.no_grad():
            r64 = rotation.detach().to(torch.float64)
            d = r64.shape[0]
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

    def matrix(self) -> Float[Tensor, "d d"]:
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


class AffineProject(SubspaceHook):
    """`x -> ([x, 1] C M C⁺)[:d]` with `M` the diagonal 0/1 mask of the kept directions. See `rotate(..., keep=)`."""

    op = "rotate"

    def __init__(self, basis: Any, keep: Any = None, positions: Positions = None, head: int | None = None):
        super().__init__(positions=positions, head=head)
        C, C_pinv = _affine_pair(basis)
        m = C.shape[1]
        if keep is None:
            idx = torch.arange(m)
        elif isinstance(keep, int) and not isinstance(keep, bool):
            if not 0 <= keep <= m:
                raise ValueError(f"keep: expected an int in [0, {m}] (the top-k directions) or indices; got {keep}")
            idx = torch.arange(keep)
        else:
            idx = torch.as_tensor(keep)
            if idx.dtype == torch.bool:
                if idx.shape != (m,):
                    raise ValueError(f"keep: a boolean mask must have shape [{m}]; got {list(idx.shape)}")
                idx = idx.nonzero().flatten()
            if (
                idx.dtype.is_floating_point
                or idx.ndim != 1
                or (idx.numel() and not 0 <= int(idx.min()) <= int(idx.max()) < m)
            ):
                raise ValueError(f"keep: expected indices in [0, {m}), a [{m}] mask or an int; got {keep!r}")
        self.keep = idx.long()
        self.n_directions = int(m)
        with torch.no_grad():
            self.projector = C[:, self.keep].to(torch.float64) @ C_pinv[self.keep].to(torch.float64)  # [d + 1, d + 1]

    @property
    def feature_dim(self) -> int:
        return int(self.projector.shape[0]) - 1

    def _tensor_name(self) -> str:
        return "basis.C"

    def _check_feature_dim(self, d: int, name: str) -> None:
        if self.feature_dim != d:  # C has one row more than the features: the constant direction
            what = "per-head feature axis" if self.head is not None else "feature axis"
            raise ValueError(
                f"basis.C: has {self.feature_dim + 1} rows (features and the constant) but the {what} of {name} has "
                f"size {d} (basis.C must be [{d + 1}, ...]: a basis built at a hook of that width)"
            )

    def _transform(self, x):
        P = self.projector.to(dtype=x.dtype, device=x.device)
        return x @ P[:-1, :-1] + P[-1, :-1]

    def _describe(self) -> str:
        return f"affine basis [{self.feature_dim + 1}, {self.n_directions}], keep {self.keep.numel()} directions"


def _affine_pair(basis: Any) -> tuple[Tensor, Tensor]:
    """`(C [d + 1, m], C_pinv [m, d + 1])` from an object exposing `C` and `C_pinv`, or from a pair."""
    if hasattr(basis, "C") and hasattr(basis, "C_pinv"):
        C, C_pinv = basis.C, basis.C_pinv
    elif isinstance(basis, (tuple, list)) and len(basis) == 2:
        C, C_pinv = basis
    else:
        raise TypeError(
            "rotation: with keep=, expected a basis exposing C [d + 1, m] and C_pinv [m, d + 1] (e.g. "
            f"InteractionBasis.node(name)) or a pair (C, C_pinv); got {type(basis).__name__}"
        )
    C, C_pinv = _as_float_tensor(C, "rotation.C"), _as_float_tensor(C_pinv, "rotation.C_pinv")
    if C.ndim != 2 or C_pinv.ndim != 2 or tuple(C_pinv.shape) != (C.shape[1], C.shape[0]) or C.shape[0] < 2:
        raise ValueError(
            f"rotation: expected C [d + 1, m] and C_pinv [m, d + 1]; got {list(C.shape)} and {list(C_pinv.shape)}"
        )
    return C.detach(), C_pinv.detach()


def _is_affine_basis(rotation: Any) -> bool:
    return (hasattr(rotation, "C") and hasattr(rotation, "C_pinv")) or (
        isinstance(rotation, (tuple, list)) and len(rotation) == 2 and all(isinstance(t, Tensor) for t in rotation)
    )


# --------------------------------------------------------------------------------------------- factories
def rotate(
    rotation: Any,
    *,
    inverse: bool = False,
    keep: Any = None,
    positions: Positions = None,
    head: int | None = None,
    atol: float | None = None,
) -> Rotate | AffineProject:
    """Hook that expresses the activation in another basis: `x -> x @ R` (`inverse=True`: `x -> x @ R⁻¹`).

    `R` is `[d, d]` and must be invertible; it need not be orthogonal. When it is orthogonal (to `atol`), the
    inverse is `Rᵀ`; otherwise it is computed once in float64. `rotate(R)` then `unrotate(R)` on the same hook point
    is the identity (up to rounding), with any edit in between acting in the rotated coordinates.

    An affine basis with a folded-bias coordinate (an interaction basis node layer, `ib.node(name)`, or a pair
    `(C [d + 1, m], C_pinv [m, d + 1])`) gives the shape-preserving hook `x -> ([x, 1] C[:, keep] C⁺[keep])[:d]`:
    the activation expressed in that basis, projected on the directions `keep` (an int k: the first k, i.e. the
    top-k by Λ with the constant direction at index 0; indices; a `[m]` bool mask; None: all m) and mapped back.
    Keeping all directions removes only what the basis truncated; keeping fewer ablates the others (node ablation).
    """
    if _is_affine_basis(rotation):
        if inverse:
            raise ValueError(
                "inverse: an affine basis hook maps back itself (x -> ([x, 1] C C⁺)[:d]); drop inverse=True"
            )
        return AffineProject(rotation, keep=keep, positions=positions, head=head)
    if keep is not None:
        raise ValueError(f"keep: only with an affine basis (C, C_pinv); got a {type(rotation).__name__} rotation")
    return Rotate(rotation, inverse=inverse, positions=positions, head=head, atol=atol)


def unrotate(
    rotation: Any, *, positions: Positions = None, head: int | None = None, atol: float | None = None
) -> Rotate:
    """The inverse of `rotate(rotation)`: `x -> x @ R⁻¹`."""
    if _is_affine_basis(rotation):
        raise ValueError(
            "rotation: unrotate takes a rotation matrix; an affine basis (C, C_pinv) hook maps back itself "
            "(x -> ([x, 1] C C⁺)[:d]): use rotate((C, C_pinv), keep=...)"
        )
    return Rotate(rotation, inverse=True, positions=positions, head=head, atol=atol)
