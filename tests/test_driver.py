"""The asyncio driver: it carries out every action the core returns, and decides nothing."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shoal import actions
from shoal.actions import MemberUp, Ready
from shoal.driver import _ACTIONS, after_due_timers
from shoal.node import Node


def test_every_kind_of_action_has_a_handler() -> None:
    kinds = set(actions.Action.__args__)  # type: ignore[attr-defined]
    assert kinds == set(_ACTIONS)


def test_an_action_that_raises_is_logged_and_the_rest_of_the_tick_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    node = Node()
    driver = node._driver

    def broken(peer: int, listen: str) -> None:
        raise RuntimeError("a callback that fails")

    node.on_member_up.append(broken)
    with caplog.at_level(logging.ERROR, logger="shoal"):
        driver.run([MemberUp(7, "10.0.0.7:7600"), Ready(True)])
    assert node.wait_ready(0), "the Ready after the failing action was carried out"
    assert any("carrying out MemberUp failed" in r.getMessage() for r in caplog.records)


def test_a_dump_between_chunks_lets_every_timer_already_due_run_first() -> None:
    """With ``sleep(0)`` the dump's next chunk ran before a timer that came due during the last
    one, so the timer waited two chunks."""
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def dump() -> None:
            for chunk in range(3):
                order.append(f"chunk {chunk}")
                loop.call_later(0, order.append, f"timer after chunk {chunk}")  # due now
                await after_due_timers()

        await dump()

    asyncio.run(main())
    assert order == [
        "chunk 0",
        "timer after chunk 0",
        "chunk 1",
        "timer after chunk 1",
        "chunk 2",
        "timer after chunk 2",
    ]
