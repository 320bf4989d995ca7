"""Jacobian accumulations of the interaction basis with `torch.func`: one `vjp` per batch, `vmap` over output
directions (no Python loop per output direction).

A section `h: x [batch, pos_in, d_in] -> y [batch, pos_out, m_out]` (the next node layer's interaction-basis
coordinates) is linearised once per data batch (`torch.func.vjp`); its pullback is `vmap`ed over chunks of
cotangents `φ_(r,i) = S_r ⊗ e_i`, where `S_r [pos_out]` is a source over output positions (`e_t` for the exact
sum over output positions, random ±1 for the `rib` library's stochastic sources) and `e_i` an output coordinate.
Both sums are accumulated in float64:

- `jacobian_gram`: `M'_{jj'} = Σ_x Σ_s Σ_(r,i) g_{(r,i),s,j} g_{(r,i),s,j'}` with `g = φ_(r,i) · ∂y/∂x` (the
  `basis_formula="jacobian"` matrix of the interaction basis, before dividing by `N · pos_in`);
- `squared_edges`: `E_{ij} = Σ_x Σ_r (Σ_s g_{(r,i),s,j} x_{s,j})²` (gradient x activation, squared and summed over
  output positions; before dividing by `N · pos_in`).

With stochastic sources the sums over `r` are divided by the number of sources `R` (an unbiased estimate of the sum
over output positions, exact for one output position). Cost per batch: one forward pass and `R · m_out` VJPs
(`P_out · m_out` when exact), `chunk_size` of them at a time; memory `O(chunk_size · batch · pos_in · d_in)`.
`loop_jacobian_gram` is the reference one-VJP-per-output-direction loop (the `rib` library's approach), for
tests and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor
from torch.func import vjp, vmap

from tl_tensorsim.linalg import chunk_ranges

Section = Callable[[Float[Tensor, "batch pos_in d_in"]], Float[Tensor, "batch pos_out m_out"]]


def position_sources(
    pos_out: int,
    n_sources: int | None = None,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Float[Tensor, "n_sources pos_out"], float]:
    """Sources over output positions and the weight of each: the identity `[pos_out, pos_out]` with weight 1
    (`n_sources=None`: the exact sum over output positions), or `n_sources` random ±1 rows with weight
    `1 / n_sources` (the `rib` library's stochastic positional sources; `E[S_rᵀ S_r] = I`)."""
    if n_sources is None:
        return torch.eye(pos_out, dtype=dtype, device=device), 1.0
    signs = torch.randint(0, 2, (n_sources, pos_out), generator=generator).to(dtype=dtype, device=device)
    return 2 * signs - 1, 1.0 / n_sources


def _cotangents(sources: Tensor, m_out: int, batch: int, start: int, stop: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Cotangents `φ_n = S_r ⊗ e_i` for flat directions `n = r * m_out + i` in `[start, stop)`,
    `[n, batch, pos_out, m_out]`, and their output indices `i` `[n]`."""
    n = torch.arange(start, stop, device=like.device)
    r, i = n // m_out, n % m_out
    phi = torch.zeros(stop - start, batch, sources.shape[1], m_out, dtype=like.dtype, device=like.device)
    src = sources.to(dtype=like.dtype, device=like.device)[r]  # [n, pos_out]
    phi[torch.arange(stop - start, device=like.device), :, :, i] = src[:, None, :].expand(-1, batch, -1)
    return phi, i


def pullbacks(
    h: Section, x: Float[Tensor, "batch pos_in d_in"], sources: Tensor, chunk_size: int
) -> Iterator[tuple[int, Tensor, Float[Tensor, "n batch pos_in d_in"]]]:
    """`(m_out, i, g)` per chunk of directions: the output size, the output indices `i [n]` and the pullbacks `g = φ · ∂h/∂x` of the
    cotangents `φ_(r,i) = S_r ⊗ e_i` (one `vjp`, then `vmap` over the chunk)."""
    y, pull = vjp(h, x)
    if y.ndim != 3 or y.shape[0] != x.shape[0] or y.shape[1] != sources.shape[1]:
        raise ValueError(
            f"section: expected an output [batch={x.shape[0]}, pos_out={sources.shape[1]}, m_out]; got {list(y.shape)}"
        )
    batched = vmap(lambda phi: pull(phi)[0])
    total = sources.shape[0] * y.shape[2]
    for start, stop in chunk_ranges(total, chunk_size):
        phi, i = _cotangents(sources, y.shape[2], x.shape[0], start, stop, y)
        yield int(y.shape[2]), i, batched(phi)


def jacobian_gram(
    h: Section, x: Float[Tensor, "batch pos_in d_in"], sources: Tensor, weight: float = 1.0, chunk_size: int = 64
) -> Float[Tensor, "d_in d_in"]:
    """`weight · Σ_b Σ_s Σ_(r,i) g gᵀ` over one batch, float64 (see the module docstring; `g` the pullbacks)."""
    out = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float64, device=x.device)
    for _, _, g in pullbacks(h, x, sources, chunk_size):
        g = g.detach().to(torch.float64)
        out += torch.einsum("nbsj,nbsk->jk", g, g)
    return out * weight


def squared_edges(
    h: Section, x: Float[Tensor, "batch pos_in m_in"], sources: Tensor, weight: float = 1.0, chunk_size: int = 64
) -> Float[Tensor, "m_out m_in"]:
    """`weight · Σ_b Σ_r (Σ_s g_{(r,i),b,s,j} x_{b,s,j})²` over one batch, `[m_out, m_in]`, float64: squared
    gradient x activation edges from input coordinate `j` to output coordinate `i` (module docstring)."""
    out: Tensor | None = None
    x64 = x.detach().to(torch.float64)
    for m_out, i, g in pullbacks(h, x, sources, chunk_size):
        if out is None:
            out = torch.zeros(m_out, x.shape[-1], dtype=torch.float64, device=x.device)
        a = torch.einsum("nbsj,bsj->nbj", g.detach().to(torch.float64), x64)
        out.index_add_(0, i, (a * a).sum(1))
    assert out is not None
    return out * weight


def loop_jacobian_gram(
    h: Section, x: Float[Tensor, "batch pos_in d_in"], sources: Tensor, weight: float = 1.0
) -> Float[Tensor, "d_in d_in"]:
    """The same sum as `jacobian_gram` with one `torch.autograd.grad` call per direction `(r, i)` on a retained
    graph (the `rib` library's loop): the reference for tests and `benchmarks/interaction_basis.py`."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = h(x)
        out = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float64, device=x.device)
        total = sources.shape[0] * y.shape[2]
        for n in range(total):
            phi, _ = _cotangents(sources, y.shape[2], x.shape[0], n, n + 1, y)
            (g,) = torch.autograd.grad(y, x, grad_outputs=phi[0], retain_graph=n + 1 < total)
            g = g.to(torch.float64)
            out += torch.einsum("bsj,bsk->jk", g, g)
    return out * weight
