"""checkpoint_similarity inputs: the user's model is never modified, (step, state_dict) pairs and training runs,
TransformerLens-named state dicts into a bridge template, folders of checkpoint files, and every file checked
(and named in the error) before any work."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

import tl_tensorsim as ts
from tests.similarity.conftest import CFG, f64_model
from tl_tensorsim.similarity import checkpoint_similarity

T = 3


@pytest.fixture(scope="module")
def run():
    """Three float64 'checkpoints' of one architecture (independent random weights)."""
    return [f64_model(40 + t) for t in range(T)]


@pytest.fixture(scope="module")
def reference(run):
    return checkpoint_similarity(run, "QK", progress=False)


def _states(run):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in run]


def test_model_given_as_template_is_not_modified(run, reference):
    template = f64_model(0)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    res = checkpoint_similarity(_states(run), "QK", model=template, progress=False)
    torch.testing.assert_close(res.values, reference.values, rtol=0, atol=1e-12)
    for k, v in template.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_step_state_dict_pairs_label_the_steps(run, reference):
    pairs = list(zip([0, 50, 200], _states(run), strict=True))
    res = checkpoint_similarity(pairs, "QK", model={**CFG, "dtype": torch.float64}, progress=False)
    assert res.steps == [0, 50, 200]
    torch.testing.assert_close(res.values, reference.values, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"steps: expected 3 values"):
        checkpoint_similarity(pairs, "QK", model=f64_model(0), steps=[1, 2], progress=False)


def test_a_training_run_object_gives_pairs_and_template(run, reference):
    from tl_tensorsim.models.induction import InductionConfig, TrainingRun

    template = f64_model(1)
    before = template.W_Q.detach().clone()
    training = TrainingRun(
        model=template, config=InductionConfig(), checkpoints=list(zip([0, 10, 20], _states(run), strict=True))
    )
    res = checkpoint_similarity(training, "QK", progress=False)  # the run's model is the template, copied
    assert res.steps == [0, 10, 20]
    torch.testing.assert_close(res.values, reference.values, rtol=0, atol=1e-12)
    assert torch.equal(template.W_Q, before)


def test_tl_named_state_dicts_load_into_a_bridge_template(run, reference):
    bridge = ts.ModelView.build({**CFG, "seed": 0}, backend="bridge").model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = bridge.to(torch.float64)
    before = {k: v.clone() for k, v in bridge.tl_parameters().items()}
    res = checkpoint_similarity(_states(run), "QK", model=bridge, progress=False)  # HookedTransformer names
    torch.testing.assert_close(res.values, reference.values, rtol=0, atol=1e-10)
    assert all(torch.equal(v, before[k]) for k, v in bridge.tl_parameters().items())


def test_arbitrary_modules_are_rejected_with_what_is_accepted(run):
    with pytest.raises(TypeError, match=r"checkpoints\[1\]: expected a HookedTransformer.*got torch\.nn\..*Linear"):
        checkpoint_similarity([run[0], torch.nn.Linear(2, 2)], progress=False)
    with pytest.raises(TypeError, match=r"model: expected a HookedTransformer.*got torch\.nn\..*Linear"):
        checkpoint_similarity(_states(run), model=torch.nn.Linear(2, 2), progress=False)


def _write(states, folder, names):
    folder.mkdir(exist_ok=True)
    for sd, name in zip(states, names, strict=True):
        sd = {k: v.contiguous() for k, v in sd.items()}
        if name.endswith(".safetensors"):
            save_file(sd, str(folder / name))
        else:
            torch.save(sd, folder / name)
    return folder


def test_a_directory_is_a_folder_of_checkpoint_files(run, reference, tmp_path):
    # written out of order, with a step in every name: read in step order, the steps label the result
    folder = _write(_states(run)[::-1], tmp_path / "ckpts", ["step_100.pt", "step_20.safetensors", "step_3.pth"])
    (folder / "notes.txt").write_text("not a checkpoint")
    config = {**CFG, "dtype": torch.float64}
    res = checkpoint_similarity(str(folder), "QK", model=config, progress=False)
    assert res.steps == [3, 20, 100]
    torch.testing.assert_close(res.values, reference.values, rtol=0, atol=1e-12)
    res_path = checkpoint_similarity(folder, "QK", model=config, progress=False)  # a Path as well
    assert res_path.steps == [3, 20, 100]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"checkpoints: the folder .*empty has no checkpoint files"):
        checkpoint_similarity(str(empty), model=config, progress=False)


def test_every_file_is_checked_before_any_work(run, tmp_path):
    folder = _write(_states(run)[:1], tmp_path / "ok", ["a.safetensors"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01 not safetensors")
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a torch file")
    calls = []

    def first():
        calls.append(1)
        return run[0]

    config = {**CFG, "dtype": torch.float64}
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match=rf"checkpoints\[2\]: no checkpoint file at {missing}"):
        checkpoint_similarity([first, folder / "a.safetensors", missing], model=config, progress=False)
    with pytest.raises(ValueError, match=rf"checkpoints\[2\]: cannot read the safetensors header of {bad}"):
        checkpoint_similarity([first, folder / "a.safetensors", bad], model=config, progress=False)
    with pytest.raises(ValueError, match=rf"checkpoints\[1\]: cannot read {bad_pt} as a torch.save file"):
        checkpoint_similarity([first, bad_pt], model=config, progress=False)
    with pytest.raises(ValueError, match=r"checkpoints\[0\]: .*\.txt.*expected \.safetensors, \.pt or \.pth"):
        checkpoint_similarity([folder / "x.txt"], model=config, progress=False)
    assert calls == []  # nothing was loaded


def test_a_state_dict_that_does_not_fit_names_the_file(run, tmp_path):
    folder = _write(_states(run)[:2], tmp_path / "ck", ["s0.pt", "s1.pt"])
    with pytest.raises(ValueError, match=r"checkpoints\[0\] \(.*s0\.pt\): state dict does not fit"):
        checkpoint_similarity(str(folder), model={**CFG, "d_mlp": 16, "dtype": torch.float64}, progress=False)
