"""The operator's status page: one member's view of the cluster as a plain HTML document.

``httpd`` serves it at ``/``. It is built from ``Node.members()`` and ``Node.stats()``
at each request: members with their state, address, release and protocol; per
cache the entries, memory, replication lag, last repair round and last warm boot.
A ``<meta http-equiv="refresh">`` reloads it every ``REFRESH`` seconds: no script,
no build step, nothing fetched besides the page.

Every figure and name is escaped: cache names come from callers and addresses,
ids and releases from peers, and a page that echoed them raw would let a peer put
markup in front of the operator. The page is bounded like everything a peer can
grow: at most ``MAX_MEMBERS`` member rows and ``MAX_CACHES`` cache rows, and it
says how many it left out.
"""

from __future__ import annotations

import html
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from . import __version__
from .wire import PROTOCOL_VERSION

REFRESH = 5  # seconds between reloads
MAX_MEMBERS = 200
MAX_CACHES = 100
_STATE_ORDER = {"self": 0, "up": 1, "suspect": 2, "down": 3}

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2430; background: #fafbfc; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
p.meta { margin: 0; color: #556; }
table { border-collapse: collapse; background: #fff; }
th, td { padding: .3em .8em; border-bottom: 1px solid #e1e4e8; text-align: left; white-space: nowrap; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.peer { white-space: normal; max-width: 13em; }
.state-self, .state-up, .ok { color: #17803d; font-weight: 600; }
.state-suspect, .warn { color: #b26a00; font-weight: 600; }
.state-down, .bad { color: #c62828; font-weight: 600; }
p.cut { color: #b26a00; }
"""


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux), else its peak; None where neither is known."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def render(stats: dict[str, Any], members: list[dict[str, Any]], *, wall: float, rss: int | None) -> bytes:
    """The page for one member's ``stats`` and ``members`` as of ``wall`` (Unix seconds)."""
    ready = bool(stats.get("ready"))
    addresses = {m.get("id"): m.get("address") for m in members}
    parts = [
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH}">',
        f"<title>shoal {_e(stats.get('address'))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>shoal member {_e(stats.get('id'))} at {_e(stats.get('address'))}</h1>",
        '<p class="meta">',
        f"release {_e(__version__)} · ",
        f'<span class="{"ok" if ready else "warn"}">{"ready" if ready else "warming"}</span> · ',
        f"peers up {_e(stats.get('members_up', '?'))} · ",
        f"memory (RSS) {_e(_bytes(rss))} · ",
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(wall)))}, refreshed every {REFRESH} s</p>",
        *_frozen(stats.get("frozen_collections") or {}),
        *_members(members),
        *_caches(stats.get("caches") or {}, addresses, wall),
        "</body></html>\n",
    ]
    return "".join(parts).encode("utf-8")


def _frozen(figures: dict[str, Any]) -> Iterable[str]:
    """The collections of everything frozen (housekeeping.Collector), once there was one: garbage
    they keep finding is an application leaking reference cycles into the periodic freezes."""
    if not figures.get("count"):
        return
    yield (
        '<p class="meta">collections of everything frozen '
        f"{_e(_count(figures.get('count')))}: found {_e(_count(figures.get('garbage_found')))} garbage objects"
        f" in {_e(_seconds(figures.get('seconds')))} s (longest {_e(_seconds(figures.get('longest_seconds')))} s)</p>"
    )


def _members(members: list[dict[str, Any]]) -> Iterable[str]:
    rows = sorted(members, key=lambda m: (_STATE_ORDER.get(str(m.get("state")), 9), str(m.get("address"))))
    yield f"<h2>Members ({len(members)})</h2>"
    yield "<table id=members><tr><th>id<th>address<th>state<th>release<th>protocol<th>last heard<th>caches</tr>"
    for m in rows[:MAX_MEMBERS]:
        state = str(m.get("state", "?"))
        caches = m.get("caches") or []
        if state == "self":  # this process's own release and newest protocol, when members() leaves them out
            m = {**m, "version": m.get("version") or __version__, "protocol": m.get("protocol") or PROTOCOL_VERSION}
        yield (
            f"<tr><td><code>{_e(m.get('id'))}</code><td>{_e(m.get('address'))}"
            f'<td class="state-{_e(state)}">{_e(state)}'
            f"<td>{_e(_known(m.get('version')))}<td class=num>{_e(_known(m.get('protocol') or None))}"
            f"<td class=num>{_e(_ago(m.get('last_heard')))}<td>{_e(', '.join(map(str, caches[:20])))}"
            f"{' …' if len(caches) > 20 else ''}</tr>"
        )
    yield "</table>"
    yield from _cut(len(rows), MAX_MEMBERS, "members")


def _caches(caches: dict[str, dict[str, Any]], addresses: dict[Any, Any], wall: float) -> Iterable[str]:
    yield f"<h2>Caches on this member ({len(caches)})</h2>"
    yield (
        "<table id=caches><tr><th>cache<th>entries<th>memory (est.)<th>replication lag<th>queued"
        "<th>last repair<th>repair rounds / keys<th>warm boot<th>donor<th>boot entries<th>boot seconds</tr>"
    )
    for name in sorted(caches)[:MAX_CACHES]:
        c = caches[name]
        boot = c.get("warm_boot") or {}
        lag = c.get("last_lag_ms")
        yield (
            f"<tr><td><b>{_e(name)}</b><td class=num>{_e(_count(c.get('entries')))}"
            f"<td class=num>{_e(_bytes(c.get('approx_bytes')))}"
            f"<td class=num>{_e('-' if lag is None else f'{lag} ms')}<td class=num>{_e(_count(c.get('queue_depth')))}"
            f"<td class=peer>{_e(_repair(c, addresses, wall))}"
            f"<td class=num>{_e(_count(c.get('repair_rounds')))} / {_e(_count(c.get('keys_repaired')))}"
            f"<td>{_e(boot.get('state', '?'))}<td class=peer>{_e(_peer(boot.get('donor'), addresses))}"
            f"<td class=num>{_e(_count(boot.get('entries')))}<td class=num>{_e(_seconds(boot.get('seconds')))}</tr>"
        )
    yield "</table>"
    yield from _cut(len(caches), MAX_CACHES, "caches")
    yield from _shared(caches)


_SHARED = ("backing_reads", "backing_hits", "backing_writes", "backing_errors", "invalidations", "tracking_resets")


def _shared(caches: dict[str, dict[str, Any]]) -> Iterable[str]:
    """The caches in front of Redis (``backing=``): what they read, wrote and were told."""
    backed = [name for name in sorted(caches)[:MAX_CACHES] if "backing_reads" in caches[name]]
    if not backed:
        return
    yield f"<h2>Shared tier ({len(backed)})</h2>"
    yield "<table id=shared><tr><th>cache<th>tracking" + "".join(f"<th>{k.replace('_', ' ')}" for k in _SHARED)
    for name in backed:
        c = caches[name]
        tracking = '<td class="ok">yes' if c.get("tracking") else '<td class="bad">no'
        cells = "".join(f"<td class=num>{_e(_count(c.get(k)))}" for k in _SHARED)
        yield f"<tr><td><b>{_e(name)}</b>{tracking}{cells}</tr>"
    yield "</table>"


def _cut(total: int, shown: int, what: str) -> Sequence[str]:
    if total <= shown:
        return ()
    return (f'<p class="cut">showing the first {shown} of {total} {what}; the rest are not listed</p>',)


def _repair(figures: dict[str, Any], addresses: dict[Any, Any], wall: float) -> str:
    at = figures.get("last_repair_at")
    if at is None:
        return "none yet"
    return f"{_ago(max(0.0, wall - at))} ago with {_peer(figures.get('last_repair_peer'), addresses)}"


def _peer(node_id: Any, addresses: dict[Any, Any]) -> str:
    """A peer's id with its address when this member knows it."""
    if node_id is None:
        return "-"
    address = addresses.get(node_id)
    return f"{node_id} ({address})" if address else str(node_id)


def _known(value: Any) -> Any:
    """A release or protocol, or "?" for one not known (a peer not yet connected says protocol 0)."""
    return "?" if value is None else value


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _seconds(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "?"


def _ago(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _bytes(value: Any) -> str:
    if not isinstance(value, int):
        return "?"
    if value < 1024:
        return f"{value} B"
    size = value / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
