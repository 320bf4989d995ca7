"""Demo: the induction circuit of the embedded 2-layer attention-only model.

1. Induction accuracy of the shipped model (or of a model retrained from scratch with `full=True`).
2. Previous-token and induction heads found with TransformerLens' `head_detector.detect_head`.
3. A subspace interchange with `tl_tensorsim.hooks.interchange`: in `blocks.0.hook_resid_post`, at the key positions
   the induction heads must find, the subspace a layer-0 head writes to (the column space of its `W_O`, d_head
   dims) is replaced by its value in a run on relabelled tokens (same positions, every token mapped through a
   random permutation). The induction heads' keys read "which token came before" from the previous-token heads'
   write spaces, so their attention to the right key and the induction accuracy collapse; random subspaces of the
   same dimension, the other layer-0 heads' write spaces and the whole residual stream are the references."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

TITLE = "Induction circuit in the embedded model"
ORDER = 10
DEFAULT = True

HOOK = "blocks.0.hook_resid_post"
N_EVAL = 512
N_PATCH = 256
N_DETECT = 20
N_RANDOM = 4


def _relabel(tokens: Tensor, n_tokens: int, seed: int) -> Tensor:
    """The same sequences with every ordinary token mapped through a per-sequence random permutation."""
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n_tokens, generator=g) for _ in range(tokens.shape[0])])
    out = torch.gather(perms, 1, tokens.clamp(max=n_tokens - 1))
    return torch.where(tokens >= n_tokens, tokens, out)


def _head_table(prev: Tensor, ind: Tensor) -> list[dict[str, Any]]:
    return [
        {
            "head": f"L{layer}H{h}",
            "previous-token score": float(prev[layer, h]),
            "induction score": float(ind[layer, h]),
        }
        for layer in range(prev.shape[0])
        for h in range(prev.shape[1])
    ]


def _plot_heads(prev: Tensor, ind: Tensor):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(8, 2.6))
    for ax, scores, title in zip(axes, (prev, ind), ("previous-token score", "induction score")):
        im = ax.imshow(scores.numpy(), vmin=0, vmax=1, cmap="Blues")
        ax.set_title(title)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(scores.shape[1]))
        ax.set_yticks(range(scores.shape[0]))
        for (layer, h), v in np.ndenumerate(scores.numpy()):
            ax.text(h, layer, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.6 else "black")
    fig.colorbar(im, ax=axes, shrink=0.8)
    return fig


def _plot_patterns(model: Any, tokens: Tensor, heads: list[tuple[int, int]]):
    import matplotlib.pyplot as plt

    _, cache = model.run_with_cache(tokens[:1], names_filter=lambda n: n.endswith("hook_pattern"))
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads) + 0.8, 4))
    for ax, (layer, h) in zip(axes, heads):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, h].cpu().numpy()
        im = ax.imshow(pattern, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"L{layer}H{h} attention on BOS + A + A")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.colorbar(im, ax=axes, shrink=0.85, label="attention probability")
    return fig


def _plot_history(history: list[dict[str, float]]):
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(steps, [r["loss"] for r in history], color="C0")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="C0")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["induction_accuracy"] for r in history], color="C1")
    ax2.set_ylabel("induction accuracy", color="C1")
    ax2.set_ylim(0, 1.02)
    ax.set_title("training: held-out loss and induction accuracy")
    return fig


def _plot_interchange(rows: list[dict[str, Any]]):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 3.4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["accuracy"] for r in rows], 0.4, label="induction accuracy", color="C2")
    ax.bar(x + 0.2, [r["attention to key"] for r in rows], 0.4, label="induction heads' attention to key", color="C0")
    ax.set_xticks(
        x, [r["subspace"].replace(" (previous-token head)", " (prev)") for r in rows], rotation=30, ha="right"
    )
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy / attention")
    ax.set_xlabel("interchanged subspace")
    ax.legend(fontsize=8)
    ax.set_title(f"interchange in {HOOK} at key positions, source: relabelled tokens")
    return fig


def _key_positions(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For each induction-predictable query `(b, q)`: the key position an induction head should attend to (the
    position after the earlier occurrence of `tokens[b, q]`). Returns `(b, q, key)`, each `[n_queries]`."""
    n = tokens.shape[1]
    earlier = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(
        n, n, dtype=torch.bool, device=tokens.device
    ).tril(-1)
    b, q = mask.nonzero(as_tuple=True)
    return b, q, earlier[b, q].float().argmax(-1) + 1


