"""Tensor-network tests use tiny tensors: one intra-op thread is fastest, and keeps them fast on a loaded machine."""

from __future__ import annotations

import pytest

from tl_tensorsim.training import limit_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with limit_threads(1):
        yield
