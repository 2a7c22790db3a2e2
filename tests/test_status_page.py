"""The status page in a real browser: headless Chromium renders ``/`` of each member of a three-member cluster.

The members are ``shoal serve`` processes. The first loads a snapshot of 500 entries
(no peer can donate), the other two warm-boot from the cluster, so the page has
members, caches and warm boots to show. Chromium is Debian's ``chromium`` package
(``.ci/run`` installs it); without it the test skips, and under CI=true that skip
is a failure (conftest.py).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shoal import __version__
from shoal.client import query
from shoal.node import Node
from shoal.wire import PROTOCOL_VERSION
from tests.support.cluster import wait_until
from tests.test_cli import SECRET, Serve, serve  # noqa: F401  (the fixture)
from tests.test_status import Tables

pytestmark = pytest.mark.slow
CACHES = ("users", "sessions")
ENTRIES = 500


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return found


def dump_dom(browser: str, url: str, profile: Path) -> bytes:
    """The DOM Chromium built from ``url``, serialized after the page loaded."""
    result = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout


def snapshot_of(path: Path) -> None:
    """A snapshot file holding ENTRIES entries of "users", as a member writes one when it stops."""

    async def write() -> None:
        async with Node(snapshot_path=str(path), secret=SECRET) as node:  # the file is signed with the secret
            node.cache("sessions", ttl=600)
            users = node.cache("users", ttl=600)
            assert await node.ready(timeout=10)  # a member still booting writes no snapshot to boot from
            users.set_many({f"user:{i}": f"acct-{i}" for i in range(ENTRIES)})

    asyncio.run(write())


def started(member: Serve) -> tuple[str, str, str]:
    """(address, id, http address) once the member printed them and ready=True."""
    address, ident = member.line().removeprefix("listening on ").split(" ")
    http = member.line().removeprefix("http on ")
    assert member.line() == "ready=True"
    return address, ident.removeprefix("id="), http


def page(http: str) -> Tables:
    with urllib.request.urlopen(f"http://{http}/", timeout=10) as response:
        return Tables(response.read())


def test_chromium_shows_every_member_and_cache_on_each_members_status_page(
    serve: Any,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    browser = chromium()
    snapshot_of(tmp_path / "snapshot")
    caches = ",".join(f"{name}:600" for name in CACHES)
    common = ("--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--secret", SECRET, "--caches", caches)
    first = started(serve(*common, "--snapshot-path", str(tmp_path / "snapshot")))
    others = [started(serve(*common, "--seeds", first[0])) for _ in range(2)]
    members = [first, *others]
    addresses = {address for address, _, _ in members}

    def everyone_up(http: str) -> bool:
        view = page(http)
        return set(view.column("members", "address")) == addresses and sorted(view.column("members", "state")) == [
            "self",
            "up",
            "up",
        ]

    for _, _, http in members:
        wait_until(lambda http=http: everyone_up(http), timeout=30, what=f"every member up on {http}'s page")

    for address, ident, http in members:
        dom = Tables(dump_dom(browser, f"http://{http}/", tmp_path / "profile"))
        shown = dict(zip(dom.column("members", "address"), dom.column("members", "state"), strict=True))
        assert shown == {a: ("self" if a == address else "up") for a in addresses}
        assert dom.column("members", "id")[0] == ident  # its own row first
        # release and protocol as the member reports them (a "?" where it does not know them)
        told = {m["address"]: m for m in query(address, SECRET, "members")["members"]}
        expected = [
            (
                str(told[a].get("version") or (__version__ if a == address else "?")),
                str(told[a].get("protocol") or (PROTOCOL_VERSION if a == address else "?")),
            )
            for a in dom.column("members", "address")
        ]
        assert list(zip(dom.column("members", "release"), dom.column("members", "protocol"), strict=True)) == expected
        table = dom.tables["caches"]
        assert sorted(dom.column("caches", "cache")) == sorted(CACHES)
        users = dict(zip(table[0], next(row for row in table[1:] if row[0] == "users"), strict=True))
        assert users["entries"] == f"{ENTRIES:,}", (address, users)
        if address != first[0]:  # booted from a peer: which one, and what it sent
            assert users["warm boot"] == "warm" and users["boot entries"] == f"{ENTRIES:,}"
            donor = users["donor"]
            assert any(donor == f"{i} ({a})" for a, i, _ in members if a != address), donor
