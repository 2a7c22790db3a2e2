"""The status page: what it shows of a member's figures, that it escapes what peers and callers named, its bounds."""

from __future__ import annotations

import html.parser
from typing import Any

import shoal
from shoal import status
from shoal.wire import PROTOCOL_VERSION

WALL = 1_800_000_000.0
HOSTILE = '<img src=x onerror="alert(1)">'


class Tables(html.parser.HTMLParser):
    """The text of each cell of each table with an id, and every tag seen."""

    def __init__(self, page: bytes) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[str] = []
        self._table: str | None = None
        self.feed(page.decode("utf-8"))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.tables[self._table or ""] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self.tables[self._table][-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._table is not None and self.tables[self._table] and self.tables[self._table][-1]:
            self.tables[self._table][-1][-1] += data

    def column(self, table: str, name: str) -> list[str]:
        header, *rows = self.tables[table]
        i = header.index(name)
        return [row[i] for row in rows]


def member(i: int, state: str = "up") -> dict[str, Any]:
    return {"id": f"{i:016x}", "address": f"10.0.0.{i}:7600", "state": state, "last_heard": 0.5, "caches": ["users"]}


def stats(caches: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": f"{1:016x}", "address": "10.0.0.1:7600", "ready": True, "members_up": 2, "caches": caches or {}}


def cache_figures(**extra: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "entries": 1234,
        "approx_bytes": 3 * 1024 * 1024,
        "last_lag_ms": 7,
        "queue_depth": 0,
        "repair_rounds": 4,
        "keys_repaired": 2,
        "last_repair_at": WALL - 3.0,
        "last_repair_peer": f"{2:016x}",
        "warm_boot": {"state": "warm", "donor": f"{3:016x}", "entries": 1200, "seconds": 0.42},
    }
    return {**figures, **extra}


def test_every_member_is_a_row_with_its_state_address_release_and_protocol() -> None:
    members = [
        {**member(1, "self"), "last_heard": 0.0},
        {**member(2), "version": "0.2.0", "protocol": 3},
        {**member(3, "suspect"), "version": "0.1.9", "protocol": 2},
    ]
    page = Tables(status.render(stats(), members, wall=WALL, rss=50 << 20))
    assert page.column("members", "address") == ["10.0.0.1:7600", "10.0.0.2:7600", "10.0.0.3:7600"]
    assert page.column("members", "state") == ["self", "up", "suspect"]
    assert page.column("members", "release") == [shoal.__version__, "0.2.0", "0.1.9"]
    assert page.column("members", "protocol") == [str(PROTOCOL_VERSION), "3", "2"]


def test_a_member_whose_release_and_protocol_are_not_known_shows_a_question_mark() -> None:
    members = [member(2), {**member(3), "version": None, "protocol": 0}]
    page = Tables(status.render(stats(), members, wall=WALL, rss=None))
    assert page.column("members", "release") == ["?", "?"]
    assert page.column("members", "protocol") == ["?", "?"]


def test_each_cache_shows_entries_memory_lag_last_repair_and_last_warm_boot() -> None:
    members = [member(2), member(3)]
    page = Tables(status.render(stats({"users": cache_figures()}), members, wall=WALL, rss=None))
    (row,) = page.tables["caches"][1:]
    header = page.tables["caches"][0]
    cells = dict(zip(header, row, strict=True))
    assert cells["cache"] == "users"
    assert cells["entries"] == "1,234"
    assert cells["memory (est.)"] == "3.0 MiB"
    assert cells["replication lag"] == "7 ms"
    assert cells["last repair"] == f"3.0 s ago with {2:016x} (10.0.0.2:7600)"
    assert cells["repair rounds / keys"] == "4 / 2"
    assert cells["warm boot"] == "warm"
    assert cells["donor"] == f"{3:016x} (10.0.0.3:7600)"
    assert (cells["boot entries"], cells["boot seconds"]) == ("1,200", "0.42")


def test_a_cache_with_no_repair_round_or_lag_yet_says_so_rather_than_inventing_figures() -> None:
    figures = cache_figures(last_repair_at=None, last_repair_peer=None, last_lag_ms=None)
    page = Tables(status.render(stats({"users": figures}), [], wall=WALL, rss=None))
    cells = dict(zip(page.tables["caches"][0], page.tables["caches"][1], strict=True))
    assert (cells["last repair"], cells["replication lag"]) == ("none yet", "-")


def test_names_and_addresses_from_peers_and_callers_are_escaped_never_markup() -> None:
    members = [{**member(2), "address": HOSTILE, "version": HOSTILE, "caches": [HOSTILE]}]
    figures = cache_figures(last_repair_peer=HOSTILE, warm_boot={"state": HOSTILE, "donor": HOSTILE})
    page = status.render(stats({HOSTILE: figures}), members, wall=WALL, rss=None)
    assert b"<img" not in page and b'"alert' not in page
    parsed = Tables(page)
    assert "img" not in parsed.tags and "script" not in parsed.tags
    assert parsed.column("members", "address") == [HOSTILE]  # shown as text
    assert parsed.column("caches", "cache") == [HOSTILE]


def test_the_page_lists_at_most_its_bound_of_members_and_caches_and_says_how_many_it_left_out() -> None:
    members = [member(i) for i in range(2, 2 + status.MAX_MEMBERS + 50)]
    caches = {f"cache{i:04d}": cache_figures() for i in range(status.MAX_CACHES + 7)}
    page = status.render(stats(caches), members, wall=WALL, rss=None)
    parsed = Tables(page)
    assert len(parsed.tables["members"]) - 1 == status.MAX_MEMBERS
    assert len(parsed.tables["caches"]) - 1 == status.MAX_CACHES
    text = page.decode()
    assert f"showing the first {status.MAX_MEMBERS} of {status.MAX_MEMBERS + 50} members" in text
    assert f"showing the first {status.MAX_CACHES} of {status.MAX_CACHES + 7} caches" in text


def test_collections_of_everything_frozen_show_once_there_was_one() -> None:
    """What they found is how an operator sees an application leaking cycles into the freezes."""
    none = {"count": 0, "garbage_found": 0, "seconds": 0.0, "longest_seconds": 0.0}
    quiet = status.render({**stats(), "frozen_collections": none}, [], wall=WALL, rss=None).decode()
    assert "everything frozen" not in quiet
    two = {"count": 2, "garbage_found": 28_524, "seconds": 1.9, "longest_seconds": 1.42}
    page = status.render({**stats(), "frozen_collections": two}, [], wall=WALL, rss=None).decode()
    assert "collections of everything frozen 2: found 28,524 garbage objects in 1.90 s (longest 1.42 s)" in page


def test_the_page_reloads_itself_without_a_script() -> None:
    page = status.render(stats(), [], wall=WALL, rss=None).decode()
    assert f'<meta http-equiv="refresh" content="{status.REFRESH}">' in page
    assert "<script" not in page


def test_a_cache_in_front_of_redis_shows_its_reads_writes_invalidations_and_whether_it_is_tracking() -> None:
    backed = cache_figures(
        backing_reads=120,
        backing_hits=100,
        backing_writes=7,
        backing_errors=1,
        invalidations=3,
        tracking_resets=2,
        tracking=False,
    )
    page = Tables(status.render(stats({"accounts": backed, "local": cache_figures()}), [], wall=WALL, rss=None))
    header, *rows = page.tables["shared"]
    assert len(rows) == 1  # the cache without a backing store has no row here
    cells = dict(zip(header, rows[0], strict=True))
    assert cells == {
        "cache": "accounts",
        "tracking": "no",
        "backing reads": "120",
        "backing hits": "100",
        "backing writes": "7",
        "backing errors": "1",
        "invalidations": "3",
        "tracking resets": "2",
    }


def test_a_member_without_a_shared_tier_shows_no_such_table() -> None:
    page = Tables(status.render(stats({"users": cache_figures()}), [], wall=WALL, rss=None))
    assert "shared" not in page.tables
