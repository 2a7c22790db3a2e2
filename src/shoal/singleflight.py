"""One load per key at a time, however many callers miss on it together.

Threads and asyncio tasks share one table of flights, so a burst that mixes
sync views and async handlers in one process still calls the loader once. The
first caller to miss becomes the leader and runs the loader; everyone else who
arrives while it runs waits on the leader's future and gets the same value, or
the same exception. The flight ends when the leader finishes, after it has
stored the value, so a caller arriving later finds it in the cache.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from concurrent.futures import Future
from typing import Any


class Flights:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Future[Any]] = {}

    def join(self, key: Hashable) -> tuple[Future[Any], bool]:
        """The flight for key and whether the caller leads it (must ``land`` it)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Future()
            return flight, True

    def land(
        self, key: Hashable, flight: Future[Any], value: Any = None, error: BaseException | None = None
    ) -> None:
        """End the leader's flight: every waiter gets value, or error raised."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        if error is not None:
            flight.set_exception(error)
        else:
            flight.set_result(value)

    def __len__(self) -> int:
        return len(self._flights)
