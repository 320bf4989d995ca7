"""Change-of-basis hooks: `rotate(R)` (`x -> x R`) and `unrotate(R)` (`x -> x R⁻¹`).

`R` is `[d, d]` and must be invertible, not necessarily orthogonal. The hooks are `SubspaceHook`s (see `base.py`):
they accept `positions=` and `head=` like `project`/`ablate`/`interchange`, and everything not selected is returned
bit-identical.
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


# --------------------------------------------------------------------------------------------- factories
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
