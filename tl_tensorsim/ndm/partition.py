"""`SubspacePartition`: an orthogonal rotation of a representation space and a partition of the rotated
coordinates into contiguous blocks (Huang & Hahn, arXiv 2508.01916, Sec. 3), plus the paper's baselines of the same
sizes (Sec. 4: identity, random orthogonal, PCA in ascending and descending order) and the reader for the
authors' released matrices.

Row-vector convention throughout: `ĥ = h @ R`, subspace `i` is `ĥ[..., a_i:b_i]` with `b_i − a_i = sizes[i]`,
its basis in the original space is `R[:, a_i:b_i]`, and `h = ĥ @ Rᵀ`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure
from tl_tensorsim.linalg import gram, orthonormality_error

OFFICIAL_KEY = "R.parametrizations.weight.0.base"
ORTHOGONAL_TOL = 1e-4  # max |RᵀR − I| accepted for a stored or given rotation (float32 files: ~1e-6)


def mean_pairwise(mi: Float[Tensor, "n n"]) -> float | None:
    """The mean of a symmetric pairwise matrix above its diagonal (None for fewer than two subspaces)."""
    if len(mi) < 2:
        return None
    return float(mi[tuple(torch.triu_indices(len(mi), len(mi), 1))].mean())


def check_sizes(sizes: Any, d: int | None = None, argument: str = "sizes") -> tuple[int, ...]:
    """`sizes` as a tuple of positive ints (summing to `d` when given), else a `ValueError` naming `argument`."""
    try:
        out = tuple(int(s) for s in sizes)
        ok = all(int(s) == s and not isinstance(s, bool) for s in sizes)
    except (TypeError, ValueError):
        raise TypeError(f"{argument}: expected a sequence of positive ints; got {sizes!r}") from None
    if not out or not ok or min(out) < 1:
        raise ValueError(f"{argument}: expected a non-empty sequence of positive ints; got {list(sizes)}")
    if d is not None and sum(out) != d:
        raise ValueError(f"{argument}: the widths must sum to d={d}; got {list(out)} (sum {sum(out)})")
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal values, NaN equal to NaN and a list equal to a tuple (what a JSON round trip keeps)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@dataclass(frozen=True, repr=False, eq=False)
class SubspacePartition(Artifact):
    """An orthogonal `R` `[d, d]` (float64) and subspace widths `sizes` (contiguous column blocks, in order).

    Fields: `R`; `sizes`; `method` (`"ndm"`, `"identity"`, `"random"`, `"pca_ascending"`, `"pca_descending"`,
    `"official"`); `loss` (final mean nearest-neighbour distance, NDM only); `mi` (`[S, S]` float64 pairwise KSG
    mutual information of the final partition, or None); `history` (training log: steps, losses, merges);
    `provenance` (model and hook names, every training setting). `save(dir)` / `tl_tensorsim.load(dir)` store it
    (R and mi as float64 safetensors, the rest as JSON). The released format of the paper's code reads with
    `SubspacePartition.from_official(r_file, json_file)`.

    `p == q` compares the fields (tensors exactly, with `torch.equal`) except `provenance`, so a partition equals
    itself saved and loaded again; `R` and `mi` must be finite.
    """

    R: Tensor
    sizes: tuple[int, ...]
    method: str = "ndm"
    loss: float | None = None
    mi: Tensor | None = None
    history: dict[str, list] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.R, Tensor) or self.R.ndim != 2 or self.R.shape[0] != self.R.shape[1]:
            got = list(self.R.shape) if isinstance(self.R, Tensor) else type(self.R).__name__
            raise ValueError(f"R: expected a square [d, d] tensor; got {got}")
        object.__setattr__(self, "R", self.R.detach().to("cpu", torch.float64))
        object.__setattr__(self, "sizes", check_sizes(self.sizes, self.R.shape[0]))
        bad = int((~self.R.isfinite()).sum())
        if bad:  # NaN would pass the tolerance test below (NaN > tol is False)
            raise ValueError(
                f"R: expected a finite orthogonal matrix; got {bad} NaN/inf entries of {self.R.numel()}; "
                "a diverged fit or a corrupted file: refit, or orthonormalise a finite matrix"
            )
        err = orthonormality_error(self.R)
        if err > ORTHOGONAL_TOL:
            raise ValueError(
                f"R: expected an orthogonal matrix (max |RᵀR − I| <= {ORTHOGONAL_TOL}); got {err:.3g}; "
                "orthonormalise it first (e.g. with the polar factor U Vᵀ of its SVD)"
            )
        if self.mi is not None:
            if not isinstance(self.mi, Tensor):
                raise TypeError(
                    f"mi: expected None or a [n_subspaces, n_subspaces] tensor; got {type(self.mi).__name__}"
                )
            object.__setattr__(self, "mi", self.mi.detach().to("cpu", torch.float64))
            bad = int((~self.mi.isfinite()).sum())
            if bad:
                raise ValueError(
                    f"mi: expected finite mutual information estimates; got {bad} NaN/inf entries of "
                    f"{self.mi.numel()}; pass mi=None when it was not estimated"
                )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubspacePartition):
            return NotImplemented
        if (other.mi is None) != (self.mi is None):
            return False
        return (
            self.sizes == other.sizes
            and torch.equal(self.R, other.R)
            and (self.mi is None or torch.equal(self.mi, other.mi))
            and _same((self.method, self.loss, self.history), (other.method, other.loss, other.history))
        )

    def __hash__(self) -> int:  # consistent with __eq__: equal partitions share sizes and method
        return hash((self.sizes, self.method))

    def _check(self) -> None:
        if self.mi is not None:
            expect_shape("mi", self.mi, (len(self.sizes),) * 2, "[n_subspaces, n_subspaces] from sizes")

    # ------------------------------------------------------------------------------------------- views
    @property
    def d(self) -> int:
        return int(self.R.shape[0])

    @property
    def n_subspaces(self) -> int:
        return len(self.sizes)

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """`(start, stop)` column range of each subspace."""
        starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        return [(a, a + s) for a, s in zip(starts, self.sizes)]

    @property
    def rotation(self) -> Float[Tensor, "d d"]:
        """`R` in float32 (`rotation_as(torch.float64)` for float64)."""
        return self.R.to(torch.float32)

    def rotation_as(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> Float[Tensor, "d d"]:
        """`R` `[d, d]` in `dtype` on `device` (default: the CPU)."""
        return self.R.to(device=device or "cpu", dtype=dtype)

    def _index(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not -self.n_subspaces <= i < self.n_subspaces:
            raise ValueError(f"i: expected a subspace index in [0, {self.n_subspaces}); got {i!r}")
        return i % self.n_subspaces

    def basis(
        self, i: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Float[Tensor, "d d_i"]:
        """Orthonormal basis `[d, d_i]` of subspace `i` in the original space (columns of R), for
        `hooks.project / ablate / interchange`."""
        a, b = self.bounds[self._index(i)]
        return self.rotation_as(dtype, device)[:, a:b]

    def project(self, x: Float[Tensor, "*batch d"], i: int) -> Float[Tensor, "*batch d"]:
        """The component of `x` in subspace `i`, in the original coordinates: `(x @ B_i) @ B_iᵀ`."""
        b = self.basis(i, x.dtype, x.device)
        return (x @ b) @ b.T

    def split(self, x: Float[Tensor, "*batch d"]) -> tuple[Tensor, ...]:
        """The rotated coordinates `x @ R` split into the subspaces: one `[*batch, d_i]` tensor per subspace."""
        if x.shape[-1] != self.d:
            raise ValueError(f"x: expected a last axis of size d={self.d}; got shape {list(x.shape)}")
        return tuple((x @ self.rotation_as(x.dtype, x.device)).split(list(self.sizes), dim=-1))

    def norm_shares(
        self, vectors: Float[Tensor, "k d"], groups: Sequence[Sequence[int]] | None = None
    ) -> Float[Tensor, "k_or_groups n_subspaces"]:
        """The share of the squared norm of each row of `vectors` in each subspace (`‖B_sᵀ v‖² / ‖v‖²`, rows sum
        to 1), float64; with `groups` (lists of row indices), pooled per group: `Σ_v ‖B_sᵀ v‖² / Σ_v ‖v‖²`."""
        if vectors.ndim != 2 or vectors.shape[1] != self.d:
            raise ValueError(f"vectors: expected [k, d={self.d}]; got shape {list(vectors.shape)}")
        energy = torch.stack([c.square().sum(-1) for c in self.split(vectors.detach().to(torch.float64).cpu())], -1)
        if groups is not None:
            energy = torch.stack([energy[list(g)].sum(0) for g in groups])
        return energy / energy.sum(-1, keepdim=True)

    @property
    def mean_mi(self) -> float | None:
        """Mean pairwise mutual information (nats, over pairs i < j), or None when not estimated."""
        return None if self.mi is None else mean_pairwise(self.mi)

    @property
    def hook_name(self) -> str | None:
        return self.provenance.hooks[0] if self.provenance.hooks else None

    @property
    def model_name(self) -> str | None:
        return self.provenance.models[0] if self.provenance.models else None

    def __repr__(self) -> str:
        parts = [f"method={self.method!r}", f"d={self.d}", f"sizes={list(self.sizes)}"]
        if self.loss is not None:
            parts.append(f"loss={self.loss:.4g}")
        if self.mean_mi is not None:
            parts.append(f"mean_mi={self.mean_mi:.4g}")
        parts += [f"{k}={v!r}" for k, v in (("model", self.model_name), ("hook", self.hook_name)) if v]
        return f"SubspacePartition({', '.join(parts)})"

    @property
    def mi_per_dim(self) -> Float[Tensor, "n n"] | None:
        """mi[i, j] / (d_i + d_j) (float64 `[S, S]`, nats per dimension: what the merge rule thresholds), or None
        when `mi` was not estimated."""
        if self.mi is None:
            return None
        width = torch.tensor(self.sizes, dtype=torch.float64)
        return self.mi / (width[:, None] + width[None, :])

    def to_dataframe(self) -> Any:
        """`pandas.DataFrame`, one row per subspace: `subspace`, `width`, its columns `start`, `stop` of the rotated
        space and, when `mi` was estimated, `mi partner` (the subspace sharing the most MI with it), `max mi` and
        `max mi per dim` (nats; mi[i, j] / (d_i + d_j), what the merge rule thresholds)."""
        import pandas as pd

        rows = [
            {"subspace": i, "width": w, "start": a, "stop": b}
            for i, (w, (a, b)) in enumerate(zip(self.sizes, self.bounds))
        ]
        if self.mi is not None and self.n_subspaces > 1:
            partner = self.mi.clone().fill_diagonal_(float("-inf")).argmax(1)
            per_dim = self.mi_per_dim
            for i, row in enumerate(rows):
                j = int(partner[i])
                row.update({"mi partner": j, "max mi": float(self.mi[i, j]), "max mi per dim": float(per_dim[i, j])})
        return pd.DataFrame(rows)

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """The fit at a glance: the training loss and the subspace count against the step, merges marked (when
        there is a history), and the pairwise mutual information of the final subspaces per dimension,
        mi[i, j] / (d_i + d_j), the quantity the merge rule thresholds (when `mi` was estimated); a partition with
        neither shows its widths. Saved to `path` when given; returns the figure."""
        import matplotlib.pyplot as plt

        panels = [
            name
            for name, have in (
                ("history", self.history.get("step")),
                ("mi", self.mi is not None and self.n_subspaces > 1),
            )
            if have
        ]
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 3.6), squeeze=False)
        labels = [f"s{i} ({w})" for i, w in enumerate(self.sizes)]
        for ax, panel in zip(axes[0], panels or ["sizes"]):
            if panel == "history":
                steps = self.history["step"]
                ax.plot(steps, self.history["loss"], color="C0")
                ax.set_xlabel("step")
                ax.set_ylabel("nearest-neighbour distance", color="C0")
                count = ax.twinx()
                count.step(steps, self.history["n_subspaces"], color="C1", where="post")
                count.set_ylabel("subspaces", color="C1")
                count.yaxis.get_major_locator().set_params(integer=True)
                for check in self.history.get("checks", []):
                    if check.get("merged"):
                        ax.axvline(check["step"], color="0.6", lw=0.8, ls=":")
                ax.set_title(f"NDM training (dotted: merges), final sizes {list(self.sizes)}", fontsize=9)
            elif panel == "mi":
                score = self.mi_per_dim.fill_diagonal_(float("nan"))  # the diagonal is not estimated: drawn blank
                im = ax.imshow(score.numpy(), cmap="magma")
                ax.set_xticks(range(self.n_subspaces), labels, rotation=60, fontsize=7)
                ax.set_yticks(range(self.n_subspaces), labels, fontsize=7)
                fig.colorbar(im, ax=ax, fraction=0.046, label="MI / (d_i + d_j), nats")
                ax.set_title(f"pairwise MI per dimension (mean MI {self.mean_mi:.3g})", fontsize=9)
            else:
                ax.bar(range(self.n_subspaces), self.sizes, color="C0")
                ax.set_xticks(range(self.n_subspaces), labels, rotation=60, fontsize=7)
                ax.set(ylabel="width", title=f"{self.method} partition of d={self.d}")
        fig.tight_layout()
        return save_figure(fig, path)

    # ------------------------------------------------------------------------------------------- baselines
    @classmethod
    def identity(cls, sizes: Sequence[int]) -> SubspacePartition:
        """The standard basis cut into `sizes` (arXiv 2508.01916, Sec. 4 "identity")."""
        sizes = check_sizes(sizes)
        return cls(torch.eye(sum(sizes), dtype=torch.float64), sizes, method="identity")

    @classmethod
    def random(cls, sizes: Sequence[int], seed: int = 0) -> SubspacePartition:
        """A random orthogonal basis (U of the SVD of a seeded Gaussian matrix, as the paper) cut into `sizes`."""
        sizes = check_sizes(sizes)
        d = sum(sizes)
        g = torch.Generator().manual_seed(int(seed))
        u, _, _ = torch.linalg.svd(torch.randn(d, d, generator=g, dtype=torch.float64))
        return cls(u, sizes, method="random", provenance=Provenance(settings={"seed": int(seed)}))

    @classmethod
    def pca(
        cls, acts: Float[Tensor, "n d"], sizes: Sequence[int], descending: bool = False, chunk_size: int = 65536
    ) -> SubspacePartition:
        """Principal directions of `acts` (covariance eigendecomposed in float64) cut into `sizes`: eigenvalues
        in ascending order ("PCA" in the paper) or descending ("PCA2"). Each eigenvector's largest entry is
        positive. `acts` may be memory-mapped; it is read in chunks."""
        if acts.ndim != 2 or acts.shape[0] < 2:
            raise ValueError(f"acts: expected [n >= 2, d] activations; got shape {list(acts.shape)}")
        sizes = check_sizes(sizes, acts.shape[1])
        n = acts.shape[0]
        mean = torch.zeros(acts.shape[1], dtype=torch.float64)
        for i in range(0, n, chunk_size):
            mean += acts[i : i + chunk_size].to(torch.float64).sum(0)
        mean /= n
        cov = (gram(acts, dtype=torch.float64, chunk_size=chunk_size) - n * torch.outer(mean, mean)) / (n - 1)
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        sign = torch.sign(vecs.gather(0, vecs.abs().argmax(0, keepdim=True)))
        vecs = vecs * torch.where(sign == 0, torch.ones_like(sign), sign)
        method = "pca_descending" if descending else "pca_ascending"
        return cls(vecs.flip(1) if descending else vecs, sizes, method=method)

    @classmethod
    def from_official(cls, r_file: str | os.PathLike, config_file: str | os.PathLike) -> SubspacePartition:
        """The paper code's released format: `r_file` (`R-{model}-{site}.pt`, a state dict holding the matrix
        itself under `"R.parametrizations.weight.0.base"`, or a bare tensor) and `config_file` (JSON
        `{"partition": [d_1, ...]}`). The matrix is used as stored (`ĥ = h @ R`, not Rᵀ) and projected to the
        nearest orthogonal matrix in float64 (a change of ~1e-7 for float32 files)."""
        r_file, config_file = Path(r_file), Path(config_file)
        stored = torch.load(r_file, map_location="cpu", weights_only=True)
        if isinstance(stored, dict):
            if OFFICIAL_KEY not in stored:
                raise ValueError(f"r_file: {r_file} has no {OFFICIAL_KEY!r}; its keys are {sorted(stored)[:8]}")
            stored = stored[OFFICIAL_KEY]
        if not isinstance(stored, Tensor):
            raise TypeError(f"r_file: expected a tensor or a state dict in {r_file}; got {type(stored).__name__}")
        try:
            sizes = json.loads(config_file.read_text())["partition"]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"config_file: expected JSON {{'partition': [...]}} in {config_file}; {e!r}") from None
        r = stored.to(torch.float64)
        u, _, vh = torch.linalg.svd(r)
        polar = u @ vh
        if float((polar - r).abs().max()) > ORTHOGONAL_TOL:
            raise ValueError(
                f"r_file: the matrix in {r_file} is not orthogonal (max |RᵀR − I| = {orthonormality_error(r):.3g})"
            )
        provenance = Provenance(settings={"r_file": str(r_file), "config_file": str(config_file)})
        return cls(
            polar, check_sizes(sizes, r.shape[0], "config_file partition"), method="official", provenance=provenance
        )


def as_partition(partition: Any, argument: str = "partition") -> SubspacePartition:
    """A `SubspacePartition`, or widths (the identity basis cut into them)."""
    if isinstance(partition, SubspacePartition):
        return partition
    if isinstance(partition, Tensor) or not isinstance(partition, Sequence):
        raise TypeError(
            f"{argument}: expected a SubspacePartition or a sequence of widths; got {type(partition).__name__}"
        )
    return SubspacePartition.identity(check_sizes(partition, argument=argument))


def partition_baselines(
    sizes: Sequence[int], acts: Float[Tensor, "n d"] | None = None, seed: int = 0
) -> dict[str, SubspacePartition]:
    """The paper's baselines of the given widths: identity, random orthogonal and, when `acts` is given, PCA in
    ascending and descending order (arXiv 2508.01916, Sec. 4)."""
    out = {"identity": SubspacePartition.identity(sizes), "random": SubspacePartition.random(sizes, seed)}
    if acts is not None:
        out["pca_ascending"] = SubspacePartition.pca(acts, sizes)
        out["pca_descending"] = SubspacePartition.pca(acts, sizes, descending=True)
    return out


def group_recovery(
    partition: SubspacePartition, vectors: Float[Tensor, "k d"], groups: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """For each group of `vectors` (row indices), its best subspace (largest pooled share of squared norm), that
    share, and whether the subspace is its own (the best of no other group): `{"subspace", "share", "own"}`.
    A group counts as recovered when `own` and `share` is high (the paper's toy reads >= 0.9)."""
    shares = partition.norm_shares(vectors, groups)
    best = shares.argmax(1).tolist()
    return [{"subspace": b, "share": float(shares[i, b]), "own": best.count(b) == 1} for i, b in enumerate(best)]
