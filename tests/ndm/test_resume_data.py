"""fit_ndm's checkpoints record a fingerprint of the activations (`data_fingerprint`): `resume=True` on other data
is refused, naming checkpoint_dir and what differs; the fingerprint reads only a sample of the rows. Also the
error for activations that are not a torch tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_tensorsim.ndm import fit_ndm
from tl_tensorsim.ndm.fit import FINGERPRINT_ROWS, data_fingerprint

KW = dict(unit_size=4, max_steps=6, merge_start=4, merge_interval=2, key_pool=32, batch_size=8, mi_queries=32,
          mi_keys=32, checkpoint_every=2, progress=False)  # fmt: skip


def test_resume_on_other_activations_is_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g)
    done = fit_ndm(a, checkpoint_dir=tmp_path, **KW)
    assert torch.equal(fit_ndm(a, checkpoint_dir=tmp_path, resume=True, **KW).R, done.R)  # the same data resumes
    other = torch.randn(200, 8, generator=g) * 5 + 3
    with pytest.raises(
        ValueError, match=rf"checkpoint_dir: {tmp_path} holds a run on other training data \(rows_sha256"
    ):
        fit_ndm(other, checkpoint_dir=tmp_path, resume=True, **KW)
    with pytest.raises(ValueError, match=r"shape: \[200, 8\] in the checkpoint, \[150, 8\] given"):
        fit_ndm(a[:150], checkpoint_dir=tmp_path, resume=True, **KW)
    with pytest.raises(ValueError, match=r"dtype: 'float32' in the checkpoint, 'float64' given"):
        fit_ndm(a.double(), checkpoint_dir=tmp_path, resume=True, **KW)


class _Rows:
    """A stand-in for a memory-mapped array: records every row read."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.read = data, data.shape, data.dtype, []

    def __getitem__(self, ids):
        self.read.extend(torch.as_tensor(ids).reshape(-1).tolist())
        return self.data[ids]


def test_fingerprint_reads_a_sample_of_rows_and_sees_a_change():
    data = torch.arange(5000 * 3, dtype=torch.float32).view(5000, 3)
    rows = _Rows(data)
    record = data_fingerprint(rows)
    assert len(rows.read) == FINGERPRINT_ROWS and {0, 4999} <= set(rows.read)
    assert record == data_fingerprint(data) and record["shape"] == [5000, 3] and record["dtype"] == "float32"
    changed = data.clone()
    changed[rows.read[500], 1] += 1
    assert data_fingerprint(changed)["rows_sha256"] != record["rows_sha256"]
    small = data_fingerprint(data[:7])
    assert small["rows_hashed"] == 7
    assert data_fingerprint(data.bfloat16())["dtype"] == "bfloat16"


def test_fingerprint_of_a_store_equals_that_of_its_rows(tmp_path):
    import tl_tensorsim as ts

    view = ts.ModelView.build({"n_layers": 1, "d_model": 16, "n_ctx": 8, "d_head": 4, "n_heads": 4, "d_vocab": 50})
    tokens = torch.randint(0, 50, (10, 8), generator=torch.Generator().manual_seed(0))
    ts.collect_activations(view.model, tokens, "blocks.0.hook_resid_post", out=tmp_path / "s", progress=False)
    store = ts.load_activations(tmp_path / "s")
    assert data_fingerprint(store) == data_fingerprint(store.tensor().clone())


@pytest.mark.parametrize(
    ("value", "name"), [(np.zeros((50, 4), np.float32), "numpy.ndarray"), ([[0.0] * 4] * 50, "builtins.list")]
)
def test_activations_must_be_a_torch_tensor(value, name):
    with pytest.raises(
        TypeError, match=rf"acts_or_model: expected activations as a torch.Tensor \[rows, d\].*; got {name}"
    ):
        fit_ndm(value, unit_size=2, progress=False)
