"""A Markdown summary of campaign directories (one `seed-N/report.json` per run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_reports(dirs: list[Path]) -> list[dict[str, Any]]:
    reports = []
    for d in dirs:
        for path in sorted(d.glob("seed-*/report.json"), key=lambda p: int(p.parent.name[5:])):
            reports.append(json.loads(path.read_text()))
    return reports


def _row(r: dict[str, Any]) -> str:
    kinds = ", ".join(f["kind"] for f in r["schedule"])
    bad = {c: n for c, n in r["anomaly_counts"].items() if n}
    acked = r["queue"]["stats"]["publish_acked"] + r.get("topic", {}).get("stats", {}).get(
        "publish_acked", 0)
    txn = r.get("txn", {}).get("stats", {})
    committed = txn.get("committed", "-") if txn else "-"
    rec = r["availability"].get("recovery_s_max")
    verdict = "valid" if r["valid"] else f"**INVALID** {json.dumps(bad)}"
    error = r["phases"].get("error")
    if error:
        verdict += f" ({error})"
    return (f"| {r['seed']} | {r['nodes']} | {r['workload']} | {kinds} | {r['ops']} | {acked} | "
            f"{committed} | {rec if rec is not None else '-'} | {verdict} |")


def markdown(reports: list[dict[str, Any]]) -> str:
    lines = ["| seed | nodes | workload | faults (in order) | ops | acked publishes | "
             "committed txns | max s heal->first ok write | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(r) for r in reports]
    total_ops = sum(r["ops"] for r in reports)
    faults = sum(len(r["schedule"]) for r in reports)
    invalid = [r["seed"] for r in reports if not r["valid"]]
    seconds = sum(r["duration_s"] for r in reports)
    txns = sum(r.get("txn", {}).get("stats", {}).get("committed", 0) for r in reports)
    lines.append("")
    lines.append(f"{len(reports)} runs, {seconds / 60:.0f} min of faults and load, "
                 f"{faults} faults, {total_ops} history events, {txns} committed transactions; "
                 f"invalid runs: {invalid or 'none'}.")
    return "\n".join(lines) + "\n"
