"""`HookedTensorNetwork`: a tensor network (linear maps and bilinear MLPs) as a TransformerLens `HookedRootModule`.

    input --embed--> hook_embed --> blocks.0 --> ... --> blocks.{N-1} --unembed--> output
    block l: hook_resid_pre -> mlp (hook_pre_left, hook_pre_right, hook_post) -> hook_mlp_out -> hook_resid_post

Each block's MLP is bilinear, `D[(L x + b_L) ⊙ (R x + b_R)] + b_out`, added to the stream when `residual=True`.
Weights use TransformerLens' layout (`x @ W`): `embed.W_E` `(d_in | d_vocab, d_model)`, `blocks.l.mlp.W_L/W_R`
`(d_stream, d_hidden)`, `blocks.l.mlp.W_out` `(d_hidden, d_stream)`, `unembed.W_U` `(d_stream, d_out)`. `layers()`
gives the same weights as `BilinearLayer` value objects (paper layout `W @ x`). The paper's grokking model is
`TensorNetworkConfig(d_in=226, d_hidden=64, d_out=113, embed=False, down_proj=False)`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

try:  # TransformerLens 3.x exports it at the top level; 2.x only from hook_points
    from transformer_lens import HookedRootModule
except ImportError:  # pragma: no cover
    from transformer_lens.hook_points import HookedRootModule
from transformer_lens.hook_points import HookPoint

from tl_tensorsim.artifacts import DictConfig, load_artifact, register_loader, save_artifact
from tl_tensorsim.models.bilinear import BilinearLayer, LinearLayer, TensorChain, as_linear


@dataclass
class TensorNetworkConfig(DictConfig):
    """Architecture of a `HookedTensorNetwork`.

    Exactly one of `d_in` (continuous input, a `Linear` embed) and `d_vocab` (token input, an embedding table)
    is set. `d_hidden` is one width for every block or one per block. `embed=False` feeds the input straight into
    block 0 (continuous input only; the stream starts `d_in` wide). `down_proj=False` drops each block's `W_out`
    (the block outputs its `d_hidden`-wide product). `d_out=None` returns the last stream without an unembed.
    `bias` adds `b_E`, `b_L`, `b_R`, `b_out`, `b_U`.
    """

    n_layers: int = 1
    d_model: int | None = None
    d_hidden: int | list[int] = 64
    d_in: int | None = None
    d_vocab: int | None = None
    d_out: int | None = None
    residual: bool = False
    bias: bool = False
    embed: bool = True
    down_proj: bool = True
    init_scale: float = 1.0
    seed: int | None = None
    dtype: str = "float32"
    model_name: str = "tensor_network"

    def __post_init__(self) -> None:
        if (self.d_in is None) == (self.d_vocab is None):
            raise ValueError(f"d_in / d_vocab: set exactly one; got d_in={self.d_in}, d_vocab={self.d_vocab}")
        if self.n_layers < 0:
            raise ValueError(f"n_layers: expected >= 0; got {self.n_layers}")
        if not isinstance(self.residual, bool):
            raise TypeError(
                f"residual: expected one bool for the whole network; got {self.residual!r} (hint: per-layer residual "
                "flags are a TensorChain's: tensor_networks.chain_from_layers)"
            )
        if isinstance(self.d_hidden, int):
            self.d_hidden = [self.d_hidden] * self.n_layers
        self.d_hidden = [int(h) for h in self.d_hidden]
        if len(self.d_hidden) != self.n_layers:
            raise ValueError(f"d_hidden: expected one width per layer ({self.n_layers}); got {self.d_hidden}")
        if not self.embed and self.d_vocab is not None:
            raise ValueError("embed: token input (d_vocab) needs an embedding; set embed=True")
        if self.embed and self.d_model is None:
            raise ValueError("d_model: required when embed=True")
        if not hasattr(torch, self.dtype):
            raise ValueError(f"dtype: expected a torch dtype name such as 'float32'; got {self.dtype!r}")
        widths = self.stream_widths()
        if self.residual:
            for i in range(self.n_layers):
                if widths[i] != widths[i + 1]:
                    raise ValueError(
                        f"residual: block {i} maps width {widths[i]} to {widths[i + 1]} (down_proj=False changes the "
                        "width); a residual stream needs equal widths"
                    )

    def stream_widths(self) -> list[int]:
        """Width of the stream before block 0, ..., after block N-1."""
        w = [int(self.d_model if self.embed else self.d_in)]  # type: ignore[arg-type]
        for h in self.d_hidden:  # type: ignore[union-attr]
            w.append(w[-1] if self.down_proj else h)
        return w

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def _uniform(
    shape: tuple[int, ...], fan_in: int, scale: float, dtype: torch.dtype, gen: torch.Generator | None
) -> nn.Parameter:
    bound = scale / math.sqrt(max(1, fan_in))
    return nn.Parameter((torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1) * bound)


class Embed(nn.Module):
    """Token embedding (`W_E[tokens]`) or linear embedding (`x @ W_E + b_E`)."""

    def __init__(self, cfg: TensorNetworkConfig, gen: torch.Generator | None):
        super().__init__()
        self.tokens = cfg.d_vocab is not None
        d_src = int(cfg.d_vocab if self.tokens else cfg.d_in)  # type: ignore[arg-type]
        dt = cfg.torch_dtype
        self.W_E = _uniform((d_src, int(cfg.d_model)), 1 if self.tokens else d_src, cfg.init_scale, dt, gen)  # type: ignore[arg-type]
        self.b_E = nn.Parameter(torch.zeros(int(cfg.d_model), dtype=dt)) if cfg.bias and not self.tokens else None  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        if self.tokens:
            return self.W_E[x]
        y = x @ self.W_E
        return y if self.b_E is None else y + self.b_E


class BilinearMLP(nn.Module):
    """`(x @ W_L + b_L) ⊙ (x @ W_R + b_R)`, then `@ W_out + b_out` (skipped when `down_proj=False`)."""

    def __init__(self, d_stream: int, d_hidden: int, cfg: TensorNetworkConfig, gen: torch.Generator | None):
        super().__init__()
        dt, s = cfg.torch_dtype, cfg.init_scale
        self.W_L = _uniform((d_stream, d_hidden), d_stream, s, dt, gen)
        self.W_R = _uniform((d_stream, d_hidden), d_stream, s, dt, gen)
        self.W_out = _uniform((d_hidden, d_stream), d_hidden, s, dt, gen) if cfg.down_proj else None
        zeros = lambda n: nn.Parameter(torch.zeros(n, dtype=dt)) if cfg.bias else None  # noqa: E731
        self.b_L, self.b_R = zeros(d_hidden), zeros(d_hidden)
        self.b_out = zeros(d_stream if cfg.down_proj else d_hidden)
        self.hook_pre_left = HookPoint()  # [..., d_hidden]
        self.hook_pre_right = HookPoint()  # [..., d_hidden]
        self.hook_post = HookPoint()  # [..., d_hidden]: the product

    def forward(self, x: Tensor) -> Tensor:
        left, right = x @ self.W_L, x @ self.W_R
        if self.b_L is not None:
            left, right = left + self.b_L, right + self.b_R
        post = self.hook_post(self.hook_pre_left(left) * self.hook_pre_right(right))
        out = post if self.W_out is None else post @ self.W_out
        return out if self.b_out is None else out + self.b_out

    def as_bilinear(self) -> BilinearLayer:
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        return BilinearLayer(
            self.W_L.detach().T,
            self.W_R.detach().T,
            None if self.W_out is None else self.W_out.detach().T,
            d(self.b_L),
            d(self.b_R),
            d(self.b_out),
        )


class TensorBlock(nn.Module):
    def __init__(self, d_stream: int, d_hidden: int, cfg: TensorNetworkConfig, gen: torch.Generator | None):
        super().__init__()
        self.residual = cfg.residual
        self.hook_resid_pre = HookPoint()
        self.mlp = BilinearMLP(d_stream, d_hidden, cfg, gen)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        out = self.hook_mlp_out(self.mlp(x))
        return self.hook_resid_post(x + out if self.residual else out)


class Unembed(nn.Module):
    def __init__(self, d_stream: int, cfg: TensorNetworkConfig, gen: torch.Generator | None):
        super().__init__()
        dt = cfg.torch_dtype
        self.W_U = _uniform((d_stream, int(cfg.d_out)), d_stream, cfg.init_scale, dt, gen)  # type: ignore[arg-type]
        self.b_U = nn.Parameter(torch.zeros(int(cfg.d_out), dtype=dt)) if cfg.bias else None  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.W_U
        return y if self.b_U is None else y + self.b_U


class HookedTensorNetwork(HookedRootModule):
    """A polynomial network with TransformerLens hook points; `run_with_hooks`, `run_with_cache` and `hooks()`
    work as on a `HookedTransformer`. Build it from a `TensorNetworkConfig` (random init, trainable with plain
    torch) or from weights with `from_layers`. `tensor_similarity` compares two of them exactly."""

    def __init__(self, cfg: TensorNetworkConfig | dict[str, Any]):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = TensorNetworkConfig.from_dict(cfg)
        if not isinstance(cfg, TensorNetworkConfig):
            raise TypeError(f"cfg: expected a TensorNetworkConfig or dict; got {type(cfg).__name__}")
        self.cfg = cfg
        gen = None
        if cfg.seed is not None:
            gen = torch.Generator().manual_seed(int(cfg.seed))
        widths = cfg.stream_widths()
        self.embed = Embed(cfg, gen) if cfg.embed else None
        self.hook_embed = HookPoint()  # [..., d_stream]
        self.blocks = nn.ModuleList(TensorBlock(widths[i], h, cfg, gen) for i, h in enumerate(cfg.d_hidden))  # type: ignore[arg-type]
        self.unembed = Unembed(widths[-1], cfg, gen) if cfg.d_out is not None else None
        self.setup()

    def forward(
        self, input: Float[Tensor, "... d_in"] | Int[Tensor, "..."], stop_at_layer: int | None = None
    ) -> Float[Tensor, "... d_out"]:
        """Run the network on `[..., d_in]` floats (or token ids when built with `d_vocab`); with
        `stop_at_layer=l`, return the stream entering block l."""
        if self.cfg.d_vocab is None:
            if not torch.is_floating_point(input) or input.shape[-1] != self.cfg.d_in:
                raise ValueError(
                    f"input: expected a float tensor [..., d_in={self.cfg.d_in}]; got {input.dtype} {tuple(input.shape)}"
                )
        elif torch.is_floating_point(input):
            raise ValueError(f"input: expected token ids (an integer tensor) for d_vocab={self.cfg.d_vocab}")
        x = self.hook_embed(self.embed(input) if self.embed is not None else input)
        for i, block in enumerate(self.blocks):
            if stop_at_layer is not None and i >= stop_at_layer:
                return x
            x = block(x)
        return x if self.unembed is None or stop_at_layer is not None else self.unembed(x)

    # ------------------------------------------------------------------ views
    def layers(self) -> list[BilinearLayer]:
        """Each block's MLP as a `BilinearLayer` (detached, paper layout)."""
        return [block.mlp.as_bilinear() for block in self.blocks]

    def to_chain(self) -> TensorChain:
        """The network as a `TensorChain` (detached weights), the normal form of the similarity functions."""
        embed = None
        if self.embed is not None:
            b = self.embed.b_E
            embed = LinearLayer(self.embed.W_E.detach().T, None if b is None else b.detach())
        unembed = None
        if self.unembed is not None:
            b = self.unembed.b_U
            unembed = LinearLayer(self.unembed.W_U.detach().T, None if b is None else b.detach())
        return TensorChain(
            tuple(self.layers()), (self.cfg.residual,) * self.cfg.n_layers, embed, unembed, name=self.cfg.model_name
        )

    @classmethod
    def from_layers(
        cls,
        embed: LinearLayer | nn.Linear | Tensor | None,
        layers: Sequence[BilinearLayer] | BilinearLayer,
        unembed: LinearLayer | nn.Linear | Tensor | None,
        residual: bool = False,
        tokens: bool = False,
        model_name: str = "tensor_network",
    ) -> HookedTensorNetwork:
        """A network holding copies of the given weights (paper layout: tensors are `(d_out, d_in)`, acting as
        `W @ x`). `embed`/`unembed` None mean none; `tokens=True` treats the embed's input as a vocabulary.
        Layers must all have `D` or all lack it (`down_proj`); missing biases become zeros when any is present."""
        if isinstance(layers, BilinearLayer):
            layers = [layers]
        layers = list(layers)
        emb, unemb = as_linear(embed, "embed"), as_linear(unembed, "unembed")
        chain = TensorChain(tuple(layers), (residual,) * len(layers), emb, unemb)  # validates the shapes
        has_d = {layer.D is not None for layer in layers}
        if len(has_d) > 1:
            raise ValueError("layers: either every layer has D or none does (down_proj is one flag per network)")
        if tokens and emb is None:
            raise ValueError("tokens: token input needs an embed")
        bias = any(layer.has_bias for layer in layers) or any(m is not None and m.b is not None for m in (emb, unemb))
        if tokens and emb is not None and emb.b is not None:
            raise ValueError("embed: a token embedding has no bias")
        ref = chain.layers[0].L if layers else (emb or unemb).W  # type: ignore[union-attr]
        cfg = TensorNetworkConfig(
            n_layers=len(layers),
            d_model=emb.d_out if emb is not None else None,
            d_hidden=[layer.d_hidden for layer in layers],
            d_in=None if tokens else chain.d_in,
            d_vocab=chain.d_in if tokens else None,
            d_out=unemb.d_out if unemb is not None else None,
            residual=residual,
            bias=bias,
            embed=emb is not None,
            down_proj=(True in has_d) if layers else True,
            dtype=str(ref.dtype).replace("torch.", ""),
            model_name=model_name,
        )
        net = cls(cfg).to(ref.device)
        with torch.no_grad():  # biases start at zero; copy the ones given
            if emb is not None:
                net.embed.W_E.copy_(emb.W.T)  # type: ignore[union-attr]
                if emb.b is not None:
                    net.embed.b_E.copy_(emb.b)  # type: ignore[union-attr]
            for block, layer in zip(net.blocks, layers):
                mlp = block.mlp
                mlp.W_L.copy_(layer.L.T)
                mlp.W_R.copy_(layer.R.T)
                if layer.D is not None:
                    mlp.W_out.copy_(layer.D.T)
                for name, value in (("b_L", layer.b_left), ("b_R", layer.b_right), ("b_out", layer.b_out)):
                    if value is not None:
                        getattr(mlp, name).copy_(value)
            if unemb is not None:
                net.unembed.W_U.copy_(unemb.W.T)  # type: ignore[union-attr]
                if unemb.b is not None:
                    net.unembed.b_U.copy_(unemb.b)  # type: ignore[union-attr]
        return net

    # ------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Weights as safetensors + the config as JSON (through `tl_tensorsim.artifacts`)."""
        return save_artifact(
            directory, dict(self.state_dict()), {"cfg": self.cfg.to_dict()}, kind="HookedTensorNetwork"
        )

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> HookedTensorNetwork:
        tensors, config = load_artifact(directory, kind="HookedTensorNetwork")
        net = cls(TensorNetworkConfig.from_dict(config["cfg"]))
        net.load_state_dict(tensors)
        return net.to(device) if device is not None else net

    def __repr__(self) -> str:
        c = self.cfg
        src = f"d_vocab={c.d_vocab}" if c.d_vocab is not None else f"d_in={c.d_in}"
        return (
            f"HookedTensorNetwork({c.model_name!r}: {src}, widths={c.stream_widths()}, d_hidden={c.d_hidden}, "
            f"d_out={c.d_out}, residual={c.residual}, bias={c.bias})"
        )


register_loader(lambda kind: HookedTensorNetwork.load if kind == "HookedTensorNetwork" else None)


def bilinear_classifier(d_in: int, d_hidden: int, d_out: int, seed: int | None, name: str) -> HookedTensorNetwork:
    """Bilinear(d_in -> d_hidden) then Linear(d_hidden -> d_out): one layer, no embed, no down projection, no bias
    (the paper's grokking and backdoor models), `f(x) = W_U [(W_L x) ⊙ (W_R x)]`, initialised from `seed`."""
    cfg = TensorNetworkConfig(
        d_in=d_in, d_hidden=d_hidden, d_out=d_out, seed=seed, model_name=name, n_layers=1, embed=False, down_proj=False
    )
    return HookedTensorNetwork(cfg)


def save_network(run: Any, directory: str | os.PathLike) -> Path:
    """A registry `save` for a trained network: `run.model.save(directory)` (a `TrainingRun` of one network)."""
    return run.model.save(directory)


def load_network(directory: str | os.PathLike, device: torch.device | str | None = None) -> HookedTensorNetwork:
    """A registry `load`: the network `save_network` wrote, in eval mode."""
    return HookedTensorNetwork.load(directory, device=device).eval()
