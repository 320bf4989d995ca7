"""`interaction_basis(model, node_layers, data)` -> `InteractionBasis` (Bushnaq et al., arXiv 2405.10928, the
Local Interaction Basis; Apollo Research's `rib` library, `basis_formula="jacobian"`).

Built from the output backwards: for each node layer `l` (hook names, see `sections.py`), the centred Gram of its
augmented activations (optionally from a separate `gram_data`), its float64 eigendecomposition and first truncation,
whitening, `M' = E[Jᵀ J]` from the Jacobian of the next node layer's interaction-basis coordinates
(`jacobians.jacobian_gram`: one `vjp` per batch, `vmap` over output directions), the second eigendecomposition and
truncation, and `C = Y U D^{-1/2} V Λ^{1/2}`, `C⁺ = Λ^{-1/2} Vᵀ D^{1/2} Uᵀ Y⁻¹` (`eigen.py`). The centred PCA basis
`W = Y U` of the same run is kept as the baseline. The last node layer's basis is the identity (its coordinates, the
logits) or, with `rotate_final=True`, its centred PCA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_tensorsim.adapter import ModelLike, as_view
from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure
from tl_tensorsim.checks import checked_int
from tl_tensorsim.linalg import chunk_ranges
from tl_tensorsim.model_run import checked_tokens

from . import eigen, jacobians, sections

F64 = torch.float64
_LISTS = ("C", "C_pinv", "Lambda", "C_pca", "C_pca_pinv", "Lambda_pca", "mean")


class NodeBasis(NamedTuple):
    """One node layer's basis: `C` `[d + 1, m]`, `C_pinv` `[m, d + 1]`, `Lambda` `[m]` (float64). The last row of
    `C` (last column of `C_pinv`) is the folded-bias constant coordinate. `tl_tensorsim.hooks.rotate` accepts it."""

    name: str
    C: Tensor
    C_pinv: Tensor
    Lambda: Tensor


def _pad(tensors: Sequence[Tensor]) -> Tensor:
    shape = [max(t.shape[k] for t in tensors) for k in range(tensors[0].ndim)]
    out = torch.zeros(len(tensors), *shape, dtype=F64)
    for o, t in zip(out, tensors):
        o[tuple(slice(0, s) for s in t.shape)] = t.detach().cpu().to(F64)
    return out


@dataclass(frozen=True, repr=False)
class InteractionBasis(Artifact):
    """Per node layer `l` (in `node_layers` order): `C[l]` `[d_l + 1, m_l]`, `C_pinv[l]` `[m_l, d_l + 1]`,
    `Lambda[l]` `[m_l]` (the interaction basis; index 0 the constant direction), the centred PCA baseline of the
    same run `C_pca[l]` `[d_l + 1, k_l]`, `C_pca_pinv[l]`, `Lambda_pca[l]` `[k_l]` (Gram eigenvalues), and `mean[l]`
    `[d_l]`; all float64 on the CPU. `dims[l] = d_l + 1`; `last_position[l]`: the layer keeps the last position
    only. Basis coordinates are `f̂ = [f, 1] @ C`. `save(dir)` / `tl_tensorsim.load(dir)` (safetensors + JSON)."""

    node_layers: tuple[str, ...]
    last_position: tuple[bool, ...]
    dims: tuple[int, ...]
    C: Any
    C_pinv: Any
    Lambda: Any
    C_pca: Any
    C_pca_pinv: Any
    Lambda_pca: Any
    mean: Any
    fold_bias: bool = True
    n_kept: tuple[int, ...] = ()
    n_kept_pca: tuple[int, ...] = ()
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_layers", tuple(self.node_layers))
        object.__setattr__(self, "last_position", tuple(bool(x) for x in self.last_position))
        object.__setattr__(self, "dims", tuple(int(x) for x in self.dims))
        if not isinstance(self.C, Tensor):
            object.__setattr__(self, "n_kept", tuple(int(c.shape[1]) for c in self.C))
        if not isinstance(self.C_pca, Tensor):
            object.__setattr__(self, "n_kept_pca", tuple(int(c.shape[1]) for c in self.C_pca))
        for name in _LISTS:
            value = getattr(self, name)
            if isinstance(value, Tensor):  # padded, as stored: cut back to each layer's shape
                value = self._unpad(name, value)
            object.__setattr__(self, name, tuple(t.detach().cpu().to(F64) for t in value))

    def _unpad(self, name: str, padded: Tensor) -> list[Tensor]:
        if len(self.n_kept) != len(self.dims) or len(self.n_kept_pca) != len(self.dims):
            raise ValueError(f"n_kept, n_kept_pca: expected one entry per node layer ({len(self.dims)})")
        out = []
        for l, d1 in enumerate(self.dims):
            t = padded[l]
            m = self.n_kept[l] if name in ("C", "C_pinv", "Lambda") else self.n_kept_pca[l]
            if name in ("C", "C_pca"):
                out.append(t[:d1, :m])
            elif name in ("C_pinv", "C_pca_pinv"):
                out.append(t[:m, :d1])
            elif name == "mean":
                out.append(t[: d1 - 1])
            else:
                out.append(t[:m])
        return out

    def _encode_field(self, name: str, value: Any) -> Any:
        return _pad(value) if name in _LISTS else value

    def _check(self) -> None:
        n = len(self.node_layers)
        for name in ("last_position", "dims", *_LISTS):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: expected one entry per node layer ({n}); got {len(getattr(self, name))}")
        for l, d1 in enumerate(self.dims):
            m, k = self.C[l].shape[1], self.C_pca[l].shape[1]
            expect_shape(f"C[{l}]", self.C[l], (d1, m))
            expect_shape(f"C_pinv[{l}]", self.C_pinv[l], (m, d1))
            expect_shape(f"Lambda[{l}]", self.Lambda[l], (m,))
            expect_shape(f"C_pca[{l}]", self.C_pca[l], (d1, k))
            expect_shape(f"C_pca_pinv[{l}]", self.C_pca_pinv[l], (k, d1))
            expect_shape(f"Lambda_pca[{l}]", self.Lambda_pca[l], (k,))

    # ------------------------------------------------------------------ access
    def index(self, node: str | int) -> int:
        """Position of node layer `node` (a name in `node_layers` or an index)."""
        if isinstance(node, int) and not isinstance(node, bool):
            if not -len(self.node_layers) <= node < len(self.node_layers):
                raise ValueError(f"node: index {node} out of range for {len(self.node_layers)} node layers")
            return node % len(self.node_layers)
        if node not in self.node_layers:
            raise ValueError(f"node: expected one of {list(self.node_layers)} or an index; got {node!r}")
        return self.node_layers.index(node)

    def node(self, node: str | int, basis: str = "ib") -> NodeBasis:
        """The basis of one node layer: `basis="ib"` (interaction basis) or `"pca"` (the baseline)."""
        l = self.index(node)
        if basis == "ib":
            return NodeBasis(self.node_layers[l], self.C[l], self.C_pinv[l], self.Lambda[l])
        if basis == "pca":
            return NodeBasis(self.node_layers[l], self.C_pca[l], self.C_pca_pinv[l], self.Lambda_pca[l])
        raise ValueError(f"basis: expected 'ib' or 'pca'; got {basis!r}")

    @property
    def kept(self) -> tuple[int, ...]:
        """Interaction-basis dimensions kept per node layer (constant direction included)."""
        return self.n_kept

    @property
    def kept_pca(self) -> tuple[int, ...]:
        """PCA dimensions kept per node layer (constant direction included)."""
        return self.n_kept_pca

    def to(self, acts: Float[Tensor, "*batch d"], node: str | int, basis: str = "ib") -> Float[Tensor, "*batch m"]:
        """Coordinates `[f, 1] @ C` of activations `f` (without the constant coordinate) at node layer `node`."""
        nb = self.node(node, basis)
        aug = torch.cat([acts, torch.ones_like(acts[..., :1])], -1)
        return aug @ nb.C.to(dtype=acts.dtype, device=acts.device)

    def __repr__(self) -> str:
        rows = ", ".join(
            f"{n}: {d - 1}->{m} (pca {k})" for n, d, m, k in zip(self.node_layers, self.dims, self.kept, self.kept_pca)
        )
        return f"InteractionBasis({rows})"

    def plot_spectra(self, path: str | os.PathLike | None = None, ax: Any = None) -> Any:
        """Λ of the interaction basis beside the PCA eigenvalues, per node layer (log scale; constant direction
        left out). Saved to `path` when given; returns the figure."""
        import matplotlib.pyplot as plt

        n = len(self.node_layers) - 1
        if ax is None:
            fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
            axes = axes[0]
        else:
            axes, fig = [ax] * n, ax.figure
        for l in range(n):
            a = axes[l]
            lam = self.Lambda[l][1:] / self.Lambda[l][1:].max().clamp_min(1e-300)
            pca = self.Lambda_pca[l][1:] / self.Lambda_pca[l][1:].max().clamp_min(1e-300)
            a.semilogy(lam.numpy(), label="interaction basis Λ")
            a.semilogy(pca.numpy(), label="PCA eigenvalue", ls="--")
            a.set_title(self.node_layers[l], fontsize=9)
            a.set_xlabel("direction (sorted)")
            a.set_ylabel("relative to the largest")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ building
def _check_tokens(view: Any, data: Any, argument: str) -> Tensor:
    """`data` as checked token ids `[batch >= 2, pos]` on the model's device."""
    tokens = checked_tokens(view, data, argument)
    if tokens.shape[0] < 2:
        raise ValueError(f"{argument}: expected at least 2 sequences [batch, pos]; got shape {list(tokens.shape)}")
    return tokens