def interchange_experiment(
    model: Any, prev_heads: list[int], induction_heads: list[int], n: int = N_PATCH, seed: int = 0
) -> list[dict[str, Any]]:
    """Interchange subspaces of `blocks.0.hook_resid_post` at the induction heads' key positions with a relabelled run.

    Rows: each layer-0 head's write space (column space of `W_O`), the previous-token heads' joint write space,
    random subspaces of the same dimensions (mean and sd over `N_RANDOM` draws), the whole stream. Columns: top-1
    induction accuracy and the mean attention of `induction_heads` (layer 1) from each query to its correct key.
    """
    import tl_tensorsim as ts
    from tl_tensorsim import hooks
    from tl_tensorsim.models.induction import config_of, make_batch, masked_accuracy

    cfg = config_of(model)
    view = ts.ModelView(model)
    dev, dtype = view.device, view.dtype
    tokens, mask = make_batch(cfg, n, torch.Generator().manual_seed(seed + 777))
    source_tokens = _relabel(tokens, cfg.n_tokens, seed + 778).to(dev)
    tokens, mask = tokens.to(dev), mask.to(dev)
    qb, qj, key = _key_positions(tokens, mask)
    key_mask = torch.zeros_like(mask)
    key_mask[qb, key] = True
    pattern = "blocks.1.attn.hook_pattern"

    def measure(fwd_hooks: list) -> tuple[float, float]:
        with model.hooks(fwd_hooks=fwd_hooks):
            logits, cache = model.run_with_cache(tokens, names_filter=[pattern])
        att = cache[pattern][:, induction_heads][qb, :, qj, key]  # [n_queries, heads]
        return masked_accuracy(logits, tokens, mask), float(att.mean())

    with torch.no_grad():
        _, cache = model.run_with_cache(source_tokens, names_filter=[HOOK])
        source = cache[HOOK]

        def row(label: str, bases: list[Tensor]) -> dict[str, Any]:
            res = torch.tensor([measure([(HOOK, hooks.interchange(b, source, positions=key_mask))]) for b in bases])
            out = {"subspace": label, "dims": bases[0].shape[1], "accuracy": float(res[:, 0].mean())}
            out["attention to key"] = float(res[:, 1].mean())
            if len(bases) > 1:
                out["sd"] = f"{float(res[:, 0].std()):.3f} / {float(res[:, 1].std()):.3f}"
            return out

        acc, att = measure([])
        rows = [{"subspace": "none (clean run)", "dims": 0, "accuracy": acc, "attention to key": att}]
        w_o = view.W_O[0].float()  # [head, d_head, d_model]: head h writes into the row space of W_O[0, h]
        for h in range(view.cfg.n_heads):
            tag = " (previous-token head)" if h in prev_heads else ""
            rows.append(row(f"L0H{h} write space{tag}", [torch.linalg.qr(w_o[h].T).Q.to(dtype)]))
        g = torch.Generator().manual_seed(seed + 779)
        d, dims = view.cfg.d_model, [view.cfg.d_head]
        if len(prev_heads) > 1:
            joint = torch.linalg.qr(torch.cat([w_o[h] for h in prev_heads]).T).Q.to(dtype)
            rows.append(row("previous-token heads jointly", [joint]))
            dims.append(joint.shape[1])
        for k in dims:
            rand = [torch.linalg.qr(torch.randn(d, k, generator=g)).Q.to(dev, dtype) for _ in range(N_RANDOM)]
            rows.append(row(f"random {k}-dim (x{N_RANDOM})", rand))
        rows.append(row("whole residual stream", [torch.eye(d, device=dev, dtype=dtype)]))
    return rows


