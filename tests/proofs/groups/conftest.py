"""The group proofs work on small tensors: one torch thread."""

from __future__ import annotations

import pytest

from tl_tensorsim.training import limit_threads


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    with limit_threads(1):
        yield
