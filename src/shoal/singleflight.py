"""One load per key at a time, however many callers miss on it together; on a Node, one per cluster.

Threads and asyncio tasks share one table of flights, so a burst that mixes
sync views and async handlers in one process still calls the loader once. The
first caller to miss becomes the leader and runs the loader; everyone else who
arrives while it runs waits on the leader's future and gets the same value, or
the same exception. The flight ends when the leader finishes, after it has
stored the value, so a caller arriving later finds it in the cache.

On a cache hosted by a Node, the leader first asks the cluster (a ``Cluster``:
the node's way to the load leases of leases.py) whether it should load at all.
What the leader does is written once, in ``lead``: a generator that yields the
two things it waits for (the cluster's answer, the loader's value) and is driven
by ``run`` for threads and ``arun`` for asyncio, which differ only in how they wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from .errors import LoaderError
from .leases import FETCH_ASKS
from .store import Key


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

    def land(self, key: Hashable, flight: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
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


LOAD = "load"
"""A cluster's answer: no member is loading the key (or none can be asked); load it here."""
VALUE = "value"
"""A cluster's answer: the value is in the local cache now (another member loaded it)."""


class Cluster(Protocol):
    """What a fetch asks of its node (driver.ClusterFetches); every call is safe from any thread."""

    limit: float
    """Seconds a caller waits for an answer at most; then it loads anyway."""

    def on_loop(self) -> bool:
        """Called on the node's own loop, which must not wait for its own answer."""
        ...

    def ask(self, cache: str, key: Key) -> Future[str]:
        """A local miss: the future says ``LOAD``, ``VALUE``, or raises ``LoaderError``."""
        ...

    def report(self, cache: str, key: Key, error: BaseException | None = None) -> None:
        """The loader ran after ``LOAD`` (and raised ``error``)."""
        ...

    def give_back(self, cache: str, key: Key) -> None:
        """The callers went away before loading."""
        ...


class LoadNow:
    """A step of ``lead``: call the loader and send back what it returned."""


LOAD_NOW = LoadNow()
Step = Future[str] | LoadNow
"""What the leader waits for: the cluster's answer (a future) or the loader's value."""
MISSING: Any = object()


def lead(
    cache: str, key: Key, peek: Callable[[], Any], store: Callable[[Any], Any], cluster: Cluster | None
) -> Generator[Step, Any, Any]:
    """The leader of a local flight: ask the cluster (if any), load if told to, return the value.

    ``peek()`` reads the key without counting a hit (``MISSING`` if absent);
    ``store(value)`` sets it and returns it. The driver sends the cluster's answer
    (``LOAD`` when it timed out) or the loader's value back into the generator,
    or throws what waiting raised.
    """
    value = peek()
    for _ in range(FETCH_ASKS):
        if value is not MISSING or cluster is None:
            break
        try:
            answer = yield cluster.ask(cache, key)
        except LoaderError:  # the loader raised on the member that held the lease
            raise
        except BaseException:  # interrupted or cancelled while waiting: let another member load
            cluster.give_back(cache, key)
            raise
        value = peek()
        if answer != LOAD:
            continue  # VALUE: delivered; MISSING here only if deleted since: ask again
        if value is not MISSING:  # it arrived meanwhile: nothing to load
            cluster.report(cache, key)
            return value
        try:
            value = store((yield LOAD_NOW))
        except Exception as exc:  # the loader raised: every waiter in the cluster gets it
            cluster.report(cache, key, exc)
            raise
        except BaseException:  # cancelled or interrupted, not a failure: pass the lease on
            cluster.give_back(cache, key)
            raise
        cluster.report(cache, key)
        return value
    if value is MISSING:
        value = store((yield LOAD_NOW))
    return value


def run(steps: Generator[Step, Any, Any], load: Callable[[], Any], limit: float) -> Any:
    """Drive ``lead`` on a thread: block on the cluster's answer, call the loader here."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        error = None
        try:
            if isinstance(step, LoadNow):
                reply = load()
            else:
                try:
                    reply = step.result(limit)
                except FutureTimeout:
                    reply = LOAD
        except BaseException as exc:
            error = exc


async def arun(steps: Generator[Step, Any, Any], load: Callable[[], Any], limit: float) -> Any:
    """Drive ``lead`` in a task: await the cluster's answer and the (awaitable) loader."""
    import asyncio  # here, not at the top: a local Cache loads no asyncio

    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        error = None
        try:
            if isinstance(step, LoadNow):
                reply = await load()
            else:
                try:
                    # shield: this caller's cancellation must not cancel the answer itself
                    reply = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(step)), limit)
                except asyncio.TimeoutError:
                    reply = LOAD
        except BaseException as exc:
            error = exc
