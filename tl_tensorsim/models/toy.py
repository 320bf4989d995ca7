"""The toy word-level tokenizer the project's small models use, and (re-exported from the core) the helpers
that build a model of either class and move TL-named weights between them.

Model-class knowledge lives in the adapter's core modules: `tl_tensorsim.model_io` builds a `HookedTransformer`
(TransformerLens 2.16+/3.x) or, where TransformerLens has none (4.x), a `TransformerBridge.boot_native(...)` model,
and converts state dicts; `build_tl_model`, `tl_state_dict`, `load_tl_state_dict`, `tl_weight_keys` and
`has_hooked_transformer` are importable from here as before.
"""

from __future__ import annotations

from typing import Any

from tl_tensorsim.model_io import (
    BACKENDS,
    build_tl_model,
    has_hooked_transformer,
    load_tl_state_dict,
    tl_state_dict,
    tl_weight_keys,
)

__all__ = [
    "BACKENDS",
    "BOS",
    "build_tl_model",
    "has_hooked_transformer",
    "load_tl_state_dict",
    "tl_state_dict",
    "tl_weight_keys",
    "toy_tokenizer",
]

BOS = "<|endoftext|>"


def toy_tokenizer(words: list[str], split_punctuation: bool = False, name: str = "toy") -> Any:
    """A whitespace word-level tokenizer over `words` (ids 0..len-1) plus `<|endoftext|>` (id len(words)).

    `split_punctuation`: split text into words and punctuation runs (`\\w+|[^\\w\\s]+`, so "store." is "store", ".")
    rather than at whitespace only. `name`: the tokenizer's `name_or_path`.

    `<|endoftext|>` serves as BOS, EOS, PAD and UNK. `name_or_path` and `add_bos_token=True` are set, without
    which TransformerLens' `to_tokens` falls back to the model hub.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(words)) != len(words) or BOS in words or any(not w or w.split() != [w] for w in words):
        raise ValueError(f"words: expected distinct non-empty words without whitespace or {BOS!r}")
    vocab = {w: i for i, w in enumerate(words)}
    vocab[BOS] = len(words)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=BOS))
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=BOS,
        unk_token=BOS,
        name_or_path=name,
        add_bos_token=True,
    )
