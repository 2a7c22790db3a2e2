"""Cluster single flight with real member processes: one loader call per key for the whole cluster.

Each member runs tests/support/fetch_member.py; every loader call, in any
process, appends a line to one file, so the test counts the upstream calls of
the whole cluster.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.node import Node
from tests.support.cluster import ROOT, Cluster, Member, _env, cluster, wait_until  # noqa: F401

pytestmark = pytest.mark.slow


class FetchMember(Member):
    def __init__(
        self, calls: Path, seeds: list[str] = (), load_ms: float = 200, single_flight: str = "cluster"
    ) -> None:  # type: ignore[assignment]
        argv = [sys.executable, "-m", "tests.support.fetch_member", "--calls", str(calls)]
        argv += ["--seeds", ",".join(seeds), "--load-ms", str(load_ms), "--single-flight", single_flight]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env()
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"member failed to start: {self.proc.stderr.read()[-2000:] if self.proc.stderr else ''}")
        hello = json.loads(first)
        self.address, self.id = hello["address"], hello["id"]


def start(cluster: Cluster, calls: Path, size: int = 3, **kw: Any) -> list[FetchMember]:  # noqa: F811
    first = FetchMember(calls, **kw)
    members = [first] + [FetchMember(calls, seeds=[first.address], **kw) for _ in range(size - 1)]
    cluster.members.extend(members)
    ids = {m.id for m in members}
    for m in members:
        wait_until(lambda m=m: {x["id"] for x in m.cmd("members")} == ids, 15, what="a complete mesh")
    return members


def loader_calls(calls: Path) -> Counter[str]:
    return Counter(line.split()[1] for line in calls.read_text().splitlines()) if calls.exists() else Counter()


def test_three_members_bursting_on_the_same_new_keys_call_the_loader_once_per_key(
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls"
    members = start(cluster, calls)
    keys = [f"user:{i}" for i in range(10)]
    for m in members:
        m.cmd("burst", id="b1", keys=keys, callers=60)  # fetch, afetch and memoize callers: 600 per member
    for m in members:
        results = m.cmd("results", id="b1")
        assert results == {key: {f"value:value of {key}": 60} for key in keys}
    assert loader_calls(calls) == Counter({key: 1 for key in keys})


def test_with_local_single_flight_each_member_calls_the_loader_for_each_key(
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The figure cluster single flight improves on (and proof the count above can fail)."""
    calls = tmp_path / "calls"
    members = start(cluster, calls, single_flight="local")
    keys = [f"user:{i}" for i in range(5)]
    for m in members:
        m.cmd("burst", id="b1", keys=keys, callers=9)
    for m in members:
        assert m.cmd("results", id="b1") == {key: {f"value:value of {key}": 9} for key in keys}
    assert loader_calls(calls) == Counter({key: 3 for key in keys})


