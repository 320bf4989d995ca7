"""checkpoint_similarity: every source kind, one model loaded at a time, equal to pairwise head_similarity."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import HAS_HOOKED_TRANSFORMER, needs_hooked_transformer
from tests.similarity.conftest import CFG, circuits, f64_model
from tl_tensorsim.similarity import CheckpointSimilarity, checkpoint_similarity, head_similarity

T = 4


@pytest.fixture(scope="module")
def run():
    """Four 'checkpoints': a path from model 0 to model 3 (interpolated weights), float64."""
    start, end = f64_model(30), f64_model(31)
    s0, s1 = start.state_dict(), end.state_dict()
    models = []
    for t in range(T):
        m = f64_model(30)
        w = t / (T - 1)
        m.load_state_dict({k: (1 - w) * s0[k] + w * s1[k] if s0[k].is_floating_point() else s0[k] for k in s0})
        models.append(m)
    return models


@pytest.mark.parametrize(
    "circuit,level,positions", [("QK", "residual", False), ("OV", "token", False), ("QK", "token", True)]
)
def test_models_list_equals_pairwise_head_similarity(run, circuit, level, positions):
    res = checkpoint_similarity(run, circuit, level, positions=positions, progress=False)
    assert res.values.shape == (6, T, T) and res.labels[:2] == ["L0H0", "L0H1"] and res.steps == list(range(T))
    for t in range(T):
        for s in range(T):
            ref = head_similarity(run[t], run[s], circuit, level, positions=positions).values.diagonal()
            torch.testing.assert_close(res.values[:, t, s], ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(res.to_final, res.values[:, -1, :])


@pytest.mark.parametrize("circuit", ["QK", "OV"])
def test_per_head_kernel_equals_general_kernel_and_brute_force(circuit):
    """The residual-level T x T (per_head_gram, one triangle, blocked) equals the general pairwise kernel
    (method="factored") and materialised circuits to 1e-12, at a T with several triangle blocks."""
    models = [f64_model(40 + t) for t in range(9)]
    dense = checkpoint_similarity(models, circuit, method="dense", progress=False)
    factored = checkpoint_similarity(models, circuit, method="factored", progress=False)
    torch.testing.assert_close(dense.values, factored.values, rtol=0, atol=1e-12)
    M = torch.stack([circuits(m, circuit, "residual") for m in models], 1)  # [heads, T, d * d]
    inner = torch.einsum("htk,hsk->hts", M, M)
    d = inner.diagonal(dim1=1, dim2=2)
    torch.testing.assert_close(dense.values, inner / (d[:, :, None] * d[:, None, :]).sqrt(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("level", ["residual", "token"])
def test_pairs_final_and_disk_store_agree_with_full(run, level):
    full = checkpoint_similarity(run, "OV", level, progress=False)
    final = checkpoint_similarity(run, "OV", level, pairs="final", store="disk", progress=False)
    torch.testing.assert_close(final.to_final, full.to_final, rtol=0, atol=1e-12)
    assert torch.isnan(final.values[:, 0, 1]).all() and not torch.isnan(final.values[:, 1, 1]).any()
    disk = checkpoint_similarity(run, "OV", level, store="disk", progress=False)
    torch.testing.assert_close(disk.values, full.values, rtol=0, atol=1e-12)


def test_state_dict_files_loaded_into_a_config(run, tmp_path):
    paths = []
    for t, m in enumerate(run):
        sd = {k: v.contiguous() for k, v in m.state_dict().items()}
        if t % 2:
            paths.append(tmp_path / f"ckpt{t}.pt")
            torch.save(sd, paths[-1])
        else:
            paths.append(tmp_path / f"ckpt{t}.safetensors")
            save_file(sd, str(paths[-1]))
    config = {**CFG, "dtype": torch.float64}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_files = checkpoint_similarity(paths, "QK", model=config, steps=[0, 10, 20, 30], progress=False)
        from_dicts = checkpoint_similarity([m.state_dict() for m in run], "QK", model=f64_model(0), progress=False)
    ref = checkpoint_similarity(run, "QK", progress=False)
    torch.testing.assert_close(from_files.values, ref.values, rtol=0, atol=1e-12)
    torch.testing.assert_close(from_dicts.values, ref.values, rtol=0, atol=1e-12)
    assert from_files.steps == [0, 10, 20, 30]
    with pytest.raises(ValueError, match="model"):
        checkpoint_similarity(paths, "QK", progress=False)
    with pytest.raises(ValueError, match="does not fit"):
        checkpoint_similarity(paths[:1], "QK", model={**config, "d_mlp": 16}, progress=False)


def test_model_name_loads_one_checkpoint_at_a_time(run, monkeypatch, no_network):
    """The TransformerLens loader boundary (`HookedTransformer.from_pretrained`, or on 4.x
    `TransformerBridge.boot_transformers`) is replaced by local models; nothing is downloaded (any network
    connection in this test raises: `no_network`)."""
    import transformer_lens

    calls, alive = [], []

    def fake_from_pretrained(name, checkpoint_index=None, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in alive), "the previous checkpoint is still in memory"
        calls.append((name, checkpoint_index, kwargs))
        model = f64_model(30)
        model.load_state_dict(run[checkpoint_index % T].state_dict())
        alive.append(weakref.ref(model))
        return model

    if HAS_HOOKED_TRANSFORMER:
        monkeypatch.setattr(transformer_lens.HookedTransformer, "from_pretrained", staticmethod(fake_from_pretrained))
    else:
        from transformer_lens.model_bridge import TransformerBridge

        monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(fake_from_pretrained))
    res = checkpoint_similarity(
        "pythia-70m", "OV", checkpoint_indices=[0, 5, 11, 23], from_pretrained_kwargs={"fold_ln": False}, progress=False
    )
    assert [c[1] for c in calls] == [0, 5, 11, 23] and calls[0][0] == "pythia-70m"
    assert calls[0][2] == {"fold_ln": False}
    assert res.steps == [0, 16, 1000, 13000]  # Pythia's step labels for those indices
    assert res.settings["model_name"] == "pythia-70m" and res.settings["checkpoint_indices"] == [0, 5, 11, 23]
    torch.testing.assert_close(
        res.values, checkpoint_similarity(run, "OV", progress=False).values[:, [0, 1, 3, 3]][:, :, [0, 1, 3, 3]]
    )


def test_callables_are_loaded_lazily(run):
    res = checkpoint_similarity([lambda m=m: m for m in run], "OV", "token", progress=False)
    torch.testing.assert_close(res.values, checkpoint_similarity(run, "OV", "token", progress=False).values)


def test_errors(run):
    with pytest.raises(ValueError, match="checkpoint_indices"):
        checkpoint_similarity("pythia-70m", progress=False)
    with pytest.raises(ValueError, match="checkpoint_indices"):
        checkpoint_similarity(run, checkpoint_indices=[0, 1], progress=False)
    with pytest.raises(ValueError, match="steps"):
        checkpoint_similarity(run, steps=[1, 2], progress=False)
    with pytest.raises(ValueError, match=r"checkpoints\[1\]"):
        checkpoint_similarity([run[0], f64_model(0, n_heads=2, d_head=9)], progress=False)
    with pytest.raises(TypeError, match=r"checkpoints\[0\]"):
        checkpoint_similarity([3.0], progress=False)
    with pytest.raises(ValueError, match="tokens"):
        checkpoint_similarity(run, metric="behavioral", progress=False)
    with pytest.raises(ValueError, match="pairs"):
        checkpoint_similarity(run, pairs="some", progress=False)


@needs_hooked_transformer  # `process_weights_` is HookedTransformer's
def test_processing_mismatch_across_checkpoints_warns(run):
    import copy

    processed = copy.deepcopy(run[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        processed.process_weights_()
    with pytest.warns(UserWarning, match="processed differently"):
        checkpoint_similarity([run[0], processed], "OV", progress=False)


def test_result_jump_plot_dataframe_save_load(run, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    res = checkpoint_similarity(run, "QK", steps=torch.tensor([0, 100, 200, 300]), progress=False)
    jump = res.largest_jump("L1H2")
    curve = res.matrix("L1H2")[-1]
    k = int(torch.argmax(curve[1:] - curve[:-1]))
    assert jump["step"] == res.steps[k + 1] and jump["delta"] == pytest.approx(float(curve[k + 1] - curve[k]))
    df = res.to_dataframe()
    assert len(df) == 6 * T and set(df.columns) == {"head", "checkpoint", "step", "similarity_to_final"}
    assert df.query("head == 'L0H1' and step == 300").similarity_to_final.item() == pytest.approx(1.0)
    res.plot(highlight=["L0H0", "L1H2"], path=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    back = CheckpointSimilarity.load(res.save(tmp_path / "ckpt"))
    assert torch.equal(back.values, res.values) and back.steps == res.steps and back.labels == res.labels
    assert "6 heads x 4 checkpoints" in repr(res)


def test_a_single_checkpoint_plots_and_largest_jump_says_why_not(run, tmp_path):
    """One checkpoint is a valid (1 x 1 per head) result: plot() draws it (the first head by default);
    largest_jump() raises a ValueError, not an IndexError from argmax over no differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = checkpoint_similarity(run[:1], "QK", steps=[500], progress=False)
    assert res.values.shape == (6, 1, 1)
    torch.testing.assert_close(res.values, torch.ones(6, 1, 1, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"largest_jump: expected a result of at least two checkpoints; got 1 \(steps \[500\]\)"
    ):
        res.largest_jump("L0H1")
    fig = res.plot(path=tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 1000 and fig.axes[1].get_title().startswith("L0H0")
    plt.close(fig)
    plt.close(res.plot(head="L1H2"))


def test_plot_marks_pairs_not_computed_apart_from_zero(tmp_path):
    """pairs="final" leaves NaN cells: drawn grey (opaque) with a legend entry, never the near-white of 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    values = torch.full((2, 3, 3), float("nan"), dtype=torch.float64)
    values[:, -1, :] = values[:, :, -1] = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    values[:, 0, 0] = values[:, 1, 1] = 1.0
    res = CheckpointSimilarity(values, ["L0H0", "L0H1"], [0, 10, 20], "QK", "residual", settings={"pairs": "final"})
    fig = res.plot(head="L0H1", path=tmp_path / "final.png")
    matrix_ax = fig.axes[1]
    (image,) = matrix_ax.get_images()
    assert image.get_array().mask[0, 1] and not image.get_array().mask[0, 2]  # the NaN cell is masked ...
    missing, zero = image.to_rgba(image.get_array())[0, 1], image.to_rgba(0.0)
    assert missing[3] == 1.0 and max(abs(a - b) for a, b in zip(missing, zero)) > 0.3  # ... and drawn opaque grey
    assert tuple(missing) == pytest.approx(to_rgba("0.55"))
    legend = [t.get_text() for t in matrix_ax.get_legend().get_texts()]
    assert legend == ["not computed (pairs='final')"]
    assert matrix_ax.get_xlabel() and matrix_ax.get_ylabel()  # the T x T panel names its axes
    plt.close(fig)
