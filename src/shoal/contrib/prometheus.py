"""Prometheus metrics for shoal: a prometheus_client collector over ``Node.stats()`` or ``Cache.stats()``.

    from shoal.contrib.prometheus import register
    register(node)            # or a bare shoal.Cache; registry=REGISTRY by default

Figures are read when Prometheus scrapes, not counted twice: the collector asks
``stats()`` and turns each cache's figures into metric families labelled ``cache``.
A bare ``Cache`` (no node) has only the ``shoal_cache_*`` families.

Counters (``_total``): ``shoal_cache_{hits,misses,sets,deletes,evictions,expirations,loads,load_errors}``,
``shoal_replication_ops_{sent,received,applied,ignored,dropped}``, ``shoal_repair_rounds``,
``shoal_repair_keys``. Gauges: ``shoal_cache_entries``, ``shoal_cache_tombstones``,
``shoal_cache_approx_bytes`` (estimated from a sample of entries), ``shoal_replication_queue_depth``,
``shoal_replication_lag_ms`` (of the last batch applied; absent until one is),
``shoal_repair_last_timestamp_seconds`` (when the last repair round opened; absent until one did),
``shoal_members_up`` (up peers hosting the cache), ``shoal_warm_boot_seconds``, ``shoal_warm_boot_entries``,
``shoal_ready`` (1 once the cache's warm boot is over). Member-wide,
cluster single flight: ``shoal_{leases_granted,lease_waits,leases_handed_over,lease_owner_fallbacks}_total``
and the gauge ``shoal_leases_held``. A cache with a backing store (backing.py) adds the counters
``shoal_backing_{reads,writes,errors,invalidations,tracking_resets}_total``. Member-wide, the
collections of everything the periodic ``gc.freeze()`` froze (housekeeping.py): the counters
``shoal_gc_frozen_{collections,garbage}_total``, ``shoal_gc_frozen_collection_seconds_total`` and the
gauge ``shoal_gc_frozen_collection_longest_seconds``; garbage found again and again is an application
leaking reference cycles.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..cache import Cache
from ..node import Node

__all__ = ["ShoalCollector", "register"]

# (metric name, key in a cache's stats, help)
_CACHE_COUNTERS = [
    ("shoal_cache_hits", "hits", "Reads that found a live entry."),
    ("shoal_cache_misses", "misses", "Reads that found no live entry."),
    ("shoal_cache_sets", "sets", "Local writes (set, add, fetch loads)."),
    ("shoal_cache_deletes", "deletes", "Local deletes that removed a live entry."),
    ("shoal_cache_evictions", "evictions", "Entries evicted to stay within max_entries (local)."),
    ("shoal_cache_expirations", "expirations", "Entries removed because their TTL ran out."),
    ("shoal_cache_loads", "loads", "Values loaded by fetch/memoize (single-flight leaders)."),
    ("shoal_cache_load_errors", "load_errors", "fetch/memoize loads that raised."),
    ("shoal_backing_reads", "backing_reads", "Reads of the backing store (Redis) after a local miss."),
    ("shoal_backing_writes", "backing_writes", "Writes to the backing store (set, add, delete, touch, loads)."),
    ("shoal_backing_errors", "backing_errors", "Backing store commands that failed (BackingError raised)."),
    ("shoal_backing_invalidations", "invalidations", "Keys the backing store announced changed (dropped here)."),
    ("shoal_backing_tracking_resets", "tracking_resets", "Tracking connections lost: the local tier was dropped."),
]
_CACHE_GAUGES = [
    ("shoal_cache_entries", "entries", "Entries held (expired ones not yet swept included)."),
    ("shoal_cache_tombstones", "tombstones", "Tombstones kept so older writes cannot resurrect deleted keys."),
    ("shoal_cache_approx_bytes", "approx_bytes", "Memory the entries hold, estimated from a sample of them."),
]
_REPLICATION_COUNTERS = [
    ("shoal_replication_ops_sent", "ops_sent", "Ops sent to peers (one per op per peer)."),
    ("shoal_replication_ops_received", "ops_received", "Ops received from peers."),
    ("shoal_replication_ops_applied", "ops_applied", "Received ops applied (newer than what was held)."),
    ("shoal_replication_ops_ignored", "ops_ignored", "Received ops ignored as older than what was held."),
    ("shoal_replication_ops_dropped", "ops_dropped", "Ops not sent to a peer that was not reading (repaired later)."),
    ("shoal_repair_rounds", "repair_rounds", "Anti-entropy rounds started."),
    ("shoal_repair_keys", "keys_repaired", "Keys pulled from peers by anti-entropy."),
]
_PENDING_BOOT = ("pending", "booting")


class ShoalCollector(Collector):
    """Collects the figures of a Node's caches, or of one bare Cache, at each scrape."""

    def __init__(self, source: Node | Cache) -> None:
        if not isinstance(source, (Node, Cache)):
            raise TypeError(f"expected a shoal.Node or shoal.Cache, not {type(source).__name__}")
        self.source = source

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if isinstance(source, Cache):
            yield from _cache_families({source.name: source.stats()})
            return
        stats = source.stats()
        caches = stats["caches"]
        yield from _cache_families(caches)
        yield from _node_families(caches, source.members())
        yield from _member_families(stats.get("leases") or {}, _LEASE_COUNTERS, _LEASE_GAUGES)
        yield from _member_families(stats.get("frozen_collections") or {}, _FROZEN_COUNTERS, _FROZEN_GAUGES)


