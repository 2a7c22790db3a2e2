"""A member of a shoal cluster, as an application sees it: construct, host caches, start, stop.

This is the public facade and nothing more. The protocol is ``dispatch.Dispatcher``
(sans-IO: events in, actions out); ``driver.Driver`` runs it on asyncio (sockets,
timers, the thread) and carries out what it decides.
"""

from __future__ import annotations

import os
import ssl as _ssl
import time
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from . import __version__
from .cache import NOT_GIVEN, Cache, conflicting_options, hosted
from .clock import HybridClock
from .config import Config
from .dispatch import Dispatcher
from .driver import Driver
from .errors import ShoalError
from .handshake import check_secret, cluster_key
from .housekeeping import Resolver, Snapshots
from .membership import MAX_CACHES, routable
from .queries import Handler, Queries
from .serializer import Serializer
from .snapshot import snapshot_key
from .transport import dns_resolver, is_loopback, parse_address
from .validation import DEFAULT_MAX_VALUE_SIZE, check_cache_name

__all__ = ["Node"]


class Node:
    """One member of a shoal cluster: hosts named caches and keeps them replicated.

    ``options`` are the member's timers and limits, each a field of ``config.Config``
    with its default there (``failure_timeout``, ``max_peer_backlog``, ``mesh_wait``,
    ``warm_timeout``, ``snapshot_path``, ...); an unknown one is a ``TypeError``.
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        seeds: list[str] | tuple[str, ...] = (),
        secret: str | bytes | None = None,
        *,
        advertise: str | None = None,
        discovery: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        client_ssl: _ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
        **options: Any,
    ) -> None:
        host, port = parse_address(listen)
        if secret is None and not is_loopback(host):
            raise ShoalError(f"refusing to listen on non-loopback {host!r} without a cluster secret")
        if advertise is not None and not routable(advertise):
            raise ValueError(f"advertise must be a host:port other members can dial, not {advertise!r}")
        self._config = config = Config(**options)
        # No secret at all is a loopback-only convenience; a secret given must be strong.
        key = b"" if secret is None else check_secret(secret)
        self.node_id = int.from_bytes(os.urandom(8), "big")
        # With a secret the file carries a MAC: a member loads it with no peer to ask, so a
        # file someone else wrote must not pass for ours.
        snapshots = None
        if config.snapshot_path is not None:
            mac = snapshot_key(cluster_key(key)) if key else None
            snapshots = Snapshots(config.snapshot_path, config.snapshot_interval, mac, config.max_clock_skew)
        self._caches: dict[str, Cache] = {}
        self._single_flight: dict[str, str] = {}
        self._queries = Queries(self.members, self.stats)
        core = Dispatcher(
            self.node_id,
            advertise or f"{host}:{port}",
            seeds=list(seeds),
            discovery=bool(discovery),
            config=config,
            release=__version__,
        )
        self._driver = Driver(
            core,
            config,
            host=host,
            port=port,
            advertise=advertise,
            secret=key,
            discovery=discovery,
            ssl=ssl,
            client_ssl=client_ssl,
            resolver=resolver or dns_resolver,
            snapshots=snapshots,
            queries=self._queries,
        )
        self.on_member_up: list[Callable[[int, str], None]] = self._driver.on_member_up
        """Called on the node's loop with (node id, address) when a member comes up."""
        self.on_member_down: list[Callable[[int, str, str], None]] = self._driver.on_member_down
        """Called on the node's loop with (node id, address, reason) when a member goes down."""

    @property
    def address(self) -> str:
        """The address this member advertises: ``advertise``, else the one it listens on (or learned)."""
        return self._driver.address

    @property
    def config(self) -> Config:
        """The member's timers and limits (frozen: what it shows is what runs)."""
        return self._config

    def cache(
        self,
        name: str,
        ttl: float | timedelta | None = NOT_GIVEN,
        max_entries: int | None = NOT_GIVEN,
        *,
        serializer: Serializer | None = NOT_GIVEN,
        tombstone_ttl: float = 600.0,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        single_flight: str = NOT_GIVEN,
        backing: Any = None,
        backing_prefix: str | None = None,
    ) -> Cache:
        """The named cache on this node, created on first use; every member hosting it shares it.

        Asking again by name returns the same cache; options that differ from the
        ones it was created with are an error, not silently ignored.

        ``single_flight="cluster"`` (the default) makes ``fetch``/``afetch``/``memoize``
        call the loader once per key for the whole cluster (leases.py); ``"local"``,
        once per member.

        ``backing`` (``redis://...``, ``redis+cluster://...`` or a redis-py client; the
        ``shoal[redis]`` extra) puts Redis or Valkey behind the cache: the local copy is
        the hot part, the store holds everything, writes by other clients of the store
        drop the key on every member (backing.py). Keys are then str, stored as
        ``backing_prefix + key`` (``shoal:<name>:`` by default).
        """
        if single_flight is not NOT_GIVEN and single_flight not in ("cluster", "local"):
            raise ValueError(f"single_flight is 'cluster' or 'local', not {single_flight!r}")
        existing = self._caches.get(name)
        if existing is not None:
            wrong = conflicting_options(existing, ttl, max_entries, serializer)
            if backing is not None and existing._backing is None:
                wrong.append("backing (it has none)")
            if single_flight is not NOT_GIVEN and single_flight != self._single_flight[name]:
                wrong.append(f"single_flight={single_flight!r} (it has {self._single_flight[name]!r})")
            if wrong:
                raise ValueError(f"cache {name!r} already exists with other options: {', '.join(wrong)}")
            return existing
        check_cache_name(name)
        if len(self._caches) >= MAX_CACHES:
            raise ValueError(f"a node hosts at most {MAX_CACHES} caches (what its gossip can tell the others)")
        if not 0 < max_value_size <= self._config.max_frame_size // 2:
            raise ValueError(f"max_value_size is 1 to max_frame_size / 2 ({self._config.max_frame_size // 2}) bytes")
        cluster = single_flight != "local"
        cache, replica = hosted(
            name,
            None if ttl is NOT_GIVEN else ttl,
            None if max_entries is NOT_GIVEN else max_entries,
            serializer=None if serializer is NOT_GIVEN else serializer,
            # one clock per cache: only called under that cache's lock
            clock=HybridClock(self.node_id, time.time, max_skew=self._config.max_clock_skew),
            tombstone_ttl=tombstone_ttl,
            max_value_size=max_value_size,
            max_clock_skew=self._config.max_clock_skew,
            cluster=self._driver.fetches if cluster else None,
        )
        if backing is not None:
            from . import backing as shared  # redis-py: only for a cache that asks for it

            prefix = f"shoal:{name}:" if backing_prefix is None else backing_prefix
            cache._attach(shared.connect(backing, prefix, cache._invalidated, cache._untrusted))
        self._caches[name] = cache
        self._single_flight[name] = "cluster" if cluster else "local"
        self._driver.host(name, replica, single_flight=cluster)
        return cache

    def answer(self, what: str, handler: Handler) -> None:
        """Answer operator queries named ``what`` with ``handler(*args) -> dict``."""
        self._queries.handlers[what] = handler

    def start(self, timeout: float = 30.0) -> Node:
        """Run the node on a background thread; returns once it listens."""
        self._driver.start_thread(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: flush queued writes, say goodbye, close."""
        self._driver.stop_thread(timeout)
        self._close_backings()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the member can serve the cluster (a readiness probe): every cache booted,
        connected to every member known to be up, caught up from each (those two bounded)."""
        return self._driver.ready_flag.wait(timeout)

    async def ready(self, timeout: float | None = None) -> bool:
        """``wait_ready`` for asyncio applications (``timeout=0`` answers at once)."""
        return await self._driver.ready(timeout)

    async def __aenter__(self) -> Node:
        await self._driver.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._driver.close()
        self._close_backings()

    def _close_backings(self) -> None:
        for cache in self._caches.values():
            if cache._backing is not None:
                cache._backing.close()

    def members(self) -> list[dict[str, Any]]:
        """Every member this node knows, itself included."""
        me = {"id": f"{self.node_id:016x}", "address": self.address, "state": "self", "last_heard": 0.0}
        # Its own protocol is the newest it speaks; a peer's is what their connection speaks.
        mine = {"caches": sorted(self._caches), "version": __version__, "protocol": self._config.protocol_max}
        return [{**me, **mine}, *self._driver.core.members(time.monotonic())]

    def stats(self) -> dict[str, Any]:
        """Per cache: its own figures, replication and warm boot; for the member: readiness and peers."""
        core = self._driver.core
        caches = {}
        for name, cache in list(self._caches.items()):
            caches[name] = {**cache.stats(), **core.figures(name), "single_flight": self._single_flight[name]}
        return {
            "id": f"{self.node_id:016x}",
            "address": self.address,
            "ready": self._driver.ready_flag.is_set(),
            "peer_backlog_bytes": self._driver.backlogs(),
            "frozen_collections": self._driver.frozen_collections(),
            "caches": caches,
            **core.member_figures(),
        }

    async def write_snapshot(self) -> int:
        """Write every cache to ``snapshot_path`` now (also done periodically and on stop)."""
        return await self._driver.write_snapshot()

    def __repr__(self) -> str:
        return f"<shoal.Node {self.node_id:016x} {self.address}>"