def run(report: Any, full: bool = False) -> dict[str, Any]:
    from tl_tensorsim.training import limit_threads

    with limit_threads(1):  # small batches of a small model: one thread is fastest on a shared machine
        return _run(report, full)


def _run(report: Any, full: bool) -> dict[str, Any]:
    from transformer_lens.head_detector import detect_head

    from tl_tensorsim.models.induction import (
        InductionConfig,
        config_of,
        induction_accuracy,
        load_default,
        masked_accuracy,
        repeated_tokens,
        train,
    )

    t0 = time.perf_counter()
    if full:
        run_ = train(InductionConfig(), progress=True)
        model, history = run_.model, run_.history
        origin = f"retrained from scratch in this run ({run_.config.steps} steps, {run_.seconds:.0f} s)"
    else:
        model = load_default()
        summary = getattr(model, "training_summary", {})
        history = summary.get("history", [])
        origin = (
            f"the shipped weights (`tl_tensorsim/models/weights/induction_2l/`, trained by "
            f"`tl-tensorsim train induction` in {summary.get('steps', '?')} steps)"
        )
    cfg = config_of(model)
    acc = induction_accuracy(model, n=N_EVAL)
    rep = repeated_tokens(cfg, N_EVAL, seed=1).to(next(model.parameters()).device)
    rep_mask = torch.zeros_like(rep, dtype=torch.bool)
    half = (rep.shape[1] - 1) // 2
    rep_mask[:, 1 + half : -1] = True
    with torch.no_grad():
        rep_acc = masked_accuracy(model(rep), rep, rep_mask)

    report.section("Model and induction accuracy", level=3)
    report.text(
        f"A {cfg.n_layers}-layer attention-only transformer ({cfg.n_heads} heads per layer, d_model={cfg.d_model}, "
        f"d_head={cfg.d_head}, {cfg.n_tokens} tokens + BOS, n_ctx={cfg.n_ctx}, {type(model).__name__}): {origin}. "
        f"It was trained on BOS + {cfg.n_ctx - 1} distinct random tokens in which one segment of "
        f"{cfg.min_repeat}-{cfg.max_repeat} tokens occurs twice, so the only predictable tokens are those of the "
        "second copy, predictable by induction."
    )
    report.table(
        [
            {"probe": f"training distribution ({N_EVAL} fresh sequences)", "top-1 accuracy on induction tokens": acc},
            {"probe": f"BOS + A + A, |A| = {half} ({N_EVAL} sequences)", "top-1 accuracy on induction tokens": rep_acc},
        ]
    )
    if history:
        report.figure(
            _plot_history(history), "induction_training", "Held-out loss and induction accuracy during training."
        )

    # heads, with TransformerLens' head detector on BOS + A + A
    strings = [" ".join(f"t{int(t)}" for t in row[1:]) for row in rep[:N_DETECT].cpu()]
    prev = detect_head(model, strings, "previous_token_head", exclude_bos=True).cpu().float()
    ind = detect_head(model, strings, "induction_head", exclude_bos=True).cpu().float()
    p_layer, p_head = divmod(int(prev.argmax()), prev.shape[1])
    i_layer, i_head = divmod(int(ind.argmax()), ind.shape[1])
    prev_heads = [h for h in range(cfg.n_heads) if prev[0, h] >= 0.5 * float(prev.max())]
    ind_heads = [h for h in range(cfg.n_heads) if ind[1, h] >= 0.5 * float(ind.max())]
    report.section("Previous-token and induction heads (`transformer_lens.head_detector.detect_head`)", level=3)
    report.text(
        f"Scores averaged over {N_DETECT} sequences BOS + A + A (`exclude_bos=True`). Top previous-token head: "
        f"**L{p_layer}H{p_head}** (score {float(prev.max()):.3f}); top induction head: **L{i_layer}H{i_head}** "
        f"(score {float(ind.max()):.3f}). Heads scoring at least half the top score: previous-token "
        f"{', '.join(f'L0H{h}' for h in prev_heads)}; induction {', '.join(f'L1H{h}' for h in ind_heads)}."
        + (
            ""
            if (p_layer, i_layer) == (0, 1)
            else " (Unexpected layers: the textbook circuit has them in layers 0 and 1.)"
        )
    )
    report.table(_head_table(prev, ind))
    report.figure(_plot_heads(prev, ind), "induction_head_scores", "detect_head scores per head.")
    report.figure(
        _plot_patterns(model, rep, [(p_layer, p_head), (i_layer, i_head)]),
        "induction_patterns",
        "Attention patterns of the two top heads on one BOS + A + A sequence: the sub-diagonal (previous token) and "
        "the off-diagonal stripe (the token after the earlier occurrence).",
    )

    # subspace interchange
    rows = interchange_experiment(model, prev_heads if p_layer == 0 else [], ind_heads)
    by_label = {r["subspace"].split(" (")[0]: r for r in rows}
    top = by_label.get(f"L0H{p_head} write space", {})
    rand = by_label[f"random {cfg.d_head}-dim"]
    report.section("Subspace interchange with `tl_tensorsim.hooks.interchange`", level=3)
    report.text(
        f"In `{HOOK}`, at the positions whose keys the induction heads must find (the token after each earlier "
        "occurrence, i.e. the first copy of the segment), the component of the residual stream in a subspace is "
        "replaced by its value in a run on the same sequences with every token relabelled by a random permutation: "
        "`hooks.interchange(basis, source=cache[hook], positions=key_mask)`. A head's write space is the column "
        f"space of its `W_O` ({cfg.d_head} of {cfg.d_model} dims). The keys of the induction heads read the previous "
        "token from the previous-token heads' write spaces (K-composition): interchanging the top previous-token "
        f"head's write space brings their attention to the correct key from {rows[0]['attention to key']:.3f} to "
        f"{top.get('attention to key', float('nan')):.3f} and induction accuracy from {rows[0]['accuracy']:.3f} to "
        f"{top.get('accuracy', float('nan')):.3f}; random {cfg.d_head}-dim subspaces give "
        f"{rand['attention to key']:.3f} and {rand['accuracy']:.3f}. Other layer-0 heads' write spaces leave the "
        "attention almost intact; their accuracy drop comes from the values, which read the (relabelled) token "
        "identity at the key position. Interchanging the whole stream keeps nothing of the clean run there."
    )
    report.table(
        [{**r, "sd": r.get("sd", "")} for r in rows],
        columns=["subspace", "dims", "accuracy", "attention to key", "sd"],
        caption=f"Induction accuracy and mean attention of L1 induction heads {ind_heads} to the correct key "
        f"({N_PATCH} sequences); sd over random draws as accuracy / attention.",
    )
    report.figure(_plot_interchange(rows), "induction_interchange", "Interchange results.")
    report.text(f"*Demo time: {time.perf_counter() - t0:.1f} s.*")
    return {
        "induction_acc": acc,
        "rep_tokens_acc": rep_acc,
        "prev_token_head": f"L{p_layer}H{p_head}",
        "induction_head": f"L{i_layer}H{i_head}",
        "acc_patch_prev_token_subspace": top.get("accuracy", float("nan")),
        "acc_patch_random_subspace": rand["accuracy"],
        "attn_patch_prev_token_subspace": top.get("attention to key", float("nan")),
        "attn_patch_random_subspace": rand["attention to key"],
        "acc_patch_all": rows[-1]["accuracy"],
    }
