"""docs/grafana-dashboard.json uses only metrics the node exports, and every one of them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
EXPORTER = REPO / "node" / "http_cluster.py"
METRICS_DOC = REPO / "docs" / "metrics.md"
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# API.md "Cluster and operations" and issue 8: the metrics operators are promised (a metric the
# node adds later belongs on the dashboard too, but does not fail this test until listed here).
CONTRACT_METRICS = {
    "raftmq_queue_messages", "raftmq_queue_published_total", "raftmq_queue_acked_total",
    "raftmq_queue_dead_lettered_total", "raftmq_queue_oldest_ready_age_seconds",
    "raftmq_topic_group_lag", "raftmq_raft_term", "raftmq_raft_commit_index",
    "raftmq_raft_applied_index", "raftmq_raft_is_leader", "raftmq_http_request_duration_seconds",
    "raftmq_long_polls_waiting",
}
# Every node reports the same replicated queue/topic state: summing across nodes would count
# each message once per node, so those series must be reduced with max first.
REPLICATED_PREFIXES = ("raftmq_queue_", "raftmq_topic_")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def exported_families() -> tuple[set[str], set[str]]:
    """(all metric family names, histogram family names) named in the exporter's source."""
    source = EXPORTER.read_text()
    app_keys = set(re.findall(r'AppKey\(\s*"([a-z0-9_]+)"', source))
    names = set(re.findall(r'"(raftmq_[a-z0-9_]+)"', source)) - app_keys
    histograms = set(re.findall(r'Histogram\(\s*"(raftmq_[a-z0-9_]+)"', source))
    assert histograms <= names
    return names, histograms


def exported_series() -> set[str]:
    names, histograms = exported_families()
    return (names - histograms) | {h + s for h in histograms for s in HISTOGRAM_SUFFIXES}


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL string in the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def metrics_used(expr: str) -> set[str]:
    return set(re.findall(r"\b(raftmq_[a-z0-9_]+)", expr))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_every_metric_the_dashboard_queries_is_exported_by_the_node() -> None:
    used = set().union(*(metrics_used(e) for e in expressions(dashboard())))
    assert used, "the dashboard queries nothing"
    assert used - exported_series() == set(), "dashboard uses metrics the node does not export"


def family(series: str, histograms: set[str]) -> str:
    base = re.sub(r"_(bucket|count|sum)$", "", series)
    return base if base in histograms else series


def test_every_contract_metric_has_a_panel() -> None:
    names, histograms = exported_families()
    used = set().union(*(metrics_used(e) for e in expressions(dashboard()["panels"])))
    on_dashboard = {family(u, histograms) for u in used}
    assert CONTRACT_METRICS - on_dashboard == set(), "promised metrics missing from the dashboard"


def test_metrics_page_documents_every_dashboard_metric_and_only_exported_ones() -> None:
    names, histograms = exported_families()
    documented = set(re.findall(r"`(raftmq_[a-z0-9_]+)`", METRICS_DOC.read_text()))
    used = set().union(*(metrics_used(e) for e in expressions(dashboard())))
    assert {family(u, histograms) for u in used} - documented == set(), "undocumented"
    assert documented - names - exported_series() == set(), "documented but not exported"


def test_replicated_state_is_reduced_with_max_not_summed_across_nodes() -> None:
    for expr in expressions(dashboard()["panels"]):
        if any(m.startswith(REPLICATED_PREFIXES) for m in metrics_used(expr)):
            assert "max by (" in expr, f"sums one copy per node: {expr}"


def test_panels_have_unique_ids_fit_the_grid_and_use_the_datasource_variable() -> None:
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]

