"""The Grafana dashboard against live nodes: every series it queries is scraped from a real
node after known traffic, and (when a Prometheus binary is installed, Debian package
`prometheus`) every panel's PromQL runs in a real Prometheus and returns data."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import Cluster, free_ports, http, wait_until
from tests.unit.test_ui_dashboard import dashboard, exported_series, metrics_used

SCRAPE_INTERVAL_S = 1
PROMETHEUS_START_TIMEOUT_S = 60.0
QUERY_DATA_TIMEOUT_S = 60.0
READY_DASH = 2  # messages left ready in queue "dash" by the traffic below
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture(scope="module")
def traffic(shared_cluster: Cluster) -> Cluster:
    """Known traffic: queue dash (4 published, 1 acked, 1 dead-lettered, 2 ready), a topic
    with a consumer group, and one 404."""
    url = shared_cluster.nodes[0].url
    assert http("PUT", f"{url}/v1/queues/dash", {"max_receives": 1, "visibility_timeout_s": 1,
                                                  "dead_letter_queue": "dash-dlq"}).status == 201
    r = http("POST", f"{url}/v1/queues/dash/messages",
             {"messages": [{"body": f"m{i}"} for i in range(4)]})
    assert r.status == 201, r.body
    r = http("POST", f"{url}/v1/queues/dash/receive", {"max_messages": 2})
    assert len(r.body["messages"]) == 2, r.body
    r = http("POST", f"{url}/v1/queues/dash/ack", {"receipts": [r.body["messages"][0]["receipt"]]})
    assert r.body["acked"] == 1, r.body
    assert http("PUT", f"{url}/v1/topics/dash-events", {"partitions": 2}).status == 201
    r = http("POST", f"{url}/v1/topics/dash-events/messages",
             {"messages": [{"body": "e", "key": f"k{i}"} for i in range(3)]})
    assert r.status == 201, r.body
    r = http("POST", f"{url}/v1/topics/dash-events/groups/g/offsets",
             {"offsets": [{"partition": 0, "offset": 0}]})
    assert r.status == 200, r.body
    assert http("GET", f"{url}/v1/queues/missing").status == 404
    wait_until(lambda: stats(url, "dash-dlq")["ready"] == 1, 30, what="1 dead-lettered")
    return shared_cluster


def stats(url: str, queue: str) -> dict[str, Any]:
    result: dict[str, Any] = http("GET", f"{url}/v1/queues/{queue}").body["stats"]
    return result


def scrape(url: str) -> Samples:
    r = http("GET", f"{url}/metrics")
    assert r.status == 200
    samples: Samples = {}
    for fam in text_string_to_metric_families(r.body):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: Samples, name: str,
          **labels: str) -> float | None:
    return next((v for lab, v in samples.get(name, []) if labels.items() <= lab.items()), None)


def panel_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] if p["type"] != "row"
            for t in p["targets"]]


def test_every_series_the_dashboard_queries_is_scraped_from_a_live_node(
        traffic: Cluster) -> None:
    used = set().union(*(metrics_used(e) for _, e in panel_exprs()))
    for node in traffic.nodes:
        samples = wait_until(partial(applied_scrape, node.url), 30,
                             what=f"{node.id} to apply the traffic")
        assert used - set(samples) == set(), f"{node.id} does not export them"
        assert value(samples, "raftmq_queue_published_total", queue="dash") == 4
        assert value(samples, "raftmq_queue_acked_total", queue="dash") == 1
        assert value(samples, "raftmq_queue_dead_lettered_total", queue="dash") == 1
        assert value(samples, "raftmq_topic_group_lag", topic="dash-events", group="g") is not None
    assert used <= exported_series()
    leaders = [value(scrape(n.url), "raftmq_raft_is_leader") or 0.0 for n in traffic.nodes]
    assert sorted(leaders) == [0, 0, 1], "the Leaders panel expects exactly one 1"


def applied_scrape(url: str) -> Samples | None:
    """The node's samples once it has applied the traffic (queue dash has READY_DASH ready)."""
    samples = scrape(url)
    ready = value(samples, "raftmq_queue_messages", queue="dash", state="ready")
    return samples if ready == READY_DASH else None


# -- the PromQL in a real Prometheus -------------------------------------------------------

def prometheus_binary() -> str | None:
    return os.environ.get("RAFTMQ_PROMETHEUS") or shutil.which("prometheus")


@pytest.fixture
def prometheus(traffic: Cluster, tmp_path: Path) -> Iterator[str]:
    binary = prometheus_binary()
    assert binary is not None
    port = free_ports(1)[0]
    targets = [n.url.removeprefix("http://") for n in traffic.nodes]
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                   "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [{"job_name": "raftmq", "static_configs": [{"targets": targets}]}]}))
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: query(url, "count(up == 1)") == [3.0], PROMETHEUS_START_TIMEOUT_S,
                   what="Prometheus to scrape the 3 nodes")
        yield url
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def query(url: str, expr: str) -> list[float]:
    r = http("GET", f"{url}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert r.status == 200 and r.body["status"] == "success", f"{expr}: {r.body}"
    return [float(item["value"][1]) for item in r.body["data"]["result"]]


def concrete(expr: str) -> str:
    """The query Grafana sends with every variable at All and a 1-minute rate interval."""
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$(instance|queue|topic)\b", ".*", expr)


@pytest.mark.skipif(prometheus_binary() is None,
                    reason="no prometheus binary: apt-get install prometheus "
                           "(or set RAFTMQ_PROMETHEUS)")
def test_every_panel_query_returns_data_in_prometheus(prometheus: str) -> None:
    for title, expr in panel_exprs():
        promql = concrete(expr)
        wait_until(partial(query, prometheus, promql), QUERY_DATA_TIMEOUT_S,
                   what=f"data for panel {title!r}: {promql}")
    ready = next(e for t, e in panel_exprs() if t == "Ready messages per queue")
    per_queue = concrete(ready).replace('queue=~".*"', 'queue="dash"')
    assert query(prometheus, per_queue) == [READY_DASH], "one copy per node must not add up"
    for var in dashboard()["templating"]["list"][1:]:
        found = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
        assert found, var["definition"]
        metric, label = found.groups()
        r = http("GET", f"{prometheus}/api/v1/label/{label}/values?match[]={metric}")
        assert r.body["data"], f"variable {var['name']} has no values"
