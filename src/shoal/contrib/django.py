"""A Django cache backend on a shoal Node: every process is a member, reads never leave it.

Configure it in ``settings.CACHES``::

    CACHES = {
        "default": {
            "BACKEND": "shoal.contrib.django.ShoalCache",
            "LOCATION": "0.0.0.0:7600",          # where this process's member listens (see "Worker processes")
            "TIMEOUT": 300,                      # Django's default timeout, in seconds; None = never expire
            "KEY_PREFIX": "",                    # Django's key prefix and VERSION work as usual
            "OPTIONS": {
                "secret": os.environ["SHOAL_SECRET"],
                "discovery": "dns:myapp-shoal.default.svc.cluster.local:7600",  # and/or
                "seeds": ["10.0.0.5:7600"],
                "cache": "django",               # the shoal cache's name: the same on every member
                "max_entries": 100_000,          # per member; None (the default) = unbounded
                # "serializer": "shoal.contrib.django.PickleSerializer",  # read the warning below
                # "node_options": {"anti_entropy_interval": 10.0},        # more shoal.Node arguments
            },
        }
    }

Each process runs one ``shoal.Node`` per ``LOCATION``, shared by every alias that names
that LOCATION (each alias may use its own ``cache`` name on it) and by every thread.
The node starts on first use of the cache, not at import, so a pre-forking server
(gunicorn, uWSGI) starts it in each worker, after the fork. It is stopped gracefully
(queued writes flushed) at interpreter exit, or by ``shutdown()``.

Worker processes. Every process is a member and needs a port of its own. With several
worker processes on one host give a port range, ``"LOCATION": "0.0.0.0:7600-7603"``:
each process takes the first free port of the range. List one address per host in
``seeds`` (or use ``discovery``): gossip spreads the others. Port 0 picks any free port
(tests, a single development process).

Addresses. LOCATION is where the member listens; what the other members dial is its
advertised address. On a wildcard (``0.0.0.0``) the member learns it from its own
connections, the local IP a peer reached it at plus its port, which suits a port range
(each worker advertises its own port). With one port per pod you may also say it:
``"node_options": {"advertise": f"{os.environ['POD_IP']}:7600"}``.

Timeouts follow Django: ``DEFAULT_TIMEOUT`` means the alias's ``TIMEOUT``; ``None``
never expires; ``0`` (or less) stores nothing and removes what the key held,
everywhere (as Django's Redis backend does). Timeouts are float seconds.

Values. The default serializer is shoal's msgpack one: None, bool, int, float, str,
bytes, list and dict (tuples come back as lists on the other members). Template
fragments, sessions (their data is a JSON-ready dict) and plain data fit. A value it
cannot carry is refused at ``set`` with ``TypeError``. Django's per-view and per-site
caches store ``HttpResponse`` objects, which need ``OPTIONS["serializer"]``: the
dotted path of a class with ``dumps(value) -> bytes`` and ``loads(bytes)``, the same on
every member. ``PickleSerializer`` is provided and is never the default: unpickling
what a peer sent runs whatever code that peer chose, so every process that knows the
cluster secret could run code in every other. Use it only inside one trust boundary.

Values returned by ``get`` are the stored objects themselves, shared by every caller
in the process (Django's local-memory cache hands out copies): treat them as immutable.

What is not guaranteed, as for shoal itself: there is no read-your-writes across
members (a write reaches the others within milliseconds on a healthy network);
``add`` is "add if absent on this member"; ``incr``/``decr`` are atomic between the
threads of one process but not across members (two members incrementing at once
lose one increment: the last writer wins); ``clear()`` clears the whole shoal cache
on every member, every key prefix and version included.
"""

from __future__ import annotations

import atexit
import errno
import pickle
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from ..cache import Cache
from ..node import Node
from ..serializer import MsgpackSerializer, Serializer

__all__ = ["PickleSerializer", "ShoalCache", "shutdown"]

_MISSING: Any = object()


