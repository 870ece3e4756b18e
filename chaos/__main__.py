"""`python -m chaos run ...` and `python -m chaos campaign ...` (see chaos/README.md)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from chaos.faults import FAMILIES
from chaos.netns import NetnsUnavailable
from chaos.runner import WORKLOADS, RunConfig, run, summary_line
from chaos.summary import load_reports, markdown
from chaos.workload import WorkloadConfig

DEFAULT_FAULTS = "kill,pause,partition,corrupt"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults + load")
    p.add_argument("--faults", default=DEFAULT_FAULTS,
                   help="comma list of families (" + ",".join(FAMILIES) + ") or kinds "
                        "(e.g. kill-leader)")
    p.add_argument("--workload", default="queue", choices=WORKLOADS,
                   help="queue, topic, txn (consume-transform-produce) or mixed")
    p.add_argument("--producers", type=int, default=4)
    p.add_argument("--consumers", type=int, default=4)
    p.add_argument("--durability", default="fsync", choices=("fsync", "memory"),
                   help="the queue workload's queue durability (docs/durability.md): with "
                        "memory, acked publishes lost after a power-all fault are allowed")
    p.add_argument("--drain-timeout", type=float, default=90.0,
                   help="seconds the final drain may take")
    p.add_argument("--node-cmd", default=None,
                   help="command that runs a node (default: the venv's `raftmq node`)")


def _config(args: argparse.Namespace, seed: int, out: Path, nodes: int) -> RunConfig:
    cfg = RunConfig(nodes=nodes, duration_s=args.duration,
                    faults=[f for f in args.faults.split(",") if f], workload=args.workload,
                    seed=seed, out=out,
                    wl=WorkloadConfig(producers=args.producers, consumers=args.consumers,
                                      drain_timeout_s=args.drain_timeout,
                                      durability=args.durability))
    if args.node_cmd:
        cfg.node_cmd = args.node_cmd.split()
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="one seeded run; exit 0 valid, 1 anomalies")
    _common(p_run)
    p_run.add_argument("--seed", type=int, default=1)
    p_run.add_argument("--out", type=Path, default=Path("chaos-out/run"))
    p_camp = sub.add_parser("campaign", help="several runs (seeds first..first+runs-1)")
    _common(p_camp)
    p_camp.add_argument("--runs", type=int, default=10)
    p_camp.add_argument("--first-seed", type=int, default=1)
    p_camp.add_argument("--alternate-nodes", action="store_true",
                        help="odd seeds with 3 nodes, even seeds with 5")
    p_camp.add_argument("--out", type=Path, default=Path("chaos-out/campaign"))
    p_sum = sub.add_parser("summary", help="Markdown table of campaign directories")
    p_sum.add_argument("dirs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "summary":
        print(markdown(load_reports(args.dirs)), end="")
        return 0
    signal.signal(signal.SIGTERM, _terminate)  # so `finally` blocks clean up on SIGTERM too
    try:
        if args.cmd == "run":
            result = run(_config(args, args.seed, args.out, args.nodes))
            print(summary_line(result))
            print(f"report: {args.out / 'report.html'}")
            return 0 if result["valid"] else 1
        return campaign(args)
    except NetnsUnavailable as exc:
        print(f"chaos: cannot run here: {exc}", file=sys.stderr)
        return 2


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def campaign(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for k in range(args.runs):
        seed = args.first_seed + k
        nodes = (3 if seed % 2 else 5) if args.alternate_nodes else args.nodes
        out = args.out / f"seed-{seed}"
        started = time.time()
        result = run(_config(args, seed, out, nodes))
        line = summary_line(result)
        print(line, flush=True)
        rows.append({"seed": seed, "nodes": nodes, "valid": result["valid"], "ops": result["ops"],
                     "acked": result["queue"]["stats"]["publish_acked"],
                     "faults": [f["kind"] for f in result["schedule"]],
                     "anomalies": {c: n for c, n in result["anomaly_counts"].items() if n},
                     "phases": result["phases"], "wall_s": round(time.time() - started, 1)})
        (args.out / "campaign.json").write_text(json.dumps(rows, indent=2) + "\n")
    failed = [r["seed"] for r in rows if not r["valid"]]
    print(f"campaign: {len(rows)} runs, {len(failed)} invalid, failing seeds: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
