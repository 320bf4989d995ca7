"""Baselines the paper sets beside tensor similarity, as `TensorSimilarityMatrix` objects over checkpoints.

- `weight_cosine_matrix`: cosine of the flattened, concatenated weights ("matrix cosine"); not invariant to any
  reparametrisation (paper §5.2).
- `output_cosine_matrix`: behavioural similarity, the mean over inputs of the per-sample cosine of the two
  networks' outputs (the grokking "logit cosine over all P² inputs" and the backdoor "behavioural, clean").
- `segment_phases`: contiguous segmentation of a similarity matrix into K phases by dynamic programming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from tl_tensorsim.tensor_networks.compare import as_chain
from tl_tensorsim.tensor_networks.results import TensorSimilarityMatrix


def _weights(net: Any) -> Tensor:
    if isinstance(net, torch.nn.Module):
        return torch.cat([p.detach().flatten().double().cpu() for p in net.parameters()])
    ch = as_chain(net)
    parts = [ch.embed.W, ch.embed.b] if ch.embed is not None else []
    for layer in ch.layers:
        parts += [layer.L, layer.R, layer.D, layer.b_left, layer.b_right, layer.b_out]
    if ch.unembed is not None:
        parts += [ch.unembed.W, ch.unembed.b]
    return torch.cat([t.detach().flatten().double().cpu() for t in parts if t is not None])


def weight_cosine_matrix(checkpoints: Sequence[Any], steps: Sequence[int] | None = None) -> TensorSimilarityMatrix:
    """Cosine of flattened weights for every pair (all parameters of a module, in order)."""
    W = torch.stack([_weights(n) for n in checkpoints])
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return TensorSimilarityMatrix(
        W @ W.T, metric="weight_cosine", method="exact", steps=None if steps is None else list(steps)
    )


def output_cosine_matrix(
    checkpoints: Sequence[Any],
    inputs: Tensor,
    steps: Sequence[int] | None = None,
    output: int | Sequence[int] | None = None,
    batch_size: int = 2048,
    forward: Any = None,
) -> TensorSimilarityMatrix:
    """Mean over `inputs` of the per-sample cosine between two networks' outputs (optionally only `output`
    coordinates), for every pair. `forward(net, x)` overrides `net(x)`."""
    fwd = forward or (lambda net, x: net(x))
    T, n = len(checkpoints), inputs.shape[0]
    acc = torch.zeros(T, T, dtype=torch.float64)
    idx = None if output is None else ([output] if isinstance(output, int) else list(output))
    with torch.no_grad():
        for s in range(0, n, batch_size):
            x = inputs[s : s + batch_size]
            Y = torch.stack([fwd(net, x).double() for net in checkpoints])  # (T, b, C)
            if idx is not None:
                Y = Y[..., idx]
            Y = Y / Y.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            acc += torch.einsum("anc,bnc->ab", Y, Y)
    return TensorSimilarityMatrix(
        acc / n, metric="output_cosine", method="exact", steps=None if steps is None else list(steps), output=output
    )


def segment_phases(matrix: TensorSimilarityMatrix | Tensor, k: int) -> list[tuple[int, int]]:
    """Split checkpoints `0..T-1` into `k` contiguous phases minimising the within-phase scatter
    `Σ_phases Σ_{i,j in phase} (1 - S_ij) / |phase|` (dynamic programming, O(k T²)); returns `(first, last)` pairs."""
    S = (matrix.values if isinstance(matrix, TensorSimilarityMatrix) else matrix).double()
    T = S.shape[0]
    if not 1 <= k <= T:
        raise ValueError(f"k: expected 1 <= k <= T={T}; got {k}")
    P = torch.zeros(T + 1, T + 1, dtype=torch.float64)
    P[1:, 1:] = (1 - S).cumsum(0).cumsum(1)

    def cost(i: int, j: int) -> float:  # phase i..j-1
        return float(P[j, j] - P[i, j] - P[j, i] + P[i, i]) / (j - i)

    inf = float("inf")
    best = [[inf] * (T + 1) for _ in range(k + 1)]
    arg = [[0] * (T + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for m in range(1, k + 1):
        for j in range(m, T + 1):
            for i in range(m - 1, j):
                c = best[m - 1][i] + cost(i, j)
                if c < best[m][j]:
                    best[m][j], arg[m][j] = c, i
    cuts, j = [], T
    for m in range(k, 0, -1):
        i = arg[m][j]
        cuts.append((i, j - 1))
        j = i
    return cuts[::-1]
