"""Monte Carlo estimate of the Gaussian functional inner product (paper §2.2(B)) for networks of any depth.

`E_{x~N(0,Σ)}[f_a(x)ᵀ f_b(x)]` is estimated for every pair of a list of networks from one shared set of
samples (batched, seeded with a `torch.Generator` on the computation device); the cosine
`S_ab / sqrt(S_aa S_bb)` gets a delta-method standard error from the per-sample covariance of
`(f_aᵀf_b, f_aᵀf_a, f_bᵀf_b)`. Accumulators are float64 whatever the forward dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tl_tensorsim.checks import output_indices
from tl_tensorsim.models.bilinear import TensorChain


@dataclass
class MonteCarloMoments:
    """Moments over `n` samples for `T` networks and `G` output groups (each `(T, T, G)`, float64)."""

    n: int
    mean: Tensor  # E[p_ab]
    mean_sq: Tensor  # E[p_ab^2]
    mean_ab_aa: Tensor  # E[p_ab p_aa]
    mean_aa_bb: Tensor  # E[p_aa p_bb]

    def inner_stderr(self) -> Tensor:
        var = (self.mean_sq - self.mean**2).clamp_min(0)
        return torch.sqrt(var / self.n)

    def cosine(self, eps: float = 1e-30) -> tuple[Tensor, Tensor]:
        """Cosine estimate and its delta-method standard error, both `(T, T, G)`."""
        S = self.mean
        d = torch.diagonal(S, dim1=0, dim2=1).permute(1, 0)  # (T, G): S_aa
        Saa, Sbb = d[:, None, :], d[None, :, :]
        den = torch.sqrt(Saa.clamp_min(0)) * torch.sqrt(Sbb.clamp_min(0))
        ok = den > eps
        safe = torch.where(ok, den, torch.ones_like(den))
        r = torch.where(ok, S / safe, torch.zeros_like(S))
        # covariance of (p_ab, p_aa, p_bb)
        sq_diag = torch.diagonal(self.mean_sq, dim1=0, dim2=1).permute(1, 0)
        v_ab = self.mean_sq - S**2
        v_aa = sq_diag[:, None, :] - Saa**2
        v_bb = sq_diag[None, :, :] - Sbb**2
        c_ab_aa = self.mean_ab_aa - S * Saa
        c_ab_bb = self.mean_ab_aa.transpose(0, 1) - S * Sbb
        c_aa_bb = self.mean_aa_bb - Saa * Sbb
        g1 = 1 / safe
        g2 = -r / (2 * torch.where(Saa > eps, Saa, torch.ones_like(Saa)))
        g3 = -r / (2 * torch.where(Sbb > eps, Sbb, torch.ones_like(Sbb)))
        var = (
            g1**2 * v_ab
            + g2**2 * v_aa
            + g3**2 * v_bb
            + 2 * g1 * g2 * c_ab_aa
            + 2 * g1 * g3 * c_ab_bb
            + 2 * g2 * g3 * c_aa_bb
        )
        se = torch.sqrt(var.clamp_min(0) / self.n)
        idx = torch.arange(S.shape[0])
        se[idx, idx] = 0  # r_aa = 1 exactly
        return r.clamp(-1, 1), torch.where(ok, se, torch.zeros_like(se))


def _sqrt_cov(sigma: Tensor) -> Tensor:
    """`A` with `A Aᵀ = Σ` for a symmetric positive semi-definite Σ (eigendecomposition)."""
    w, Q = torch.linalg.eigh(sigma.double())
    if float(w.min()) < -1e-8 * max(1.0, float(w.max())):
        raise ValueError(
            f"sigma: expected a positive semi-definite covariance; smallest eigenvalue {float(w.min()):.3g}"
        )
    return Q * torch.sqrt(w.clamp_min(0))[None, :]


def gaussian_moments(
    chains: Sequence[TensorChain],
    groups: Tensor,
    samples: int,
    seed: int,
    sigma: Tensor | None,
    dtype: torch.dtype,
    device: torch.device | str,
    batch_size: int | None = None,
) -> MonteCarloMoments:
    """Monte Carlo moments of `p_ab = Σ_{c in group} f_a(x)_c f_b(x)_c` over `x ~ N(0, Σ)`.

    `groups`: `(d_out, G)` 0/1 matrix (which outputs each group sums). One sample set is shared by all pairs.
    """
    if samples < 2:
        raise ValueError(f"samples: expected at least 2; got {samples}")
    d_in = chains[0].d_in
    T, G = len(chains), groups.shape[1]
    nets = [c.to(dtype, device) for c in chains]
    groups = groups.to(device=device, dtype=dtype)
    A = None if sigma is None else _sqrt_cov(sigma).to(device=device, dtype=dtype)
    if batch_size is None:  # cap the (n, T, T, G) product tensor at about 2^24 entries
        batch_size = int(max(256, min(65536, 2**24 // max(1, T * T * G))))
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    acc = [torch.zeros(T, T, G, dtype=torch.float64, device=device) for _ in range(4)]
    done = 0
    with torch.no_grad():
        while done < samples:
            n = min(batch_size, samples - done)
            z = torch.randn(n, d_in, generator=gen, device=device, dtype=dtype)
            x = z if A is None else z @ A.T
            Y = torch.stack([net(x) for net in nets])  # (T, n, C)
            P = torch.einsum("anc,bnc,cg->nabg", Y, Y, groups).double()
            d = torch.diagonal(P, dim1=1, dim2=2).permute(0, 2, 1)  # (n, T, G)
            acc[0] += P.sum(0)
            acc[1] += (P * P).sum(0)
            acc[2] += (P * d[:, :, None, :]).sum(0)
            acc[3] += torch.einsum("nag,nbg->abg", d, d)
            done += n
    return MonteCarloMoments(samples, *(a / samples for a in acc))


def groups_matrix(d_out: int, output: int | Sequence[int] | None, per_output: bool) -> Tensor:
    """`(d_out, G)` selector: one group per output (`per_output`), or one group of the selected outputs."""
    if per_output:
        return torch.eye(d_out, dtype=torch.float64)
    idx = output_indices(output, d_out)
    g = torch.zeros(d_out, 1, dtype=torch.float64)
    g[slice(None) if idx is None else idx, 0] = 1
    return g
