"""The linear algebra of one node layer of the interaction basis (Bushnaq et al., arXiv 2405.10928), float64.

Row-vector convention: `f_aug = [f, 1]` `[rows, d + 1]` (the last coordinate is the folded-bias constant), the
basis coordinates are `f̂ = f_aug @ C`.

1. centred Gram `G = E[(f_aug − μ̃)ᵀ(f_aug − μ̃)]` (`μ̃` the mean with its constant entry 0): block diagonal,
   `[Cov(f), 0; 0, 1]`;
2. `G = U D Uᵀ` (float64 `eigh`), the constant direction `e_{d}` at index 0 (eigenvalue 1), the others sorted
   descending and truncated at `D > threshold`;
3. centring `Y` (`x Y = x − μ` off the constant coordinate), `W = Y U` (the centred PCA basis), whitening
   `R = W D^{-1/2}`, `R⁺ = D^{1/2} Uᵀ Y⁻¹`;
4. `M = R⁺ M' R⁺ᵀ` with `M' = E[Jᵀ J]` from the section's Jacobian; the constant direction is masked (its own
   block, `Λ_0 = M_00`), the rest `M = V diag(λ) Vᵀ` sorted descending, truncated at `λ > threshold`;
5. `C = R V Λ^{1/2} = Y U D^{-1/2} V Λ^{1/2}`, `C⁺ = Λ^{-1/2} Vᵀ R⁺`, so `C⁺ C = I` and
   `E[(f_aug C)ᵀ(f_aug C)] = diag(Λ)`.

Cost: `O(d³)` per layer for the two eigendecompositions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

F64 = torch.float64


@dataclass(frozen=True)
class Whitening:
    """The centred PCA of one node layer: `mean` `[d]`, `U` `[d + 1, k]` (column 0 the constant direction), `D`
    `[k]` (Gram eigenvalues, `D_0 = 1`), all float64."""

    mean: Tensor
    U: Tensor
    D: Tensor

    @property
    def Y(self) -> Float[Tensor, "d1 d1"]:
        """Centring matrix: `x_aug Y = [x − μ, 1]`."""
        d = self.mean.shape[0]
        y = torch.eye(d + 1, dtype=F64, device=self.mean.device)
        y[d, :d] = -self.mean
        return y

    @property
    def Y_inv(self) -> Float[Tensor, "d1 d1"]:
        d = self.mean.shape[0]
        y = torch.eye(d + 1, dtype=F64, device=self.mean.device)
        y[d, :d] = self.mean
        return y

    @property
    def W(self) -> Float[Tensor, "d1 k"]:
        """The centred PCA basis `Y U` (not whitened): the baseline's `C`."""
        return self.Y @ self.U

    @property
    def W_pinv(self) -> Float[Tensor, "k d1"]:
        return self.U.T @ self.Y_inv

    @property
    def R(self) -> Float[Tensor, "d1 k"]:
        return self.W / self.D.sqrt()

    @property
    def R_pinv(self) -> Float[Tensor, "k d1"]:
        return self.D.sqrt()[:, None] * self.W_pinv


def moments(acts: Float[Tensor, "rows d1"]) -> tuple[Float[Tensor, " d"], Float[Tensor, "d d"], int]:
    """`(Σ f, Σ f fᵀ, rows)` of augmented activations (constant coordinate dropped), float64: one batch's
    contribution to the mean and Gram."""
    f = acts[:, :-1].to(F64)
    return f.sum(0), f.T @ f, f.shape[0]


def whitening(
    total: Float[Tensor, " d"], second: Float[Tensor, "d d"], rows: int, threshold: float, center: bool = True
) -> Whitening:
    """Steps 1-2 from the summed moments (`moments` over every batch): mean, centred Gram, its eigenvectors with the
    constant direction first, truncated at eigenvalue `> threshold` (float64). `center=False`: the Gram of the
    uncentred activations (the mean is set to 0; the constant direction is still index 0)."""
    mean = total / rows
    cov = second / rows - (torch.outer(mean, mean) if center else 0)
    if not center:
        mean = torch.zeros_like(mean)
    cov = (cov + cov.T) / 2
    evals, evecs = torch.linalg.eigh(cov.cpu())
    evals = evals.abs()
    order = torch.argsort(evals, descending=True, stable=True)
    evals, evecs = evals[order], evecs[:, order]
    keep = evals > threshold
    evals, evecs = evals[keep].to(cov.device), evecs[:, keep].to(cov.device)
    d = mean.shape[0]
    U = torch.zeros(d + 1, 1 + evecs.shape[1], dtype=F64, device=cov.device)
    U[d, 0] = 1.0
    U[:d, 1:] = evecs
    D = torch.cat([torch.ones(1, dtype=F64, device=cov.device), evals])
    return Whitening(mean, U, D)


def interaction_rotation(
    w: Whitening, m_prime: Float[Tensor, "d1 d1"], threshold: float
) -> tuple[Float[Tensor, "d1 m"], Float[Tensor, "m d1"], Float[Tensor, " m"]]:
    """Steps 4-5: `(C, C⁺, Λ)` from `M' = E[Jᵀ J]` (`[d + 1, d + 1]`, float64). The constant direction stays at
    index 0 (scaled by `√Λ_0`, or by 1 when `Λ_0 <= threshold`); the others are the eigenvectors of the whitened
    `M` with `λ > threshold`, sorted descending."""
    Rp = w.R_pinv
    M = Rp @ m_prime.to(F64) @ Rp.T
    M = (M + M.T) / 2
    lam, V = torch.linalg.eigh(M[1:, 1:].cpu())
    lam, V = lam.abs(), V.to(M.device)
    order = torch.argsort(lam, descending=True, stable=True)
    lam, V = lam[order].to(M.device), V[:, order]
    keep = lam > threshold
    lam, V = lam[keep], V[:, keep]
    k = M.shape[0]
    Vfull = torch.zeros(k, 1 + V.shape[1], dtype=F64, device=M.device)
    Vfull[0, 0] = 1.0
    Vfull[1:, 1:] = V
    lam0 = M[0, 0].abs().reshape(1)
    Lam = torch.cat([lam0, lam])
    scale = Lam.sqrt().clone()
    if float(lam0) <= threshold:
        scale[0] = 1.0
    C = (w.R @ Vfull) * scale
    C_pinv = (Vfull.T @ Rp) / scale[:, None]
    return C, C_pinv, Lam


def pca_rotation(w: Whitening) -> tuple[Float[Tensor, "d1 k"], Float[Tensor, "k d1"], Float[Tensor, " k"]]:
    """The centred PCA baseline `(W, W⁺, D)`: `C = Y U`, not whitened, constant direction at index 0."""
    return w.W, w.W_pinv, w.D
