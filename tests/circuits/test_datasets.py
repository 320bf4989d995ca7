"""The circuit datasets against the real GPT-2 tokenizer and a word-level one: positions, corruptions, padding."""

from __future__ import annotations

import pytest
import torch

from tl_tensorsim.circuits.datasets import (
    ABBA_TEMPLATES,
    BABA_TEMPLATES,
    NAMES,
    TextEncoder,
    greater_than_dataset,
    induction_dataset,
    ioi_dataset,
    valid_years,
)


def test_gpt2_tokenizer_fidelity(gpt2_tok):
    enc = TextEncoder(gpt2_tok)
    assert len(gpt2_tok) == 50257 and enc.bos_token_id == 50256
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode(" Mary") == [5335] and enc.encode(" John") == [1757]
    assert len(NAMES) == len(set(NAMES)) == 99
    assert all(len(enc.encode(" " + n)) == 1 for n in NAMES)


def _check_ioi(ds, enc, bos):
    off = 1 if bos is not None else 0
    for b in range(len(ds)):
        n = int(ds.lengths[b])
        row = ds.clean[b, :n].tolist()
        assert (row[0] == bos) if off else True
        assert row[off:] == enc.encode(ds.texts[b])  # the stored tokens are the text's own encoding
        assert bool((ds.clean[b, n:] == ds.pad_token_id).all())
        p = {k: int(v[b]) for k, v in ds.positions.items()}
        io, s = int(ds.answers["IO"][b]), int(ds.answers["S"][b])
        assert row[p["IO"]] == io and row[p["S1"]] == s and row[p["S2"]] == s
        assert p["IO+1"] == p["IO"] + 1 and p["S1+1"] == p["S1"] + 1 and p["END"] == n - 1
        assert p["S2"] > max(p["IO"], p["S1"])
        assert (p["IO"] < p["S1"]) == (ds.meta["prompt_type"][b] == "ABBA")
        for name, t in ds.corrupted.items():
            c = t[b, :n].tolist()
            # token substitution at the name slots = the encoding of the corrupted text (positions aligned)
            assert c[off:] == enc.encode(enc.decode(c[off:])), name
            diff = {i for i in range(n) if c[i] != row[i]}
            assert diff <= {p["IO"], p["S1"], p["S2"]}, name
        sw, sn, rnd = (ds.corrupted[k][b].tolist() for k in ("swap", "s_name", "random"))
        assert sw[p["IO"]] == s and sw[p["S1"]] == io and sw[p["S2"]] == s
        assert sn[p["IO"]] == s and sn[p["S1"]] == io and sn[p["S2"]] == io
        assert len({rnd[p["IO"]], rnd[p["S1"]], rnd[p["S2"]], io, s}) == 5


@pytest.mark.parametrize("which", ["gpt2", "word"])
def test_ioi_positions_and_corruptions(which, request):
    tok = request.getfixturevalue("gpt2_tok" if which == "gpt2" else "word_tok")
    enc = TextEncoder(tok)
    ds = ioi_dataset(tok, 60, "mixed", seed=3)
    assert set(ds.meta["prompt_type"]) == {"ABBA", "BABA"}
    assert len(set(ds.lengths.tolist())) > 2  # templates of different lengths, right-padded
    _check_ioi(ds, enc, enc.bos_token_id)
    nob = ioi_dataset(tok, 10, "BABA", prepend_bos=False, seed=4)
    assert set(nob.meta["prompt_type"]) == {"BABA"}
    _check_ioi(nob, enc, None)
    # the mask marks exactly the named positions
    m = ds.mask(["IO+1", "S1+1"])
    assert m.sum() == 2 * len(ds) and bool(m[torch.arange(len(ds)), ds.positions["S1+1"]].all())
    sub = ds.subset(slice(0, 5))
    assert len(sub) == 5 and sub.clean.shape[1] == int(ds.lengths[:5].max())


def test_templates():
    assert len(BABA_TEMPLATES) == len(ABBA_TEMPLATES) == 15
    assert ABBA_TEMPLATES[0] == "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    assert ABBA_TEMPLATES[13] == "The [PLACE] [A] and [B] went to had a [OBJECT]. [B] gave it to [A]"


def test_ioi_rejects_names_that_are_not_one_token(gpt2_tok, word_tok):
    with pytest.raises(ValueError, match=r"names: ' Xyzzyplugh' is \d+ tokens"):
        ioi_dataset(gpt2_tok, 4, names=[*NAMES[:10], "Xyzzyplugh"])
    with pytest.raises(ValueError, match="names: 'Zebedee' is not in this tokenizer's vocabulary"):
        ioi_dataset(word_tok, 4, names=[*NAMES[:10], "Zebedee"])
    with pytest.raises(ValueError, match="prompt_type: expected one of"):
        ioi_dataset(gpt2_tok, 4, "ABC")
    with pytest.raises(ValueError, match="n: expected a positive number"):
        ioi_dataset(gpt2_tok, 0)
    with pytest.raises(TypeError, match="tokenizer: expected a tokenizer"):
        ioi_dataset(object(), 4)


