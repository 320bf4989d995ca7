"""Tokenizers for the circuit tests: GPT-2's, built from the shared files (skipped with a reason when absent), and a
small word-level one over the IOI vocabulary. Every test runs on one torch thread (small problems on a loaded
2-core machine)."""

from __future__ import annotations

import pytest

from tl_tensorsim.circuits.datasets.tokens import find_gpt2_tokenizer, gpt2_tokenizer
from tl_tensorsim.training import limit_threads

NO_GPT2 = (
    "GPT-2 tokenizer files (encoder.json, vocab.bpe) not found: set TL_TENSORSIM_GPT2_TOKENIZER or provide "
    "../shared/data/gpt2-tokenizer/"
)


@pytest.fixture(scope="session")
def gpt2_tok():
    if find_gpt2_tokenizer() is None:
        pytest.skip(NO_GPT2)
    return gpt2_tokenizer()


def word_level_tokenizer(extra=()):
    """A whitespace word-level tokenizer whose vocabulary is every word of the IOI prompts (names, places,
    objects, template words with their punctuation) plus `extra`."""
    from tl_tensorsim.circuits.datasets.ioi import BABA_TEMPLATES, NAMES, OBJECTS, PLACES
    from tl_tensorsim.models.toy import toy_tokenizer

    words = set(NAMES) | set(extra)
    for t in BABA_TEMPLATES:
        for w in t.split():
            for place in PLACES:
                for obj in OBJECTS:
                    words.add(w.replace("[PLACE]", place).replace("[OBJECT]", obj))
    words = sorted(w for w in words if "[" not in w)
    return toy_tokenizer(words)


@pytest.fixture(scope="session")
def word_tok():
    return word_level_tokenizer()


@pytest.fixture(autouse=True)
def _one_thread():
    with limit_threads(1):
        yield


@pytest.fixture(scope="session")
def induction_model():
    """The shipped induction model (HookedTransformer on TransformerLens 3.x, TransformerBridge on 4.x)."""
    import tl_tensorsim as ts

    return ts.load_induction_model()
