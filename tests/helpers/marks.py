"""Marks shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

__all__ = ["LONG_RUN"]

F = TypeVar("F", bound=Callable)


def LONG_RUN(test: F) -> F:  # noqa: N802  (read as a mark)
    """A long end-to-end run (a real training, DDP, a sweep, a killed and resumed run): in the `slow` suite
    (`pytest -m slow`, which CI also runs), with the time a 2-core machine without bf16 needs, so the default
    suite answers in minutes and keeps its tight per-test timeout."""
    return pytest.mark.slow(pytest.mark.timeout(600)(test))
