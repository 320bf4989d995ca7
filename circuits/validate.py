"""`validate_ndm`: the NDM paper's five subspace-patching tests (arXiv 2508.01916 §4; `shared/papers/ndm.md` §2),
one partition per layer, scored by the Gini coefficient beside the paper's numbers.

| test | layer (GPT-2 small, `hook_resid_post`) | positions | corruption |
|---|---|---|---|
| t1 | 4 | IO+1, S1+1 | swap S1 and IO (`"swap"`) |
| t2 | 6 | S2 | swap |
| t3_pos | 8 | END | swap |
| t3_name | 8 | END | S1, S2 -> IO name; IO -> S name (`"s_name"`) |
| t4 | 9 | END (greater-than) | YY -> 01 |

Each layer's partition is given (a `SubspacePartition`, the released `(R-*.pt, R_config-*.json)` pair, or a folder
saved by `SubspacePartition.save`) or fitted with `fit_ndm` on `data`; the baselines (identity, random, PCA ascending
and descending) reuse its sizes (PCA on activations of `data` at that layer). For every (method, test) the
per-subspace effects come from `subspace_patching`, and the Gini raw, per dimension and per variance from
`circuits.gini`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_tensorsim.adapter import as_view
from tl_tensorsim.artifacts import Artifact, Provenance, expect_shape, save_figure
from tl_tensorsim.checks import checked_int
from tl_tensorsim.ndm import SubspacePartition, fit_ndm, partition_baselines

from .datasets import greater_than_dataset, ioi_dataset
from .patching import PatchingTest, subspace_patching

TESTS: tuple[str, ...] = ("t1", "t2", "t3_pos", "t3_name", "t4")
GPT2_LAYERS: dict[str, int] = {"t1": 4, "t2": 6, "t3_pos": 8, "t3_name": 8, "t4": 9}
SPEC: dict[str, tuple[str, str, tuple[str, ...], str]] = {  # test -> (task, corruption, positions, variable)
    "t1": ("ioi", "swap", ("IO+1", "S1+1"), "previous-token subspace"),
    "t2": ("ioi", "swap", ("S2",), "induction head output subspace"),
    "t3_pos": ("ioi", "swap", ("END",), "S-inhibition output, S position"),
    "t3_name": ("ioi", "s_name", ("END",), "S-inhibition output, S name"),
    "t4": ("greater_than", "01", ("END",), "YY subspace"),
}
METHODS: tuple[str, ...] = ("ndm", "identity", "random", "pca_ascending", "pca_descending")
NORMS: tuple[str, ...] = ("raw", "dim", "var")
# The paper's Gini coefficients (released eval logs, ndm.md §2.4), per test t1..t4 and the mean.
PAPER_GINI: dict[str, dict[str, tuple[float, ...]]] = {
    "raw": {
        "ndm": (0.889, 0.713, 0.629, 0.498, 0.718, 0.689),
        "identity": (0.325, 0.319, 0.397, 0.310, 0.319, 0.334),
        "random": (0.360, 0.359, 0.322, 0.331, 0.386, 0.352),
        "pca_ascending": (0.434, 0.457, 0.498, 0.380, 0.345, 0.423),
        "pca_descending": (0.657, 0.260, 0.278, 0.403, 0.401, 0.400),
    },
    "dim": {
        "ndm": (0.889, 0.720, 0.704, 0.550, 0.665, 0.706),
        "identity": (0.055, 0.111, 0.123, 0.042, 0.123, 0.091),
        "random": (0.104, 0.158, 0.112, 0.096, 0.164, 0.127),
        "pca_ascending": (0.424, 0.219, 0.303, 0.216, 0.236, 0.280),
        "pca_descending": (0.559, 0.187, 0.194, 0.198, 0.262, 0.280),
    },
    "var": {"ndm": (0.896, 0.829, 0.384, 0.790, 0.779, 0.736)},
}
PAPER_WHOLE_EFFECT = (3.81, 4.81, 4.59, 1.97, 0.686)  # GPT-2 small, whole-space patch (ndm.md §2.4)

__all__ = ["GPT2_LAYERS", "METHODS", "NDMValidation", "PAPER_GINI", "TESTS", "paper_tests", "validate_ndm"]


def paper_tests(
    ioi: Any, greater_than: Any, layers: Mapping[str, int] | None = None, tests: Sequence[str] = TESTS
) -> list[PatchingTest]:
    """The paper's tests as `PatchingTest`s on IOI and greater-than `PromptSet`s, at `layers` (test -> block whose
    `hook_resid_post` is patched; default GPT-2 small's `GPT2_LAYERS`)."""
    layers = {**GPT2_LAYERS, **(layers or {})}
    out = []
    for t in tests:
        if t not in SPEC:
            raise ValueError(f"tests: unknown test {t!r}; expected some of {TESTS}")
        task, corruption, positions, variable = SPEC[t]
        prompts = ioi if task == "ioi" else greater_than
        hook = f"blocks.{layers[t]}.hook_resid_post"
        out.append(PatchingTest(t, hook, prompts, corruption, positions, description=variable))
    return out


