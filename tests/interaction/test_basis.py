"""The interaction basis against the identities and invariances of arXiv 2405.10928 / the `rib` test suite
(paper note `interaction_basis.md` §12), on tiny float64 models."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_model_pair
from tests.interaction.helpers import NODES, match_columns, tiny, tokens, with_weights
from tl_tensorsim.adapter import ModelView
from tl_tensorsim.interaction import InteractionBasis, interaction_basis, sections
from tl_tensorsim.interaction.graph import interaction_graph

F64 = torch.float64


def node_acts(model, basis, data):
    view = ModelView(model)
    layers = sections.NodeLayers(basis.node_layers, basis.last_position)
    return [a.reshape(-1, a.shape[-1]).to(F64) for a in sections.collect(view, layers, data)]


@pytest.fixture(scope="module")
def model():
    return tiny(0)


@pytest.fixture(scope="module")
def data():
    return tokens(32)


@pytest.fixture(scope="module")
def basis(model, data):
    return interaction_basis(model, NODES, data, batch_size=20, chunk_size=7, progress=False)


def test_scaling_identity_pinv_and_centring(model, data, basis):
    acts = node_acts(model, basis, data)
    for l in range(len(NODES) - 1):
        f = acts[l]
        fh = f @ basis.C[l]
        m = basis.C[l].shape[1]
        # E[(fC)ᵀ(fC)] = diag(Λ) and C⁺C = I (§12 item 8)
        assert torch.allclose(fh.T @ fh / len(f), torch.diag(basis.Lambda[l]), atol=1e-9 * float(basis.Lambda[l][0]))
        assert torch.allclose(basis.C_pinv[l] @ basis.C[l], torch.eye(m, dtype=F64), atol=1e-9)
        # centring (§12 item 3): constant activation at index 0, the rest mean zero with no constant component
        assert float(fh[:, 0].std()) < 1e-9 and abs(float(fh[0, 0]) - float(basis.Lambda[l][0]) ** 0.5) < 1e-9
        assert float(fh[:, 1:].mean(0).abs().max()) < 1e-9
        assert float(basis.C_pinv[l][1:, -1].abs().max()) < 1e-9
        mean = torch.cat([basis.mean[l], torch.ones(1, dtype=F64)])
        cos = torch.nn.functional.cosine_similarity(basis.C_pinv[l][0], mean, dim=0)
        assert abs(abs(float(cos)) - 1) < 1e-9  # C⁺[0] ∝ the mean
        # the PCA baseline of the same run: W = Y U, Gram eigenvalues
        fp = f @ basis.C_pca[l]
        assert torch.allclose(fp[:, 1:].T @ fp[:, 1:] / len(f), torch.diag(basis.Lambda_pca[l][1:]), atol=1e-9)


def test_matches_brute_force_m_prime(model, data, basis):
    """Layer resid_post -> logits: M' from jacrev of the dense Jacobian, Λ from its eigenvalues in whitened
    coordinates; the final basis is the identity on the logits."""
    view = ModelView(model)
    layers = sections.NodeLayers(basis.node_layers, basis.last_position)
    x = sections.collect(view, layers, data)[2]
    F = sections.section(view, layers, 2, data, None, True)
    J = torch.func.jacrev(lambda z: F(z)[..., :-1])(x).detach()  # [b, t, i, b', s, j]
    J = torch.einsum("btibsj->btisj", J)  # samples do not interact
    m_prime = torch.einsum("btisj,btisk->jk", J, J) / (x.shape[0] * x.shape[1])
    from tl_tensorsim.interaction import eigen

    w = eigen.whitening(*eigen.moments(x.reshape(-1, x.shape[-1])), 1e-10)
    _, _, lam = eigen.interaction_rotation(w, m_prime, 1e-10)
    assert torch.allclose(lam, basis.Lambda[2], rtol=1e-8)


def test_reparametrisation_invariance(model, data, basis):
    """f -> f A on the residual stream (A invertible, absorbed by every reader): Λ and f̂ unchanged up to sign."""
    torch.manual_seed(5)
    A = torch.randn(8, 8, dtype=F64) + 3 * torch.eye(8, dtype=F64)
    Ai = torch.linalg.inv(A)

    def edit(s):
        for k in ("embed.W_E", "pos_embed.W_pos", "blocks.0.attn.b_O", "blocks.0.mlp.b_out"):
            s[k] = s[k].to(F64) @ A
        s["blocks.0.attn.W_O"] = s["blocks.0.attn.W_O"].to(F64) @ A
        s["blocks.0.mlp.W_out"] = s["blocks.0.mlp.W_out"].to(F64) @ A
        for k in ("blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V"):
            s[k] = torch.einsum("de,hek->hdk", Ai, s[k].to(F64))
        s["blocks.0.mlp.W_in"] = Ai @ s["blocks.0.mlp.W_in"].to(F64)
        s["unembed.W_U"] = Ai @ s["unembed.W_U"].to(F64)

    other = with_weights(model, edit)
    assert torch.allclose(model(data), other(data), atol=1e-9)
    b2 = interaction_basis(other, NODES, data, batch_size=20, progress=False)
    a1, a2 = node_acts(model, basis, data), node_acts(other, b2, data)
    for l in range(3):
        assert basis.kept[l] == b2.kept[l]
        assert torch.allclose(basis.Lambda[l], b2.Lambda[l], rtol=1e-7)
        assert match_columns(a1[l] @ basis.C[l], a2[l] @ b2.C[l]) < 1e-6


def test_pca_limit():
    """Identity section (resid_post of block 0 -> resid_pre of block 1) into a full-rank PCA final layer: the
    interaction basis is the centred PCA basis, Λ the Gram eigenvalues (§12 item 6)."""
    model = tiny(1, n_layers=2)
    data = tokens(40)
    b = interaction_basis(
        model, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"], data, rotate_final=True, progress=False
    )
    assert b.kept[0] == b.kept_pca[0] == 9
    assert torch.allclose(b.Lambda[0], b.Lambda_pca[0], rtol=1e-8)
    assert match_columns(b.C_pca[0], b.C[0]) < 1e-7


def test_degeneracy_removal():
    """mlp.hook_post with a duplicated neuron (Gram truncation) and two neurons W_out ignores (Λ truncation)."""

    def edit(s):
        s["blocks.0.mlp.W_in"][:, 5] = s["blocks.0.mlp.W_in"][:, 4]
        s["blocks.0.mlp.b_in"][5] = s["blocks.0.mlp.b_in"][4]
        s["blocks.0.mlp.W_out"][[2, 3]] = 0

    model = with_weights(tiny(2, d_mlp=6), edit)
    data = tokens(60)
    b = interaction_basis(model, ["blocks.0.mlp.hook_post", "blocks.0.hook_resid_post"], data, progress=False)
    assert b.kept_pca[0] == 1 + 5  # constant + 5 independent neurons (6 with one duplicate)
    assert b.kept[0] == 1 + 3  # neurons 2, 3 ignored downstream: the constant and 3 directions


def test_final_layer_rotation_invariance(model, data, basis):
    """Rotating the final node layer (the logits) orthogonally leaves every earlier basis and edge unchanged."""
    Q = torch.linalg.qr(torch.randn(13, 13, dtype=F64)).Q

    def edit(s):
        s["unembed.W_U"] = s["unembed.W_U"].to(F64) @ Q
        s["unembed.b_U"] = s["unembed.b_U"].to(F64) @ Q

    other = with_weights(model, edit)
    b2 = interaction_basis(other, NODES, data, batch_size=20, progress=False)
    for l in range(3):
        assert torch.allclose(basis.Lambda[l], b2.Lambda[l], rtol=1e-8)
        assert match_columns(basis.C[l], b2.C[l]) < 1e-7
    g1 = interaction_graph(basis, model, data, progress=False)
    g2 = interaction_graph(b2, other, data, progress=False)
    for l in range(2):
        assert torch.allclose(g1.edges[l], g2.edges[l], rtol=1e-6, atol=1e-12)


def test_linear_network_gives_diagonal_edges():
    """Attention-only, one position, no LayerNorm: every section is affine, so with bias folding the interaction
    graph is diagonal (§12 item 2)."""
    model = tiny(3, n_layers=2, attn_only=True)
    data = tokens(50, pos=1)
    nodes = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "output"]
    b = interaction_basis(model, nodes, data, rotate_final=True, progress=False)
    g = interaction_graph(b, model, data, progress=False)
    for e in g.edges:
        off = e - torch.diag_embed(e.diagonal())
        assert float(off.abs().max()) < 1e-8 * float(e.max())
    pca = interaction_graph(b, model, data, which="pca", progress=False)
    assert any(float((e - torch.diag_embed(e.diagonal())).abs().max()) > 1e-3 * float(e.max()) for e in pca.edges)


def test_hooked_transformer_and_bridge_agree():
    ht, bridge = make_model_pair(0, n_layers=1, d_model=16, d_mlp=32, n_ctx=5, d_vocab=20, act_fn="relu")
    ht, bridge = ht.to(F64), bridge.to(F64)
    data = tokens(24, pos=5, vocab=20)
    nodes = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post", "output"]
    b1 = interaction_basis(ht, nodes, data, progress=False)
    b2 = interaction_basis(bridge, nodes, data, progress=False)
    for l in range(3):
        assert b1.kept[l] == b2.kept[l]
        assert torch.allclose(b1.Lambda[l], b2.Lambda[l], rtol=1e-6)
        assert match_columns(b1.C[l], b2.C[l]) < 1e-5


def test_float32_and_float64_agree(data):
    m32 = tiny(0).to(torch.float32)
    m64 = tiny(0)
    b32 = interaction_basis(m32, NODES, data, progress=False)
    b64 = interaction_basis(m64, NODES, data, progress=False)
    for l in range(3):
        assert torch.allclose(b32.Lambda_pca[l], b64.Lambda_pca[l], rtol=1e-4)
        assert torch.allclose(b32.Lambda[l][:4], b64.Lambda[l][:4], rtol=1e-3)
        assert match_columns(b64.C[l][:, :4], b32.C[l][:, :4]) < 1e-3 * float(b64.C[l][:, :4].abs().max())


def test_last_position_gram_data_and_stochastic_sources(model, data):
    """last_pos_from keeps one position after attention; one stochastic source is then exact there (§12 item 4)."""
    kw = dict(last_pos_from="blocks.0.hook_resid_mid", progress=False)
    exact = interaction_basis(model, NODES, data, **kw)
    stoch = interaction_basis(model, NODES, data, n_stochastic_sources=1, **kw)
    for l in (1, 2):
        assert torch.allclose(exact.Lambda[l], stoch.Lambda[l], rtol=1e-9)
    assert exact.dims == (9, 9, 9, 14) and exact.last_position == (False, True, True, True)
    assert torch.allclose(exact.Lambda[0], stoch.Lambda[0], rtol=1e-9)  # layer 0 too: one output position
    big = interaction_basis(model, NODES, data, gram_data=tokens(100, seed=1), **kw)
    assert big.provenance.settings["n_gram_data"] == 100
    assert not torch.allclose(big.Lambda_pca[0], exact.Lambda_pca[0])


def test_save_load_roundtrip(tmp_path, basis):
    import tl_tensorsim as ts

    basis.save(tmp_path / "ib")
    back = ts.load(tmp_path / "ib")
    assert isinstance(back, InteractionBasis) and back.kept == basis.kept and back.dims == basis.dims
    for name in ("C", "C_pinv", "Lambda", "C_pca", "C_pca_pinv", "Lambda_pca", "mean"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(basis, name), getattr(back, name)))
    assert "InteractionBasis(" in repr(back)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(node_layers="blocks.0.hook_resid_pre"), TypeError, "node_layers"),
        (dict(node_layers=["blocks.0.hook_resid_pre"]), ValueError, "at least two"),
        (dict(node_layers=["blocks.0.hook_resid_post", "blocks.0.hook_resid_pre"]), ValueError, "forward order"),
        (dict(node_layers=["output", "blocks.0.hook_resid_pre"]), ValueError, "output"),
        (dict(node_layers=["blocks.0.hook_resid_pr", "output"]), ValueError, "unknown hook name"),
        (dict(last_pos_from="blocks.0.hook_mlp_out"), ValueError, "last_pos_from"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(n_stochastic_sources=0), ValueError, "n_stochastic_sources"),
        (dict(truncation_threshold=-1.0), ValueError, "truncation_threshold"),
        (dict(data=torch.zeros(3, 4)), TypeError, "data"),
        (dict(data=torch.full((3, 4), 99)), ValueError, "data"),
    ],
)
def test_bad_input(model, data, kwargs, error, match):
    kw = {"node_layers": NODES, "data": data, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        interaction_basis(model, **kw)
