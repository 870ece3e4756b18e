"""raftmq vs the peer brokers, from one session's raw results (docs/benchmarks.md).

  python bench/compare.py run --reps 3 --out DIR        # `raftmq bench --standard --json` x reps
  python bench/compare.py report DIR/raftmq-*.json --peers PEERS.jsonl   # markdown table

The peers' JSONL comes from ../shared/bench/peers/run_all.sh (its `latest.jsonl`). Medians over
the repetitions; for the peers only their clean repetitions (their own disturbance filter),
falling back to all when none was clean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# (row title, raftmq label, peers test, latency field used for both)
ROWS = [
    ("publish, batched / pipelined", "publish b100 c16", "pub_pipe", None),
    ("publish, largest batches", "publish b1000 c4", "pub_pipe", None),
    ("publish, 1 msg per request, 64 in flight", "publish b1 c64", "pub_pipe", None),
    ("publish, one at a time", "latency b1 c1", "pub_sync", "latency"),
    ("publish, batched, durability memory", "publish b100 c16 memory", "pub_pipe", None),
    ("publish, one at a time, durability memory", "latency b1 c1 memory", "pub_sync", "latency"),
    ("receive/consume + ack", "receive b100 c8", "consume", None),
    ("receive + ack in the next receive", "receive b100 c8 ack-next", "consume", None),
    ("receive/consume + ack, largest batches", "receive b1000 c4", "consume", None),
    ("end-to-end (producers + consumers)", "e2e b100 c4", "e2e", "e2e"),
    ("end-to-end, acks in the next receive", "e2e b100 c4 ack-next", "e2e", "e2e"),
    ("topic publish (b100)", "topic-publish b100 c16", None, None),
    ("topic read (replay, b1000)", "topic-read b1000 c4", None, None),
]
PEERS = [("rabbitmq", "RabbitMQ QQ"), ("nats-js", "NATS JS")]


def run(reps: int, out: Path, extra: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for rep in range(reps):
        path = out / f"raftmq-{time.strftime('%Y%m%d-%H%M%S')}-{rep}.json"
        cmd = [sys.executable, "-m", "raftmq.bench", "--standard", "--json", *extra]
        print(f"== rep {rep}: {' '.join(cmd)} > {path}", flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"raftmq bench failed ({proc.returncode})")
        path.write_text(proc.stdout)


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def raftmq_rows(paths: list[Path]) -> dict[str, dict[str, Any]]:
    by_label: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for r in json.loads(path.read_text())["results"]:
            by_label.setdefault(r["label"], []).append(r)
    out = {}
    for label, recs in by_label.items():
        rates = [r["msgs_per_s"] for r in recs]
        lat = [r["e2e_latency_ms"] or r["latency_ms"] for r in recs]
        out[label] = {"rate": med(rates), "min": min(rates), "max": max(rates), "runs": len(recs),
                      "p50": med([x["p50"] for x in lat]), "p99": med([x["p99"] for x in lat]),
                      "us_per_msg": med([(r["node_cpu_s_per_msg"] or 0) * 1e6 for r in recs]),
                      "cpu_pct": med([r["node_cpu_pct"] for r in recs]),
                      "client_pct": med([r.get("client_cpu_pct") for r in recs]),
                      "other_pct": med([r.get("other_cpu_pct") for r in recs]),
                      "codec": recs[0]["codec"]}
    return out


def peer_rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r["variant"].endswith("ackall"):
                continue  # AckAll is the weaker ack; the table compares per-message acks
            groups.setdefault((r["broker"], r["test"]), []).append(r)
    out = {}
    for key, recs in groups.items():
        use = [r for r in recs if r.get("clean", True)] or recs
        rates = [r["msgs_per_s"] for r in use]
        prefix = "e2e_" if key[1] == "e2e" else ""
        out[key] = {"rate": med(rates), "min": min(rates), "max": max(rates), "runs": len(use),
                    "clean": len(use) if use is not recs else sum(r.get("clean", True)
                                                                   for r in recs),
                    "p50": med([r.get(prefix + "p50_ms") for r in use]),
                    "p99": med([r.get(prefix + "p99_ms") for r in use]),
                    "us_per_msg": med([r["broker_cpu"] / 100 / r["msgs_per_s"] * 1e6
                                       for r in use if r.get("broker_cpu") is not None]),
                    "cpu_pct": med([r.get("broker_cpu") for r in use])}
    return out


def fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def cell(row: dict[str, Any] | None, with_lat: bool) -> str:
    if row is None:
        return "-"
    text = f"**{fmt(row['rate'])}** ({fmt(row['min'])}–{fmt(row['max'])})"
    if with_lat:
        text += f", p50/p99 {fmt(row['p50'], 1)}/{fmt(row['p99'], 1)} ms"
    return text + f", {fmt(row['us_per_msg'])} µs/msg"


def ratio(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> str:
    if not ours or not theirs or not theirs["rate"]:
        return "-"
    return f"{ours['rate'] / theirs['rate']:.2f}×"


def report(ours: dict[str, dict[str, Any]], peers: dict[tuple[str, str], dict[str, Any]]) -> str:
    head = ["test", "raftmq (msg/s median (min–max), latency, node CPU µs/msg)",
            *[f"{name}" for _k, name in PEERS], *[f"raftmq / {name}" for _k, name in PEERS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for title, label, test, lat in ROWS:
        mine = ours.get(label)
        theirs = [peers.get((key, test)) if test else None for key, _n in PEERS]
        cells = [f"{title} (`{label}`)", cell(mine, lat is not None),
                 *[cell(t, lat is not None) for t in theirs], *[ratio(mine, t) for t in theirs]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("extra", nargs="*", help="more `raftmq bench` options (after --)")
    p = sub.add_parser("report")
    p.add_argument("raftmq", nargs="+", type=Path)
    p.add_argument("--peers", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.reps, a.out, a.extra)
    else:
        print(report(raftmq_rows(a.raftmq), peer_rows(a.peers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