class PickleSerializer:
    """Any picklable object. UNSAFE between members that do not trust each other.

    ``loads`` unpickles what another member sent, and unpickling runs code of the
    sender's choosing: anyone holding the cluster secret could run code in every
    member. Never the default; use it only when every member is your own code.
    """

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self._protocol = protocol

    def dumps(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, self._protocol)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(f"value of type {type(value).__name__} cannot be pickled: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


# -- one Node per process per LOCATION -------------------------------------------------


@dataclass
class _Member:
    """The node a LOCATION names in this process, shared by every alias and thread."""

    node: Node
    config: tuple[Any, ...]
    # incr/decr read, add and write back: serialised within the process (not across members).
    counter_lock: threading.Lock = field(default_factory=threading.Lock)


_members: dict[str, _Member] = {}
_registry_lock = threading.Lock()


def _addresses(location: str) -> list[str]:
    """The listen addresses a LOCATION allows: one, or each port of ``host:first-last``."""
    host, sep, ports = location.rpartition(":")
    first, dash, last = ports.partition("-")
    if not sep or not host or not first.isdigit() or (dash and not last.isdigit()):
        raise ImproperlyConfigured(f"shoal LOCATION must be 'host:port' or 'host:first-last', not {location!r}")
    if not dash:
        return [location]
    low, high = int(first), int(last)
    if not 0 < low <= high:
        raise ImproperlyConfigured(f"shoal LOCATION has an empty port range: {location!r}")
    return [f"{host}:{port}" for port in range(low, high + 1)]


def _load_serializer(spec: Any) -> Serializer:
    if spec is None:
        return MsgpackSerializer()
    if isinstance(spec, str):
        try:
            spec = import_string(spec)
        except ImportError as exc:
            raise ImproperlyConfigured(f"shoal serializer {spec!r} cannot be imported: {exc}") from exc
    serializer = spec() if isinstance(spec, type) else spec
    if not isinstance(serializer, Serializer):
        raise ImproperlyConfigured(f"shoal serializer {spec!r} has no dumps(value) and loads(data)")
    return serializer


def _start(location: str, config: tuple[Any, ...], node_options: dict[str, Any]) -> Node:
    seeds, secret, discovery = config[:3]
    candidates = _addresses(location)
    for listen in candidates:
        node = Node(listen=listen, seeds=list(seeds), secret=secret, discovery=discovery, **node_options)
        try:
            return node.start()
        except OSError as exc:
            if len(candidates) == 1 or exc.errno != errno.EADDRINUSE:
                raise
    raise ImproperlyConfigured(f"every port of shoal LOCATION {location!r} is in use")


def _member(location: str, options: Mapping[str, Any]) -> _Member:
    """The started member for LOCATION; the caller holds ``_registry_lock``."""
    node_options = dict(options.get("node_options") or {})
    config = (
        tuple(options.get("seeds") or ()),
        options.get("secret"),
        options.get("discovery"),
        sorted(node_options.items(), key=lambda item: item[0]),
    )
    member = _members.get(location)
    if member is None:
        member = _members[location] = _Member(_start(location, config, node_options), config)
    elif member.config != config:
        raise ImproperlyConfigured(
            f"two CACHES aliases give LOCATION {location!r} different seeds, secret, discovery or node_options"
        )
    return member


def shutdown(timeout: float = 10.0) -> None:
    """Stop every node this module started (gracefully: queued writes are flushed first)."""
    with _registry_lock:
        members = list(_members.values())
        _members.clear()
    for member in members:
        member.node.stop(timeout)


atexit.register(shutdown)


# -- the backend ---------------------------------------------------------------------


class ShoalCache(BaseCache):
    """Django's cache API on a replicated shoal cache (see the module docstring)."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._location = server or "127.0.0.1:0"
        _addresses(self._location)  # a malformed LOCATION fails at configuration time
        options: dict[str, Any] = dict(params.get("OPTIONS") or {})
        self._options = options
        self._name: str = options.get("cache", "django")
        max_entries = options.get("max_entries", options.get("MAX_ENTRIES"))
        self._max_entries_option: int | None = None if max_entries is None else int(max_entries)
        self._serializer_spec = options.get("serializer")
        self._cache: Cache | None = None
        self._member: _Member | None = None

    # -- the shoal objects underneath (started on first use) ----------------------------

    @property
    def shoal_cache(self) -> Cache:
        """The replicated ``shoal.Cache`` this alias reads and writes (raw keys: see ``make_key``)."""
        cache = self._cache
        return cache if cache is not None else self._connect()

    @property
    def node(self) -> Node:
        """This process's member, e.g. for a readiness probe: ``caches["default"].node.wait_ready(0)``."""
        _ = self.shoal_cache  # starts the node on first use
        assert self._member is not None
        return self._member.node

    def _connect(self) -> Cache:
        with _registry_lock:
            if self._cache is not None:
                return self._cache
            serializer = _load_serializer(self._serializer_spec)
            member = _member(self._location, self._options)
            try:
                cache = member.node.cache(self._name, max_entries=self._max_entries_option, serializer=serializer)
            except ValueError as exc:  # another alias made this shoal cache with other options
                raise ImproperlyConfigured(f"shoal cache at {self._location}: {exc}") from None
            self._member, self._cache = member, cache
            return cache

    def _seconds(self, timeout: Any) -> float | None:
        """Django's timeout as shoal's ttl: None never expires, <= 0 means "expired already"."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else float(timeout)

    # -- Django's cache API ---------------------------------------------------------------

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self.shoal_cache.get(self.make_and_validate_key(key, version), default)

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        made = self.make_and_validate_key(key, version)
        ttl = self._seconds(timeout)
        if ttl is not None and ttl <= 0:
            self.shoal_cache.delete(made)  # Django: a timeout of 0 caches nothing (and drops the old value)
        else:
            self.shoal_cache.set(made, value, ttl)

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        made = self.make_and_validate_key(key, version)
        ttl = self._seconds(timeout)
        if ttl is not None and ttl <= 0:
            return made not in self.shoal_cache  # "added", and expired at once, if it was absent
        return self.shoal_cache.add(made, value, ttl)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self.make_and_validate_key(key, version): key for key in keys}
        return {made[k]: value for k, value in self.shoal_cache.get_many(made).items()}

    def set_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        made = {self.make_and_validate_key(key, version): value for key, value in data.items()}
        ttl = self._seconds(timeout)
        if ttl is not None and ttl <= 0:
            self.shoal_cache.delete_many(made)
        else:
            self.shoal_cache.set_many(made, ttl)
        return []  # writes apply locally and cannot fail later; a bad value raises TypeError

    def delete(self, key: Any, version: int | None = None) -> bool:
        return self.shoal_cache.delete(self.make_and_validate_key(key, version))

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self.shoal_cache.delete_many([self.make_and_validate_key(key, version) for key in keys])

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        made = self.make_and_validate_key(key, version)
        ttl = self._seconds(timeout)
        if ttl is not None and ttl <= 0:
            return self.shoal_cache.delete(made)
        return self.shoal_cache.touch(made, ttl)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self.make_and_validate_key(key, version) in self.shoal_cache

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add delta, keeping the entry's expiry. Atomic within this process only (see the module docstring)."""
        made = self.make_and_validate_key(key, version)
        cache = self.shoal_cache
        assert self._member is not None
        with self._member.counter_lock:
            value = cache.get(made, _MISSING)
            try:
                if value is _MISSING:
                    raise KeyError(made)
                remaining = cache.ttl(made)  # KeyError too if it expired since the get
            except KeyError:
                raise ValueError(f"Key '{key}' not found") from None
            new_value = value + delta
            cache.set(made, new_value, remaining)
        return new_value

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, -delta, version)

    def get_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """The cached value, or ``default`` (called if callable) stored and returned.

        Built on ``Cache.fetch``: however many threads of this process miss at once,
        a callable default runs once per key.
        """
        made = self.make_and_validate_key(key, version)
        ttl = self._seconds(timeout)
        if ttl is not None and ttl <= 0:
            value = self.shoal_cache.get(made, _MISSING)
            if value is not _MISSING:
                return value
            return default() if callable(default) else default
        return self.shoal_cache.fetch(made, lambda _: default() if callable(default) else default, ttl)

    def clear(self) -> None:
        """Clear the whole shoal cache on every member (every key prefix and version)."""
        self.shoal_cache.clear()

    def close(self, **kwargs: Any) -> None:
        """Django calls this after each request: the node stays up for the process's life."""

    # -- async: shoal operations are local and never wait on the network, so run inline ----

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self.get(key, default, version)

    async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        self.set(key, value, timeout, version)

    async def aadd(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return self.add(key, value, timeout, version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        return self.get_many(keys, version)

    async def aset_many(
        self, data: Mapping[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        return self.set_many(data, timeout, version)

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return self.delete(key, version)

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self.delete_many(keys, version)

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return self.touch(key, timeout, version)

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        return self.has_key(key, version)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return self.incr(key, -delta, version)

    async def aget_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """``get_or_set`` on ``afetch``: concurrent tasks that miss wait for one call of ``default``."""
        made = self.make_and_validate_key(key, version)
        ttl = self._seconds(timeout)
        if ttl is not None and ttl <= 0:
            return self.get_or_set(key, default, timeout, version)

        async def load(_: Any) -> Any:
            return default() if callable(default) else default  # inline, as Django's own aget_or_set does

        return await self.shoal_cache.afetch(made, load, ttl)

    async def aclear(self) -> None:
        self.clear()

    async def aclose(self, **kwargs: Any) -> None:
        """Django closes caches after every request; the node outlives requests, so nothing to do."""