def _check_sizes(batch_size: Any, chunk_size: Any, n_sources: Any) -> tuple[int, int, int | None]:
    """`batch_size`, `chunk_size` (positive ints) and `n_stochastic_sources` (None or a positive int), checked."""
    batch_size = checked_int(batch_size, "batch_size", 1, "a positive int")
    chunk_size = checked_int(chunk_size, "chunk_size", 1, "a positive int")
    if n_sources is not None:
        n_sources = checked_int(n_sources, "n_stochastic_sources", 1, "None or a positive int")
    return batch_size, chunk_size, n_sources


def _final(acts: list[Tensor], rotate: bool, threshold: float, center: bool) -> tuple[Tensor, ...]:
    """The last node layer's `(C, C⁺, Λ, mean)`: identity on its coordinates (Λ their second moments), or its
    centred PCA (Λ the Gram eigenvalues)."""
    d1 = acts[0].shape[-1]
    total, second, rows = _moments(acts)
    if rotate:
        w = eigen.whitening(total, second, rows, threshold, center)
        return (*(t.cpu() for t in eigen.pca_rotation(w)), w.mean.cpu())
    C = torch.eye(d1, d1 - 1, dtype=F64)
    return C, C.T.clone(), (second.diagonal() / rows).cpu(), (total / rows).cpu()


