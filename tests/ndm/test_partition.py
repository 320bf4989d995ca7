"""SubspacePartition: conventions, baselines, storage (ours and the official release format), hooks."""

from __future__ import annotations

import json

import pytest
import torch

import tl_tensorsim.artifacts as artifacts
from tl_tensorsim import hooks
from tl_tensorsim.ndm import SubspacePartition, group_recovery, partition_baselines
from tl_tensorsim.ndm.partition import OFFICIAL_KEY


def random_orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))).Q


def test_row_vector_convention_and_views():
    r = random_orthogonal(6)
    part = SubspacePartition(r, (3, 2, 1))
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    pieces = part.split(x)
    assert [p.shape for p in pieces] == [(4, 5, 3), (4, 5, 2), (4, 5, 1)]
    torch.testing.assert_close(pieces[1], x @ r[:, 3:5], rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.cat(pieces, -1) @ r.T, x, rtol=0, atol=1e-13)  # h = ĥ Rᵀ
    torch.testing.assert_close(sum(part.project(x, i) for i in range(3)), x, rtol=0, atol=1e-13)
    assert part.basis(0).dtype == torch.float32 and part.basis(0).shape == (6, 3)
    assert part.rotation.dtype == torch.float32 and part.rotation_as().dtype == torch.float64
    assert part.bounds == [(0, 3), (3, 5), (5, 6)]
    assert torch.equal(part.basis(-1, torch.float64), r[:, 5:])


def test_repr_and_errors():
    part = SubspacePartition(torch.eye(4), (2, 2), loss=0.5, mi=torch.tensor([[0.0, 0.3], [0.3, 0.0]]))
    text = repr(part)
    assert "sizes=[2, 2]" in text and "loss=0.5" in text and "mean_mi=0.3" in text
    with pytest.raises(ValueError, match="sizes: the widths must sum to d=4"):
        SubspacePartition(torch.eye(4), (2, 1))
    with pytest.raises(ValueError, match="R: expected an orthogonal matrix"):
        SubspacePartition(2 * torch.eye(4), (2, 2))
    with pytest.raises(ValueError, match=r"i: expected a subspace index in \[0, 2\)"):
        part.basis(2)
    with pytest.raises(ValueError, match="mi: expected shape"):
        SubspacePartition(torch.eye(4), (2, 2), mi=torch.zeros(3, 3)).save("unused")


def test_save_load_round_trip(tmp_path):
    from tl_tensorsim.artifacts import Provenance

    prov = Provenance(models=("toy",), hooks=("blocks.0.hook_resid_post",), settings={"unit_size": 2, "lr": 3e-3})
    mi = torch.rand(3, 3, dtype=torch.float64)
    part = SubspacePartition(
        random_orthogonal(6), (2, 2, 2), loss=1.25, mi=mi + mi.T, history={"step": [1, 2]}, provenance=prov
    )
    part.save(tmp_path / "p")
    for loaded in (SubspacePartition.load(tmp_path / "p"), artifacts.load(tmp_path / "p")):
        assert isinstance(loaded, SubspacePartition)
        assert torch.equal(loaded.R, part.R) and torch.equal(loaded.mi, part.mi)
        assert loaded.sizes == (2, 2, 2) and loaded.loss == 1.25 and loaded.history == {"step": [1, 2]}
        assert loaded.hook_name == "blocks.0.hook_resid_post" and loaded.model_name == "toy"
        assert loaded.provenance.settings == {"unit_size": 2, "lr": 3e-3}


def test_official_format_is_read_as_stored_not_transposed(tmp_path):
    """The released file holds R itself under the parametrization's base key; block s is h @ R[:, cols_s]."""
    r = random_orthogonal(5, seed=3)
    assert not torch.allclose(r, r.T)
    torch.save({OFFICIAL_KEY: r.float(), "R.parametrizations.weight.original": torch.zeros(5, 5)}, tmp_path / "R.pt")
    (tmp_path / "R_config.json").write_text(json.dumps({"partition": [3, 2]}))
    part = SubspacePartition.from_official(tmp_path / "R.pt", tmp_path / "R_config.json")
    assert part.sizes == (3, 2) and part.method == "official"
    h = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(part.split(h)[0], h @ r[:, :3], rtol=0, atol=1e-6)
    assert (part.R.T @ part.R - torch.eye(5, dtype=torch.float64)).abs().max() < 1e-13
    torch.save(r, tmp_path / "bare.pt")  # a bare tensor is accepted too
    assert torch.allclose(SubspacePartition.from_official(tmp_path / "bare.pt", tmp_path / "R_config.json").R, r)
    torch.save({"other": r}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="r_file: .* has no"):
        SubspacePartition.from_official(tmp_path / "bad.pt", tmp_path / "R_config.json")


