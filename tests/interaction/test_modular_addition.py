"""The modular-addition transformer the interaction-basis demo uses (`tl_tensorsim.models.modular_addition`)."""

from __future__ import annotations

import torch

from tl_tensorsim.models import modular_addition, registry
from tl_tensorsim.training import load_run


def test_dataset_and_split():
    tokens, labels = modular_addition.dataset(7)
    assert tokens.shape == (49, 3) and bool((tokens[:, 2] == 7).all())
    assert torch.equal(labels, (tokens[:, 0] + tokens[:, 1]) % 7)
    tr, te = modular_addition.split(113, 0.3, 0)
    assert len(tr) == 3831 and len(set(tr.tolist()) | set(te.tolist())) == 113 * 113


def test_trains_into_a_folder_resumes_and_loads(tmp_path):
    config = registry.make_config(
        "modular_addition",
        {"p": 7, "d_model": 8, "d_head": 2, "d_mlp": 8, "steps": 4, "batch_size": 8, "eval_every": 2},
    )
    path = registry.train_and_save("modular_addition", config, tmp_path, checkpoint_every=2, progress=False)
    first = modular_addition.load_default(tmp_path)
    again = registry.train_and_save("modular_addition", config, tmp_path, resume=True, progress=False)
    for k, v in modular_addition.load_default(again).state_dict().items():
        assert torch.equal(v, first.state_dict()[k]), k
    run = load_run(tmp_path / "checkpoints", modular_addition.load(path), config)
    assert [r["step"] for r in run.history] == [0, 2, 4]


def test_shipped_model_solves_the_task():
    model = modular_addition.load_default()
    tokens, labels = modular_addition.dataset(113)
    _, te = modular_addition.split(113, 0.3, 0)
    assert modular_addition.accuracy(model, tokens[te[:3000]], labels[te[:3000]]) == 1.0
