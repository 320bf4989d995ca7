"""A supervised ceiling for subspace patching: distributed alignment search (DAS; Geiger et al. 2023, arXiv
2303.02536) with one learned subspace of a given width.

DAS learns an orthonormal basis B `[d, k]` (B = Q of the QR decomposition of a free `[d, k]` matrix, so B stays
orthonormal under any update) such that interchanging span(B) from the corrupted run, at the test's positions and
hook, makes the model behave like the corrupted run: it minimises the mean squared gap between the patched metric
and the corrupted run's metric, prompt by prompt (the test's own counterfactual labels),

    L(B) = mean_b ( m(x_b + (s_b − x_b) B Bᵀ) − m(s_b) )²,

with Adam on a training split; the held-out effect of span(B) is then measured with `subspace_patching` (the
partition `[B, B⊥]`). No unsupervised method can beat the supervised subspace of the same width by much, so
`best NDM effect / DAS effect` says how much of the achievable effect the unsupervised subspace captures.
Cost: `steps` forward and backward passes over a batch of training prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tl_tensorsim.adapter import as_view
from tl_tensorsim.artifacts import Artifact, Provenance
from tl_tensorsim.checks import checked_int
from tl_tensorsim.ndm import SubspacePartition

from .metrics import task_metric
from .patching import PatchingTest, SubspacePatching, _Unembed, patched_activation, subspace_patching

__all__ = ["DASResult", "das_ceiling"]


@dataclass(repr=False)
class DASResult(Artifact):
    """The learned subspace (`basis` `[d, size]`, float64), its held-out patching result (`held_out`: subspace 0 is
    span(basis), subspace 1 its complement, plus the whole space) and the training losses."""

    test: str
    size: int
    basis: Tensor
    held_out: SubspacePatching
    losses: tuple[float, ...] = ()
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    @property
    def effect(self) -> float:
        """Held-out drop of the metric when span(basis) is interchanged."""
        return float(self.held_out.effects[0])

    @property
    def share(self) -> float:
        """`effect` as a share of the whole space's held-out effect (NaN when the whole space has no effect, e.g.
        corrupted prompts identical to the clean ones; as `SubspacePatching.to_dataframe`)."""
        whole = self.held_out.whole_effect
        return self.effect / whole if whole else math.nan

    def _encode_field(self, name: str, value: Any) -> Any:
        if name == "held_out":  # every field of the SubspacePatching, float64 lists (exact through JSON)
            var = None if value.variances is None else value.variances.double().tolist()
            return {"test": value.test, "method": value.method, "per_prompt": value.per_prompt.tolist(),
                    "clean": value.clean.tolist(), "corrupted": value.corrupted.tolist(), "sizes": list(value.sizes),
                    "hook_name": value.hook_name, "metric": value.metric, "corruption": value.corruption,
                    "positions": list(value.positions), "variances": var,
                    "provenance": value.provenance.to_dict()}  # fmt: skip
        return super()._encode_field(name, value)

    @classmethod
    def _decode_field(cls, name: str, value: Any) -> Any:
        if name == "held_out":  # results saved before the round trip was complete lack test, method, variances
            t = torch.tensor
            var = value.get("variances")
            return SubspacePatching(test=value.get("test", "das held-out"), hook_name=value["hook_name"],
                                    method=value.get("method", "das"), metric=value["metric"],
                                    corruption=value["corruption"], positions=tuple(value["positions"]),
                                    sizes=tuple(value["sizes"]),
                                    per_prompt=t(value["per_prompt"], dtype=torch.float64),
                                    clean=t(value["clean"], dtype=torch.float64),
                                    corrupted=t(value["corrupted"], dtype=torch.float64),
                                    variances=None if var is None else t(var, dtype=torch.float64),
                                    provenance=Provenance.from_dict(value.get("provenance", {})))  # fmt: skip
        return super()._decode_field(name, value)

    def __repr__(self) -> str:
        share = self.share
        of_whole = "the whole space has no effect" if math.isnan(share) else f"{share:.0%} of the whole space"
        return (f"DASResult(test={self.test!r}, size={self.size}, held-out effect={self.effect:.4g} "
                f"({of_whole}), steps={len(self.losses)})")  # fmt: skip


def _complete(basis: Tensor) -> Tensor:
    """An orthogonal `[d, d]` whose first k columns are `basis` `[d, k]` (the rest: an orthonormal complement)."""
    d, k = basis.shape
    q, _ = torch.linalg.qr(torch.cat([basis, torch.eye(d, dtype=basis.dtype)], 1))
    q = q[:, :d]
    q[:, :k] = basis  # QR may flip signs of the first columns; keep the learned ones
    return q


def das_ceiling(
    model: Any,
    test: PatchingTest,
    size: int,
    *,
    steps: int = 200,
    lr: float = 1e-2,
    batch_size: int = 64,
    train_fraction: float = 0.5,
    seed: int = 0,
    progress: bool = False,
) -> DASResult:
    """Learn a `size`-dimensional subspace at `test`'s hook with DAS (see the module docstring) on the first
    `train_fraction` of the prompts and measure it on the rest. Returns a `DASResult` (float64 basis)."""
    from tqdm.auto import trange

    view = as_view(model)
    if not isinstance(test, PatchingTest):
        raise TypeError(f"test: expected a PatchingTest; got {type(test).__name__}")
    hook = view.check_hook_name(test.hook_name, "test.hook_name")
    (d,) = view.feature_shape(hook)
    size = checked_int(size, "size", 1, f"a subspace width in 1..{d - 1}")
    if size >= d:
        raise ValueError(f"size: expected a subspace width in 1..{d - 1}; got {size}")
    steps = checked_int(steps, "steps", 1, "a positive number of steps")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction: expected a number in (0, 1); got {train_fraction}")
    n = len(test.prompts)
    n_train = int(round(n * train_fraction))
    if not 1 <= n_train < n:
        raise ValueError(f"train_fraction: {train_fraction} of {n} prompts leaves an empty split")
    train = test.prompts.subset(slice(0, n_train), trim=False)
    held = PatchingTest(test.name, hook, test.prompts.subset(slice(n_train, n), trim=False), test.corruption,
                        test.positions, test.metric, test.description)  # fmt: skip
    layer = view.hook_layer(hook)
    stop = None if layer is None else layer + 1
    unembed = _Unembed(view)
    metric = task_metric(train, test.metric)
    with torch.no_grad():
        tokens = train.clean.to(view.device)
        x = view.run_with_cache(tokens, names=[hook], stop_at_layer=stop)[1][hook]
        corrupt = train.corruption(test.corruption).to(view.device)
        src = view.run_with_cache(corrupt, names=[hook], stop_at_layer=stop)[1][hook]
        target = unembed.metric(metric, hook, src, corrupt)
    mask = train.mask(test.positions).to(view.device)
    g = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(d, size, generator=g, dtype=torch.float32).to(view.device))
    opt = torch.optim.Adam([weight], lr=lr)
    losses = []
    for _ in trange(steps, desc=f"DAS {test.name}", disable=not progress, leave=False):
        idx = torch.randperm(n_train, generator=g)[:batch_size]
        sub = train.subset(idx, trim=False)
        basis = torch.linalg.qr(weight).Q.to(x.dtype)
        acts = patched_activation(x[idx], src[idx], mask[idx], basis)
        value = unembed.metric(task_metric(sub, test.metric), hook, acts, tokens[idx])
        loss = (value - target[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    basis = torch.linalg.qr(weight.detach().double().cpu()).Q
    part = SubspacePartition(_complete(basis), (size, d - size), method="das")
    return DASResult(
        test=test.name,
        size=size,
        basis=basis,
        held_out=subspace_patching(view, part, held, batch_size=batch_size),
        losses=tuple(losses),
        provenance=Provenance(
            models=(view.cfg.model_name,),
            hooks=(hook,),
            settings={"steps": steps, "lr": lr, "batch_size": batch_size, "n_train": n_train, "seed": seed},
        ),  # fmt: skip
    )
