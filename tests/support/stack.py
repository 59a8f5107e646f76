"""Run a call with little of Python's stack left, as a deeply nested caller would leave it.

A parser whose recursion is bounded far below the recursion limit can still meet
``RecursionError`` when it is called from deep inside other code; its boundary must turn
that into its own error like any other failure.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def with_frames_left(frames: int, call: Callable[[], T]) -> T:
    """``call()`` with only about ``frames`` Python frames left before the recursion limit."""
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        return call()
    finally:
        sys.setrecursionlimit(limit)
