"""Demo: watching the induction head form, with the tensor similarity of heads across training checkpoints.

1. Train the embedded 2-layer attention-only induction model from scratch, keeping ~20 checkpoints, and read
   induction accuracy at each from the training history.
2. Find the previous-token and induction heads of the final model from their attention on BOS + A + A.
3. `checkpoint_similarity` for every head: QK at the residual level, OV at the token level (the copying
   circuit `W_E W_V W_O W_U`), plus the baselines (raw weight cosine, behavioural cosine on repeated tokens).
4. Report each head's similarity-to-final curve, the induction head's T x T matrix, and the step where induction
   accuracy jumps beside the step where the induction head's similarity to its final self jumps.
"""

from __future__ import annotations

from typing import Any

import torch

TITLE = "Heads forming across training: tensor similarity over checkpoints"
ORDER = 20
DEFAULT = True


def _attention_scores(model: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Previous-token and induction scores `[layer, head]` on BOS + A + A (mean attention to the previous token,
    and to the token after the current token's earlier occurrence)."""
    L = (tokens.shape[1] - 1) // 2
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    pattern = torch.stack([cache[n] for n in names]).mean(1)  # [layer, head, query, key]
    q = torch.arange(L + 1, 2 * L + 1)  # second copy of A
    prev = pattern[:, :, torch.arange(2, 2 * L + 1), torch.arange(1, 2 * L)].mean(-1)
    ind = pattern[:, :, q, q - L + 1].mean(-1)
    return prev, ind


def _jump(steps: list[int], values: list[float]) -> tuple[int, int, float]:
    """(step before, step after, rise) of the largest rise between consecutive checkpoints."""
    rises = [values[k + 1] - values[k] for k in range(len(values) - 1)]
    k = max(range(len(rises)), key=rises.__getitem__)
    return steps[k], steps[k + 1], rises[k]


def _figure(results: dict, accuracy: list[float], steps: list[int], head: str, prev_head: str):
    import matplotlib.pyplot as plt

    qk = results["tensor QK (residual)"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    for i, label in enumerate(qk.labels):
        colour = {head: "C3", prev_head: "C0"}.get(label, "0.75")
        ax.plot(steps, qk.to_final[i].numpy(), color=colour, lw=2 if colour != "0.75" else 0.9, label=label)
    twin = ax.twinx()
    twin.plot(steps, accuracy, "k--", lw=1.2, label="induction accuracy")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("induction accuracy")
    ax.set(xlabel="training step", ylabel="QK similarity to final", title="every head: QK similarity to final")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax = axes[1]
    im = ax.imshow(qk.matrix(head).numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ticks = list(range(0, len(steps), max(1, len(steps) // 7)))
    ax.set_xticks(ticks, [steps[t] for t in ticks], rotation=90)
    ax.set_yticks(ticks, [steps[t] for t in ticks])
    ax.set(xlabel="checkpoint (training step)", ylabel="checkpoint (training step)")
    ax.set_title(f"induction head {head}: QK similarity, checkpoint x checkpoint")
    fig.colorbar(im, ax=ax, fraction=0.046, label="QK similarity")
    ax = axes[2]
    for name, res in results.items():
        ax.plot(steps, res.to_final[res.head_index(head)].numpy(), marker="o", ms=3, label=name)
    ax.plot(steps, accuracy, "k--", lw=1.2, label="induction accuracy")
    ax.set(xlabel="training step", ylabel="similarity to final", title=f"{head}: tensor similarity vs baselines")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run(report: Any, full: bool = False) -> dict[str, Any]:
    from tl_tensorsim.models import InductionConfig, build_model, repeated_tokens, train
    from tl_tensorsim.similarity import checkpoint_similarity
    from tl_tensorsim.training import limit_threads

    with limit_threads(1):  # a tiny model: one thread is fastest (and steady on a busy machine)
        config = InductionConfig() if full else InductionConfig(steps=1000)
        steps = sorted({round(config.steps * k / 20) for k in range(21)})
        training = train(config, checkpoint_steps=steps, progress=False)
        accuracy = [training.metrics_at(s)["induction_accuracy"] for s in steps]
        probe = repeated_tokens(config, 16, seed=1)
        prev, ind = _attention_scores(training.model, probe)
        head, prev_head = f"L1H{int(ind[1].argmax())}", f"L0H{int(prev[0].argmax())}"
        states = [sd for _, sd in training.checkpoints]
        template = build_model(config)
        common = dict(model=template, steps=steps, progress=False)
        results = {
            "tensor QK (residual)": checkpoint_similarity(states, "QK", "residual", **common),
            "tensor OV (token)": checkpoint_similarity(states, "OV", "token", **common),
            "raw weight QK": checkpoint_similarity(states, "QK", metric="raw_weight", **common),
            "behavioural (outputs on A+A)": checkpoint_similarity(states, metric="behavioral", tokens=probe, **common),
        }

    acc_jump = _jump(steps, accuracy)
    rows = []
    for name, res in results.items():
        j = res.largest_jump(head)
        rows.append(
            {
                "metric": name,
                f"{head} jump": f"{j['step_before']} -> {j['step']}",
                "rise": round(j["delta"], 3),
                "similarity at step 0": round(float(res.to_final[res.head_index(head), 0]), 3),
                f"{prev_head} jump": "{step_before} -> {step}".format(**res.largest_jump(prev_head)),
            }
        )
    qk_jump = results["tensor QK (residual)"].largest_jump(head)
    report.text(
        f"The embedded induction model ({config.n_layers} layers x {config.n_heads} heads, d_model {config.d_model}) "
        f"trained from scratch for {config.steps} steps ({training.seconds:.0f} s), {len(steps)} checkpoints. "
        f"Induction head of the final model: **{head}** (induction score {float(ind[1].max()):.2f}); previous-token "
        f"head: **{prev_head}** (score {float(prev[0].max()):.2f}). Induction accuracy jumps between steps "
        f"**{acc_jump[0]} -> {acc_jump[1]}** ({accuracy[steps.index(acc_jump[0])]:.2f} -> "
        f"{accuracy[steps.index(acc_jump[1])]:.2f}); the induction head's QK similarity to its final self jumps "
        f"between steps **{qk_jump['step_before']} -> {qk_jump['step']}** ({qk_jump['before']:.2f} -> "
        f"{qk_jump['after']:.2f}). Tensor similarities are weight-only and invariant to the GL(d_head) gauges; the raw "
        "weight cosine is not, the behavioural cosine needs data."
    )
    report.table(rows, caption="Largest rise of each head's similarity to the final checkpoint, per metric")
    report.table(
        [{"step": s, "induction accuracy": round(a, 3)} for s, a in zip(steps, accuracy)][:: max(1, len(steps) // 10)],
        caption="Induction accuracy at the checkpoints (every other one)",
    )
    report.figure(
        _figure(results, accuracy, steps, head, prev_head),
        "head_formation",
        caption=f"Left: every head's QK similarity to its final self (induction head {head} red, previous-token "
        f"head {prev_head} blue) and induction accuracy (dashed). Middle: {head}'s checkpoint x checkpoint QK "
        "similarity. Right: the induction head under each metric.",
    )
    return {
        "induction_head": head,
        "previous_token_head": prev_head,
        "accuracy_jump_step": acc_jump[1],
        "similarity_jump_step": qk_jump["step"],
        "ov_token_jump_step": results["tensor OV (token)"].largest_jump(head)["step"],
        "final_induction_accuracy": accuracy[-1],
        "qk_similarity_at_accuracy_jump": float(
            results["tensor QK (residual)"].to_final[
                results["tensor QK (residual)"].head_index(head), steps.index(acc_jump[1])
            ]
        ),
        "train_seconds": round(training.seconds, 1),
    }
