"""The paper's toy experiment (arXiv 2508.01916): NDM on the hidden layer `h = W x` of the ReLU superposition
model puts each mutually exclusive feature group in a subspace of its own; identity, random and PCA bases of the
same sizes do not. One recipe for both configurations (2 x 20 features, the paper's; 4 / 12 / 20 features, which
the toy model stores in 2 / 4 / 6 dimensions), with the paper's pair re-initialisation against poor local minima.
Smaller and faster than the paper's run: the toy model trains for 3,000 steps at lr 1e-2 (the paper: 10,000 at
3e-3; both separate the groups, max |WᵀW| across groups < 0.04), NDM for at most 8,000 steps.

Measured over seeds 0-2 with this recipe: 2 x 20 recovered 3/3 (shares >= 0.999, sizes [6, 6]); 4 / 12 / 20
recovered 2/3 (shares >= 0.999, sizes [6, 4, 2]; seed 2 merged two groups, sizes [8, 4]). Without the
re-initialisation 2 x 20 needed a larger key pool (128) and 4 / 12 / 20 stayed in local minima (0/3)."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.models import superposition as sp
from tl_tensorsim.ndm import fit_ndm, group_recovery, partition_baselines

# tiny isotropic noise (4% of each coordinate's std): without it the exact zeros of silent groups and the groups'
# slight overlap in W give KSG a spurious cross-group MI above the merge threshold (measured 0.11-0.18 nats/dim)
NOISE = 0.01
NDM = dict(unit_size=2, key_pool=32, refresh_every=1, rerank=1, lr=1e-2, reinit_every=300, reinit_until=4500,
           merge_start=5000, merge_interval=500, max_steps=8000, mi_queries=1000, mi_keys=3000, progress=False)  # fmt: skip


def toy_activations(groups: tuple[int, ...], seed: int = 0):
    cfg = sp.SuperpositionConfig(groups=groups, d_hidden=12, steps=3000, lr=1e-2, seed=seed)
    model = sp.train(cfg, progress=False).model
    x = sp.sample_features(cfg, 20_000, torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        h = model.hidden(x) + NOISE * torch.randn(len(x), 12, generator=torch.Generator().manual_seed(200 + seed))
    return cfg, model, h


def recovered(rows) -> bool:
    return all(r["own"] and r["share"] >= 0.9 for r in rows)


def test_sample_features_are_mutually_exclusive_groups():
    cfg = sp.SuperpositionConfig(groups=(3, 5))
    x = sp.sample_features(cfg, 20_000, torch.Generator().manual_seed(0))
    for group in cfg.feature_groups():
        active = (x[:, group] > 0).sum(1)
        assert active.max() == 1  # at most one feature per group
        assert abs(float((active == 0).float().mean()) - cfg.p_inactive) < 0.02
    assert float(x.max()) <= 1.0 and float(x.min()) == 0.0


def test_superposition_model_trains_saves_and_loads(tmp_path):
    cfg = sp.SuperpositionConfig(steps=300, lr=1e-2)
    run = sp.train(cfg, progress=False)
    assert run.metric("fvu")[-1] < 0.5 * run.metric("fvu")[0]
    model = sp.load(sp.save(run, tmp_path / "toy"))
    assert torch.equal(model.W, run.model.W) and model.cfg == cfg
    x = sp.sample_features(cfg, 8, torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x), torch.relu(x @ model.W.T @ model.W + model.b))


@pytest.mark.parametrize("groups,sizes", [((20, 20), (6, 6)), ((4, 12, 20), (6, 4, 2))])
def test_each_group_gets_a_subspace_of_its_own(groups, sizes):
    cfg, model, h = toy_activations(groups)
    vectors = model.W.detach().T  # each feature's direction in the hidden space
    part = fit_ndm(h, **NDM)
    rows = group_recovery(part, vectors, cfg.feature_groups())
    assert recovered(rows) and part.sizes == sizes, (part, rows)
    for name, base in partition_baselines(part.sizes, h, seed=0).items():
        rows = group_recovery(base, vectors, cfg.feature_groups())
        # PCA separates 4 / 12 / 20 too (measured shares >= 0.99): the groups' covariance eigenvalues do not
        # interleave there; with two equal groups (2 x 20) they do, and PCA mixes them (shares 0.77-0.89)
        if name.startswith("pca") and len(groups) == 3:
            continue
        assert not recovered(rows), (name, rows)
