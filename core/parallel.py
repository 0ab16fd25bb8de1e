"""Worker processes for the pure-Python per-document work of ingest and quality scoring.

Processes, not threads (the work holds the GIL), started with 'spawn' so that no DuckDB or torch thread is
forked. A spawned worker re-runs its parent's `__main__` file; inside Streamlit or AppTest that is a page
script, which must not run again in a worker, so `__main__` is a bare module while the pool lives.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor


def default_workers(requested: int = 0) -> int:
    """`requested` if positive, else one per core (at most 4)."""
    return requested if requested > 0 else max(1, min(os.cpu_count() or 1, 4))


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG); False elsewhere.
    Safe in a `preexec_fn`: the setting survives exec."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process when `parent_pid` dies, even by SIGKILL (which a parent cannot
    forward). The kernel's death signal where there is one, and a thread that watches the parent's pid (a
    re-parented process gets a new one) everywhere, in case the signal was missed or is not available."""
    set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the death signal was set
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            yield pool
    finally:
        if main is not None:
            sys.modules["__main__"] = main
