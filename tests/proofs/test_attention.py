"""The attention bounds against exhaustive enumeration of orderings, and the cubic bound against every ordering
of every pure class."""

from __future__ import annotations

import itertools

import torch

from tests.proofs.factories import ideal_state, model_with, random_state
from tl_tensorsim.proofs.certified import Ball
from tl_tensorsim.proofs.max_of_k import path_tables, valid_classes, worst_wrong_logit
from tl_tensorsim.proofs.max_of_k.attention import max_excluding, position_sums
from tl_tensorsim.proofs.max_of_k.cubic import _splits


def test_position_sums_enclose_the_extreme_orderings():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 4, 5):
        scores = torch.randn(6, n, generator=g, dtype=torch.float64) * 20
        scores[0, :] = 3.0  # exact ties
        scores[1, 1:] = scores[1, 0] + torch.tensor([1e-15, -1e-15, 0.0, 2e-15])[: n - 1]  # near-ties
        sums = position_sums(Ball.exact(scores))
        for q in range(6):
            factors = torch.exp(scores[q] - scores[q].max())
            assert sums.query.lower()[q] <= factors[-1] <= sums.query.upper()[q]
            for c in range(n):
                totals = [float(factors[list(J)].sum()) for J in itertools.combinations(range(n - 1), c)]
                assert sums.top.lower()[q, c] <= max(totals) * (1 + 1e-14) and max(totals) <= sums.top.upper()[q, c] * (
                    1 + 1e-14
                )
                assert sums.bottom.lower()[q, c] <= min(totals) * (1 + 1e-14) and min(totals) <= sums.bottom.upper()[
                    q, c
                ] * (1 + 1e-14)
                assert sums.bottom.upper()[q, c] <= sums.top.upper()[q, c]


def test_max_excluding_matches_brute_force():
    x = torch.tensor([[3.0, 1.0, 3.0, -2.0], [0.0, 5.0, 1.0, 4.0]], dtype=torch.float64)
    out = max_excluding(Ball.exact(x)).mid
    want = torch.stack([torch.stack([x[r, [j for j in range(4) if j != m]].max() for m in range(4)]) for r in range(2)])
    assert torch.equal(out, want)


def _check_every_ordering(model):
    """For each pure class (q, m, k, c) and every placement of the c copies of k, the exact attention-weighted
    bound (*) and the real largest wrong-logit gap lie below the certified upper bound."""
    tables = path_tables(model)
    V, n = tables.d_vocab, tables.n_ctx
    E, P = tables.EQKE.mid, tables.EQKP.mid
    valid = valid_classes(V, n)
    for b, d in _splits(tables):
        upper = worst_wrong_logit(tables, b, d).upper()
        for q, m, c in valid.nonzero().tolist():
            for k in range(m) if c else [0]:
                for J in itertools.combinations(range(n - 1), c):
                    seq = [k if i in J else m for i in range(n - 1)] + [q]
                    scores = E[q, seq] + P[q]
                    a = torch.softmax(scores, 0)
                    star = float(b.mid[q, m] + (a * d.mid[seq, m]).sum())
                    assert star <= upper[q, m, k, c] + 1e-9, (q, m, k, c, J)
                    logits = tables.EUPU.mid[q] + a @ (tables.EVOU.mid[seq] + tables.PVOU.mid)
                    worst = float(torch.cat([logits[:m], logits[m + 1 :]]).max() - logits[m])
                    assert worst <= star + 1e-9


def test_cubic_bound_covers_every_ordering():
    _check_every_ordering(model_with(ideal_state(6, 4, 6, seed=4, noise=0.02)))
    _check_every_ordering(model_with({k: 3 * v for k, v in random_state(5, 4, 6, seed=5).items()}))
