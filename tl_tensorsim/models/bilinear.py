"""Value objects for tensor networks: `LinearLayer`, `BilinearLayer`, and `TensorChain` (a whole network).

Layout is the paper's (arXiv 2605.15183, §2.1), which is also torch's `nn.Linear` layout: a map acts as
`W @ x`, so `LinearLayer.W` is `(d_out, d_in)`, and a bilinear layer is

    f(x) = D [(L x + b_left) ⊙ (R x + b_right)] + b_out,   L, R: (d_hidden, d_in),  D: (d_out, d_hidden).

`D=None` means the identity (the layer outputs its hidden product, as in the paper's grokking and backdoor
models, "Bilinear(226 -> 64) then Linear(64 -> 113)"). Every output is a quadratic form in the padded input
`[1; x]`; `interaction_tensor()` materialises it (for small layers and tests), `padded()` gives the factors the
Gram recursion uses (`inner.py`).

A `TensorChain` is the normal form every analysis works on: optional linear embed, bilinear layers (each
optionally residual, `x + f(x)`), optional linear unembed. `HookedTensorNetwork`, a bare `BilinearLayer` and an
MLP extracted from a `HookedTransformer` all become one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Float
from torch import Tensor


def _check_matrix(name: str, m: Tensor) -> None:
    if not isinstance(m, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor; got {type(m).__name__}")
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a matrix (2 dims); got shape {tuple(m.shape)}")


def _check_vector(name: str, v: Tensor | None, size: int) -> None:
    if v is None:
        return
    if not isinstance(v, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None; got {type(v).__name__}")
    if tuple(v.shape) != (size,):
        raise ValueError(f"{name}: expected shape ({size},); got {tuple(v.shape)}")


def _cast(t: Tensor | None, dtype: torch.dtype | None, device: torch.device | str | None) -> Tensor | None:
    return None if t is None else t.detach().to(device=device, dtype=dtype)


def _where(t: Tensor) -> str:
    """`float64` or `float32, cuda:0`: the dtype, and the device when it is not the CPU."""
    dtype = str(t.dtype).removeprefix("torch.")
    return dtype if t.device.type == "cpu" else f"{dtype}, {t.device}"


@dataclass(frozen=True)
class LinearLayer:
    """An affine map `x -> W x + b`; `W`: `(d_out, d_in)` (nn.Linear layout), `b`: `(d_out,)` or None."""

    W: Float[Tensor, "d_out d_in"]
    b: Float[Tensor, " d_out"] | None = None

    def __post_init__(self) -> None:
        _check_matrix("W", self.W)
        _check_vector("b", self.b, self.W.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W.shape[0])

    def __call__(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        y = x @ self.W.T
        return y if self.b is None else y + self.b

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> LinearLayer:
        return LinearLayer(_cast(self.W, dtype, device), _cast(self.b, dtype, device))

    def __repr__(self) -> str:
        bias = ", bias" if self.b is not None else ""
        return f"LinearLayer({self.d_in} -> {self.d_out}{bias}, {_where(self.W)})"

    def padded(self) -> Float[Tensor, "d_out_plus_1 d_in_plus_1"]:
        """`[[1, 0], [b, W]]`: maps `[1; x]` to `[1; W x + b]`."""
        W = self.W
        M = W.new_zeros(self.d_out + 1, self.d_in + 1)
        M[0, 0] = 1
        M[1:, 1:] = W
        if self.b is not None:
            M[1:, 0] = self.b
        return M


@dataclass(frozen=True)
class BilinearLayer:
    """A bilinear layer `f(x) = D [(L x + b_left) ⊙ (R x + b_right)] + b_out` (paper §2.1).

    Shapes: `L, R` `(d_hidden, d_in)`; `D` `(d_out, d_hidden)` or None for the identity; biases are vectors
    or None (zero). Its interaction tensor is `B[o, i, j] = Σ_h D[o, h] L[h, i] R[h, j]`, so that without
    biases `f(x)_o = xᵀ B_o x`.
    """

    L: Float[Tensor, "d_hidden d_in"]
    R: Float[Tensor, "d_hidden d_in"]
    D: Float[Tensor, "d_out d_hidden"] | None = None
    b_left: Float[Tensor, " d_hidden"] | None = None
    b_right: Float[Tensor, " d_hidden"] | None = None
    b_out: Float[Tensor, " d_out"] | None = None

    def __post_init__(self) -> None:
        _check_matrix("L", self.L)
        _check_matrix("R", self.R)
        if self.L.shape != self.R.shape:
            raise ValueError(f"R: expected the shape of L {tuple(self.L.shape)}; got {tuple(self.R.shape)}")
        if self.D is not None:
            _check_matrix("D", self.D)
            if self.D.shape[1] != self.L.shape[0]:
                raise ValueError(
                    f"D: expected (d_out, d_hidden={self.L.shape[0]}) to match L; got {tuple(self.D.shape)}"
                )
        _check_vector("b_left", self.b_left, self.d_hidden)
        _check_vector("b_right", self.b_right, self.d_hidden)
        _check_vector("b_out", self.b_out, self.d_out)

    # ------------------------------------------------------------------ shape
    @property
    def d_in(self) -> int:
        return int(self.L.shape[1])

    @property
    def d_hidden(self) -> int:
        return int(self.L.shape[0])

    @property
    def d_out(self) -> int:
        return self.d_hidden if self.D is None else int(self.D.shape[0])

    @property
    def has_bias(self) -> bool:
        return any(b is not None for b in (self.b_left, self.b_right, self.b_out))

    @property
    def dtype(self) -> torch.dtype:
        return self.L.dtype

    @property
    def device(self) -> torch.device:
        return self.L.device

    def D_matrix(self) -> Float[Tensor, "d_out d_hidden"]:
        """`D`, or the identity when the layer has none."""
        if self.D is not None:
            return self.D
        return torch.eye(self.d_hidden, dtype=self.L.dtype, device=self.L.device)

    # ---------------------------------------------------------------- forward
    def hidden(
        self, x: Float[Tensor, "... d_in"]
    ) -> tuple[Float[Tensor, "... d_hidden"], Float[Tensor, "... d_hidden"]]:
        """The two pre-activations `(L x + b_left, R x + b_right)`."""
        left, right = x @ self.L.T, x @ self.R.T
        if self.b_left is not None:
            left = left + self.b_left
        if self.b_right is not None:
            right = right + self.b_right
        return left, right

    def __call__(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        left, right = self.hidden(x)
        y = left * right
        if self.D is not None:
            y = y @ self.D.T
        return y if self.b_out is None else y + self.b_out

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> BilinearLayer:
        return BilinearLayer(
            *(_cast(t, dtype, device) for t in (self.L, self.R, self.D, self.b_left, self.b_right, self.b_out))
        )

    def __repr__(self) -> str:
        down = f"D {tuple(self.D.shape)}" if self.D is not None else "D = identity"
        named = (("left", self.b_left), ("right", self.b_right), ("out", self.b_out))
        biases = [name for name, b in named if b is not None]
        bias = f", biases {'/'.join(biases)}" if biases else ""
        return (
            f"BilinearLayer({self.d_in} -> {self.d_hidden} hidden -> {self.d_out}: L, R {tuple(self.L.shape)}, "
            f"{down}{bias}, {_where(self.L)})"
        )

    # ---------------------------------------------------------------- tensors
    def interaction_tensor(self, symmetric: bool = True) -> Float[Tensor, "d_out d_in d_in"]:
        """Materialised `B[o, i, j] = Σ_h D[o,h] L[h,i] R[h,j]` (biases ignored), symmetrised over `(i, j)`
        (`B_o -> (B_o + B_oᵀ)/2`, paper §2.2(A)) unless `symmetric=False`. Size `d_out · d_in²`: small layers only."""
        B = torch.einsum("oh,hi,hj->oij", self.D_matrix(), self.L, self.R)
        return 0.5 * (B + B.transpose(1, 2)) if symmetric else B

    def padded(self, residual: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Factors `(L̃, R̃, D̃)` of the layer acting on the padded input `[1; x]` and producing `[1; y]`.

        Hidden units, in order: one constant unit (`L̃ = R̃ = e_0`, so its product is 1; its `D̃` column is
        `[1; b_out]`), then, with `residual=True`, one unit per input coordinate (`L̃ = e_i`, `R̃ = e_0`: the
        product is `x_i`, written to output `i`), then the layer's own units (`L̃ = [b_left, L]`,
        `R̃ = [b_right, R]`, `D̃ = [0; D]`). Shapes `(H, 1 + d_in)`, `(H, 1 + d_in)`, `(1 + d_out, H)` with
        `H = 1 + d_hidden (+ d_in)`.
        """
        d_in, h, d_out = self.d_in, self.d_hidden, self.d_out
        if residual and d_out != d_in:
            raise ValueError(f"residual: a residual layer needs d_out == d_in; got d_in={d_in}, d_out={d_out}")
        n_res = d_in if residual else 0
        H = 1 + n_res + h
        Lp = self.L.new_zeros(H, d_in + 1)
        Rp = self.L.new_zeros(H, d_in + 1)
        Dp = self.L.new_zeros(d_out + 1, H)
        Lp[0, 0] = Rp[0, 0] = Dp[0, 0] = 1
        if self.b_out is not None:
            Dp[1:, 0] = self.b_out
        if residual:
            idx = torch.arange(n_res, device=self.L.device)
            Lp[1 + idx, 1 + idx] = 1
            Rp[1 : 1 + n_res, 0] = 1
            Dp[1 + idx, 1 + idx] = 1
        s = 1 + n_res
        Lp[s:, 1:] = self.L
        Rp[s:, 1:] = self.R
        if self.b_left is not None:
            Lp[s:, 0] = self.b_left
        if self.b_right is not None:
            Rp[s:, 0] = self.b_right
        Dp[1:, s:] = self.D_matrix()
        return Lp, Rp, Dp


