"""Greater-than prompts (Hanna, Liu, Variengien 2023, arXiv 2305.00586), for any tokenizer.

"The war lasted from the year 1743 to the year 17" -> a two-digit continuation YY' > 43. Centuries XX 11..17,
YY 02..98; only years whose " XXYY" tokenises as the two tokens " XX" + "YY" are used (and " XX01", the
corruption's year, too), so that the YY token is a position of its own. The corruption replaces YY by "01"
(the paper's), after which every continuation is "greater".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from tl_tensorsim.checks import checked_int

from .base import PromptSet
from .tokens import TextEncoder, pad_right

TEMPLATE = "The {noun} lasted from the year {xx}{yy} to the year {xx}"
CENTURIES: tuple[int, ...] = tuple(range(11, 18))
NOUNS: tuple[str, ...] = (
    "war", "dynasty", "conflict", "expedition", "reign", "siege", "journey", "campaign", "treaty", "marriage",
    "rivalry", "project", "revolt", "kingdom", "voyage", "drought", "famine", "plague", "occupation", "alliance",
)  # fmt: skip

__all__ = ["CENTURIES", "NOUNS", "TEMPLATE", "greater_than_dataset", "valid_years", "year_token_ids"]


def year_token_ids(tokenizer: Any) -> Int[Tensor, "100"]:
    """The token ids of "00", "01", ..., "99" (no leading space: the token after " XX"); a `ValueError` when one
    of them is not a single token."""
    enc = TextEncoder(tokenizer)
    return torch.tensor([enc.single_token(f"{yy:02d}", "tokenizer", leading_space=False) for yy in range(100)])


def valid_years(tokenizer: Any, centuries: Sequence[int] = CENTURIES) -> list[tuple[int, int]]:
    """`(XX, YY)` with YY in 02..98 whose " XXYY" and " XX01" both tokenise as " XX" + one two-digit token."""
    enc = TextEncoder(tokenizer)
    out = []
    for xx in centuries:
        century = enc.encode(f" {xx}")
        if len(century) != 1:
            continue
        ok01 = enc.encode(f" {xx}01") == century + enc.encode("01")
        for yy in range(2, 99):
            if (
                ok01
                and enc.encode(f" {xx}{yy:02d}") == century + enc.encode(f"{yy:02d}")
                and len(enc.encode(f"{yy:02d}")) == 1
            ):
                out.append((xx, yy))
    return out


def greater_than_dataset(
    tokenizer: Any,
    n: int = 100,
    *,
    nouns: Sequence[str] = NOUNS,
    centuries: Sequence[int] = CENTURIES,
    prepend_bos: bool = True,
    bos_token_id: int | None = None,
    seed: int = 0,
) -> PromptSet:
    """`n` greater-than prompts, the corruption `"01"` (YY -> 01) and positions XX1, YY, END.

    `answers["YY"]` holds YY (0..99); `meta["year_ids"]` the ids of "00".."99" for
    `metrics.greater_than_prob_diff`. Years are drawn uniformly from `valid_years(tokenizer, centuries)`; a
    `ValueError` when none tokenises as XX + YY (e.g. a word-level tokenizer). Cost: O(n) prompt encodings.
    """
    enc = TextEncoder(tokenizer)
    n = checked_int(n, "n", 1, "a positive number of prompts")
    nouns = list(nouns)
    if not nouns or not all(isinstance(w, str) and w.strip() for w in nouns):
        raise ValueError(f"nouns: expected non-empty words; got {nouns}")
    bad = [c for c in centuries if isinstance(c, bool) or not isinstance(c, int) or not 10 <= c <= 99]
    if bad or not centuries:
        raise ValueError(f"centuries: expected two-digit ints such as 11..17; got {list(centuries)}")
    years = valid_years(enc, centuries)
    if not years:
        raise ValueError(
            f"tokenizer: no year of the centuries {list(centuries)} tokenises as ' XX' + 'YY' (two tokens); the "
            "greater-than task needs a tokenizer that splits years that way, such as GPT-2's"
        )
    year_ids = year_token_ids(enc)
    bos, pad = enc.bos_and_pad(prepend_bos, bos_token_id)
    off = int(prepend_bos)
    rng = random.Random(seed)
    rows, corrupt, pos, texts, yys = [], [], [], [], []
    for _ in range(n):
        xx, yy = rng.choice(years)
        noun = rng.choice(nouns)
        text = TEMPLATE.format(noun=noun, xx=xx, yy=f"{yy:02d}")
        ids = enc.encode(text)
        head = text[: text.index(f" {xx}{yy:02d}")]
        k = len(enc.encode(head))
        if ids[:k] != enc.encode(head) or ids[k + 1] != int(year_ids[yy]):
            raise ValueError(
                f"tokenizer: {text!r} does not split as ... ' {xx}' '{yy:02d}' ...; positions would be wrong"
            )
        full = ([bos] if prepend_bos else []) + ids
        where = {"XX1": k + off, "YY": k + 1 + off, "END": len(ids) - 1 + off}
        c = list(full)
        c[where["YY"]] = int(year_ids[1])
        rows.append(full)
        corrupt.append(c)
        pos.append(where)
        texts.append(text)
        yys.append(yy)
    clean, lengths = pad_right(rows, pad)
    return PromptSet(
        task="greater_than",
        clean=clean,
        corrupted={"01": pad_right(corrupt, pad)[0]},
        positions={k: torch.tensor([p[k] for p in pos]) for k in ("XX1", "YY", "END")},
        answers={"YY": torch.tensor(yys)},
        lengths=lengths,
        texts=texts,
        pad_token_id=int(pad),
        meta={"year_ids": year_ids.tolist(), "seed": seed, "prepend_bos": prepend_bos},
    )
