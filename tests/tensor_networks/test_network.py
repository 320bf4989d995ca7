"""HookedTensorNetwork: hooks, construction from weights, config round trip, save/load, training."""

from __future__ import annotations

import pytest
import torch

from tests.tensor_networks.helpers import random_layer, random_net
from tl_tensorsim.tensor_networks import (
    BilinearLayer,
    HookedTensorNetwork,
    LinearLayer,
    TensorNetworkConfig,
    tensor_similarity,
)


def test_hooks_and_cache():
    net = random_net(0, n_layers=2, residual=True, bias=True)
    x = torch.randn(5, 4, dtype=torch.float64)
    out, cache = net.run_with_cache(x)
    for name in [
        "hook_embed",
        "blocks.1.mlp.hook_pre_left",
        "blocks.1.mlp.hook_pre_right",
        "blocks.1.mlp.hook_post",
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_mlp_out",
        "blocks.1.hook_resid_post",
    ]:
        assert name in cache
    post = cache["blocks.1.mlp.hook_pre_left"] * cache["blocks.1.mlp.hook_pre_right"]
    assert torch.allclose(post, cache["blocks.1.mlp.hook_post"])
    ablated = net.run_with_hooks(x, fwd_hooks=[("blocks.1.mlp.hook_post", lambda t, hook: torch.zeros_like(t))])
    expect = net.unembed(cache["blocks.1.hook_resid_pre"] + net.blocks[1].mlp.b_out)
    assert torch.allclose(ablated, expect)
    with net.hooks(fwd_hooks=[("hook_embed", lambda t, hook: 2 * t)]):
        assert not torch.allclose(net(x), out)
    assert torch.allclose(net(x), out)
    assert torch.allclose(net(x, stop_at_layer=1), cache["blocks.1.hook_resid_pre"])


def test_from_layers_round_trip_and_forward():
    la, lb = (
        random_layer(d_in=3, h=4, d_out=3, seed=0, bias=True),
        random_layer(d_in=3, h=2, d_out=3, seed=1, bias=True),
    )
    E = LinearLayer(torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    U = torch.nn.Linear(3, 2, dtype=torch.float64)
    net = HookedTensorNetwork.from_layers(E, [la, lb], U, residual=True)
    assert net.cfg.d_hidden == [4, 2] and net.cfg.bias and net.cfg.residual
    x = torch.randn(6, 5, dtype=torch.float64)
    h = E(x)
    h = h + la(h)
    h = h + lb(h)
    assert torch.allclose(net(x), U(h))
    assert torch.allclose(net.to_chain()(x), net(x))
    back = net.layers()[0]
    assert torch.equal(back.L, la.L) and torch.equal(back.D, la.D) and torch.equal(back.b_left, la.b_left)


def test_paper_model_shape_and_tokens():
    # Bilinear(226 -> 64) then Linear(64 -> 113): no embed, no down projection, no bias
    cfg = TensorNetworkConfig(d_in=226, d_hidden=64, n_layers=1, d_out=113, embed=False, down_proj=False)
    net = HookedTensorNetwork(cfg)
    assert net(torch.randn(2, 226)).shape == (2, 113)
    assert sum(p.numel() for p in net.parameters()) == 2 * 64 * 226 + 64 * 113
    tok = HookedTensorNetwork(TensorNetworkConfig(d_vocab=7, d_model=4, d_hidden=3, n_layers=1, d_out=7))
    assert tok(torch.tensor([[1, 2, 3]])).shape == (1, 3, 7)
    with pytest.raises(ValueError, match="token ids"):
        tok(torch.randn(3, 4))
    with pytest.raises(ValueError, match="exactly one"):
        TensorNetworkConfig(d_in=3, d_vocab=4, d_model=2)
    with pytest.raises(ValueError, match="residual"):
        TensorNetworkConfig(d_in=3, d_hidden=5, embed=False, down_proj=False, residual=True)


def test_config_dict_and_save_load(tmp_path):
    net = random_net(3, n_layers=2, residual=True, bias=True)
    cfg2 = TensorNetworkConfig.from_dict(net.cfg.to_dict())
    assert cfg2 == net.cfg
    net.save(tmp_path / "net")
    back = HookedTensorNetwork.load(tmp_path / "net")
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(back(x), net(x))
    assert float(tensor_similarity(net, back)) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"unknown TensorNetworkConfig fields \['d_mlp'\]; expected a subset of"):
        TensorNetworkConfig.from_dict({**net.cfg.to_dict(), "d_mlp": 3})


def test_trainable_with_plain_torch():
    torch.manual_seed(0)
    net = HookedTensorNetwork(
        TensorNetworkConfig(d_in=4, d_model=8, d_hidden=8, n_layers=2, d_out=1, residual=True, bias=True, seed=0)
    )
    x = torch.randn(256, 4)
    y = (x[:, :1] * x[:, 1:2]) + x[:, 2:3]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        loss = ((net(x) - y) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_value_object_checks():
    with pytest.raises(ValueError, match="R: expected the shape of L"):
        BilinearLayer(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="D: expected"):
        BilinearLayer(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="b_out"):
        BilinearLayer(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, 3), b_out=torch.zeros(3))
    # padded factors reproduce the forward pass: [1; f(x)] = D~ ((L~ u) * (R~ u)), u = [1; x]
    lay = random_layer(d_in=4, h=3, d_out=4, seed=2, bias=True)
    Lp, Rp, Dp = lay.padded(residual=True)
    x = torch.randn(4, dtype=torch.float64)
    u = torch.cat([torch.ones(1, dtype=torch.float64), x])
    y = Dp @ ((Lp @ u) * (Rp @ u))
    assert torch.allclose(y, torch.cat([torch.ones(1, dtype=torch.float64), x + lay(x)]))


def test_value_objects_print_shapes_not_tensors():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    layer = BilinearLayer(r(4, 5), r(4, 5), r(3, 4), b_out=r(3))
    assert repr(layer) == "BilinearLayer(5 -> 4 hidden -> 3: L, R (4, 5), D (3, 4), biases out, float64)"
    assert (
        repr(BilinearLayer(r(4, 5), r(4, 5))) == "BilinearLayer(5 -> 4 hidden -> 4: L, R (4, 5), D = identity, float64)"
    )
    assert repr(LinearLayer(r(3, 2), r(3))) == "LinearLayer(2 -> 3, bias, float64)"
    net = HookedTensorNetwork(
        TensorNetworkConfig(d_in=6, d_model=4, d_hidden=8, n_layers=2, d_out=3, residual=True, dtype="float64")
    )
    text = repr(net.to_chain())
    assert "depth 2: 6 -> embed 4 -> bilinear (residual) 4 -> bilinear (residual) 4 -> unembed 3, float64" in text
    for obj in (layer, net.to_chain()):
        assert "tensor(" not in repr(obj) and "\n" not in repr(obj) and str(obj) == repr(obj)


def test_residual_is_one_flag_per_network():
    from tl_tensorsim.models.tensor_network import TensorNetworkConfig

    with pytest.raises(TypeError, match=r"residual: expected one bool for the whole network; got \[True, False\]"):
        TensorNetworkConfig(d_in=4, d_model=4, d_hidden=4, n_layers=2, d_out=2, residual=[True, False])
