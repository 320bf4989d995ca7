"""Tokenizer-agnostic encoding for the circuit datasets, and GPT-2's tokenizer built from local files.

`TextEncoder(tokenizer)` wraps whatever tokenizer it is given behind `encode(text) -> list[int]` (never adding
special tokens) and `decode(ids) -> str`: a Hugging Face tokenizer (`PreTrainedTokenizer[Fast]`), a
`tokenizers.Tokenizer`, or any object with `encode` / `decode` returning / taking lists of ints. `single_token`
checks that a word (with its leading space) is exactly one token and raises a `ValueError` naming the word and the
tokens it became otherwise, so a dataset is never silently mis-indexed.

`gpt2_tokenizer(path)` builds GPT-2's byte-level BPE tokenizer from `encoder.json` + `vocab.bpe` (no model hub);
`find_gpt2_tokenizer()` looks for those files in `$TL_TENSORSIM_GPT2_TOKENIZER` or `../shared/data/gpt2-tokenizer/`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

GPT2_ENV = "TL_TENSORSIM_GPT2_TOKENIZER"
EOT = "<|endoftext|>"

__all__ = ["EOT", "GPT2_ENV", "TextEncoder", "find_gpt2_tokenizer", "gpt2_tokenizer", "pad_right"]


class TextEncoder:
    """`encode(text) -> list[int]` / `decode(ids) -> str` over any tokenizer (see the module docstring).

    `bos_token_id` / `pad_token_id`: the tokenizer's (HF: `bos_token_id`, `pad_token_id`, else `eos_token_id`;
    `tokenizers.Tokenizer`: the id of `<|endoftext|>`), or None when it has none.
    """

    def __init__(self, tokenizer: Any):
        if isinstance(tokenizer, TextEncoder):
            tokenizer = tokenizer.tokenizer
        if not callable(getattr(tokenizer, "encode", None)) or not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(
                "tokenizer: expected a tokenizer with encode(text) and decode(ids) (a Hugging Face tokenizer, a "
                f"tokenizers.Tokenizer, or any object with both); got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        self._kind = "tokenizers" if type(tokenizer).__module__.startswith("tokenizers") else "other"
        if hasattr(tokenizer, "convert_tokens_to_ids"):
            self._kind = "hf"

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str; got {type(text).__name__}")
        t = self.tokenizer
        if self._kind == "hf":
            out = t.encode(text, add_special_tokens=False)
        elif self._kind == "tokenizers":
            out = t.encode(text, add_special_tokens=False).ids
        else:
            out = t.encode(text)
        return [int(i) for i in (out.tolist() if isinstance(out, Tensor) else out)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def _special(self, *names: str) -> int | None:
        for name in names:
            value = getattr(self.tokenizer, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        if self._kind == "tokenizers":
            return self.tokenizer.token_to_id(EOT)
        return None

    @property
    def bos_token_id(self) -> int | None:
        return self._special("bos_token_id", "eos_token_id")

    @property
    def pad_token_id(self) -> int | None:
        return self._special("pad_token_id", "eos_token_id", "bos_token_id")

    def bos_and_pad(self, prepend_bos: bool, bos_token_id: int | None = None) -> tuple[int | None, int]:
        """The BOS id to prepend (None when `prepend_bos` is False; `bos_token_id` or the tokenizer's, else a
        `ValueError`) and the id to pad with (the tokenizer's pad, else the BOS, else 0)."""
        bos = None
        if prepend_bos:
            bos = bos_token_id if bos_token_id is not None else self.bos_token_id
            if bos is None:
                raise ValueError(
                    "bos_token_id: the tokenizer has no BOS token; pass bos_token_id= or prepend_bos=False"
                )
        pad = self.pad_token_id if self.pad_token_id is not None else (bos if bos is not None else 0)
        return bos, pad

    def single_token(self, word: str, argument: str = "names", leading_space: bool = True) -> int:
        """The one token id of `" " + word` (or `word`); a `ValueError` naming `argument` when it is not one token."""
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"{argument}: expected non-empty words; got {word!r}")
        text = " " + word if leading_space else word
        ids = self.encode(text)
        if len(ids) != 1:
            pieces = [self.decode([i]) for i in ids]
            raise ValueError(
                f"{argument}: {text!r} is {len(ids)} tokens under this tokenizer ({pieces}), not one; the dataset "
                f"needs single-token words here, so drop or replace {word!r}"
            )
        back = self.decode(ids).strip()
        if back != word.strip():
            raise ValueError(
                f"{argument}: {word!r} is not in this tokenizer's vocabulary (its one token decodes to {back!r}, "
                "an unknown-word token); use words the tokenizer knows"
            )
        return ids[0]


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Rows of different lengths as a `LongTensor [batch, max_len]` padded on the right with `pad`, and each row's
    length `[batch]`. Right padding leaves every real position's activations unchanged under causal attention."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), int(lengths.max())), int(pad), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out, lengths


def find_gpt2_tokenizer() -> Path | None:
    """The folder holding GPT-2's `encoder.json` and `vocab.bpe`: `$TL_TENSORSIM_GPT2_TOKENIZER`, else
    `shared/data/gpt2-tokenizer/` beside the project checkout; None when neither has them."""
    here = Path(__file__).resolve()
    candidates = [os.environ.get(GPT2_ENV)] + [str(p / "shared" / "data" / "gpt2-tokenizer") for p in here.parents]
    for c in candidates:
        if c and (Path(c) / "encoder.json").is_file() and (Path(c) / "vocab.bpe").is_file():
            return Path(c)
    return None


def gpt2_tokenizer(path: str | os.PathLike | None = None) -> Any:
    """GPT-2's tokenizer (50,257 ids, `<|endoftext|>` = 50256) from `encoder.json` + `vocab.bpe` in `path`
    (default `find_gpt2_tokenizer()`), as a `transformers.PreTrainedTokenizerFast` that TransformerLens accepts
    (`name_or_path="gpt2"`, `add_bos_token=True`, `<|endoftext|>` as BOS / EOS / PAD / UNK). Nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = Path(path) if path is not None else find_gpt2_tokenizer()
    if folder is None or not (folder / "encoder.json").is_file() or not (folder / "vocab.bpe").is_file():
        raise FileNotFoundError(
            f"path: expected a folder with GPT-2's encoder.json and vocab.bpe; got {str(folder) if folder else None} "
            f"(set ${GPT2_ENV} or pass path=)"
        )
    tok = Tokenizer(models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=EOT,
        name_or_path="gpt2",
        add_bos_token=True,
    )