def test_a_loader_that_raises_reaches_every_caller_on_every_member_and_the_next_fetch_retries(
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls"
    members = start(cluster, calls)
    for m in members:
        m.cmd("fail", keys=["user:bad"])
    for m in members:
        m.cmd("burst", id="b1", keys=["user:bad"], callers=30)
    for m in members:
        assert m.cmd("results", id="b1") == {"user:bad": {"error:LookupError": 30}}
    assert loader_calls(calls) == Counter({"user:bad": 1})
    for m in members:
        m.cmd("fail", keys=[])  # the upstream recovers: nothing was stored, so the next fetch loads
    members[1].cmd("burst", id="b2", keys=["user:bad"], callers=3)
    assert members[1].cmd("results", id="b2") == {"user:bad": {"value:value of user:bad": 3}}
    assert loader_calls(calls) == Counter({"user:bad": 2})


def test_the_owner_killed_mid_load_costs_at_most_one_more_load_and_every_caller_is_answered(
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls"
    members = start(cluster, calls, load_ms=1500)
    key = "user:owned"
    owner = next(m for m in members if m.id == members[0].cmd("owner", key=key))
    holder, waiter = (m for m in members if m is not owner)
    holder.cmd("burst", id="b1", keys=[key], callers=6)
    wait_until(lambda: loader_calls(calls)[key] == 1, 10, what="the holder's loader call")
    waiter.cmd("burst", id="b1", keys=[key], callers=6)
    owner.cmd("burst", id="b1", keys=[key], callers=6)
    owner.kill()
    for m in (holder, waiter):
        results = m.cmd("results", id="b1")
        assert sum(results[key].values()) == 6
        assert set(results[key]) <= {f"value:value of {key}", "error:LookupError"}
    # Usually exactly 1: the lease stays with its holder (leases.py); 2 if a waiter had
    # not yet heard who holds it when the owner died.
    assert 1 <= loader_calls(calls)[key] <= 2


def test_the_lease_holder_killed_mid_load_hands_over_and_the_survivors_get_the_value_from_one_more_load(
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls"
    members = start(cluster, calls, load_ms=1500)
    key = "user:held"
    owner = next(m for m in members if m.id == members[0].cmd("owner", key=key))
    holder, waiter = (m for m in members if m is not owner)
    holder.cmd("burst", id="b1", keys=[key], callers=6)
    wait_until(lambda: loader_calls(calls)[key] == 1, 10, what="the holder's loader call")
    waiter.cmd("burst", id="b1", keys=[key], callers=6)
    owner.cmd("burst", id="b1", keys=[key], callers=6)
    holder.kill()
    for m in (owner, waiter):
        assert m.cmd("results", id="b1") == {key: {f"value:value of {key}": 6}}
    assert loader_calls(calls)[key] == 2


# -- in one process: two Nodes on one event loop --------------------------------------------


def test_node_cache_refuses_an_unknown_single_flight_mode() -> None:
    with pytest.raises(ValueError, match="single_flight is 'cluster' or 'local'"):
        Node().cache("u", single_flight="global")


def test_asking_again_for_a_cache_with_the_other_single_flight_mode_is_an_error() -> None:
    node = Node()
    node.cache("u", single_flight="local")
    assert node.cache("u") is node.cache("u", single_flight="local")
    with pytest.raises(ValueError, match="single_flight='cluster' \\(it has 'local'\\)"):
        node.cache("u", single_flight="cluster")
    assert node.stats()["caches"]["u"]["single_flight"] == "local"


def test_before_start_and_after_stop_a_node_cache_loads_for_itself() -> None:
    node = Node()
    users = node.cache("users")
    assert users.fetch("before", str.upper) == "BEFORE"
    node.start()
    try:
        assert node.wait_ready(10)
        assert users.fetch("during", str.upper) == "DURING"
        assert node.stats()["leases"]["leases_granted"] == 1  # a lone member grants itself the lease
    finally:
        node.stop()
    assert users.fetch("after", str.upper) == "AFTER"
    assert users.stats()["loads"] == 3


def test_a_sync_fetch_on_the_nodes_own_loop_loads_locally_instead_of_waiting_on_itself() -> None:
    async def main() -> tuple[str, int]:
        calls = 0

        def load(key: str) -> str:
            nonlocal calls
            calls += 1
            return f"value of {key}"

        async with Node() as node:
            users = node.cache("users")
            assert await node.ready(timeout=10)
            return users.fetch("k", load), calls  # blocking this loop on the cluster would never return

    assert asyncio.run(main()) == ("value of k", 1)


def test_a_holder_cancelled_mid_load_passes_the_lease_on_and_the_other_member_loads_without_waiting_it_out() -> None:
    async def main() -> tuple[str, list[str]]:
        started = asyncio.Event()
        calls: list[str] = []

        async def never(key: str) -> str:
            calls.append("first")
            started.set()
            await asyncio.sleep(3600)
            raise AssertionError("not reached")

        async def quick(key: str) -> str:
            calls.append("second")
            return f"value of {key}"

        # A lease that never lapses: only a hand-over can let b load in time.
        async with Node(load_timeout=3600) as a, Node(seeds=[a.address], load_timeout=3600) as b:
            for node in (a, b):
                node.cache("u")
            await wait_for_async(lambda: all(peers_hosting(n, "u") == 1 for n in (a, b)))
            holder = asyncio.ensure_future(a.cache("u").afetch("k", never))
            await asyncio.wait_for(started.wait(), 10)
            waiter = asyncio.ensure_future(b.cache("u").afetch("k", quick))
            await wait_for_async(lambda: sum(n._driver.core.leases.waited for n in (a, b)) == 1)  # b waits on a's lease
            holder.cancel()
            value = await asyncio.wait_for(waiter, 20)
            return value, calls

    assert asyncio.run(main()) == ("value of k", ["first", "second"])


def peers_hosting(node: Node, cache: str) -> int:
    return sum(1 for m in node.members() if m["state"] == "up" and cache in m["caches"])


async def wait_for_async(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.01)
