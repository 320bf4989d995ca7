"""Repeated random tokens, the induction probe: BOS + A + A with A a sequence of `length` distinct random tokens.

In the second copy each token's successor is predictable only by induction (find the earlier occurrence, copy
the token after it). Positions: `keys` `[batch, length - 1]`, the first-copy positions 2..length whose previous
token the induction heads' keys must encode; `queries` `[batch, length - 1]`, the second-copy positions
length + 1..2 length - 1 that predict the next token (counted with the BOS). The corruption `"relabel"` maps every
token of a sequence through a random permutation of the vocabulary ids (same positions, same repeat structure,
different tokens), so that interchanging a subspace from it replaces *which* token was seen, not whether.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tl_tensorsim.checks import checked_int

from .base import PromptSet

__all__ = ["induction_dataset"]


def induction_dataset(
    vocab: int | Sequence[int], n: int = 100, length: int = 20, *, bos_token_id: int | None = None, seed: int = 0
) -> PromptSet:
    """`n` sequences BOS + A + A (A: `length` distinct ids drawn from `vocab`, an int `d` for ids 0..d-1 or a list
    of ids), the corruption `"relabel"`, positions `keys` / `queries` and `answers["next"]` `[batch, length - 1]`
    (the token each query should predict). `bos_token_id` None: no BOS (positions shift by one). Cost O(n length).
    """
    ids = torch.arange(checked_int(vocab, "vocab", 2, "a vocabulary size >= 2")) if isinstance(vocab, int) else (
        torch.as_tensor(list(vocab), dtype=torch.long))  # fmt: skip
    n = checked_int(n, "n", 1, "a positive number of sequences")
    length = checked_int(length, "length", 2, "an int >= 2")
    if len(ids.unique()) != len(ids) or len(ids) < length:
        raise ValueError(f"vocab: expected at least length={length} distinct token ids; got {len(ids)} ids")
    if bos_token_id is not None and bool((ids == bos_token_id).any()):
        raise ValueError(f"bos_token_id: {bos_token_id} is also in vocab; the BOS must not occur in A")
    g = torch.Generator().manual_seed(seed)
    a = torch.stack([ids[torch.randperm(len(ids), generator=g)[:length]] for _ in range(n)])
    perm = torch.stack([ids[torch.randperm(len(ids), generator=g)] for _ in range(n)])  # id ids[j] -> perm[:, j]
    index = torch.searchsorted(ids.sort().values, a)
    relabelled = torch.gather(perm[:, ids.argsort()], 1, index)
    off = int(bos_token_id is not None)
    head = torch.full((n, off), bos_token_id if bos_token_id is not None else 0, dtype=torch.long)
    clean = torch.cat([head, a, a], 1)
    corrupted = torch.cat([head, relabelled, relabelled], 1)
    keys = torch.arange(off + 1, off + length).expand(n, -1)
    queries = torch.arange(off + length, off + 2 * length - 1).expand(n, -1)
    return PromptSet(
        task="induction",
        clean=clean,
        corrupted={"relabel": corrupted},
        positions={"keys": keys.clone(), "queries": queries.clone()},
        answers={"next": a[:, 1:].clone()},
        lengths=torch.full((n,), clean.shape[1], dtype=torch.long),
        texts=[" ".join(map(str, r.tolist())) for r in clean],
        pad_token_id=int(bos_token_id if bos_token_id is not None else 0),
        meta={"seed": seed, "length": length},
    )
