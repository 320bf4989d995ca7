"""Tensor similarity for tensor networks (Nissen Gonzalez et al., arXiv 2605.15183).

A tensor network has every layer multilinear (linear maps and bilinear MLPs `D (Lx ⊙ Rx)`), so it is a polynomial
and two of them can be compared exactly from their weights:

    import tl_tensorsim.tensor_networks as tn
    net = tn.HookedTensorNetwork(tn.TensorNetworkConfig(d_in=64, d_model=32, d_hidden=64, n_layers=2, d_out=10))
    tn.tensor_similarity(net_a, net_b)                        # exact, "frobenius"
    tn.tensor_similarity(net_a, net_b, metric="gaussian")     # E[f_a(x)·f_b(x)] under N(0, I), as a cosine
    tn.tensor_similarity(net_a, net_b, output=9)              # the class-9 slice
    tn.tensor_similarity_matrix(checkpoints, steps=steps)     # T x T over training

The model classes (`HookedTensorNetwork`, `BilinearLayer`, ...) live in `tl_tensorsim.models` and are re-exported
here. Importing this package changes no global state of TransformerLens: `register_identity_activation()` (called
by `bilinear_config`) adds `act_fn="identity"`, with which a `HookedTransformer` with `gated_mlp=True` has bilinear
MLPs (`extract_mlp` reads them).
"""

from tl_tensorsim.models.bilinear import BilinearLayer, LinearLayer, TensorChain, chain_from_layers
from tl_tensorsim.models.tensor_network import HookedTensorNetwork, TensorNetworkConfig
from tl_tensorsim.tensor_networks.compare import (
    METRICS,
    as_chain,
    tensor_inner,
    tensor_similarity,
    tensor_similarity_matrix,
)
from tl_tensorsim.tensor_networks.results import PerOutputSimilarity, TensorSimilarityMatrix, TensorValue
from tl_tensorsim.tensor_networks.transformer_mlp import (
    IDENTITY_ACT_FN,
    NotPolynomialError,
    bilinear_config,
    check_polynomial,
    extract_mlp,
    extract_mlps,
    register_identity_activation,
)

__all__ = [
    "IDENTITY_ACT_FN",
    "METRICS",
    "BilinearLayer",
    "HookedTensorNetwork",
    "LinearLayer",
    "NotPolynomialError",
    "PerOutputSimilarity",
    "TensorChain",
    "TensorNetworkConfig",
    "TensorSimilarityMatrix",
    "TensorValue",
    "as_chain",
    "bilinear_config",
    "chain_from_layers",
    "check_polynomial",
    "extract_mlp",
    "extract_mlps",
    "register_identity_activation",
    "tensor_inner",
    "tensor_similarity",
    "tensor_similarity_matrix",
]
