"""The model layer, below the analyses: model classes and the small models the project trains and ships.

Model classes: `HookedTensorNetwork` / `TensorNetworkConfig` (`tensor_network`, a tensor network as a TransformerLens
`HookedRootModule`) and the value objects `BilinearLayer`, `LinearLayer`, `TensorChain` (`bilinear`).
Trained models, each with a config, `train()`, `save`/`load` and `load_default()`, listed by `registry` and
trained by `tl-tensorsim train NAME`: the embedded induction model (`induction`, shipped in `weights/`), the
grokking and backdoor tensor networks (`grokking`, `backdoor`). `toy` holds the toy tokenizer they share.
This package imports no analysis (`similarity`, `tensor_networks`, ...).
"""

from tl_tensorsim.models.bilinear import BilinearLayer, LinearLayer, TensorChain, chain_from_layers
from tl_tensorsim.models.induction import (
    InductionConfig,
    build_model,
    config_of,
    induction_accuracy,
    load_default,
    make_batch,
    masked_accuracy,
    repeated_tokens,
    train,
)
from tl_tensorsim.models.tensor_network import HookedTensorNetwork, TensorNetworkConfig, bilinear_classifier
from tl_tensorsim.models.toy import load_tl_state_dict, tl_state_dict, toy_tokenizer

__all__ = [
    "BilinearLayer",
    "HookedTensorNetwork",
    "InductionConfig",
    "LinearLayer",
    "TensorChain",
    "TensorNetworkConfig",
    "bilinear_classifier",
    "build_model",
    "chain_from_layers",
    "config_of",
    "induction_accuracy",
    "load_default",
    "load_tl_state_dict",
    "make_batch",
    "masked_accuracy",
    "repeated_tokens",
    "tl_state_dict",
    "toy_tokenizer",
    "train",
]
