"""One intra-op thread for the interaction-basis tests: their tensors are tiny, and on a shared machine a second
thread costs more in synchronisation than it gains."""

from __future__ import annotations

import pytest

from tl_tensorsim.training import limit_threads


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    with limit_threads(1):
        yield