def _cache_families(caches: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    for name, key, doc in _CACHE_COUNTERS:
        yield _family(CounterMetricFamily, name, doc, caches, key)
    for name, key, doc in _CACHE_GAUGES:
        yield _family(GaugeMetricFamily, name, doc, caches, key)


def _node_families(caches: dict[str, dict[str, Any]], members: list[dict[str, Any]]) -> Iterator[Metric]:
    for name, key, doc in _REPLICATION_COUNTERS:
        yield _family(CounterMetricFamily, name, doc, caches, key)
    yield _family(
        GaugeMetricFamily, "shoal_replication_queue_depth", "Local writes queued, not yet sent.", caches, "queue_depth"
    )
    yield _family(
        GaugeMetricFamily,
        "shoal_replication_lag_ms",
        "Milliseconds from a write to its apply here, for the last batch received.",
        caches,
        "last_lag_ms",
    )
    yield _family(
        GaugeMetricFamily,
        "shoal_repair_last_timestamp_seconds",
        "Unix time the last anti-entropy round opened.",
        caches,
        "last_repair_at",
    )

    up = [m for m in members if m["state"] == "up"]
    peers = GaugeMetricFamily(
        "shoal_members_up", "Up peers hosting the cache (this member excluded).", labels=["cache"]
    )
    seconds = GaugeMetricFamily("shoal_warm_boot_seconds", "How long the cache's warm boot took.", labels=["cache"])
    entries = GaugeMetricFamily("shoal_warm_boot_entries", "Entries loaded by the warm boot.", labels=["cache"])
    ready = GaugeMetricFamily("shoal_ready", "1 once the cache's warm boot is over, else 0.", labels=["cache"])
    for cache, figures in caches.items():
        boot = figures.get("warm_boot") or {}
        peers.add_metric([cache], sum(1 for m in up if cache in m["caches"]))
        seconds.add_metric([cache], float(boot.get("seconds") or 0.0))
        entries.add_metric([cache], float(boot.get("entries") or 0))
        ready.add_metric([cache], 0.0 if boot.get("state", "pending") in _PENDING_BOOT else 1.0)
    yield from (peers, seconds, entries, ready)


_LEASE_COUNTERS = [
    ("shoal_leases_granted", "leases_granted", "Load leases this member granted as the keys' owner."),
    ("shoal_lease_waits", "lease_waits", "Requests this member answered 'wait: another member is loading'."),
    ("shoal_leases_handed_over", "leases_handed_over", "Leases passed on (holder down, over time or gave it back)."),
    ("shoal_lease_owner_fallbacks", "owner_fallbacks", "Keys asked of the next owner: the first did not answer."),
]
_LEASE_GAUGES = [("shoal_leases_held", "leases_held", "Leases out now on keys this member owns.")]
_FROZEN_COUNTERS = [
    ("shoal_gc_frozen_collections", "count", "Collections of everything the periodic gc.freeze() froze."),
    ("shoal_gc_frozen_garbage", "garbage_found", "Garbage objects those collections found (cycles frozen dead)."),
    ("shoal_gc_frozen_collection_seconds", "seconds", "Seconds those collections took, every thread stopped."),
]
_FROZEN_GAUGES = [
    ("shoal_gc_frozen_collection_longest_seconds", "longest_seconds", "The longest of those collections."),
]


def _member_families(
    figures: dict[str, Any], counters: list[tuple[str, str, str]], gauges: list[tuple[str, str, str]]
) -> Iterator[Metric]:
    """Member-wide figures, no ``cache`` label: cluster single flight (leases.py), the collector's
    collections of everything frozen (housekeeping.Collector). Only those ``figures`` has."""
    for kind, table in ((CounterMetricFamily, counters), (GaugeMetricFamily, gauges)):
        for name, key, doc in table:
            if key in figures:
                yield kind(name, doc, value=float(figures[key]))


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    caches: dict[str, dict[str, Any]],
    key: str,
) -> Metric:
    family = kind(name, doc, labels=["cache"])
    for cache, figures in caches.items():
        value = figures.get(key)
        if value is not None:  # e.g. no lag before the first batch: no sample, rather than a made-up 0
            family.add_metric([cache], float(value))
    return family


def register(source: Node | Cache, registry: CollectorRegistry = REGISTRY) -> ShoalCollector:
    """Register a collector for ``source`` (a Node, or a bare Cache) with ``registry``; returns it.

    One collector per registry: a second would export the same series twice
    (``registry.unregister(collector)`` removes one).
    """
    collector = ShoalCollector(source)
    registry.register(collector)
    return collector
