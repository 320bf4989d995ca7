"""`limit_threads`: run a block with fewer torch intra-op threads, restoring the setting afterwards.

The paper models are tiny (matmuls of 512 x 64 x 113): extra threads only add synchronisation, and on a
shared, loaded 2-core machine they made a training step 30-90x slower (1-2 ms with one thread, 35-100 ms with two).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def limit_threads(n: int | None = 1) -> Iterator[None]:
    """Use at most `n` intra-op threads inside the block (None: leave the setting alone)."""
    before = torch.get_num_threads()
    if n is not None and n < before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
