"""Every NDM test runs on one torch thread: the problems are small, and on a loaded 2-core machine a second
thread makes them many times slower."""

from __future__ import annotations

import pytest

from tl_tensorsim.training import limit_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with limit_threads(1):
        yield
