"""The progress callback every long step accepts, so the CLI, the pages and the tests report the same way."""

from __future__ import annotations

from collections.abc import Callable

# progress(fraction, message): fraction in [0, 1], or negative when the total is not known yet.
Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """The default callback: says nothing."""