@dataclass(repr=False)
class NDMValidation(Artifact):
    """The five tests' results: `gini` `[methods, tests, 3]` (raw, per dimension, per variance; float64, NaN where
    not computed), `best` `[methods, tests]` (largest single-subspace effect), `best_size` `[methods, tests]`,
    `whole` / `clean` / `corrupted` `[tests]` (whole-space effect and the unpatched metrics), `effects`
    (`"method/test"` -> per-subspace effects), `sizes` (test -> the partition's widths), `hooks` (one per test)."""

    tests: tuple[str, ...]
    methods: tuple[str, ...]
    hooks: tuple[str, ...]
    gini: Tensor
    best: Tensor
    best_size: Tensor
    whole: Tensor
    clean: Tensor
    corrupted: Tensor
    effects: dict[str, list[float]] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)
    notes: str = ""
    provenance: Provenance = field(default_factory=Provenance, compare=False)

    def _check(self) -> None:
        m, t = len(self.methods), len(self.tests)
        expect_shape("gini", self.gini, (m, t, len(NORMS)), "[methods, tests, norms]")
        for name in ("best", "best_size"):
            expect_shape(name, getattr(self, name), (m, t), "[methods, tests]")
        for name in ("whole", "clean", "corrupted"):
            expect_shape(name, getattr(self, name), (t,), "[tests]")

    def mean_gini(self, method: str, norm: str = "raw") -> float:
        return float(self.gini[self.methods.index(method), :, NORMS.index(norm)].mean())

    def __repr__(self) -> str:
        means = ", ".join(f"{m} {self.mean_gini(m):.2f}/{self.mean_gini(m, 'dim'):.2f}" for m in self.methods)
        return f"NDMValidation(tests={list(self.tests)}, mean Gini raw/per-dim: {means})"

    def to_dataframe(self) -> Any:
        """One row per (method, norm): our Gini per test and mean, and the paper's mean beside it."""
        import pandas as pd

        rows = []
        for i, m in enumerate(self.methods):
            for k, norm in enumerate(NORMS):
                vals = self.gini[i, :, k]
                if torch.isnan(vals).all():
                    continue
                row = {"method": m, "norm": norm}
                row.update({t: float(v) for t, v in zip(self.tests, vals)})
                row["mean"] = float(vals.mean())
                paper = PAPER_GINI.get(norm, {}).get(m)
                row["paper mean"] = paper[-1] if paper else float("nan")
                rows.append(row)
        return pd.DataFrame(rows)

    def effects_table(self) -> Any:
        """Per test: the whole-space effect, the best subspace effect per method and its share of the whole."""
        import pandas as pd

        rows = []
        for j, t in enumerate(self.tests):
            row = {
                "test": t,
                "hook": self.hooks[j],
                "clean": float(self.clean[j]),
                "corrupted": float(self.corrupted[j]),
            }
            row["whole-space effect"] = float(self.whole[j])
            if t in TESTS:
                row["paper whole"] = PAPER_WHOLE_EFFECT[TESTS.index(t)]
            for i, m in enumerate(self.methods):
                row[f"best {m} (dim)"] = f"{float(self.best[i, j]):.3g} ({int(self.best_size[i, j])})"
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """Grouped bars: Gini per test and method, raw and per dimension, with the paper's NDM values as markers;
        saved to `path` when given; returns the figure."""
        import matplotlib.pyplot as plt
        import numpy as np

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
        x = np.arange(len(self.tests))
        w = 0.8 / len(self.methods)
        for ax, (k, norm) in zip(axes, enumerate(("raw", "dim"))):
            for i, m in enumerate(self.methods):
                ax.bar(x + i * w, self.gini[i, :, k].numpy(), w, label=m)
            paper = [PAPER_GINI[norm]["ndm"][TESTS.index(t)] if t in TESTS else np.nan for t in self.tests]
            ax.plot(x, paper, "k*", label="paper NDM")
            ax.set_xticks(x + 0.4 - w / 2, list(self.tests))
            ax.set_title(f"Gini ({'per dimension' if norm == 'dim' else 'raw'})")
        axes[0].set_ylabel("Gini of per-subspace effects")
        axes[1].legend(fontsize=7)
        return save_figure(fig, path)

    def report_section(self, report: Any, title: str = "NDM validation: the five subspace-patching tests") -> Any:
        """Add a section to a `tl_tensorsim.Report`: the Gini tables beside the paper's, the effects, the figure."""
        report.section(title, level=3)
        if self.notes:
            report.text(self.notes)
        report.text(
            "Gini of the per-subspace patching effects (ours per test and mean; `paper mean` from the released logs: "
            "NDM 0.69 raw / 0.71 per-dim, identity 0.33 / 0.09, random 0.35 / 0.13, PCA 0.42 / 0.28)."
        )
        report.table(self.to_dataframe().round(3))
        report.table(self.effects_table())
        report.figure(self.plot(), "ndm_validation_gini", "Gini per test and method (stars: the paper's NDM).")
        return report


