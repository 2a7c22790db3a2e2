"""One background thread that removes expired entries from every live cache.

Lazy expiry alone would keep memory for entries nobody reads again. The sweeper
wakes once a second and asks each cache to sweep; a cache sweeps in bounded
rounds, releasing its lock between rounds, so no caller waits more than a few
milliseconds. Caches are held weakly: a cache that is garbage is not kept alive.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Protocol

log = logging.getLogger("shoal")

INTERVAL = 1.0


class Sweepable(Protocol):
    def sweep(self) -> int: ...


_caches: weakref.WeakSet[Sweepable] = weakref.WeakSet()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def register(cache: Sweepable) -> None:
    global _thread
    with _lock:
        _caches.add(cache)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="shoal-sweeper", daemon=True)
            _thread.start()


def _run() -> None:
    wake = threading.Event()
    while not wake.wait(INTERVAL):
        for cache in list(_caches):
            try:
                cache.sweep()
            except Exception:  # a sweep must never kill the thread for the others
                log.exception("sweeping a cache failed")
