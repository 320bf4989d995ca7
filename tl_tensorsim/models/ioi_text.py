"""The sentence material of indirect object identification (Wang et al. 2022, arXiv 2211.00593): the 15 BABA
templates of the paper's dataset, their ABBA mirrors, single-token first names, places and objects; and the
vocabulary of a word-level tokenizer that covers all of it.

It lives with the models because both the IOI prompt sets (`tl_tensorsim.circuits.datasets.ioi`) and the small IOI
model the project trains (`tl_tensorsim.models.ioi`) read it, and models may not import circuits.

`DUPLICATE_FIRST_TEMPLATES` are extra training templates (this project's, not the paper's) in which the subject
occurs twice before the indirect object ("[B] ... [B] met [A] ... to [A]"): in the paper's templates the repeated
name is always the last name before the answer, so a model trained only on them can answer by suppressing the most
recent name; with these in the mix it has to find the name that occurs twice.
"""

from __future__ import annotations

import re

# The 15 BABA templates of the IOI dataset ([B] = subject S, [A] = indirect object IO); the answer is the last [A].
BABA_TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)


def mirror(template: str) -> str:
    """The ABBA version of a BABA template: the first `[B]` and the first `[A]` exchanged."""
    i, j = template.index("[B]"), template.index("[A]")
    a, b = sorted((i, j))
    first, second = template[a : a + 3], template[b : b + 3]
    return template[:a] + second + template[a + 3 : b] + first + template[b + 3 :]


ABBA_TEMPLATES: tuple[str, ...] = tuple(mirror(t) for t in BABA_TEMPLATES)

# first names from the IOI dataset; each is one GPT-2 token with its leading space (checked in the tests)
NAMES: tuple[str, ...] = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel", "David",
    "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah", "William",
    "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam",
    "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren",
    "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen", "Patrick", "Sean",
    "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul", "Angela", "Tyler", "Scott",
    "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen",
    "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia",
    "Cody", "Allison", "Bradley", "Samuel",
)  # fmt: skip
PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")

DUPLICATE_FIRST_TEMPLATES: tuple[str, ...] = (
    "Then, [B] went to the [PLACE], and there [B] met [A]. The [OBJECT] went to [A]",
    "After [B] left the [PLACE], [B] called [A]. A [OBJECT] was sent to [A]",
    "When [B] was at the [PLACE], [B] saw [A] and gave a [OBJECT] to [A]",
    "While [B] was working at the [PLACE], [B] met [A]. The [OBJECT] was for [A]",
)
SLOTS: tuple[str, ...] = ("[A]", "[B]", "[PLACE]", "[OBJECT]")
_WORD = re.compile(r"\w+|[^\w\s]+")

__all__ = [
    "ABBA_TEMPLATES",
    "BABA_TEMPLATES",
    "DUPLICATE_FIRST_TEMPLATES",
    "NAMES",
    "OBJECTS",
    "PLACES",
    "SLOTS",
    "mirror",
    "split_words",
    "vocabulary",
]


def split_words(text: str) -> list[str]:
    """`text` split into words and punctuation runs (`\\w+|[^\\w\\s]+`), the pre-tokenisation of the IOI model's
    word-level tokenizer (`tokenizers.pre_tokenizers.Whitespace`)."""
    return _WORD.findall(text)


def vocabulary(templates: tuple[str, ...] = BABA_TEMPLATES + DUPLICATE_FIRST_TEMPLATES) -> list[str]:
    """Every word of `templates` (slots removed; mirrors have the same words), `NAMES`, `PLACES` and `OBJECTS`,
    sorted: the word list of the IOI model's tokenizer."""
    words = set(NAMES) | set(PLACES) | set(OBJECTS)
    for t in templates:
        for slot in SLOTS:
            t = t.replace(slot, " ")
        words.update(split_words(t))
    return sorted(words)