def test_greater_than(gpt2_tok, word_tok):
    enc = TextEncoder(gpt2_tok)
    ds = greater_than_dataset(gpt2_tok, 40, seed=1)
    years = valid_years(gpt2_tok)
    assert all(11 <= xx <= 17 and 2 <= yy <= 98 for xx, yy in years) and len(years) > 300
    ids = torch.tensor(ds.meta["year_ids"])
    for b in range(len(ds)):
        row, p = ds.clean[b].tolist(), {k: int(v[b]) for k, v in ds.positions.items()}
        yy = int(ds.answers["YY"][b])
        assert row[1:] == enc.encode(ds.texts[b])
        assert row[p["YY"]] == int(ids[yy]) and enc.decode([row[p["XX1"]]]) == enc.decode([row[p["END"]]])
        assert ds.texts[b].endswith(f"{enc.decode([row[p['XX1']]])}{yy:02d} to the year{enc.decode([row[-1]])}")
        c = ds.corrupted["01"][b].tolist()
        assert c[p["YY"]] == int(ids[1]) and [i for i in range(len(c)) if c[i] != row[i]] == [p["YY"]]
        assert c[1:] == enc.encode(enc.decode(c[1:]))
    with pytest.raises(ValueError, match="tokenizer: no year of the centuries"):
        greater_than_dataset(word_tok, 4)


def test_induction_dataset():
    ds = induction_dataset(list(range(3, 40)), n=6, length=8, bos_token_id=0, seed=2)
    a = ds.clean[:, 1:9]
    assert bool((ds.clean[:, 0] == 0).all()) and torch.equal(ds.clean[:, 9:], a)
    assert all(len(set(r.tolist())) == 8 for r in a)
    assert torch.equal(ds.clean.gather(1, ds.positions["queries"] + 1), ds.answers["next"])
    assert torch.equal(ds.clean.gather(1, ds.positions["keys"] - 1), ds.clean.gather(1, ds.positions["queries"]))
    r = ds.corrupted["relabel"]
    for b in range(6):  # a consistent relabelling: same repeat structure
        m = dict(zip(ds.clean[b].tolist(), r[b].tolist()))
        assert [m[t] for t in ds.clean[b].tolist()] == r[b].tolist() and len(set(m.values())) == len(m)
    assert ds.mask("keys").sum() == 6 * 7
    with pytest.raises(ValueError, match="vocab: expected at least length=8"):
        induction_dataset(5, n=2, length=8)


def test_to_hf_dataset(word_tok):
    ds = ioi_dataset(word_tok, 6, seed=1)
    hf = ds.to_hf_dataset()
    assert len(hf) == 6 and hf[2]["text"] == ds.texts[2] and hf[2]["END"] == int(ds.positions["END"][2])
    assert hf[2]["clean"] == ds.clean[2, : ds.lengths[2]].tolist()
    assert hf[2]["corrupted_swap"][hf[2]["IO"]] == int(ds.answers["S"][2])


def test_subset_takes_a_boolean_mask(word_tok):
    ds = ioi_dataset(word_tok, 12, seed=2)
    mask = ds.lengths == ds.lengths.max()
    assert 0 < int(mask.sum()) < len(ds)
    for index in (mask, mask.tolist()):
        sub = ds.subset(index)
        assert sub.texts == [t for t, keep in zip(ds.texts, mask.tolist()) if keep]
        assert torch.equal(sub.clean, ds.clean[mask]) and torch.equal(sub.positions["END"], ds.positions["END"][mask])
        assert sub.meta["template"] == [t for t, keep in zip(ds.meta["template"], mask.tolist()) if keep]
    assert ds.subset(torch.tensor([3, 1])).texts == [ds.texts[3], ds.texts[1]]  # indices as before
    with pytest.raises(ValueError, match=r"index: expected a boolean mask of shape \[12\].*got shape \[11\]"):
        ds.subset(mask[:11])
    with pytest.raises(ValueError, match="index: selects no prompts"):
        ds.subset(torch.zeros(12, dtype=torch.bool))


def test_ioi_rejects_places_objects_and_template_words_outside_the_vocabulary(word_tok, gpt2_tok):
    from tl_tensorsim.models.ioi import ioi_tokenizer

    model_tok = ioi_tokenizer()  # the IOI model's word-level tokenizer: unknown words become its BOS / pad id
    for tok in (word_tok, model_tok):
        with pytest.raises(ValueError, match=r"places: the word 'moon' in .* not in this tokenizer's vocabulary"):
            ioi_dataset(tok, 2, places=["store", "moon"])
        with pytest.raises(ValueError, match=r"objects: the word 'spaceship' in .* drop 'spaceship'"):
            ioi_dataset(tok, 2, objects=["spaceship"])
        with pytest.raises(ValueError, match=r"templates: the word 'Yesterday' of 'Yesterday, \[B\] and"):
            ioi_dataset(tok, 2, templates=["Yesterday, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]"])
    ds = ioi_dataset(model_tok, 20, seed=0)  # the shipped words all pass
    unk = model_tok.unk_token_id
    assert all(unk not in ds.clean[b, 1 : int(ds.lengths[b])].tolist() for b in range(len(ds)))
    # GPT-2's byte-level BPE spells any word: "moon" and "spaceship" are fine there
    moon = ioi_dataset(gpt2_tok, 2, places=["moon"], objects=["spaceship"], templates=BABA_TEMPLATES[:1])
    assert "moon" in moon.texts[0] and "spaceship" in moon.texts[0]


def test_vocabulary_check_accepts_a_tokenizer_that_lowercases():
    """A tokenizer that normalises text (lower case) gives every word back changed but known: not an unknown word."""
    from tl_tensorsim.circuits.datasets.ioi import _unknown_word

    class Lowercasing:
        def encode(self, text):
            return list(text.lower().encode())

        def decode(self, ids):
            return bytes(ids).decode()

    assert _unknown_word(Lowercasing(), "Then, Mary and John went to the Store") is None