@dataclass(frozen=True)
class TensorChain:
    """A whole tensor network: `unembed ∘ layer_N ∘ ... ∘ layer_1 ∘ embed`, each layer `x + f(x)` when its
    `residual` flag is set. `embed`/`unembed` None means the identity."""

    layers: tuple[BilinearLayer, ...]
    residual: tuple[bool, ...] = ()
    embed: LinearLayer | None = None
    unembed: LinearLayer | None = None
    name: str = field(default="tensor network", compare=False)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        res = tuple(bool(r) for r in self.residual) or (False,) * len(layers)
        if len(res) != len(layers):
            raise ValueError(f"residual: expected {len(layers)} flags (one per layer); got {len(res)}")
        object.__setattr__(self, "residual", res)
        width = self.embed.d_out if self.embed is not None else (layers[0].d_in if layers else None)
        for i, (layer, r) in enumerate(zip(layers, res)):
            if not isinstance(layer, BilinearLayer):
                raise TypeError(f"layers[{i}]: expected a BilinearLayer; got {type(layer).__name__}")
            if width is not None and layer.d_in != width:
                raise ValueError(f"layers[{i}]: expected d_in={width} (the width before it); got {layer.d_in}")
            if r and layer.d_out != layer.d_in:
                raise ValueError(
                    f"layers[{i}]: a residual layer needs d_out == d_in; got {layer.d_in} -> {layer.d_out}"
                )
            width = layer.d_out
        if self.unembed is not None and width is not None and self.unembed.d_in != width:
            raise ValueError(f"unembed: expected d_in={width}; got {self.unembed.d_in}")
        if self.embed is None and not layers and self.unembed is None:
            raise ValueError("TensorChain: needs at least one of embed, layers, unembed")

    @property
    def depth(self) -> int:
        """Number of bilinear layers N; the network's coefficient tensor has order 2^N + 1."""
        return len(self.layers)

    @property
    def d_in(self) -> int:
        if self.embed is not None:
            return self.embed.d_in
        return self.layers[0].d_in if self.layers else self.unembed.d_in  # type: ignore[union-attr]

    @property
    def d_out(self) -> int:
        if self.unembed is not None:
            return self.unembed.d_out
        return self.layers[-1].d_out if self.layers else self.embed.d_out  # type: ignore[union-attr]

    @property
    def dtype(self) -> torch.dtype:
        part = self.embed or (self.layers[0] if self.layers else self.unembed)
        return part.W.dtype if isinstance(part, LinearLayer) else part.L.dtype  # type: ignore[union-attr]

    @property
    def device(self) -> torch.device:
        part = self.embed or (self.layers[0] if self.layers else self.unembed)
        return part.W.device if isinstance(part, LinearLayer) else part.L.device  # type: ignore[union-attr]

    def __call__(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        if self.embed is not None:
            x = self.embed(x)
        for layer, r in zip(self.layers, self.residual):
            x = x + layer(x) if r else layer(x)
        return x if self.unembed is None else self.unembed(x)

    def __repr__(self) -> str:
        steps = [str(self.d_in)] + ([f"embed {self.embed.d_out}"] if self.embed is not None else [])
        layers = [f"bilinear{' (residual)' if r else ''} {layer.d_out}" for layer, r in zip(self.layers, self.residual)]
        steps += layers if len(layers) <= 4 else [*layers[:2], f"... {len(layers) - 3} more ...", layers[-1]]
        steps += [f"unembed {self.unembed.d_out}"] if self.unembed is not None else []
        name = f"{self.name!r}, " if self.name != "tensor network" else ""
        return f"TensorChain({name}depth {self.depth}: {' -> '.join(steps)}, {str(self.dtype).removeprefix('torch.')})"

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> TensorChain:
        return replace(
            self,
            layers=tuple(layer.to(dtype, device) for layer in self.layers),
            embed=None if self.embed is None else self.embed.to(dtype, device),
            unembed=None if self.unembed is None else self.unembed.to(dtype, device),
        )

    def padded(self) -> tuple[Tensor | None, list[tuple[Tensor, Tensor, Tensor]], Tensor]:
        """`(M, [(L̃, R̃, D̃), ...], U)`: padded embed `(1+d_0, 1+d_in)` (None for the identity), padded layers,
        and the unembed's real output rows `(d_out, 1 + d_N)` (bias in column 0; the constant output is dropped)."""
        M = None if self.embed is None else self.embed.padded()
        layers = [layer.padded(r) for layer, r in zip(self.layers, self.residual)]
        if self.unembed is not None:
            U = self.unembed.padded()[1:]
        else:
            width = self.layers[-1].d_out if self.layers else self.embed.d_out  # type: ignore[union-attr]
            ref = layers[-1][0] if layers else M
            U = torch.eye(width + 1, dtype=ref.dtype, device=ref.device)[1:]  # type: ignore[union-attr]
        return M, layers, U


def as_linear(obj: object, argument: str) -> LinearLayer | None:
    """`LinearLayer` from None, a `LinearLayer`, an `nn.Linear`, or a `(d_out, d_in)` tensor."""
    if obj is None or isinstance(obj, LinearLayer):
        return obj
    if isinstance(obj, torch.nn.Linear):
        return LinearLayer(obj.weight.detach(), None if obj.bias is None else obj.bias.detach())
    if isinstance(obj, Tensor):
        return LinearLayer(obj.detach())
    raise TypeError(
        f"{argument}: expected None, a LinearLayer, an nn.Linear or a (d_out, d_in) tensor; got {type(obj).__name__}"
    )


def chain_from_layers(
    layers: Sequence[BilinearLayer] | BilinearLayer,
    embed: object = None,
    unembed: object = None,
    residual: bool | Sequence[bool] = False,
    name: str = "tensor network",
) -> TensorChain:
    """Build a `TensorChain`; `residual` is one flag for every layer or one per layer."""
    if isinstance(layers, BilinearLayer):
        layers = [layers]
    layers = tuple(layers)
    res = (bool(residual),) * len(layers) if isinstance(residual, bool) else tuple(residual)
    return TensorChain(layers, res, as_linear(embed, "embed"), as_linear(unembed, "unembed"), name=name)
