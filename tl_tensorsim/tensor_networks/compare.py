"""Public entry points: `tensor_similarity`, `tensor_inner`, `tensor_similarity_matrix`.

Inputs are normalised to a `TensorChain` (`as_chain`): a `HookedTensorNetwork`, a `BilinearLayer` (e.g. an MLP
from `extract_mlp`), or a `TensorChain`; two `FactoredMatrix` objects go to `tl_tensorsim.similarity.factored`.
A `HookedTransformer` / `TransformerBridge` is rejected with `NotPolynomialError` (softmax attention and
LayerNorm are not polynomial).

Metrics (paper §2.2): `"frobenius"` — cosine of the locally symmetrised coefficient tensors in the padded input
`[1; x]`, exact by the Gram recursion (`inner.py`); `"gaussian"` — `E_{x~N(0,Σ)}[f_a(x)ᵀ f_b(x)]` normalised to a
cosine, exact for at most two bilinear layers (one: the Gram recursion; two, or unequal depths: the Hermite
expansion of `gaussian.py`), Monte Carlo with a standard error deeper.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, overload

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import FactoredMatrix

from tl_tensorsim.adapter import is_transformer_lens_model
from tl_tensorsim.checks import check_choice, options
from tl_tensorsim.factored import factored_cosine, factored_inner
from tl_tensorsim.models.bilinear import BilinearLayer, TensorChain, chain_from_layers
from tl_tensorsim.models.tensor_network import HookedTensorNetwork
from tl_tensorsim.tensor_networks.gaussian import MAX_DEPTH, hermite_matrix, hermite_parts, needs_hermite
from tl_tensorsim.tensor_networks.inner import (
    PaddedStack,
    cosine,
    cross_pass,
    input_gram,
    select_outputs,
    self_pass,
    stack_chains,
    tile_size,
)
from tl_tensorsim.tensor_networks.montecarlo import gaussian_moments, groups_matrix
from tl_tensorsim.tensor_networks.results import (
    PerOutputSimilarity,
    TensorSimilarityMatrix,
    TensorValue,
    chain_provenance,
)
from tl_tensorsim.tensor_networks.transformer_mlp import check_polynomial

TensorMetric = Literal["frobenius", "gaussian"]
TensorMethod = Literal["auto", "exact", "monte_carlo"]
METRICS = options(TensorMetric)


def as_chain(obj: Any, argument: str = "model") -> TensorChain:
    """The `TensorChain` of a `HookedTensorNetwork`, `BilinearLayer` or `TensorChain`; `NotPolynomialError`
    for TransformerLens models, `TypeError` for anything else."""
    if isinstance(obj, TensorChain):
        return obj
    if isinstance(obj, BilinearLayer):
        return chain_from_layers(obj, name="bilinear layer")
    if isinstance(obj, HookedTensorNetwork):
        return obj.to_chain()
    if is_transformer_lens_model(obj):
        check_polynomial(obj, argument)
    raise TypeError(
        f"{argument}: expected a HookedTensorNetwork, a BilinearLayer (e.g. extract_mlp(model, layer)), a TensorChain "
        f"or a FactoredMatrix; got {type(obj).__module__}.{type(obj).__name__}"
    )


def _check_pair(ca: TensorChain, cb: TensorChain, metric: str) -> None:
    check_choice(metric, TensorMetric, "metric")
    if ca.d_in != cb.d_in:
        raise ValueError(f"b: input dimension {cb.d_in} differs from a's {ca.d_in}; both must read the same input")
    if ca.d_out != cb.d_out:
        raise ValueError(f"b: output dimension {cb.d_out} differs from a's {ca.d_out}")
    if metric == "frobenius" and ca.depth != cb.depth:
        raise ValueError(
            f"b: has {cb.depth} bilinear layers, a has {ca.depth}; their coefficient tensors have different orders "
            f"(2^N + 1), so metric='frobenius' is undefined (metric='gaussian' compares them as functions)"
        )


def _resolve_method(depths: Sequence[int], metric: str, method: str) -> str:
    check_choice(method, TensorMethod, "method")
    if metric == "frobenius":
        if method == "monte_carlo":
            raise ValueError("method: 'monte_carlo' estimates the gaussian metric; metric='frobenius' is always exact")
        return "exact"
    exact_ok = max(depths) <= MAX_DEPTH
    if method == "exact" and not exact_ok:
        raise ValueError(
            f"method: exact Gaussian forms exist for networks with at most one bilinear layer (Gram recursion) or two "
            f"(Hermite expansion); got depths {sorted(set(depths))}. Use method='monte_carlo' (or 'auto')"
        )
    return "exact" if (method == "auto" and exact_ok) or method == "exact" else "monte_carlo"


def _warn_zero(used: bool) -> None:
    if used:
        warnings.warn("tensor_similarity: a network has zero norm; its similarity is reported as 0", stacklevel=3)


def _exact_parts(ca: TensorChain, cb: TensorChain, metric: str, sigma: Tensor | None, dtype: torch.dtype, device: Any):
    gaussian = metric == "gaussian"
    if gaussian and needs_hermite([ca.depth, cb.depth]):  # float64 values, no scale factors
        v_ab, v_aa, v_bb = hermite_parts(ca, cb, sigma, device)
        zero = v_ab.new_zeros(())
        return v_ab, v_aa, v_bb, zero, zero, zero
    G0 = input_gram(ca.d_in, sigma, dtype, device)
    A = self_pass(stack_chains([ca], dtype, device), G0, gaussian)
    B = self_pass(stack_chains([cb], dtype, device), G0, gaussian)
    # canonical order (by the self-pass results), so that sim(a, b) == sim(b, a) bit for bit
    ka = (float(A.log_c[0]), float(A.values.sum()))  # type: ignore[index, union-attr]
    kb = (float(B.log_c[0]), float(B.values.sum()))  # type: ignore[index, union-attr]
    if ka <= kb:
        v_ab, log_ab = cross_pass(A, B, G0, gaussian)
    if ka >= kb:
        v_ba, log_ab = cross_pass(B, A, G0, gaussian)
        v_ab = v_ba if ka > kb else 0.5 * (v_ab + v_ba)
    return v_ab[0, 0], A.values[0], B.values[0], log_ab[0, 0], A.log_c[0], B.log_c[0]  # type: ignore[index]


def _factored(a: Any, b: Any, metric: str, sigma: Tensor | None, inner: bool) -> Any:
    if not (isinstance(a, FactoredMatrix) and isinstance(b, FactoredMatrix)):
        raise TypeError(
            f"a, b: a FactoredMatrix compares only with a FactoredMatrix; got {type(a).__name__}, {type(b).__name__}"
        )
    check_choice(metric, TensorMetric, "metric")
    # A FactoredMatrix is the linear map x -> x M (not symmetrised: it is not a quadratic form here), and
    # E_{x~N(0,Σ)}[(x M_a)·(x M_b)] = tr(M_aᵀ Σ M_b) = <M_a, M_b>_Σ: the two metrics coincide.
    fn = factored_inner if inner else factored_cosine
    out = fn(a, b, left_metric=sigma) if sigma is not None else fn(a, b)
    if isinstance(out, Tensor) and out.numel() == 1:
        return TensorValue(float(out), metric=metric, method="factored", kind="inner" if inner else "cosine")
    return out


def _common(a: Any, b: Any, metric: str, method: str, device: Any) -> tuple[TensorChain, TensorChain, str, Any]:
    ca, cb = as_chain(a, "a"), as_chain(b, "b")
    _check_pair(ca, cb, metric)
    method = _resolve_method([ca.depth, cb.depth], metric, method)
    return ca, cb, method, device if device is not None else ca.device


@overload
def tensor_similarity(
    a: FactoredMatrix, b: FactoredMatrix, metric: TensorMetric = ..., **kwargs: Any
) -> TensorValue | Float[Tensor, "*batch"]: ...
@overload
def tensor_similarity(
    a: Any, b: Any, metric: TensorMetric = ..., *, per_output: Literal[True], **kwargs: Any
) -> PerOutputSimilarity: ...
@overload
def tensor_similarity(
    a: Any, b: Any, metric: TensorMetric = ..., *, per_output: Literal[False] = ..., **kwargs: Any
) -> TensorValue: ...
def tensor_similarity(
    a: Any,
    b: Any,
    metric: TensorMetric = "frobenius",
    *,
    output: int | Sequence[int] | None = None,
    per_output: bool = False,
    sigma: Float[Tensor, "d_in d_in"] | None = None,
    method: TensorMethod = "auto",
    samples: int = 200_000,
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> TensorValue | PerOutputSimilarity | Tensor:
    """Tensor similarity `⟨a|b⟩ / sqrt(⟨a|a⟩⟨b|b⟩)` of two tensor networks (paper §2.2-2.3), in [-1, 1].

    Args:
        a, b: `HookedTensorNetwork`s, `BilinearLayer`s (`extract_mlp(model, l)`), `TensorChain`s, or two
            `FactoredMatrix` objects. Input and output dimensions must match (and depths, for frobenius).
        metric: `"frobenius"` (locally symmetrised coefficient tensors, exact Gram recursion) or `"gaussian"`
            (`E_{x~N(0,Σ)}[f_a(x)ᵀ f_b(x)]`: exact for <= 2 bilinear layers, in float64 at depth 2 whatever
            `dtype` (`gaussian.py`, cost `O(d_out (H²H₂ + H³ + H² d_in²))` for padded layer widths H, H₂), else
            Monte Carlo).
        output: keep only these output coordinates (an int: the class-c slice); `per_output=True` returns
            every slice at once as a `PerOutputSimilarity`.
        sigma: input covariance `(d_in, d_in)` in place of the identity.
        method: `"auto"`, `"exact"` or `"monte_carlo"` (gaussian only); `samples`, `seed`, `batch_size` set the
            Monte Carlo run (its standard error is `.stderr`): `samples` forward passes per network, as random
            directions each integrated exactly along its line (`montecarlo.radial_rule`).
        device, dtype: where and in which precision to compute (default: a's device, float64).

    Returns: a `TensorValue` (a float with `.stderr`, `.metric`, `.method`), a `PerOutputSimilarity`, or for
    batched `FactoredMatrix` inputs a float64 tensor. A zero network has similarity 0 (with a warning), never NaN.
    """
    if isinstance(a, FactoredMatrix) or isinstance(b, FactoredMatrix):
        return _factored(a, b, metric, sigma, inner=False)
    ca, cb, method, device = _common(a, b, metric, method, device)
    prov = chain_provenance(
        [ca, cb], sigma, metric=metric, method=method, output=output, per_output=per_output, dtype=dtype,
        **({"samples": samples, "seed": seed} if method == "monte_carlo" else {}),
    )  # fmt: skip
    if method == "exact":
        with torch.no_grad():
            v_ab, v_aa, v_bb, *_ = _exact_parts(ca, cb, metric, sigma, dtype, device)
        if per_output:
            cos, used = cosine(v_ab, v_aa, v_bb)
            _warn_zero(used)
            return PerOutputSimilarity(cos.double().cpu(), metric, method, provenance=prov)
        sel = [select_outputs(v, output, ca.d_out) for v in (v_ab, v_aa, v_bb)]
        cos, used = cosine(*sel)
        _warn_zero(used)
        return TensorValue(float(cos), metric=metric, method="exact", provenance=prov)
    groups = groups_matrix(ca.d_out, output, per_output)
    mom = gaussian_moments([ca, cb], groups, samples, seed, sigma, dtype, device, batch_size)
    r, se = mom.cosine()
    _warn_zero(bool((torch.diagonal(mom.mean, dim1=0, dim2=1) <= 1e-30).any()))
    if per_output:
        return PerOutputSimilarity(
            r[0, 1].cpu(), metric, method, stderr=se[0, 1].cpu(), samples=samples, provenance=prov
        )
    return TensorValue(
        float(r[0, 1, 0]), metric=metric, method=method, stderr=float(se[0, 1, 0]), samples=samples, provenance=prov
    )


def tensor_inner(
    a: Any,
    b: Any,
    metric: TensorMetric = "frobenius",
    *,
    output: int | Sequence[int] | None = None,
    sigma: Float[Tensor, "d_in d_in"] | None = None,
    method: TensorMethod = "auto",
    samples: int = 200_000,
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> TensorValue:
    """The unnormalised inner product `⟨a|b⟩` (same arguments as `tensor_similarity`).

    frobenius: `Σ_c ⟨T_a^c, T_b^c⟩` of the padded, locally symmetrised coefficient tensors; gaussian:
    `E_{x~N(0,Σ)}[f_a(x)ᵀ f_b(x)]` (exact up to two bilinear layers, `.stderr` None). `.log_abs` holds `ln|⟨a|b⟩|`
    from the per-layer exponent tracking (finite even if the float overflows; at depth 2 gaussian, the float64 value's).
    """
    if isinstance(a, FactoredMatrix) or isinstance(b, FactoredMatrix):
        return _factored(a, b, metric, sigma, inner=True)
    ca, cb, method, device = _common(a, b, metric, method, device)
    if method == "exact":
        with torch.no_grad():
            v_ab, _, _, log_ab, _, _ = _exact_parts(ca, cb, metric, sigma, dtype, device)
        v = float(select_outputs(v_ab, output, ca.d_out))
        if v == 0:
            return TensorValue(0.0, metric=metric, method="exact", kind="inner", log_abs=-math.inf)
        log_abs = math.log(abs(v)) + float(log_ab)
        value = math.copysign(math.exp(log_abs) if log_abs < 709.0 else math.inf, v)
        return TensorValue(value, metric=metric, method="exact", kind="inner", log_abs=log_abs)
    mom = gaussian_moments(
        [ca, cb], groups_matrix(ca.d_out, output, False), samples, seed, sigma, dtype, device, batch_size
    )
    value, se = float(mom.mean[0, 1, 0]), float(mom.inner_stderr()[0, 1, 0])
    return TensorValue(value, metric=metric, method=method, kind="inner", stderr=se, samples=samples)


def _subset(S: PaddedStack, idx: slice) -> PaddedStack:
    cut = lambda t: None if t is None else t[idx]  # noqa: E731
    return PaddedStack(
        M=cut(S.M),
        X=[x[idx] for x in S.X],
        D=[d[idx] for d in S.D],
        U=S.U[idx],
        mu=S.mu[idx],
        d_in=S.d_in,
        scales=cut(S.scales),
        log_c=cut(S.log_c),
        t=cut(S.t),
        m=cut(S.m),
        values=cut(S.values),
    )


def _exact_matrix(
    chains: list[TensorChain], metric: str, sigma: Tensor | None, dtype: torch.dtype, device: Any, budget: int
) -> tuple[Tensor, Tensor]:
    """Per-output normalised inner products for all pairs `(T, T, C)` and of every network with itself `(T, C)`."""
    gaussian = metric == "gaussian"
    G0 = input_gram(chains[0].d_in, sigma, dtype, device)
    T, d_out = len(chains), chains[0].d_out
    try:  # one architecture: stack once, batch the pairs in tiles
        stacks = [stack_chains(chains, dtype, device)]
    except ValueError:  # mixed widths: one stack per network, pairs one by one
        stacks = [stack_chains([c], dtype, device) for c in chains]
    stacks = [self_pass(S, G0, gaussian) for S in stacks]
    if len(stacks) == 1:
        S = stacks[0]
        step = tile_size(S, budget, torch.finfo(dtype).bits // 8)
        tiles = [(slice(i, min(i + step, T)), _subset(S, slice(i, min(i + step, T)))) for i in range(0, T, step)]
        self_vals = S.values
    else:
        tiles = [(slice(i, i + 1), S) for i, S in enumerate(stacks)]
        self_vals = torch.cat([S.values for S in stacks])  # type: ignore[misc]
    ab = torch.zeros(T, T, d_out, dtype=dtype, device=device)
    for n, (si, A) in enumerate(tiles):
        for sj, B in tiles[n:]:
            v, _ = cross_pass(A, B, G0, gaussian)
            ab[si, sj] = v
            ab[sj, si] = v.transpose(0, 1)
    return ab, self_vals  # type: ignore[return-value]


def _matrix_cosine(ab: Tensor, diag: Tensor) -> Tensor:
    T = ab.shape[0]
    cos, used = cosine(ab, diag[:, None].expand(T, T), diag[None, :].expand(T, T))
    _warn_zero(used)
    cos.fill_diagonal_(1.0)
    zero = diag <= 1e-30
    cos[zero, :] = 0
    cos[:, zero] = 0
    return cos


def tensor_similarity_matrix(
    checkpoints: Sequence[Any],
    metric: str = "frobenius",
    *,
    output: int | Sequence[int] | None = None,
    sigma: Float[Tensor, "d_in d_in"] | None = None,
    method: TensorMethod = "auto",
    samples: int = 200_000,
    seed: int = 0,
    steps: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    memory_budget: int = 256 * 2**20,
    per_output: bool = False,
) -> TensorSimilarityMatrix | list[TensorSimilarityMatrix]:
    """All-pairs tensor similarity over a list of checkpoints: a `TensorSimilarityMatrix` (T x T).

    Per-checkpoint work (padding, the self recursion and its per-layer scales) is done once; pairs are then
    batched in tiles sized to `memory_budget` bytes (one stacked architecture), or run one by one when widths
    differ. Gaussian Monte Carlo shares one sample set across all pairs. `per_output=True` returns one matrix per
    output slice from the same computation. Other arguments as in `tensor_similarity`.
    """
    if len(checkpoints) < 1:
        raise ValueError("checkpoints: expected at least one network")
    chains = [as_chain(c, f"checkpoints[{i}]") for i, c in enumerate(checkpoints)]
    for i, c in enumerate(chains[1:], 1):
        try:
            _check_pair(chains[0], c, metric)
        except ValueError as e:
            raise ValueError(f"checkpoints[{i}]: {e}") from None
    method = _resolve_method([c.depth for c in chains], metric, method)
    device = device if device is not None else chains[0].device
    d_out = chains[0].d_out
    selections: list[Any] = list(range(d_out)) if per_output else [output]
    values, errors = [], []
    with torch.no_grad():
        if method == "exact":
            if metric == "gaussian" and needs_hermite([c.depth for c in chains]):
                ab, self_vals = hermite_matrix(chains, sigma, device, max(1, memory_budget // 8))
            else:
                ab, self_vals = _exact_matrix(chains, metric, sigma, dtype, device, memory_budget)
            for sel in selections:
                values.append(_matrix_cosine(select_outputs(ab, sel, d_out), select_outputs(self_vals, sel, d_out)))
                errors.append(None)
        else:
            groups = groups_matrix(d_out, output, per_output)
            mom = gaussian_moments(chains, groups, samples, seed, sigma, dtype, device)
            r, se = mom.cosine()
            for g in range(groups.shape[1]):
                values.append(r[..., g])
                errors.append(se[..., g].cpu())
    out = []
    prov = chain_provenance(
        chains, sigma, metric=metric, method=method, output=output, per_output=per_output, dtype=dtype,
        **({"samples": samples, "seed": seed} if method == "monte_carlo" else {}),
    )  # fmt: skip
    for sel, v, e in zip(selections, values, errors):
        out.append(
            TensorSimilarityMatrix(
                values=v.double().cpu(),
                metric=metric,
                method=method,
                steps=None if steps is None else [int(s) for s in steps],
                labels=list(labels) if labels is not None else [],
                stderr=e,
                output=sel if sel is None or isinstance(sel, int) else [int(c) for c in sel],
                samples=samples if method == "monte_carlo" else None,
                provenance=prov,
            )
        )
    return out if per_output else out[0]
