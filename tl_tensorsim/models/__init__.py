"""Small models the project trains and ships: the embedded induction model (`induction`), the grokking and
backdoor tensor networks (`grokking`, `backdoor`), and the toy tokenizer / model-class helpers they share (`toy`)."""

from tl_tensorsim.models.induction import (
    InductionConfig,
    TrainingRun,
    build_model,
    config_of,
    induction_accuracy,
    load_default,
    make_batch,
    masked_accuracy,
    repeated_tokens,
    train,
)
from tl_tensorsim.models.toy import load_tl_state_dict, tl_state_dict, toy_tokenizer

__all__ = [
    "InductionConfig",
    "TrainingRun",
    "build_model",
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
