"""Circuit datasets for any tokenizer: IOI, greater-than, repeated random tokens (`PromptSet`s with clean prompts,
corruptions and named token positions)."""

from .base import PromptSet
from .greater_than import greater_than_dataset, valid_years, year_token_ids
from .induction import induction_dataset
from .ioi import ABBA_TEMPLATES, BABA_TEMPLATES, NAMES, ioi_dataset
from .tokens import TextEncoder, find_gpt2_tokenizer, gpt2_tokenizer

__all__ = [
    "ABBA_TEMPLATES",
    "BABA_TEMPLATES",
    "NAMES",
    "PromptSet",
    "TextEncoder",
    "find_gpt2_tokenizer",
    "gpt2_tokenizer",
    "greater_than_dataset",
    "induction_dataset",
    "ioi_dataset",
    "valid_years",
    "year_token_ids",
]
