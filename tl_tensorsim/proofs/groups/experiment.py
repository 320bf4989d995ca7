"""The many-seed experiment of arXiv 2410.07476 (100 S5 models there): train GroupMLPs with the fast recipe,
then brute force, explain and the ρ-set proof for each; one JSON line per model.

    python -m tl_tensorsim.proofs.groups.experiment --groups S4 A5 S5 --seeds 20 --out runs/groups.jsonl

`summarise(rows)` gives, per group, the paper's quantities: the fraction of models with a bound >= 0.95, the
distribution of bounds, and proof time as a fraction of brute-force time, for the split, pairwise, low-rank and
Fourier deviations of `rho_set` (the Fourier check also against the model's own forward pass over all pairs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tl_tensorsim.models.group_mlp import all_pairs
from tl_tensorsim.proofs.groups.explain import explain
from tl_tensorsim.proofs.groups.groups import group_by_name
from tl_tensorsim.proofs.groups.verify import brute_force, rho_set
from tl_tensorsim.training import limit_threads

__all__ = ["forward_pass", "prove_model", "run_experiment", "summarise"]


def forward_pass(model: Any) -> tuple[float, float]:
    """The model's own forward pass over all |G|² pairs, float32 and uncertified (the paper's brute force: run the
    model on every input), as a timing reference: (accuracy, seconds). `brute_force` is the certified one."""
    group = group_by_name(model.cfg.group)
    tokens = all_pairs(group.order)
    start = time.perf_counter()
    with torch.no_grad():
        right = model(tokens).argmax(-1).cpu() == group.table.flatten()
    return float(right.double().mean()), time.perf_counter() - start


def prove_model(model: Any, repeats: int = 5) -> dict[str, Any]:
    """Brute force, explanation and ρ-set proofs of one model: bounds, seconds, FLOPs and diagnostics. Brute force,
    the Fourier check and the model's forward pass over all pairs (`forward_pass`) run `repeats` times,
    interleaved, and their median seconds are kept (one run, one machine: the time ratio the paper reports).
    `sound`: whether every pair each proof certifies is one brute force certifies (set inclusion)."""
    t0 = time.perf_counter()
    expl = explain(model)
    search = time.perf_counter() - t0
    runs = [
        (brute_force(model), rho_set(model, expl, deviation="fourier"), forward_pass(model))
        for _ in range(max(1, repeats))
    ]
    exact, fourier, _ = runs[-1]
    exact_s = statistics.median(r[0].wall_time for r in runs)
    fourier_s = statistics.median(r[1].wall_time for r in runs)
    forward_s = statistics.median(r[2][1] for r in runs)
    fourier_rho = rho_set(model, expl, deviation="fourier", phi="rho_set")
    proof = rho_set(model, expl)
    pairwise = rho_set(model, expl, deviation="pairwise")
    lowrank = rho_set(model, expl, deviation="lowrank")
    return {
        "rho_set_fourier_bound": fourier.bound,
        "rho_set_fourier_s": fourier_s,
        "rho_set_fourier_flops": fourier.flops,
        "fourier_irreps": fourier.settings["fourier"]["irreps"],
        **{f"fourier_{k}": v for k, v in fourier.settings["fourier"].items() if k != "irreps"},
        "rho_set_fourier_rho_bound": fourier_rho.bound,
        "rho_set_pairwise_bound": pairwise.bound,
        "rho_set_pairwise_s": pairwise.wall_time,
        "rho_set_lowrank_bound": lowrank.bound,
        "rho_set_lowrank_s": lowrank.wall_time,
        "rho_set_lowrank_flops": lowrank.flops,
        "lowrank_rank": lowrank.settings["lowrank"]["rank"],
        "lowrank_residual_mean": lowrank.settings["lowrank"]["residual_mean"],
        "accuracy": exact.bound,
        "brute_force_s": exact_s,
        "brute_force_flops": exact.flops,
        "forward_s": forward_s,
        "forward_accuracy": runs[-1][2][0],
        "rho_set_bound": proof.bound,
        "rho_set_s": proof.wall_time,
        "rho_set_flops": proof.flops,
        "explain_s": search,
        "ideal_margin": proof.settings["ideal_margin"],
        "K": proof.settings["K"],
        "L_mean": proof.settings["L_mean"],
        "R_mean": proof.settings["R_mean"],
        "key_irreps": expl.key_irreps(),
        "circuits": [f"{n}:{len(a)}x{len(b)}" for n, a, b in zip(expl.circuit_irrep, expl.left_sets, expl.right_sets)],
        "neurons_explained": proof.settings["neurons_explained"],
        "sound": all(
            bool((r.certified <= exact.certified).all()) for r in (fourier, fourier_rho, proof, pairwise, lowrank)
        ),
    }


def run_experiment(groups: list[str], seeds: list[int], out: str | Path, recipe: str = "fast") -> list[dict]:
    """Train and prove every (group, seed); append one JSON line per model to `out` (resumes: models already in
    `out` are skipped). Every group name and the recipe are checked before the first model trains; a tqdm bar
    counts the models left, with the last one's accuracy and Fourier bound. Returns all rows."""
    from tqdm.auto import tqdm

    from tl_tensorsim.models.group_mlp import train

    configs = check_request(groups, recipe, out)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["group"], r["seed"]) for r in _read(out)}
    todo = [(group, seed) for group in configs for seed in seeds if (group, seed) not in done]
    with limit_threads(1), tqdm(todo, desc="group models", unit="model") as bar:
        for group, seed in bar:
            t0 = time.perf_counter()
            run = train(dataclasses.replace(configs[group], seed=seed), progress=False)
            row = {"group": group, "seed": seed, "recipe": recipe, "train_s": time.perf_counter() - t0}
            row["test_acc"] = run.history[-1]["test_acc"]
            row.update(prove_model(run.model))
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(model=f"{group}:{seed}", acc=f"{row['accuracy']:.4f}", fourier=row["rho_set_fourier_bound"])
    return _read(out)


