"""Float64 model fixtures and brute-force (materialised) circuits for the similarity tests: HookedTransformers
where TransformerLens has them, native TransformerBridges otherwise (4.x), so that the suite runs on either."""

from __future__ import annotations

import warnings

import pytest
import torch

import tl_tensorsim as ts
from tests.conftest import HAS_HOOKED_TRANSFORMER

CFG = dict(n_layers=2, d_model=24, n_ctx=6, d_head=6, n_heads=3, d_mlp=32, d_vocab=40, act_fn="gelu_new")


def f64_model(seed: int = 0, **overrides):
    """A random float64 model (2 layers x 3 heads) with non-trivial biases and LayerNorm: a HookedTransformer, or a
    native TransformerBridge where TransformerLens has no HookedTransformer (its weights cast to float64)."""
    torch.manual_seed(seed)
    backend = "hooked" if HAS_HOOKED_TRANSFORMER else "bridge"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = ts.ModelView.build({**CFG, **overrides, "seed": seed, "dtype": torch.float64}, backend=backend)
        view.model.to(torch.float64)
    state = view.refresh().state_dict()
    gen = torch.Generator().manual_seed(seed + 100)
    for name in sorted(state):
        if name.endswith(("b_Q", "b_K", "b_V", "b_O")) or ".ln" in name:
            state[name] = state[name] + 0.1 * torch.randn(state[name].shape, generator=gen, dtype=torch.float64)
    return view.load_state_dict(state).model.eval()


def with_weights(model, **weights):
    """A deep copy of `model` with stacked weights replaced (`W_Q=[L,H,d,r]`, `W_E=[V,d]`, ...), either class."""
    keys = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U"}
    view = ts.as_view(model).copy()
    state = view.state_dict()
    for name, w in weights.items():
        if name in keys:
            state[keys[name]] = w
        else:
            part = "mlp" if name in ("W_in", "W_out", "b_out") else "attn"
            for layer in range(view.cfg.n_layers):
                state[f"blocks.{layer}.{part}.{name}"] = w[layer]
    return view.load_state_dict(state).model


def circuits(model, circuit: str, level: str, n_pos: int | None = None) -> torch.Tensor:
    """Materialised circuits, one flattened matrix per head: `[n_heads, rows * cols]` (float64)."""
    v = ts.as_view(model)
    M = (v.QK if circuit == "QK" else v.OV).AB.flatten(0, 1).double()
    if level == "token":
        X = v.W_E.double()
        if n_pos:
            X = (v.W_E[:, None, :] + v.W_pos[None, :n_pos, :]).double().reshape(-1, v.cfg.d_model)
        M = X @ M @ (X.T if circuit == "QK" else v.W_U.double())
    return M.flatten(1)


def brute_cosine(Ma: torch.Tensor, Mb: torch.Tensor) -> torch.Tensor:
    return (Ma @ Mb.T) / (Ma.norm(dim=1)[:, None] * Mb.norm(dim=1)[None, :])


def random_invertible(n: int, gen: torch.Generator) -> torch.Tensor:
    """Well-conditioned but far from orthogonal: QR rotation times log-uniform singular values in [0.3, 3]."""
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-1.2, 1.1, generator=gen))
    return q1 @ torch.diag(s) @ q2


def gauge(model, seed: int = 0):
    """Per-head GL(d_head) gauge: W_Q -> W_Q G, W_K -> W_K G^-T (and biases); W_V -> W_V G', W_O -> G'^-1 W_O."""
    v = ts.as_view(model)
    gen = torch.Generator().manual_seed(seed)
    L, H, r = v.cfg.n_layers, v.cfg.n_heads, v.cfg.d_head
    Gq = torch.stack([torch.stack([random_invertible(r, gen) for _ in range(H)]) for _ in range(L)])
    Gv = torch.stack([torch.stack([random_invertible(r, gen) for _ in range(H)]) for _ in range(L)])
    Gq_invT, Gv_inv = torch.linalg.inv(Gq).transpose(-1, -2), torch.linalg.inv(Gv)
    return with_weights(
        model,
        W_Q=v.W_Q @ Gq,
        b_Q=(v.b_Q[..., None, :] @ Gq)[..., 0, :],
        W_K=v.W_K @ Gq_invT,
        b_K=(v.b_K[..., None, :] @ Gq_invT)[..., 0, :],
        W_V=v.W_V @ Gv,
        b_V=(v.b_V[..., None, :] @ Gv)[..., 0, :],
        W_O=Gv_inv @ v.W_O,
    )


@pytest.fixture(scope="module")
def pair64():
    return f64_model(0), f64_model(1)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, CFG["d_vocab"], (4, CFG["n_ctx"]), generator=torch.Generator().manual_seed(7))


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny matrices: one thread avoids OpenMP barrier stalls on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
