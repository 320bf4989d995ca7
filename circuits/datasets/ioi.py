"""Indirect object identification (IOI) prompts (Wang et al. 2022, arXiv 2211.00593), for any tokenizer.

"When Mary and John went to the store, John gave a drink to" -> " Mary": the subject S (John) occurs twice, the
indirect object IO (Mary) once; the model should predict IO at the last position END. The 15 BABA templates of the
paper's dataset ("[B] and [A] ... [B] gave ... to [A]") and their ABBA mirrors (the first clause's two names
swapped) are filled with single-token names, places and objects.

Corruptions (token substitutions at the name positions, so every position stays aligned with the clean prompt):

- `"swap"`: the IO and S1 name tokens exchanged (ABBA <-> BABA; the NDM paper's tests 1, 2 and 3-pos);
- `"s_name"`: S1 and S2 become the IO name, IO becomes the S name (the paper's test 3-S_name);
- `"random"`: IO, S1 and S2 become three distinct other names (ABB -> XYZ, as in ACDC).

Answers stay the clean prompt's (`answers["IO"]`, `answers["S"]`), so a metric measured on any run compares the
same two tokens.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal

import torch

from tl_tensorsim.checks import check_choice, checked_int
from tl_tensorsim.models.ioi_text import ABBA_TEMPLATES, BABA_TEMPLATES, NAMES, OBJECTS, PLACES, mirror, split_words

from .base import PromptSet
from .tokens import TextEncoder, pad_right

PromptType = Literal["ABBA", "BABA", "mixed"]
Corruption = Literal["swap", "s_name", "random"]
CORRUPTIONS: tuple[str, ...] = ("swap", "s_name", "random")

_SLOT = re.compile(r"(\[A\]|\[B\]|\[PLACE\]|\[OBJECT\])")

__all__ = ["ABBA_TEMPLATES", "BABA_TEMPLATES", "CORRUPTIONS", "NAMES", "OBJECTS", "PLACES", "ioi_dataset", "mirror"]


def _render(template: str, fill: dict[str, str]) -> tuple[str, list[tuple[str, int]]]:
    """The prompt (template without its final ` [A]`) and `(slot, char index of the space before it)` per name."""
    body = template[: template.rindex(" [A]")]
    text, slots = "", []
    for piece in _SLOT.split(body):
        if piece in ("[A]", "[B]"):
            if not text.endswith(" "):
                raise ValueError(f"templates: a name must follow a space; got {template!r}")
            slots.append((piece, len(text) - 1))
            text += fill[piece]
        elif piece in ("[PLACE]", "[OBJECT]"):
            text += fill[piece]
        else:
            text += piece
    return text, slots


def _locate(enc: TextEncoder, text: str, ids: list[int], char: int, token: int, name: str) -> int:
    """The token index of the name whose leading space is at `text[char]`, checked against the full encoding."""
    prefix = enc.encode(text[:char])
    k = len(prefix)
    if ids[:k] != prefix or k >= len(ids) or ids[k] != token:
        raise ValueError(
            f"tokenizer: in {text!r} the name {name!r} is not one token after the encoding of {text[:char]!r}; "
            "the tokenizer merges it with its neighbours, so its position would be wrong"
        )
    return k


def _squash(text: str) -> str:
    """`text` without whitespace, NFKC-normalised and case-folded: what a tokenizer that normalises text (lower
    case, unicode forms) still gives back for a word it knows."""
    return unicodedata.normalize("NFKC", "".join(text.split())).casefold()


def _unknown_word(enc: TextEncoder, text: str) -> str | None:
    """A word of `text` that this tokenizer does not round-trip (encode, then decode: the text back, spaces aside),
    i.e. one it maps to an unknown-word token; None when the whole text round-trips."""
    if _squash(enc.decode(enc.encode(text))) == _squash(text):
        return None
    for word in text.split():
        if _squash(enc.decode(enc.encode(" " + word))) != _squash(word):
            pieces = [p for p in split_words(word) if _squash(enc.decode(enc.encode(" " + p))) != _squash(p)]
            return pieces[0] if pieces else word
    return text


def _check_vocabulary(
    enc: TextEncoder, templates: Sequence[str], names: list[str], places: list[str], objects: list[str]
) -> None:
    """Every template word, place and object must survive the tokenizer (a word-level tokenizer maps a word it
    lacks to its unknown token, often also the BOS / pad id): each template filled with the first place and object,
    and each place and object in the first template that has its slot. A `ValueError` names the argument and the
    word."""
    fill = {"[A]": names[0], "[B]": names[1], "[PLACE]": places[0], "[OBJECT]": objects[0]}
    texts = [(_render(t, fill)[0], t) for t in templates]
    for slot, words in (("[PLACE]", places), ("[OBJECT]", objects)):
        template = next((t for t in templates if slot in t[: t.rindex(" [A]")]), None)
        if template is not None:  # a slot no template uses needs no words
            texts += [(_render(template, {**fill, slot: w})[0], template) for w in words]
    for text, template in texts:
        word = _unknown_word(enc, text)
        if word is None:
            continue
        argument = next((arg for arg, ws in (("places", places), ("objects", objects))
                         if any(word == w or word in split_words(w) for w in ws)), "templates")  # fmt: skip
        where = f"of {template!r}" if argument == "templates" else f"in {text!r}"
        raise ValueError(
            f"{argument}: the word {word!r} {where} is not in this tokenizer's vocabulary (it does not survive "
            "encoding and decoding: an unknown-word token); use words the tokenizer knows (for a word-level "
            f"tokenizer, words of its vocabulary), or drop {word!r}"
        )


def ioi_dataset(
    tokenizer: Any,
    n: int = 100,
    prompt_type: PromptType = "mixed",
    *,
    names: Sequence[str] = NAMES,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
    templates: Sequence[str] = BABA_TEMPLATES,
    prepend_bos: bool = True,
    bos_token_id: int | None = None,
    seed: int = 0,
) -> PromptSet:
    """`n` IOI prompts with their three corruptions and positions IO, IO+1, S1, S1+1, S2, END.

    Args:
        tokenizer: any tokenizer (`TextEncoder` takes a HF tokenizer, a `tokenizers.Tokenizer`, or an object with
            `encode` / `decode`). Every name must be one token with its leading space, and every template word,
            place and object must survive encoding and decoding, i.e. be in a word-level tokenizer's vocabulary
            (`ValueError` naming it).
        prompt_type: `"BABA"` (the templates as given), `"ABBA"` (their mirrors) or `"mixed"` (each prompt either,
            with probability 1/2).
        templates: BABA templates with `[A]` (IO), `[B]` (S), `[PLACE]`, `[OBJECT]`, ending in ` [A]`.
        prepend_bos: put the tokenizer's BOS (or `bos_token_id`) first, as the NDM paper's runs do.
    Returns a `PromptSet` (task `"ioi"`) right-padded to the longest template; `meta["prompt_type"]` and
    `meta["template"]` per prompt. Cost: O(n) encodings of prompt prefixes.
    """
    enc = TextEncoder(tokenizer)
    n = checked_int(n, "n", 1, "a positive number of prompts")
    check_choice(prompt_type, PromptType, "prompt_type")
    names, places, objects = list(names), list(places), list(objects)
    if len(set(names)) < 5:
        raise ValueError(
            f"names: expected at least 5 distinct names (the random corruption needs 3 new ones); got {names}"
        )
    if not places or not objects or not templates:
        raise ValueError("places, objects, templates: expected non-empty lists")
    for t in templates:
        if not t.endswith(" [A]") or t.count("[A]") != 2 or t.count("[B]") != 2:
            raise ValueError(f"templates: expected BABA templates with two [A], two [B], ending in ' [A]'; got {t!r}")
    name_ids = {nm: enc.single_token(nm, "names") for nm in names}
    if len(set(name_ids.values())) != len(name_ids):
        raise ValueError("names: two names map to the same token under this tokenizer")
    _check_vocabulary(enc, templates, names, places, objects)
    bos, pad = enc.bos_and_pad(prepend_bos, bos_token_id)
    rng = random.Random(seed)
    off = int(prepend_bos)
    rows, corrupt, pos, texts, types, tmpl_ids, io_ids, s_ids = [], {c: [] for c in CORRUPTIONS}, [], [], [], [], [], []
    for _ in range(n):
        t_idx = rng.randrange(len(templates))
        kind = prompt_type if prompt_type != "mixed" else rng.choice(("ABBA", "BABA"))
        template = templates[t_idx] if kind == "BABA" else mirror(templates[t_idx])
        io, s = rng.sample(names, 2)
        fill = {"[A]": io, "[B]": s, "[PLACE]": rng.choice(places), "[OBJECT]": rng.choice(objects)}
        text, slots = _render(template, fill)
        ids = enc.encode(text)
        where = {}
        for slot, char in slots:
            nm = fill[slot]
            k = _locate(enc, text, ids, char, name_ids[nm], nm) + off
            key = "IO" if slot == "[A]" else ("S1" if "S1" not in where else "S2")
            where[key] = k
        where.update({"IO+1": where["IO"] + 1, "S1+1": where["S1"] + 1, "END": len(ids) - 1 + off})
        full = ([bos] if prepend_bos else []) + ids
        x, y, z = rng.sample([nm for nm in names if nm not in (io, s)], 3)
        swapped = list(full)
        swapped[where["IO"]], swapped[where["S1"]] = full[where["S1"]], full[where["IO"]]
        s_name = list(full)
        s_name[where["S1"]] = s_name[where["S2"]] = name_ids[io]
        s_name[where["IO"]] = name_ids[s]
        rand = list(full)
        rand[where["IO"]], rand[where["S1"]], rand[where["S2"]] = name_ids[x], name_ids[y], name_ids[z]
        for c, r in zip(CORRUPTIONS, (swapped, s_name, rand)):
            corrupt[c].append(r)
        rows.append(full)
        pos.append(where)
        texts.append(text)
        types.append(kind)
        tmpl_ids.append(t_idx)
        io_ids.append(name_ids[io])
        s_ids.append(name_ids[s])
    clean, lengths = pad_right(rows, pad)
    return PromptSet(
        task="ioi",
        clean=clean,
        corrupted={c: pad_right(r, pad)[0] for c, r in corrupt.items()},
        positions={k: torch.tensor([p[k] for p in pos]) for k in ("IO", "IO+1", "S1", "S1+1", "S2", "END")},
        answers={"IO": torch.tensor(io_ids), "S": torch.tensor(s_ids)},
        lengths=lengths,
        texts=texts,
        pad_token_id=int(pad),
        meta={"prompt_type": types, "template": tmpl_ids, "seed": seed, "prepend_bos": prepend_bos},
    )
