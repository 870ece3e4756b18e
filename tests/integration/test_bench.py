"""`raftmq bench` end to end against a real local cluster that the tool starts and stops itself.

No speed assertions: only that every workload of the standard set runs, moves the messages it
says, reports the documented JSON fields (node CPU included, since it knows the node PIDs), and
leaves no node process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240
STANDARD = ["publish b1 c64", "publish b100 c16", "publish b1000 c4", "receive b100 c8",
            "receive b100 c8 ack-next", "receive b1000 c4", "e2e b100 c4", "e2e b100 c4 ack-next",
            "latency b1 c1", "publish b100 c16 memory", "latency b1 c1 memory",
            "topic-publish b100 c16", "topic-read b1000 c4"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def bench_json(*args: str) -> dict[str, Any]:
    """`python -m raftmq.bench ARGS --json -q` on a local cluster of its own; its JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", "raftmq.bench", *args, "--json", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_standard_set_runs_against_its_own_cluster_and_stops_it() -> None:
    out = bench_json("--standard", "--count", "200")
    results = out["results"]
    assert [r["label"] for r in results] == STANDARD
    for r in results:
        assert r["errors"] == {}, r
        assert r["msgs"] >= 200 if r["workload"] != "topic-read" else r["msgs"] >= 4 * 200
        assert r["msgs_per_s"] > 0 and r["mb_per_s"] > 0
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], r
        # known, since the tool knows the node PIDs (0 possible: /proc counts 10 ms ticks)
        assert r["node_cpu_s_per_msg"] is not None and r["node_cpu_s_per_msg"] >= 0, r
        assert r["codec"] in ("json", "msgpack")
        assert (r["durability"] == "memory") == r["label"].endswith(" memory"), r
    assert results[6]["e2e_latency_ms"]["p50"] is not None
    assert results[7]["e2e_latency_ms"]["p50"] is not None
    cluster = out["cluster"]
    assert cluster["local"] and len(cluster["urls"]) == 3
    assert len(cluster["node_pids"]) >= 4  # `cluster up` and its three nodes
    assert not [p for p in cluster["node_pids"] if alive(p)]


def node_processes_below(pid: int) -> list[int]:
    """PIDs of `node.cli node` processes among the descendants of pid."""
    from raftmq.bench import descendants

    found = []
    for p in descendants(pid)[1:]:
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"node" in cmdline and b"--id" in cmdline:
            found.append(p)
    return found


@pytest.mark.timeout(120)
def test_sigterm_stops_the_cluster_it_started() -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "raftmq.bench", "publish", "--duration", "60", "-q"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        nodes: list[int] = []
        while len(nodes) < 3:
            assert bench.poll() is None and time.monotonic() < deadline, "no cluster came up"
            time.sleep(0.2)
            nodes = node_processes_below(bench.pid)
        bench.send_signal(signal.SIGTERM)
        bench.wait(60)
        assert not [p for p in nodes if alive(p)]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_failover_kills_the_leader_and_reports_the_first_ack_after_it() -> None:
    out = bench_json("failover", "--count", "2")
    assert len(out["rounds"]) == 2
    for r in out["rounds"]:
        assert r["new_leader"] not in (None, r["killed"]), r
        assert 0 < r["first_ack_s"] < 30 and r["acked_before"] > 0, r
    f = out["first_ack_ms"]
    assert f["min"] <= f["median"] <= f["max"]
    # the nodes it started again are stopped with the rest
    assert len(out["cluster"]["node_pids"]) >= 6  # `cluster up`, 3 nodes, 2 restarts
    assert not [p for p in out["cluster"]["node_pids"] if alive(p)]


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_restart_reports_rss_and_the_time_until_the_node_holds_the_queue_again() -> None:
    out = bench_json("restart", "--count", "5000")
    assert out["msgs"] >= 5000 and len(out["rss_mb"]) == 3
    assert all(v > 10 for v in out["rss_mb"].values()), out
    assert 0 < out["ready_s"] <= out["all_messages_s"] < 300, out
    assert out["rss_mb_after_restart"] > 10
    assert out["heap_trimmed"] and out["rss_mb_settled"] > 10, "the node's start-up trim"
    assert not [p for p in out["cluster"]["node_pids"] if alive(p)]


def test_failover_and_restart_refuse_a_given_cluster(capsys) -> None:
    from raftmq import bench

    for workload in ("failover", "restart"):
        with pytest.raises(SystemExit) as exc:
            bench.main([workload, "--url", "http://127.0.0.1:1"])
        assert exc.value.code == 2
        assert "local cluster of its own" in capsys.readouterr().err
