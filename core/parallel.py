"""Worker processes for the pure-Python per-document work of ingest and quality scoring.

Processes, not threads (the work holds the GIL), started with 'spawn' so that no DuckDB or torch thread is
forked. A spawned worker re-runs its parent's `__main__` file; inside Streamlit or AppTest that is a page
script, which must not run again in a worker, so `__main__` is a bare module while the pool lives.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import types
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor


def default_workers(requested: int = 0) -> int:
    """`requested` if positive, else one per core (at most 4)."""
    return requested if requested > 0 else max(1, min(os.cpu_count() or 1, 4))


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    finally:
        if main is not None:
            sys.modules["__main__"] = main
