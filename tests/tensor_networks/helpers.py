"""Small random tensor networks (float64) and the reparametrisations the invariance tests apply."""

from __future__ import annotations

import torch

from tl_tensorsim.tensor_networks import BilinearLayer, HookedTensorNetwork, LinearLayer, TensorNetworkConfig


def random_net(seed: int = 0, *, randomize_bias: bool = True, **kw) -> HookedTensorNetwork:
    """A float64 network; biases (zero at init) are randomised so that they matter."""
    cfg = dict(
        d_in=4, d_model=3, d_hidden=3, n_layers=2, d_out=2, residual=False, bias=False, seed=seed, dtype="float64"
    )
    cfg.update(kw)
    net = HookedTensorNetwork(TensorNetworkConfig(**cfg))
    if randomize_bias:
        g = torch.Generator().manual_seed(1000 + seed)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if ".b_" in name or name.startswith("b_") or "b_E" in name or "b_U" in name:
                    p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def random_layer(d_in=5, h=4, d_out=3, seed=0, bias=False, D=True) -> BilinearLayer:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return BilinearLayer(
        r(h, d_in),
        r(h, d_in),
        r(d_out, h) if D else None,
        r(h) if bias else None,
        r(h) if bias else None,
        r(d_out if D else h) if bias else None,
    )


def permute_hidden(layer: BilinearLayer, perm: torch.Tensor) -> BilinearLayer:
    p = lambda v: None if v is None else v[perm]  # noqa: E731
    D = layer.D_matrix()[:, perm]
    return BilinearLayer(layer.L[perm], layer.R[perm], D, p(layer.b_left), p(layer.b_right), layer.b_out)


def rescale_hidden(layer: BilinearLayer, alpha: torch.Tensor, beta: torch.Tensor) -> BilinearLayer:
    """`L_h -> α L_h, R_h -> β R_h, D_:h -> D_:h / (αβ)` (biases of each side scaled with it)."""
    s = lambda v, c: None if v is None else v * c  # noqa: E731
    D = layer.D_matrix() / (alpha * beta)[None, :]
    return BilinearLayer(
        layer.L * alpha[:, None],
        layer.R * beta[:, None],
        D,
        s(layer.b_left, alpha),
        s(layer.b_right, beta),
        layer.b_out,
    )


def swap_left_right(layer: BilinearLayer, mask: torch.Tensor) -> BilinearLayer:
    """Swap L and R (and their biases) for the units where `mask` is True."""
    m = mask[:, None]
    L = torch.where(m, layer.R, layer.L)
    R = torch.where(m, layer.L, layer.R)
    bl, br = layer.b_left, layer.b_right
    if bl is not None:
        bl, br = torch.where(mask, layer.b_right, layer.b_left), torch.where(mask, layer.b_left, layer.b_right)
    return BilinearLayer(L, R, layer.D, bl, br, layer.b_out)


def change_stream_basis(net: HookedTensorNetwork, A: torch.Tensor) -> HookedTensorNetwork:
    """The same function with every stream (residual / between-layer) space in basis `x -> A x`."""
    ch = net.to_chain()
    Ainv = torch.linalg.inv(A)
    e = ch.embed
    embed = LinearLayer(A @ e.W, None if e.b is None else A @ e.b)
    layers = []
    for layer in ch.layers:
        layers.append(
            BilinearLayer(
                layer.L @ Ainv,
                layer.R @ Ainv,
                A @ layer.D_matrix(),
                layer.b_left,
                layer.b_right,
                None if layer.b_out is None else A @ layer.b_out,
            )
        )
    u = ch.unembed
    unembed = LinearLayer(u.W @ Ainv, u.b)
    return HookedTensorNetwork.from_layers(embed, layers, unembed, residual=net.cfg.residual)
