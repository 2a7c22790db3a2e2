"""The Grafana dashboard in examples/: every query names a metric that a running member's /metrics exports.

A dashboard whose panel asks for a metric nobody exports shows "No data" and looks
like a quiet cluster. The metric names are read out of each PromQL expression
(panel targets and template variables) and compared with the sample names of a
live scrape of a member that has replicated, repaired and booted from a peer, so
that the metrics exported only once something happened are there too.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shoal import httpd
from shoal.node import Node
from tests.support.cluster import ROOT

DASHBOARD = ROOT / "examples" / "grafana" / "shoal.json"
FUNCTIONS = {
    "abs", "avg", "avg_over_time", "clamp_max", "clamp_min", "count", "delta", "deriv", "histogram_quantile",
    "increase", "irate", "label_values", "max", "max_over_time", "min", "min_over_time", "quantile", "rate",
    "scalar", "sum", "time", "topk", "bottomk", "vector",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values(...)`` query) selects."""
    text = re.sub(r"label_values\(([^,()]*(?:\{[^}]*\})?)\s*,\s*\w+\s*\)", r"\1", expr)  # (metric, label)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\w+", "", text)  # dashboard variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            assert word in FUNCTIONS, f"{word}( in {expr!r} is no PromQL function this test knows"
        elif word not in KEYWORDS:
            names.add(word)
    return names


def queries(node: Any) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (rows' panels included) and query variables."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            found.append(node["expr"])
        if node.get("type") == "query" and "query" in node:  # a template variable
            query = node["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
        for value in node.values():
            found += queries(value)
    elif isinstance(node, list):
        for value in node:
            found += queries(value)
    return found


def scrape_after_replication_and_repair() -> set[str]:
    """Sample names of /metrics on a member that booted from a peer, applied its writes and ran a repair round."""

    async def main() -> str:
        options = {"secret": "the grafana test's cluster secret", "anti_entropy_interval": 0.3, "boot_wait": 0.3}
        async with Node(**options) as a:
            a.cache("users").set_many({f"user:{i}": i for i in range(100)})
            async with Node(seeds=[a.address], **options) as b:
                users = b.cache("users")
                assert await b.ready(timeout=20)
                a.cache("users").set("after-boot", 1)  # replicated: a lag figure
                deadline = asyncio.get_running_loop().time() + 20
                while not ("after-boot" in users and b.stats()["caches"]["users"]["repair_rounds"] > 0):
                    assert asyncio.get_running_loop().time() < deadline, "no replicated write and repair round on b"
                    await asyncio.sleep(0.05)
                server = await httpd.serve(b, "127.0.0.1:0")
                try:
                    url = f"http://{httpd.bound_address(server)}/metrics"
                    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
                finally:
                    server.close()
                    await server.wait_closed()

    text = asyncio.run(main())
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metric_names_are_read_out_of_promql_without_functions_labels_ranges_or_variables() -> None:
    expr = 'sum by (cache) (rate(a_total{cache=~"$cache", x="rate(b)"}[$__rate_interval])) / ignoring(le) c'
    assert metric_names(expr) == {"a_total", "c"}
    assert metric_names("time() - d_seconds offset 5m > bool 1e3") == {"d_seconds"}
    assert metric_names('label_values(e{instance=~"$instance"}, cache)') == {"e"}


def test_every_query_of_the_grafana_dashboard_names_a_metric_a_running_member_exports() -> None:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    expressions = queries(dashboard)
    assert len(expressions) >= 20
    wanted = {expr: metric_names(expr) for expr in expressions}
    assert all(wanted.values()), [expr for expr, names in wanted.items() if not names]  # each names one at least
    exported = scrape_after_replication_and_repair()
    missing = {expr: names - exported for expr, names in wanted.items() if names - exported}
    assert not missing, f"queries naming metrics /metrics does not export: {missing}"
