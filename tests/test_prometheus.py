"""The prometheus_client collector: a scrape (generate_latest) shows the figures of real caches and nodes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import shoal  # noqa: E402
from shoal.contrib.prometheus import ShoalCollector, register  # noqa: E402
from shoal.store import ENTRY_BYTES  # noqa: E402
from tests.support.cluster import wait_until  # noqa: E402

NODE_METRICS = {
    "shoal_cache_hits_total",
    "shoal_cache_misses_total",
    "shoal_cache_sets_total",
    "shoal_cache_deletes_total",
    "shoal_cache_evictions_total",
    "shoal_cache_expirations_total",
    "shoal_cache_entries",
    "shoal_cache_tombstones",
    "shoal_cache_approx_bytes",
    "shoal_cache_loads_total",
    "shoal_cache_load_errors_total",
    "shoal_replication_ops_sent_total",
    "shoal_replication_ops_received_total",
    "shoal_replication_ops_applied_total",
    "shoal_replication_ops_ignored_total",
    "shoal_replication_ops_dropped_total",
    "shoal_replication_queue_depth",
    "shoal_repair_rounds_total",
    "shoal_repair_keys_total",
    "shoal_replication_lag_ms",
    "shoal_members_up",
    "shoal_warm_boot_seconds",
    "shoal_warm_boot_entries",
    "shoal_ready",
    "shoal_leases_granted_total",
    "shoal_lease_waits_total",
    "shoal_leases_handed_over_total",
    "shoal_lease_owner_fallbacks_total",
    "shoal_leases_held",
    "shoal_gc_frozen_collections_total",
    "shoal_gc_frozen_garbage_total",
    "shoal_gc_frozen_collection_seconds_total",
    "shoal_gc_frozen_collection_longest_seconds",
}


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every sample of a scrape, by (sample name, cache label)."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, sample.labels.get("cache", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def pair() -> Iterator[tuple[shoal.Node, shoal.Node]]:
    """Two in-process members hosting "accounts", A seeding B."""
    a = shoal.Node(secret="prometheus-test-secret", boot_wait=0.2)
    a.cache("accounts", ttl=60)
    a.start()
    b = shoal.Node(seeds=[a.address], secret="prometheus-test-secret", boot_wait=2.0)
    b.cache("accounts", ttl=60)
    b.start()
    try:
        assert a.wait_ready(10) and b.wait_ready(10)
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture
def solo() -> Iterator[tuple[shoal.Node, CollectorRegistry]]:
    """One started member hosting "solo", alone, and a registry collecting it."""
    node = shoal.Node(secret="prometheus-test-secret")
    node.cache("solo")
    node.start()
    try:
        assert node.wait_ready(10)
        registry = CollectorRegistry()
        register(node, registry)
        yield node, registry
    finally:
        node.stop()


def test_a_bare_cache_exports_its_cache_figures_only() -> None:
    cache = shoal.Cache(ttl=60, max_entries=2, name="local")
    registry = CollectorRegistry()
    assert isinstance(register(cache, registry), ShoalCollector)
    cache.set("a", 1)
    cache.get("a")
    cache.get("missing")
    cache.set("b", 2)
    cache.set("c", 3)  # over max_entries: one eviction
    cache.delete("c")
    cache.fetch("d", lambda key: "loaded")
    samples = scrape(registry)
    assert samples[("shoal_cache_hits_total", "local")] == 1
    assert samples[("shoal_cache_misses_total", "local")] == 2  # "missing", then fetch's miss on "d"
    assert samples[("shoal_cache_sets_total", "local")] == 4
    assert samples[("shoal_cache_deletes_total", "local")] == 1
    assert samples[("shoal_cache_evictions_total", "local")] >= 1
    assert samples[("shoal_cache_loads_total", "local")] == 1
    assert samples[("shoal_cache_load_errors_total", "local")] == 0
    assert samples[("shoal_cache_entries", "local")] == 2
    assert samples[("shoal_cache_approx_bytes", "local")] > 2 * ENTRY_BYTES  # two entries, their keys and values
    assert not any(name.startswith(("shoal_replication", "shoal_ready")) for name, _ in samples)


def test_a_node_exports_replication_membership_and_warm_boot_figures(pair: tuple[shoal.Node, shoal.Node]) -> None:
    a, b = pair
    accounts_a = a.cache("accounts")
    for i in range(10):
        accounts_a.set(f"user:{i}", f"acct-{i}")
    accounts_b = b.cache("accounts")
    wait_until(lambda: len(accounts_b) == 10, what="A's writes on B")
    accounts_b.get("user:1")

    registry_a, registry_b = CollectorRegistry(), CollectorRegistry()
    register(a, registry_a)
    register(b, registry_b)
    on_a, on_b = scrape(registry_a), scrape(registry_b)

    assert {name for name, _ in on_b} == NODE_METRICS
    assert on_a[("shoal_cache_sets_total", "accounts")] == 10
    assert on_a[("shoal_replication_ops_sent_total", "accounts")] >= 10
    assert on_b[("shoal_cache_hits_total", "accounts")] == 1
    assert on_b[("shoal_cache_entries", "accounts")] == 10
    assert on_b[("shoal_replication_ops_applied_total", "accounts")] == 10
    assert on_b[("shoal_replication_ops_received_total", "accounts")] == 10
    assert on_b[("shoal_replication_lag_ms", "accounts")] < 5_000  # milliseconds, between two local members
    assert on_b[("shoal_replication_queue_depth", "accounts")] == 0
    assert on_a[("shoal_members_up", "accounts")] == on_b[("shoal_members_up", "accounts")] == 1
    assert on_a[("shoal_ready", "accounts")] == on_b[("shoal_ready", "accounts")] == 1
    assert on_b[("shoal_warm_boot_seconds", "accounts")] > 0


def test_the_warm_boot_shows_the_entries_it_loaded(pair: tuple[shoal.Node, shoal.Node]) -> None:
    a, _ = pair
    a.cache("accounts").set_many({f"k{i}": i for i in range(50)})
    late = shoal.Node(seeds=[a.address], secret="prometheus-test-secret", boot_wait=2.0)
    late.cache("accounts")
    late.start()
    try:
        assert late.wait_ready(10)
        registry = CollectorRegistry()
        register(late, registry)
        samples = scrape(registry)
        assert samples[("shoal_warm_boot_entries", "accounts")] == 50
        assert samples[("shoal_cache_entries", "accounts")] == 50
        # B is learned through gossip, perhaps after the boot from A is over.
        wait_until(lambda: scrape(registry)[("shoal_members_up", "accounts")] == 2, what="both peers up")
    finally:
        late.stop()


def test_a_lone_node_reports_no_lag_before_it_has_received_anything(
    solo: tuple[shoal.Node, CollectorRegistry],
) -> None:
    _, registry = solo
    samples = scrape(registry)
    assert ("shoal_replication_lag_ms", "solo") not in samples
    assert samples[("shoal_members_up", "solo")] == 0
    assert samples[("shoal_ready", "solo")] == 1


def test_register_refuses_anything_but_a_node_or_a_cache() -> None:
    with pytest.raises(TypeError):
        register({"hits": 1}, CollectorRegistry())  # type: ignore[arg-type]


def test_a_node_exports_what_its_collections_of_everything_frozen_found(
    solo: tuple[shoal.Node, CollectorRegistry],
) -> None:
    """Garbage found collection after collection is an application leaking cycles into the freezes
    (housekeeping.Collector): an operator graphs it. Nothing here runs five minutes to collect, so the
    collector's tallies are set as a collection would leave them."""
    node, registry = solo
    before = scrape(registry)
    assert before[("shoal_gc_frozen_collections_total", "")] == 0
    assert before[("shoal_gc_frozen_garbage_total", "")] == 0
    collector = node._driver._gc
    collector.reclaims, collector.reclaimed = 2, 28_524
    collector.reclaim_seconds, collector.longest_reclaim = 1.9, 1.42
    after = scrape(registry)
    assert after[("shoal_gc_frozen_collections_total", "")] == 2
    assert after[("shoal_gc_frozen_garbage_total", "")] == 28_524
    assert after[("shoal_gc_frozen_collection_seconds_total", "")] == 1.9
    assert after[("shoal_gc_frozen_collection_longest_seconds", "")] == 1.42