def _partition(value: Any, where: str) -> SubspacePartition:
    if isinstance(value, SubspacePartition):
        return value
    if isinstance(value, tuple | list) and len(value) == 2:
        return SubspacePartition.from_official(*value)
    if isinstance(value, str | os.PathLike) and Path(value).is_dir():
        return SubspacePartition.load(value)
    raise TypeError(
        f"partitions[{where!r}]: expected a SubspacePartition, an (R file, config JSON) pair of the released format, "
        f"or a folder saved by SubspacePartition.save; got {type(value).__name__}"
    )


def _activations(view: Any, hook: str, sources: Sequence[tuple[Tensor, Tensor | None]], batch_size: int) -> Tensor:
    """Activations `[n, d]` at `hook` on each `(tokens, lengths)` source (positions past a prompt's length and the
    BOS at position 0 left out), float64 on the CPU."""
    rows = []
    for tokens, lengths in sources:
        tokens = torch.as_tensor(tokens)
        keep = torch.ones(tokens.shape, dtype=torch.bool)
        if lengths is not None:
            keep = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        keep[:, 0] = False
        for a in range(0, len(tokens), batch_size):
            _, cache = view.run_with_cache(tokens[a : a + batch_size].to(view.device), names=[hook])
            rows.append(cache[hook][keep[a : a + batch_size].to(view.device)].double().cpu())
    return torch.cat(rows)


def subspace_variances(partition: SubspacePartition, acts: Tensor) -> Tensor:
    """Each subspace's total variance `tr(B_sᵀ Σ B_s)` on activations `[n, d]` (float64)."""
    rotated = acts.double() @ partition.R
    return torch.stack([c.var(0).sum() for c in rotated.split(list(partition.sizes), dim=-1)])


