"""KSG mutual information against Gaussians of known MI, and the merge rule."""

from __future__ import annotations

import math

import pytest
import torch

from tl_tensorsim.ndm import SubspacePartition, merge_pairs, merged_order, subspace_mutual_information
from tl_tensorsim.ndm.mutual_info import ksg_pairwise

# Over seeds 0-7 (3000 queries, 6000 keys) the estimator's error had |mean| <= 0.01 and std <= 0.019 nats in
# these cases; 0.06 nats is about three standard deviations.
TOLERANCE = 0.06


def correlated_gaussian(d: int, rho: float, n: int, seed: int) -> torch.Tensor:
    """`[x, y]` with x, y standard normal in R^d and corr(x_k, y_k) = rho: MI = -d/2 log(1 - rho²)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)
    return torch.cat([x, y], 1)


@pytest.mark.parametrize("d,rho", [(1, 0.0), (1, 0.9), (2, 0.6)])
def test_ksg_matches_gaussian_mutual_information(d, rho):
    acts = correlated_gaussian(d, rho, 9000, seed=0)
    mi = subspace_mutual_information(acts, [d, d], n_queries=3000, n_keys=6000, seed=0)
    expected = -0.5 * d * math.log(1 - rho**2)
    assert mi.dtype == torch.float64 and mi.shape == (2, 2)
    assert abs(float(mi[0, 1]) - expected) < TOLERANCE, (float(mi[0, 1]), expected)
    assert torch.equal(mi, mi.T) and (mi.diagonal() == 0).all()


def test_exact_ties_do_not_create_mutual_information():
    """Independent blocks that are exactly 0 a quarter of the time (a silent feature group): pairs of queries and
    keys at joint distance 0 use the mixture rule, so the estimate stays near 0 (plain KSG: ~(1/16) log N)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9000, 2, generator=g), torch.randn(9000, 2, generator=g)
    silent = torch.rand(9000, 2, generator=g) < 0.25
    acts = torch.cat([x * ~silent[:, :1], y * ~silent[:, 1:]], 1)
    mi = subspace_mutual_information(acts, [2, 2], n_queries=3000, n_keys=6000, seed=0)
    assert abs(float(mi[0, 1])) < 0.08  # measured 0.03-0.05 over seeds 0-2


def test_mutual_information_is_measured_in_the_rotated_basis():
    """Activations rotated by Qᵀ, partition with R = Q: the same numbers as the unrotated ones in the standard basis."""
    acts = correlated_gaussian(2, 0.6, 3000, seed=1).double()
    q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).Q
    part = SubspacePartition(q, (2, 2))
    kw = dict(n_queries=1000, n_keys=2000, seed=3, dtype=torch.float64)
    rotated = subspace_mutual_information(acts @ q.T, part, **kw)
    plain = subspace_mutual_information(acts, [2, 2], **kw)
    torch.testing.assert_close(rotated, plain, rtol=0, atol=1e-9)


def test_ksg_brute_force_formula():
    """ψ(1) + ψ(N) − ⟨ψ(n_x+1) + ψ(n_y+1)⟩ with max-norm joint distances and variance-scaled marginals."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(300, 5, generator=g, dtype=torch.float64)
    sizes = [2, 1, 2]
    mi = ksg_pairwise(q, k, sizes)
    cols = [[0, 1], [2], [3, 4]]
    var = k.var(0)
    dist = [torch.cdist(q[:, c], k[:, c]) / var[c].sum().sqrt() for c in cols]
    for i in range(3):
        for j in range(i + 1, 3):
            eps = torch.maximum(dist[i], dist[j]).min(1, keepdim=True).values
            n_i, n_j = (dist[i] < eps).sum(1).double(), (dist[j] < eps).sum(1).double()
            dg = torch.special.digamma
            expected = (
                dg(torch.tensor(1.0, dtype=torch.float64))
                + dg(torch.tensor(301.0, dtype=torch.float64))
                - (dg(n_i + 1) + dg(n_j + 1)).mean()
            )
            assert abs(float(mi[i, j]) - float(expected)) < 1e-9


def test_merge_pairs_greedy_disjoint_and_capped():
    sizes = [2] * 16  # at most 16 // 8 = 2 merges per round
    mi = torch.zeros(16, 16, dtype=torch.float64)
    for (i, j), v in {(0, 1): 1.0, (1, 2): 0.9, (3, 4): 0.5, (5, 6): 0.4, (7, 8): 0.1}.items():
        mi[i, j] = mi[j, i] = v
    # scores v / 4; threshold 0.04 keeps all but (7, 8); (1, 2) loses subspace 1 to (0, 1); cap 2 drops (5, 6)
    assert merge_pairs(mi, sizes, 0.04) == [(0, 1), (3, 4)]
    assert merge_pairs(mi, sizes, 0.3) == []  # strictly above the threshold: nothing scores > 0.3
    assert merge_pairs(mi, sizes, 0.04, min_subspaces=15) == [(0, 1)]
    assert merge_pairs(mi[:4, :4], sizes[:4], 0.04) == [(0, 1)]  # max(1, 4 // 8) = 1
    # the score divides by d_i + d_j: a wide pair needs more MI (1.0 / 60 < 0.02 < 0.9 / 32)
    assert merge_pairs(mi[:4, :4], [30, 30, 2, 2], 0.02) == [(1, 2)]


def test_merged_order_concatenates_and_sorts():
    columns, sizes = merged_order([3, 2, 2, 1, 1], [(1, 3), (2, 4)])
    # blocks: [0 1 2] [3 4] [5 6] [7] [8]; merged (1,3) -> [3 4 7], (2,4) -> [5 6 8]; stable sort by width
    assert sizes == (3, 3, 3)
    assert columns.tolist() == [0, 1, 2, 3, 4, 7, 5, 6, 8]
