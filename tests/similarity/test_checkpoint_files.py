"""Checkpoint files are read lazily through the adapter (`ModelView.with_weights`): only the tensors the metric
looks up leave the disk, no model is loaded into, and the numbers equal those of the loaded models."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import make_bridge
from tl_tensorsim.adapter import ModelView
from tl_tensorsim.similarity import checkpoint_similarity
from tl_tensorsim.similarity.circuit_parts import circuit_factors


def _write(bridges, folder, names):
    """Bridge-named (`state_dict()`) and TransformerLens-named (`tl_parameters`) files, alternating formats."""
    folder.mkdir()
    for i, (bridge, name) in enumerate(zip(bridges, names)):
        state = bridge.state_dict() if i % 2 else ModelView(bridge).state_dict()
        state = {k: v.detach().clone().contiguous() for k, v in state.items()}
        if name.endswith(".safetensors"):
            save_file(state, str(folder / name))
        else:
            torch.save(state, folder / name)
    return folder


@pytest.fixture(scope="module")
def bridges():
    return [make_bridge(seed=s) for s in (1, 2, 3)]


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
@pytest.mark.parametrize("naming", ["transformer_lens", "bridge"])
def test_a_file_view_reads_only_the_tensors_looked_up(bridges, tmp_path, name, naming):
    source = bridges[0]
    state = ModelView(source).state_dict() if naming == "transformer_lens" else source.state_dict()
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    path = tmp_path / name
    save_file(state, str(path)) if name.endswith(".safetensors") else torch.save(state, path)
    template = make_bridge(seed=9)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    view = ModelView(template).with_weights(path)
    for circuit in ("QK", "OV"):
        for got, want in zip(circuit_factors(view, circuit), circuit_factors(ModelView(source), circuit)):
            assert torch.equal(got, want)
    read = set(view._params._cache)  # white box: what left the disk
    assert read == {f"blocks.{layer}.attn.{w}" for layer in range(2) for w in ("W_Q", "W_K", "W_V", "W_O")}
    assert all(torch.equal(v, before[k]) for k, v in template.state_dict().items())  # the template is untouched
    with pytest.raises(RuntimeError, match="holds weights only"):
        view.run_with_cache(torch.zeros(1, 4, dtype=torch.long))


def test_file_checkpoints_equal_loaded_models(bridges, tmp_path):
    folder = _write(bridges, tmp_path / "run", ["step_10.safetensors", "step_20.pt", "step_30.safetensors"])
    template = make_bridge(seed=9)
    for circuit, level in (("QK", "residual"), ("OV", "residual"), ("OV", "token")):
        from_files = checkpoint_similarity(folder, circuit, level, model=template, progress=False)
        from_models = checkpoint_similarity(bridges, circuit, level, progress=False)
        assert from_files.steps == [10, 20, 30]
        torch.testing.assert_close(from_files.values, from_models.values, atol=1e-12, rtol=0)


def test_a_file_of_another_shape_is_named_before_any_tensor_is_read(tmp_path):
    # TransformerLens names: [head, d_model, d_head] shows the head split (a bridge's fused [(head d_head), d_model]
    # layout cannot: 8 heads of 4 and 4 heads of 8 have the same shape there)
    other = ModelView(make_bridge(seed=1, d_head=4, n_heads=8))
    save_file(
        {k: v.detach().clone().contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "a.safetensors")
    )
    with pytest.raises(
        ValueError,
        match=r"a\.safetensors holds blocks\.0\.attn\.W_Q of shape \[8, 32, 4\], this model's is \[4, 32, 8\]",
    ):
        ModelView(make_bridge(seed=0)).with_weights(tmp_path / "a.safetensors", "checkpoints[0]")


def test_a_metric_that_runs_the_model_loads_files_into_a_private_copy(bridges, tmp_path):
    folder = _write(bridges[:2], tmp_path / "run", ["step_1.safetensors", "step_2.pt"])
    template = make_bridge(seed=9)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    tokens = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(0))
    from_files = checkpoint_similarity(folder, metric="behavioral", tokens=tokens, model=template, progress=False)
    from_models = checkpoint_similarity(bridges[:2], metric="behavioral", tokens=tokens, progress=False)
    torch.testing.assert_close(from_files.values, from_models.values, atol=1e-6, rtol=0)
    assert all(torch.equal(v, before[k]) for k, v in template.state_dict().items())