def validate_ndm(
    model: Any,
    tokenizer: Any = None,
    *,
    partitions: Mapping[Any, Any] | None = None,
    data: Tensor | None = None,
    layers: Mapping[str, int] | None = None,
    tests: Sequence[str] = TESTS,
    methods: Sequence[str] = METHODS,
    n_prompts: int = 200,
    ndm: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> NDMValidation:
    """Run the paper's tests on `model` with one NDM partition per patched layer and the baselines of its sizes.

    Args:
        model: GPT-2 small (or any model with the tests' layers; pass `layers` for others).
        tokenizer: for the IOI and greater-than prompts (default `model.tokenizer`).
        partitions: `{block index or hook name: partition}` (see the module docstring); missing layers are fitted.
        data: token ids `[n_seq, pos]` for `fit_ndm` and for the PCA baselines and the variances (BOS left out);
            None: the tests' own clean prompts are used for PCA and variances, and every partition must be given.
        layers: test -> block (default GPT-2 small's); tests, methods: subsets of `TESTS` / `METHODS`.
        n_prompts: prompts per task. ndm: keyword arguments of `fit_ndm` (default: the paper's GPT-2 settings).
    Returns an `NDMValidation` (`report_section(report)` writes the tables beside the paper's numbers).
    Cost: per test and method, `subspace_patching` (2 + ⌈(S + 1) n / batch_size⌉ forward passes per prompt chunk),
    plus one `fit_ndm` per layer that is not given.
    """
    view = as_view(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(view.model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "tokenizer: the model has no tokenizer; pass tokenizer= (e.g. circuits.datasets.gpt2_tokenizer())"
        )
    n_prompts = checked_int(n_prompts, "n_prompts", 2, "at least 2 prompts")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods: expected a non-empty subset of {METHODS}; got {list(methods)}")
    given = {}
    for key, value in (partitions or {}).items():
        hook = (
            key
            if isinstance(key, str)
            else f"blocks.{checked_int(key, 'partitions', 0, 'a block index')}.hook_resid_post"
        )
        given[view.check_hook_name(hook, "partitions")] = _partition(value, str(key))
    needs_gt = any(SPEC[t][0] == "greater_than" for t in tests if t in SPEC)
    ioi = ioi_dataset(tokenizer, n_prompts, "mixed", seed=seed)
    gt = greater_than_dataset(tokenizer, n_prompts, seed=seed) if needs_gt else ioi
    test_list = paper_tests(ioi, gt, layers, tests)
    hooks = sorted({t.hook_name for t in test_list}, key=lambda h: (view.hook_layer(h) or 0, h))
    missing = [h for h in hooks if h not in given]
    if missing and data is None:
        raise ValueError(f"data: the partitions of {missing} are not given, so they are fitted, which needs token ids")
    if data is not None:
        sources = [(torch.as_tensor(data), None)]
    else:
        sources = [(ioi.clean, ioi.lengths)] + ([(gt.clean, gt.lengths)] if needs_gt else [])
    parts, variances, base = {}, {}, {}
    for hook in hooks:
        if hook in given:
            parts[hook] = given[hook]
        else:
            parts[hook] = fit_ndm(view.model, hook, data, progress=progress, seed=seed, **dict(ndm or {}))
        acts = _activations(view, hook, sources, batch_size)
        base[hook] = {"ndm": parts[hook], **partition_baselines(parts[hook].sizes, acts, seed=seed)}
        variances[hook] = {m: subspace_variances(p, acts) for m, p in base[hook].items()}
    m_, t_ = len(methods), len(test_list)
    gini = torch.full((m_, t_, len(NORMS)), float("nan"), dtype=torch.float64)
    best, best_size = torch.zeros(m_, t_, dtype=torch.float64), torch.zeros(m_, t_, dtype=torch.long)
    whole, clean, corrupted = (torch.zeros(t_, dtype=torch.float64) for _ in range(3))
    effects: dict[str, list[float]] = {}
    for j, test in enumerate(test_list):
        for i, m in enumerate(methods):
            part = base[test.hook_name][m]
            res = subspace_patching(view, part, test, batch_size=batch_size, variances=variances[test.hook_name][m],
                                    progress=progress)  # fmt: skip
            gini[i, j] = torch.tensor([res.gini(None), res.gini("dim"), res.gini("var")], dtype=torch.float64)
            best[i, j], best_size[i, j] = float(res.effects[res.best]), part.sizes[res.best]
            effects[f"{m}/{test.name}"] = res.effects.tolist()
            whole[j], clean[j], corrupted[j] = res.whole_effect, res.clean_mean, res.corrupted_mean
    notes = "" if data is not None else "PCA bases and variances were fitted on the tests' own clean prompts."
    return NDMValidation(
        tests=tuple(t.name for t in test_list),
        methods=tuple(methods),
        hooks=tuple(t.hook_name for t in test_list),
        gini=gini,
        best=best,
        best_size=best_size,
        whole=whole,
        clean=clean,
        corrupted=corrupted,
        effects=effects,
        sizes={t.name: list(base[t.hook_name]["ndm"].sizes) for t in test_list},
        notes=notes,
        provenance=Provenance(
            models=(view.cfg.model_name,),
            hooks=tuple(hooks),
            settings={
                "n_prompts": n_prompts,
                "seed": seed,
                "layers": {t.name: t.hook_name for t in test_list},
                "fitted": missing,
                "ndm": dict(ndm or {}),
            },  # fmt: skip
        ),
    )
