"""Interaction graph: edges against brute force, ablation, modules, save/load."""

from __future__ import annotations

import pytest
import torch

from tests.interaction.helpers import NODES, tiny, tokens
from tl_tensorsim.adapter import ModelView
from tl_tensorsim.interaction import (
    AblationCurve,
    InteractionGraph,
    Modules,
    edge_ablation,
    interaction_basis,
    interaction_graph,
    modules,
    node_ablation,
    sections,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def setup():
    model, data = tiny(0), tokens(40)
    basis = interaction_basis(model, NODES, data, last_pos_from="blocks.0.hook_resid_mid", progress=False)
    graph = interaction_graph(basis, model, data, progress=False)
    with torch.no_grad():
        labels = model(data)[:, -1].argmax(-1)
    metric = lambda logits, idx: (logits[:, -1].argmax(-1) == labels[idx]).double()  # noqa: E731
    return model, data, basis, graph, metric


def test_edges_are_squared_gradient_times_activation(setup):
    """Edge layer 0 (resid_pre, 4 positions -> resid_mid, last position) from a dense jacrev of the section
    written in basis coordinates, normalised by 1/(N · P_in) (§12 item 11)."""
    model, data, basis, graph, _ = setup
    view = ModelView(model)
    layers = sections.NodeLayers(basis.node_layers, basis.last_position)
    x = sections.collect(view, layers, data)[0]
    F = sections.section(view, layers, 0, data, None, True)
    fh = x @ basis.C[0]
    h = lambda z: F(z @ basis.C_pinv[0]) @ basis.C[1]  # noqa: E731
    J = torch.einsum("btibsj->btisj", torch.func.jacrev(h)(fh).detach())
    A = torch.einsum("btisj,bsj->btij", J, fh)
    expected = (A * A).sum((0, 1)) / (x.shape[0] * x.shape[1])
    assert graph.edges[0].shape == (basis.kept[1], basis.kept[0])
    assert torch.allclose(graph.edges[0], expected, rtol=1e-9)
    assert all(bool((e >= 0).all()) for e in graph.edges)


def test_stochastic_edges_exact_for_one_output_position(setup):
    model, data, basis, graph, _ = setup
    g1 = interaction_graph(basis, model, data, n_stochastic_sources=1, progress=False)
    for a, b in zip(graph.edges, g1.edges):
        assert torch.allclose(a, b, rtol=1e-9)


def test_edge_ablation_bisection(setup):
    model, data, basis, graph, metric = setup
    res = edge_ablation(graph, basis, model, data, metric, tolerance=0.0, layers=[1], chunk_size=5)
    key = "blocks.0.hook_resid_mid -> blocks.0.hook_resid_post"
    total = graph.edges[1][:, 1:].numel()
    pts = dict(map(tuple, res.curves[key]))
    assert res.baseline[key] == pts[total] == res.clean == 1.0
    n = res.needed[key]
    assert pts[n] == 1.0 and (n == 0 or pts.get(n - 1, 0.0) < 1.0)
    assert 0 < n < total and res.total_needed == n
    assert isinstance(res, AblationCurve) and "edges" in repr(res)
    df = res.to_dataframe()
    assert len(df) == len(res.curves[key]) and set(df["layer"]) == {key}
    assert df[df["needed"]]["kept"].tolist() == [n] and dict(zip(df["kept"], df["metric"])) == pts


def test_top_k_mask(setup):
    graph = setup[3]
    m = graph.top_k_mask(1, 7)
    assert m[:, 0].all() and int(m[:, 1:].sum()) == 7
    e = graph.edges[1][:, 1:]
    assert float(e[m[:, 1:]].min()) >= float(e[~m[:, 1:]].max())


def test_node_ablation_matches_run_from(setup):
    """hooks.rotate(basis.node(l), keep=k) against the projected activation fed through run_from."""
    model, data, basis, _, metric = setup
    res = node_ablation(basis, model, data, metric, node="blocks.0.hook_resid_pre", keep=[0, 3, basis.kept[0]])
    view = ModelView(model)
    x = view.run_with_cache(data, ["blocks.0.hook_resid_pre"])[1]["blocks.0.hook_resid_pre"]
    nb = basis.node(0)
    for k, acc in res.curves["blocks.0.hook_resid_pre"]:
        aug = torch.cat([x, torch.ones_like(x[..., :1])], -1)
        proj = (aug @ nb.C[:, :k] @ nb.C_pinv[:k])[..., :-1]
        logits = view.run_from("blocks.0.hook_resid_pre", proj, data)
        assert acc == float(metric(logits, torch.arange(len(data))).mean())
    assert res.curves["blocks.0.hook_resid_pre"][-1][1] == 1.0  # every direction kept: full rank, no change


def test_modules_and_save_load(tmp_path, setup):
    import tl_tensorsim as ts

    graph = setup[3]
    mods = modules(graph, seed=0)
    assert isinstance(mods, Modules) and -0.5 <= mods.modularity <= 1
    nodes = sorted(tuple(n) for c in mods.communities for n in c)
    assert len(nodes) == sum(graph.sizes) - sum(graph.constant)  # every non-constant node, once
    assert mods == modules(graph, seed=0)
    df = mods.to_dataframe()
    assert len(df) == len(nodes) and sorted(zip(df["layer"], df["node"])) == nodes
    assert all((l, n) in map(tuple, mods.communities[c]) for c, l, n in zip(df["community"], df["layer"], df["node"]))
    graph.save(tmp_path / "g")
    back = ts.load(tmp_path / "g")
    assert isinstance(back, InteractionGraph) and back.constant == graph.constant
    assert all(torch.equal(a, b) for a, b in zip(graph.edges, back.edges))
    mods.save(tmp_path / "m")
    assert ts.load(tmp_path / "m").communities == mods.communities


def test_plots_are_written_where_asked(tmp_path, setup):
    # the spectra, the graph and an ablation curve, each to a PNG under a folder that does not exist yet
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, data, basis, graph, metric = setup
    curve = node_ablation(basis, model, data, metric, node="blocks.0.hook_resid_pre", keep=[0, 3])
    for name, plot in (("spectra", basis.plot_spectra), ("graph", graph.plot), ("ablation", curve.plot)):
        path = tmp_path / "figures" / f"{name}.png"
        fig = plot(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.axes
        plt.close(fig)
    fig = graph.plot(top=5)  # no path: only the figure
    assert fig.axes and len(list((tmp_path / "figures").iterdir())) == 3
    plt.close(fig)


def test_bad_input(setup):
    model, data, basis, graph, metric = setup
    with pytest.raises(ValueError, match="which"):
        interaction_graph(basis, model, data, which="svd")
    with pytest.raises(TypeError, match="basis"):
        interaction_graph(graph, model, data)
    with pytest.raises(ValueError, match="normalise"):
        modules(graph, normalise="log")
    with pytest.raises(ValueError, match="output"):
        node_ablation(basis, model, data, metric, node="output", keep=[1])
    with pytest.raises(ValueError, match="metric"):
        node_ablation(basis, model, data, lambda logits, idx: logits.sum(), node=0, keep=[1])
    for fn in (edge_ablation, node_ablation):  # a one-argument metric is refused before any forward pass
        args = (graph, basis) if fn is edge_ablation else (basis,)
        kwargs = {} if fn is edge_ablation else {"node": 0, "keep": [1]}
        with pytest.raises(TypeError, match=r"metric: .*cannot take two arguments.*lambda logits, index"):
            fn(*args, model, data, lambda logits: logits.sum(), **kwargs)
    with pytest.raises(TypeError, match="metric: expected a callable"):
        node_ablation(basis, model, data, "accuracy", node=0, keep=[1])


def test_ablation_curve_round_trip_keeps_layer_order(tmp_path):
    """Layers come back in the order they were computed (blocks.2 before blocks.10, not alphabetically): repr,
    to_dataframe rows and plot legend follow it."""
    import tl_tensorsim as ts

    keys = ["blocks.2.hook_resid_post -> blocks.10.hook_resid_pre", "blocks.10.hook_resid_pre -> output"]
    curve = AblationCurve(
        kind="edges",
        basis="ib",
        clean=1.0,
        baseline={keys[0]: 1.0, keys[1]: 0.5},
        curves={keys[0]: [[0, 0.25], [3, 1.0]], keys[1]: [[5, 0.5]]},
        needed={keys[0]: 3, keys[1]: 5},
        tolerance=0.0,
    )
    back = ts.load(curve.save(tmp_path / "curve"))
    assert back == curve and repr(back) == repr(curve)
    assert list(back.needed) == list(back.curves) == list(back.baseline) == keys
    assert back.to_dataframe()["layer"].tolist() == curve.to_dataframe()["layer"].tolist() == [keys[0]] * 2 + keys[1:]


def test_basis_and_model_of_other_width_are_refused_before_any_work(setup, monkeypatch):
    """A basis built on d_model 8 with a d_model 4 model: a ValueError naming the layer and both widths (was a
    matmul RuntimeError deep inside), from every entry point that takes a basis and a model."""
    model, data, basis, graph, metric = setup
    narrow = tiny(0, d_model=4, d_head=2)

    def no_work(*args, **kwargs):
        raise AssertionError("activations were collected before the widths were checked")

    monkeypatch.setattr(sections, "collect", no_work)
    match = r"model: node layer 'blocks.0.hook_resid_pre' has width 4 in .*; expected 8, the width the basis was built"
    with pytest.raises(ValueError, match=match):
        interaction_graph(basis, narrow, data, progress=False)
    with pytest.raises(ValueError, match=match):
        node_ablation(basis, narrow, data, metric, node="blocks.0.hook_resid_mid", keep=[1])
    with pytest.raises(ValueError, match=match):
        edge_ablation(graph, basis, narrow, data, metric)
    other_vocab = tiny(0, d_vocab=17)
    with pytest.raises(ValueError, match=r"model: node layer 'output' has d_vocab_out 17 .*; expected 13"):
        interaction_graph(basis, other_vocab, data, progress=False)
    with pytest.raises(TypeError, match="basis: expected an InteractionBasis"):
        node_ablation(graph, model, data, metric, node=0, keep=[1])


def test_node_ablation_refuses_keep_beyond_the_basis(setup):
    """keep=[1000] with 9 directions was silently clamped and recorded as k=1000."""
    model, data, basis, _, metric = setup
    m = basis.kept[0]
    match = (
        rf"keep: expected ints in \[0, {m}\] \(node layer 'blocks.0.hook_resid_pre' has {m} ib directions\); got 1000"
    )
    with pytest.raises(ValueError, match=match):
        node_ablation(basis, model, data, metric, node=0, keep=[m, 1000])
    with pytest.raises(ValueError, match=r"keep: expected ints in \[0, .*got -1"):
        node_ablation(basis, model, data, metric, node=0, keep=[-1])
    with pytest.raises(TypeError, match=r"keep: expected a sequence of ints .*Hint: keep=\[3\]"):
        node_ablation(basis, model, data, metric, node=0, keep=3)
    res = node_ablation(basis, model, data, metric, node=0, keep=[m])
    assert [k for k, _ in res.curves["blocks.0.hook_resid_pre"]] == [m]


def test_a_model_with_fewer_outputs_than_inputs_passes_the_width_check():
    """d_vocab_out below d_vocab (the modular-addition model: 114 inputs, 113 outputs): the logits' width is the
    unembedding's, so the graph runs on the model the basis was built from (the check compared it with d_vocab)."""
    model = tiny(0, d_vocab=14, d_vocab_out=13)
    data = torch.randint(0, 14, (20, 4), generator=torch.Generator().manual_seed(0))
    basis = interaction_basis(model, ["blocks.0.hook_resid_post", "output"], data, progress=False)
    graph = interaction_graph(basis, model, data, progress=False)
    assert basis.dims[-1] == 14 and graph.edges[0].shape[0] == basis.kept[-1]