def check_request(groups: list[str], recipe: str, out: str | Path) -> dict[str, Any]:
    """The config per group, after checking, before any training, that every group is one the proofs know and a
    model can be trained on (order >= 2, at least one training pair), and that `out` holds no rows of another recipe
    (a ValueError naming the argument otherwise)."""
    from tl_tensorsim.models.group_mlp import GroupMLPConfig, split

    configs = {}
    for group in groups:
        order = group_by_name(group).order
        config = GroupMLPConfig(group=group, recipe=recipe)
        try:
            split(order, config.resolved_frac, 0)  # the model's own rule: at least one training pair
        except ValueError as exc:
            raise ValueError(f"groups: {group} (order {order}) cannot be trained: {exc}") from None
        configs[group] = config
    other = sorted({r.get("recipe", "fast") for r in _read(Path(out))} - {recipe})
    if other:
        raise ValueError(
            f"out: {out} holds rows trained with the {other[0]!r} recipe; got recipe {recipe!r} (hint: another --out "
            "per recipe, so that resuming and the summary read one recipe)"
        )
    return configs


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summarise(rows: list[dict]) -> list[dict[str, Any]]:
    """Per group: models, mean accuracy, fraction with bound >= 0.95, bound quartiles, ρ-set time / brute force."""
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        rs = [r for r in rows if r["group"] == group]
        bounds = sorted(r["rho_set_bound"] for r in rs)
        q = statistics.quantiles(bounds, n=4) if len(bounds) > 1 else bounds * 3
        out.append(
            {
                "group": group,
                "models": len(rs),
                "accuracy (mean)": statistics.mean(r["accuracy"] for r in rs),
                "sound (models checked)": f"{sum(r['sound'] for r in rs if 'sound' in r)} of {sum('sound' in r for r in rs)}",
                "bound >= 0.95": sum(b >= 0.95 for b in bounds) / len(bounds),
                "pairwise bound >= 0.95": sum(r.get("rho_set_pairwise_bound", 0) >= 0.95 for r in rs) / len(rs),
                "pairwise bound (max)": max((r.get("rho_set_pairwise_bound", 0.0) for r in rs), default=0.0),
                "bound quartiles": [round(x, 3) for x in q],
                "rho_set s / brute force s": statistics.mean(r["rho_set_s"] / r["brute_force_s"] for r in rs),
                "rho_set FLOPs / brute force": statistics.mean(r["rho_set_flops"] / r["brute_force_flops"] for r in rs),
                "lowrank bound >= 0.95": sum(r.get("rho_set_lowrank_bound", 0) >= 0.95 for r in rs) / len(rs),
                "lowrank bounds": sorted(round(r.get("rho_set_lowrank_bound", 0.0), 3) for r in rs),
                "lowrank s / brute force s": statistics.mean(
                    r.get("rho_set_lowrank_s", math.nan) / r["brute_force_s"] for r in rs
                ),
                "lowrank FLOPs / brute force": statistics.mean(
                    r.get("rho_set_lowrank_flops", math.nan) / r["brute_force_flops"] for r in rs
                ),
                "fourier bound >= 0.95": sum(r.get("rho_set_fourier_bound", 0) >= 0.95 for r in rs) / len(rs),
                "fourier bounds": sorted(round(r.get("rho_set_fourier_bound", 0.0), 3) for r in rs),
                "fourier (rho-set Phi) bound >= 0.95": sum(r.get("rho_set_fourier_rho_bound", 0) >= 0.95 for r in rs)
                / len(rs),
                "fourier s / brute force s (median)": statistics.median(
                    r.get("rho_set_fourier_s", math.nan) / r["brute_force_s"] for r in rs
                ),
                "fourier s / forward pass s (median)": statistics.median(
                    r.get("rho_set_fourier_s", math.nan) / r.get("forward_s", math.nan) for r in rs
                ),
                "fourier FLOPs / brute force (median)": statistics.median(
                    r.get("rho_set_fourier_flops", math.nan) / r["brute_force_flops"] for r in rs
                ),
                "ideal margin (median)": statistics.median(r["ideal_margin"] for r in rs),
                "deviation K + L + R (median)": statistics.median(r["K"] + r["L_mean"] + r["R_mean"] for r in rs),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="+", default=["S4", "A5", "S5"])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--recipe", default="fast", choices=["fast", "published"])
    parser.add_argument("--out", default="group_proofs.jsonl")
    args = parser.parse_args()
    try:
        check_request(args.groups, args.recipe, args.out)
    except ValueError as exc:
        parser.error(str(exc))
    rows = run_experiment(
        args.groups, list(range(args.first_seed, args.first_seed + args.seeds)), args.out, args.recipe
    )
    for row in summarise(rows):
        print(row)


if __name__ == "__main__":
    main()