def _moments(acts: list[Tensor]) -> tuple[Tensor, Tensor, int]:
    total, second, rows = 0, 0, 0
    for a in acts:
        t, s, r = eigen.moments(a.reshape(-1, a.shape[-1]))
        total, second, rows = total + t, second + s, rows + r
    return total, second, rows  # type: ignore[return-value]


def interaction_basis(
    model: ModelLike,
    node_layers: Sequence[str],
    data: Int[Tensor, "batch pos"],
    *,
    last_pos_from: str | None = None,
    gram_data: Int[Tensor, "batch_g pos"] | None = None,
    center: bool = True,
    fold_bias: bool = True,
    truncation_threshold: float = 1e-10,
    rotate_final: bool = False,
    n_stochastic_sources: int | None = None,
    batch_size: int = 64,
    chunk_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> InteractionBasis:
    """The interaction basis of every node layer but the last (module docstring; arXiv 2405.10928, `rib`'s
    `jacobian` basis with centring).

    model: a HookedTransformer or TransformerBridge (or `ModelView`). node_layers: hook names in forward order,
    optionally ending with `"output"` (the logits). data: token ids `[batch, pos]`. last_pos_from: the first node
    layer that keeps the last position only (None: all positions everywhere). gram_data: tokens for the Gram
    matrices (default `data`). truncation_threshold: eigenvalues of the Gram and of `M` at or below it are dropped
    (float64). n_stochastic_sources: None sums `M'` exactly over output positions; an int uses that many random ±1
    sources over output positions (unbiased; exact for one output position). batch_size: sequences per forward
    pass; chunk_size: output directions per `vmap`ed pullback (memory `O(chunk_size · batch_size · pos · d)`).

    `M'_{jj'} = 1/(N·P_in) Σ_x Σ_s Σ_(t,i) J_{(t,i),(s,j)} J_{(t,i),(s,j')}` with `J = ∂f̂^{l+1}/∂f^l`, accumulated in
    float64. Cost per node layer: one forward pass and `P_out · m_out` (or `R · m_out`) VJPs per batch, plus two
    `O(d³)` eigendecompositions.
    """
    view = as_view(model)
    layers = sections.check_node_layers(view, node_layers, last_pos_from)
    tokens = _check_tokens(view, data, "data")
    gram_tokens = tokens if gram_data is None else _check_tokens(view, gram_data, "gram_data")
    batch_size, chunk_size, n_stochastic_sources = _check_sizes(batch_size, chunk_size, n_stochastic_sources)
    if not float(truncation_threshold) >= 0:
        raise ValueError(f"truncation_threshold: expected a float >= 0; got {truncation_threshold!r}")
    threshold = float(truncation_threshold)
    n = len(layers)
    batches = list(chunk_ranges(tokens.shape[0], batch_size))
    acts = [sections.collect(view, layers, tokens[a:b]) for a, b in batches]
    per_layer = [[a[l] for a in acts] for l in range(n)]
    if gram_data is None:
        gram_layers = per_layer
    else:
        g = [
            sections.collect(view, layers, gram_tokens[a:b]) for a, b in chunk_ranges(gram_tokens.shape[0], batch_size)
        ]
        gram_layers = [[a[l] for a in g] for l in range(n)]

    C, Cp, Lam = [None] * n, [None] * n, [None] * n
    Cpca, Cpca_p, Dpca, means = [None] * n, [None] * n, [None] * n, [None] * n
    C[-1], Cp[-1], Lam[-1], means[-1] = _final(gram_layers[-1], rotate_final, threshold, center)
    Cpca[-1], Cpca_p[-1], Dpca[-1] = C[-1], Cp[-1], Lam[-1]
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=(n - 1) * len(batches), desc="interaction basis", disable=not progress)
    for l in range(n - 2, -1, -1):
        w = eigen.whitening(*_moments(gram_layers[l]), threshold, center)
        c_next = C[l + 1].to(device=view.device)
        m_prime = torch.zeros(w.U.shape[0], w.U.shape[0], dtype=F64, device=view.device)
        rows = 0
        for (a, b), x in zip(batches, per_layer[l]):
            clean = sections.full_activation(view, layers.names[l], tokens[a:b]) if layers.last[l] else None
            F = sections.section(view, layers, l, tokens[a:b], clean, fold_bias)
            pos_out = per_layer[l + 1][0].shape[1]
            src, weight = jacobians.position_sources(pos_out, n_stochastic_sources, generator=gen, dtype=x.dtype)
            cn = c_next.to(x.dtype)
            m_prime += jacobians.jacobian_gram(lambda z, F=F, cn=cn: F(z) @ cn, x, src.to(x.device), weight, chunk_size)
            rows += x.shape[0] * x.shape[1]
            bar.update(1)
        w = eigen.Whitening(w.mean.to(view.device), w.U.to(view.device), w.D.to(view.device))
        c, cp, lam = eigen.interaction_rotation(w, m_prime / rows, threshold)
        C[l], Cp[l], Lam[l] = c.cpu(), cp.cpu(), lam.cpu()
        Cpca[l], Cpca_p[l], Dpca[l] = (t.cpu() for t in eigen.pca_rotation(w))
        means[l] = w.mean.cpu()
        bar.set_postfix(layer=layers.names[l], kept=f"{c.shape[1]}/{w.U.shape[0]}")
    bar.close()
    settings = dict(
        last_pos_from=last_pos_from,
        center=center,
        fold_bias=fold_bias,
        truncation_threshold=threshold,
        rotate_final=rotate_final,
        n_stochastic_sources=n_stochastic_sources,
        batch_size=batch_size,
        chunk_size=chunk_size,
        seed=seed,
        n_data=int(tokens.shape[0]),
        n_gram_data=int(gram_tokens.shape[0]),
        model_dtype=str(view.dtype),
    )
    return InteractionBasis(
        node_layers=layers.names,
        last_position=layers.last,
        dims=tuple(int(x[0].shape[-1]) for x in per_layer),
        C=C,
        C_pinv=Cp,
        Lambda=Lam,
        C_pca=Cpca,
        C_pca_pinv=Cpca_p,
        Lambda_pca=Dpca,
        mean=[m.cpu() for m in means],
        fold_bias=fold_bias,
        provenance=Provenance(models=(view.cfg.model_name,), hooks=layers.names, settings=settings),
    )
