"""Small models the project trains and ships (the embedded induction model, ...).

Names are loaded lazily, so `python -m tl_tensorsim.models.induction` (retraining) does not import the
module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "InductionConfig": "induction",
    "TrainingRun": "induction",
    "build_model": "induction",
    "config_of": "induction",
    "induction_accuracy": "induction",
    "load_default": "induction",
    "make_batch": "induction",
    "masked_accuracy": "induction",
    "repeated_tokens": "induction",
    "train": "induction",
    "toy_tokenizer": "toy",
    "load_tl_state_dict": "toy",
    "tl_state_dict": "toy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
