"""The leader's side of a miss, written once (``singleflight.lead``) and driven alike for threads and tasks.

A scripted ``Cluster`` answers each ask as the test says; the same script runs
through ``run`` (threads) and ``arun`` (asyncio), which must reach the same end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

from shoal.errors import LoaderError
from shoal.leases import FETCH_ASKS
from shoal.singleflight import LOAD, MISSING, VALUE, arun, lead, run
from shoal.store import Key


class Scripted:
    """A cluster whose answers are given in advance; ``None`` never answers (the caller times out)."""

    limit = 0.05

    def __init__(self, answers: list[str | BaseException | None], arrives: dict[int, Any] | None = None) -> None:
        self.answers = answers
        self.arrives = arrives or {}  # ask number -> value that is in the cache when that answer comes
        self.asks = 0
        self.reports: list[BaseException | None] = []
        self.given_back = 0
        self.data: dict[Key, Any] = {}

    def on_loop(self) -> bool:
        return False

    def ask(self, cache: str, key: Key) -> Future[str]:
        answer = self.answers[self.asks]
        if self.asks in self.arrives:
            self.data[key] = self.arrives[self.asks]
        self.asks += 1
        future: Future[str] = Future()
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        elif answer is not None:
            future.set_result(answer)
        return future

    def report(self, cache: str, key: Key, error: BaseException | None = None) -> None:
        self.reports.append(error)

    def give_back(self, cache: str, key: Key) -> None:
        self.given_back += 1


def fetch_sync(cluster: Scripted | None, loader: Callable[[], Any], data: dict[Key, Any]) -> Any:
    steps = lead("c", "k", lambda: data.get("k", MISSING), lambda v: data.setdefault("k", v), cluster)
    return run(steps, loader, cluster.limit if cluster else 0.0)


def fetch_async(cluster: Scripted | None, loader: Callable[[], Any], data: dict[Key, Any]) -> Any:
    async def load() -> Any:
        return loader()

    steps = lead("c", "k", lambda: data.get("k", MISSING), lambda v: data.setdefault("k", v), cluster)
    return asyncio.run(arun(steps, load, cluster.limit if cluster else 0.0))


drivers = pytest.mark.parametrize("fetch", [fetch_sync, fetch_async], ids=["threads", "asyncio"])


class Loader:
    def __init__(self, result: Any = "loaded") -> None:
        self.calls = 0
        self.result = result

    def __call__(self) -> Any:
        self.calls += 1
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@drivers
def test_a_member_told_to_load_calls_its_loader_once_and_reports_the_value(fetch: Any) -> None:
    cluster, loader = Scripted([LOAD]), Loader()
    assert fetch(cluster, loader, cluster.data) == "loaded"
    assert loader.calls == 1 and cluster.reports == [None] and cluster.data["k"] == "loaded"


@drivers
def test_a_value_loaded_elsewhere_is_read_from_the_local_cache_without_loading(fetch: Any) -> None:
    cluster, loader = Scripted([VALUE], arrives={0: "theirs"}), Loader()
    assert fetch(cluster, loader, cluster.data) == "theirs"
    assert loader.calls == 0 and cluster.reports == []


@drivers
def test_a_delivered_value_that_vanished_is_asked_for_again_then_loaded_here(fetch: Any) -> None:
    cluster, loader = Scripted([VALUE] * FETCH_ASKS), Loader()
    assert fetch(cluster, loader, cluster.data) == "loaded"
    assert cluster.asks == FETCH_ASKS and loader.calls == 1
    assert cluster.reports == [], "a load nobody granted is not reported as the lease's"


@drivers
def test_a_loader_that_raises_reaches_the_caller_and_the_cluster(fetch: Any) -> None:
    cluster, loader = Scripted([LOAD]), Loader(KeyError("gone"))
    with pytest.raises(KeyError):
        fetch(cluster, loader, cluster.data)
    assert len(cluster.reports) == 1 and isinstance(cluster.reports[0], KeyError)
    assert "k" not in cluster.data


@drivers
def test_a_loader_error_on_another_member_is_raised_here_without_loading(fetch: Any) -> None:
    cluster, loader = Scripted([LoaderError("ValueError", "upstream said no")]), Loader()
    with pytest.raises(LoaderError, match="upstream said no"):
        fetch(cluster, loader, cluster.data)
    assert loader.calls == 0 and cluster.given_back == 0


@drivers
def test_a_cluster_that_never_answers_is_waited_for_until_its_limit_then_the_member_loads(fetch: Any) -> None:
    cluster, loader = Scripted([None]), Loader()
    assert fetch(cluster, loader, cluster.data) == "loaded"
    assert loader.calls == 1 and cluster.reports == [None]


@drivers
def test_a_value_that_arrived_while_asking_is_not_loaded_again(fetch: Any) -> None:
    cluster, loader = Scripted([LOAD], arrives={0: "raced"}), Loader()
    assert fetch(cluster, loader, cluster.data) == "raced"
    assert loader.calls == 0 and cluster.reports == [None]  # the lease is released at once


@drivers
def test_a_caller_interrupted_while_loading_gives_the_lease_back(fetch: Any) -> None:
    cluster, loader = Scripted([LOAD]), Loader(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        fetch(cluster, loader, cluster.data)
    assert cluster.given_back == 1 and cluster.reports == []


@drivers
def test_without_a_cluster_the_leader_just_loads(fetch: Any) -> None:
    data: dict[Key, Any] = {}
    loader = Loader()
    assert fetch(None, loader, data) == "loaded" and loader.calls == 1 and data == {"k": "loaded"}


def test_a_task_cancelled_while_waiting_for_the_cluster_gives_the_lease_back() -> None:
    cluster, loader = Scripted([None]), Loader()
    cluster.limit = 60.0

    async def main() -> None:
        steps = lead("c", "k", lambda: MISSING, lambda v: v, cluster)

        async def load() -> Any:
            return loader()

        task = asyncio.ensure_future(arun(steps, load, cluster.limit))
        while cluster.asks == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cluster.given_back == 1 and loader.calls == 0
