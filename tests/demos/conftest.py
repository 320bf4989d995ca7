"""Fixtures shared by the demo runner's tests."""

from __future__ import annotations

import pytest

from tl_tensorsim import demos


@pytest.fixture
def calls(monkeypatch):
    """Replace every demo's `run` by a recorder, so that a test can see whether any demo started."""
    seen: list[str] = []
    for module in demos.available():
        name = module.__name__.rsplit(".", 1)[-1]
        monkeypatch.setattr(module, "run", lambda report, full=False, _n=name: seen.append(_n) or {})
    return seen
