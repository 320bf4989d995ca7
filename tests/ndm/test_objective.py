"""The NDM loss against brute force (full distance matrix + argmin), the blocked search, the parametrization."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.ndm import objective
from tl_tensorsim.ndm.objective import NeighbourSearch, OrthogonalRotation, ndm_loss, neighbour_distances

SIZES = [3, 1, 3, 2, 2, 1]  # unsorted, repeated widths: three size groups


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q


def brute_force(queries, keys, rotation, sizes, query_ids, key_ids):
    """Per subspace: the full distance matrix, self masked, argmin, Euclidean distance, batch mean; then the mean."""
    per, start = [], 0
    for s in sizes:
        r = rotation[:, start : start + s]
        start += s
        dist = torch.cdist((queries @ r).detach(), (keys @ r).detach())
        dist[query_ids[:, None] == key_ids[None, :]] = torch.inf
        nn = dist.argmin(1)
        per.append(torch.linalg.vector_norm(queries @ r - keys[nn] @ r, dim=-1).mean())
    per = torch.stack(per)
    return per.mean(), per


def data(n_keys=200, batch=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_keys, sum(SIZES), generator=g, dtype=torch.float64)
    query_ids = torch.randperm(n_keys, generator=g)[:batch]  # queries are keys: self-exclusion matters
    return keys[query_ids], keys, query_ids, torch.arange(n_keys)


@pytest.mark.parametrize("block_elements", [objective.SEARCH_BLOCK_ELEMENTS["cpu"], 1000])
def test_loss_equals_brute_force(monkeypatch, block_elements):
    # 1000: many key blocks, topk merges
    monkeypatch.setitem(objective.SEARCH_BLOCK_ELEMENTS, "cpu", block_elements)
    queries, keys, qid, kid = data()
    rotation = random_orthogonal(keys.shape[1], 1).requires_grad_()
    loss, per = ndm_loss(queries, keys, rotation, SIZES, query_ids=qid, key_ids=kid)
    (grad,) = torch.autograd.grad(loss, rotation)
    rot2 = rotation.detach().clone().requires_grad_()
    loss_bf, per_bf = brute_force(queries, keys, rot2, SIZES, qid, kid)
    (grad_bf,) = torch.autograd.grad(loss_bf, rot2)
    torch.testing.assert_close(per, per_bf, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, loss_bf, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, grad_bf, rtol=0, atol=1e-12)


def test_gradient_flows_through_query_and_neighbour():
    """Each side's rotation alone gives a nonzero gradient; together they give the loss's gradient."""
    queries, keys, qid, kid = data()
    rotation = random_orthogonal(keys.shape[1], 2)
    r = rotation.clone().requires_grad_()
    (full,) = torch.autograd.grad(ndm_loss(queries, keys, r, SIZES, query_ids=qid, key_ids=kid)[0], r)
    grads = []
    for side in ("query", "neighbour"):
        r, per, start = rotation.clone().requires_grad_(), [], 0
        for s in SIZES:
            fixed, live = rotation[:, start : start + s], r[:, start : start + s]
            start += s
            dist = torch.cdist(queries @ fixed, keys @ fixed)
            dist[qid[:, None] == kid[None, :]] = torch.inf
            nn = keys[dist.argmin(1)]
            rq, rk = (live, fixed) if side == "query" else (fixed, live)
            per.append(torch.linalg.vector_norm(queries @ rq - nn @ rk, dim=-1).mean())
        grads.append(torch.autograd.grad(torch.stack(per).mean(), r)[0])
    assert grads[0].abs().max() > 1e-3 and grads[1].abs().max() > 1e-3
    torch.testing.assert_close(grads[0] + grads[1], full, rtol=0, atol=1e-12)


def test_no_query_is_its_own_neighbour():
    queries, keys, qid, kid = data(n_keys=50, batch=50)  # every key is a query
    search = NeighbourSearch(keys, kid, SIZES)
    search.refresh(random_orthogonal(keys.shape[1], 3))
    for rerank in (1, 3):
        cand = search.candidates(queries, qid, rerank)
        for c in cand:
            assert not (kid[c] == qid[None, :, None]).any()
        dist = neighbour_distances(queries, qid, keys, kid, cand, random_orthogonal(keys.shape[1], 3), SIZES)
        assert dist.min() > 0


def test_stale_search_with_full_rerank_is_exact():
    """Keys rotated with an old R, every key re-scored with the current R: the exact nearest neighbour."""
    queries, keys, qid, kid = data()
    old, new = random_orthogonal(keys.shape[1], 4), random_orthogonal(keys.shape[1], 5)
    search = NeighbourSearch(keys, kid, SIZES)
    search.refresh(old)
    dist = neighbour_distances(queries, qid, keys, kid, search.candidates(queries, qid, len(keys)), new, SIZES)
    _, per_bf = brute_force(queries, keys, new, SIZES, qid, kid)
    torch.testing.assert_close(dist.mean(0), per_bf, rtol=0, atol=1e-12)
    # a stale top-1 is a real neighbour, never closer than the exact one
    stale = neighbour_distances(queries, qid, keys, kid, search.candidates(queries, qid, 1), new, SIZES)
    assert (stale >= dist - 1e-12).all() and (stale > dist).any()


def test_bfloat16_search_with_rescoring():
    """The pool rotated and searched in bfloat16: re-scoring every key in float64 is still exact, and the
    bfloat16 top-1 is a real neighbour, never closer than the exact one."""
    queries, keys, qid, kid = data()
    rotation = random_orthogonal(keys.shape[1], 7)
    search = NeighbourSearch(keys, kid, SIZES, dtype=torch.bfloat16)
    search.refresh(rotation)
    assert all(r.dtype == torch.bfloat16 for r in search.rotated)
    full = neighbour_distances(queries, qid, keys, kid, search.candidates(queries, qid, len(keys)), rotation, SIZES)
    _, per_bf = brute_force(queries, keys, rotation, SIZES, qid, kid)
    torch.testing.assert_close(full.mean(0), per_bf, rtol=0, atol=1e-12)
    top1 = neighbour_distances(queries, qid, keys, kid, search.candidates(queries, qid, 1), rotation, SIZES)
    assert (top1 >= full - 1e-12).all()


def test_gauge_invariance():
    """R · blockdiag(Q_1, ..., Q_S) (each Q_s orthogonal, d_s x d_s) leaves every subspace distance unchanged."""
    queries, keys, qid, kid = data()
    rotation = random_orthogonal(keys.shape[1], 6)
    gauge = torch.block_diag(*[random_orthogonal(s, 10 + i) for i, s in enumerate(SIZES)])
    _, per = ndm_loss(queries, keys, rotation, SIZES, query_ids=qid, key_ids=kid)
    _, per_gauge = ndm_loss(queries, keys, rotation @ gauge, SIZES, query_ids=qid, key_ids=kid)
    torch.testing.assert_close(per, per_gauge, rtol=0, atol=1e-12)


@pytest.mark.parametrize("parametrization", ["cayley", "matrix_exp"])
def test_rotation_starts_at_identity_and_stays_orthogonal(parametrization):
    d = 12
    rot = OrthogonalRotation(torch.eye(d, dtype=torch.float64), parametrization, torch.float32)
    x = torch.randn(5, d)
    assert torch.equal(x @ rot(), x)  # exactly the input before any step
    with torch.no_grad():
        rot.weight.normal_()
    r64 = rot.matrix()
    assert r64.dtype == torch.float64
    assert (r64.T @ r64 - torch.eye(d, dtype=torch.float64)).abs().max() < 1e-12
    assert (rot().T @ rot() - torch.eye(d)).abs().max() < 1e-5
    base = random_orthogonal(d, 0)
    rot.rebase(base)
    assert torch.equal(rot.matrix(), base)


def test_cayley_matches_matrix_exp_to_second_order():
    d, eps = 8, 1e-2
    w = eps * torch.randn(d, d, dtype=torch.float64)
    maps = {}
    for p in ("cayley", "matrix_exp"):
        rot = OrthogonalRotation(torch.eye(d, dtype=torch.float64), p, torch.float64)
        with torch.no_grad():
            rot.weight.copy_(w)
        maps[p] = rot.matrix()
    assert (maps["cayley"] - maps["matrix_exp"]).abs().max() < 10 * eps**3


def test_loss_rejects_mismatched_sizes():
    queries, keys, _, _ = data()
    with pytest.raises(ValueError, match="sizes: expected widths summing to d=12"):
        ndm_loss(queries, keys, torch.eye(12, dtype=torch.float64), [4, 4])