def test_baselines():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([3.0, 0.5, 2.0, 1.0, 0.1, 4.0])
    acts = torch.randn(5000, 6, generator=g) * scales + 10.0  # the mean is removed before PCA
    parts = partition_baselines((4, 2), acts, seed=1)
    assert set(parts) == {"identity", "random", "pca_ascending", "pca_descending"}
    assert torch.equal(parts["identity"].R, torch.eye(6, dtype=torch.float64))
    assert torch.equal(parts["random"].R, SubspacePartition.random((4, 2), seed=1).R)
    assert not torch.equal(parts["random"].R, SubspacePartition.random((4, 2), seed=2).R)
    for name, order in (("pca_ascending", scales.argsort()), ("pca_descending", scales.argsort(descending=True))):
        var = parts[name].split(acts.double() - acts.double().mean(0))
        variances = torch.cat([v.var(0) for v in var])
        assert torch.equal(variances.argsort(descending=name == "pca_descending"), torch.arange(6))
        assert torch.equal(parts[name].R.abs().argmax(0), order)  # axis-aligned data: PCA finds the axes
    for p in parts.values():
        assert p.sizes == (4, 2) and (p.R.T @ p.R - torch.eye(6, dtype=torch.float64)).abs().max() < 1e-12


def test_norm_shares_and_group_recovery():
    part = SubspacePartition.identity((2, 2, 1))
    vectors = torch.tensor([[1.0, 1, 0, 0, 0], [0, 2, 0, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 0, 3]])
    shares = part.norm_shares(vectors)
    torch.testing.assert_close(shares[0], torch.tensor([1.0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(shares[2], torch.tensor([0, 0.5, 0.5], dtype=torch.float64))
    rec = group_recovery(part, vectors, [[0, 1], [2, 3]])
    assert rec[0] == {"subspace": 0, "share": 1.0, "own": True}
    assert rec[1]["subspace"] == 2 and abs(rec[1]["share"] - 10 / 11) < 1e-12 and rec[1]["own"]
    merged = group_recovery(SubspacePartition.identity((5,)), vectors, [[0, 1], [2, 3]])
    assert not merged[0]["own"] and not merged[1]["own"]  # one block holding both groups recovers neither


def test_bases_work_with_interchange(model):
    """hooks.interchange with part.basis(i): the whole space reproduces the source; the identity basis equals
    ordinary coordinate patching; the other coordinates are untouched."""
    d = model.cfg.d_model
    name = "blocks.0.hook_resid_post"
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 6))
    source = torch.randint(0, model.cfg.d_vocab, (2, 6))
    _, cache = model.run_with_cache(source, names_filter=name)
    clean = cache[name]
    part = SubspacePartition(random_orthogonal(d, 4), (d - 8, 8))
    seen = {}

    def grab(act, hook):
        seen["x"] = act.clone()

    full = SubspacePartition(random_orthogonal(d, 5), (d,))
    model.run_with_hooks(tokens, fwd_hooks=[(name, hooks.interchange(full.basis(0), source=clean)), (name, grab)])
    torch.testing.assert_close(seen["x"], clean, rtol=0, atol=1e-5)
    model.run_with_hooks(tokens, fwd_hooks=[(name, hooks.interchange(part.basis(1), source=clean)), (name, grab)])
    _, own = model.run_with_cache(tokens, names_filter=name)
    patched = part.split(seen["x"])
    torch.testing.assert_close(patched[1], part.split(clean)[1], rtol=0, atol=1e-4)
    torch.testing.assert_close(patched[0], part.split(own[name])[0], rtol=0, atol=1e-4)
    ident = SubspacePartition.identity((d - 8, 8))
    model.run_with_hooks(tokens, fwd_hooks=[(name, hooks.interchange(ident.basis(1), source=clean)), (name, grab)])
    expected = own[name].clone()
    expected[..., d - 8 :] = clean[..., d - 8 :]
    torch.testing.assert_close(seen["x"], expected, rtol=0, atol=1e-6)


def test_plot_and_table_show_the_fit(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tl_tensorsim.ndm import fit_ndm

    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    part = fit_ndm(x, unit_size=2, max_steps=60, merge_start=20, merge_interval=20, key_pool=100, batch_size=16,
                   mi_queries=50, mi_keys=200, log_every=10, progress=False)  # fmt: skip
    fig = part.plot(tmp_path / "f" / "ndm.png")
    assert (tmp_path / "f" / "ndm.png").read_bytes()[:4] == b"\x89PNG"
    assert len(fig.axes[0].lines) >= 1 and len(fig.axes[1].get_images()) == 1  # history, MI map (then twin, colorbar)
    assert "mean MI" in fig.axes[1].get_title()
    plt.close(fig)
    df = part.to_dataframe()
    assert list(df["width"]) == list(part.sizes) and list(df["stop"] - df["start"]) == list(part.sizes)
    for i, row in df.iterrows():  # the partner is the off-diagonal argmax of mi, by brute force over the row
        others = [j for j in range(part.n_subspaces) if j != i]
        best = max(others, key=lambda j: float(part.mi[i, j]))
        assert row["mi partner"] == best and row["max mi"] == float(part.mi[i, best])
        assert row["max mi per dim"] == pytest.approx(row["max mi"] / (part.sizes[i] + part.sizes[best]))
    assert list(SubspacePartition.identity([4, 4]).to_dataframe().columns) == ["subspace", "width", "start", "stop"]
    fig = SubspacePartition.identity([4, 4]).plot()  # no history, no MI: the widths
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2
    plt.close(fig)
