"""Per-phase medians of the one-at-a-time commit path from sitecustomize.py's traces.

python analyse.py TRACE_DIR   (the leader = the process that has `propose` events)
"""

from __future__ import annotations

import bisect
import json
import statistics
import sys
from pathlib import Path


def load(d: Path) -> dict[int, list[tuple[str, float, int]]]:
    return {int(p.stem): [tuple(e) for e in json.loads(p.read_text())] for p in d.glob("*.json") if p.stem.isdigit()}


def first(events: list, name: str, after: float, value: int | None = None) -> tuple | None:
    times = [e[1] for e in events]
    i = bisect.bisect_left(times, after)
    for e in events[i:]:
        if e[0] == name and (value is None or e[2] == value):
            return e
    return None


def main() -> None:
    procs = load(Path(sys.argv[1]))
    leader_pid = next(p for p, ev in procs.items() if any(e[0] == "propose" for e in ev))
    lev = sorted(procs[leader_pid], key=lambda e: e[1])
    fev = {p: sorted(ev, key=lambda e: e[1]) for p, ev in procs.items() if p != leader_pid}
    phases: dict[str, list[float]] = {}

    def add(name: str, a: float, b: float) -> None:
        phases.setdefault(name, []).append((b - a) * 1000)

    starts = [e for e in lev if e[0] == "propose"]
    for s in starts[len(starts) // 10:]:  # skip warm-up
        done = first(lev, "propose_done", s[1])
        sub = first(lev, "submit", s[1])
        if not done or not sub or sub[1] > done[1]:
            continue
        chk = first(lev, "raft_tick_check", sub[1])
        ae = first(lev, "ae_sent", chk[1]) if chk else None
        if not ae or ae[1] > done[1]:
            continue
        idx = ae[2]
        app = first(lev, "apply", ae[1])
        ack = first(lev, "ack_rx", ae[1])
        drn = first(lev, "drain", app[1]) if app else None
        lfs, lfe = first(lev, "fsync_start", ae[1]), first(lev, "fsync_end", ae[1])
        add("0 total propose->answered (leader loop)", s[1], done[1])
        add("1 loop: propose->submit (flush)", s[1], sub[1])
        add("2 submit->Raft thread takes it (pipe wake)", sub[1], chk[1])
        add("3 take->append_entries sent", chk[1], ae[1])
        if lfs and lfe and lfe[1] < done[1]:
            add("L leader fsync start (after ae sent)", ae[1], lfs[1])
            add("L leader fsync duration", lfs[1], lfe[1])
        follower_acks = []
        for ev in fev.values():
            rx = first(ev, "ae_rx", ae[1] - 0.001, idx)
            if not rx or rx[1] > done[1] + 0.05:
                continue
            fs, fe = first(ev, "fsync_start", rx[1]), first(ev, "fsync_end", rx[1])
            ak = first(ev, "ack_sent", rx[1])
            add("4 f: ae sent->follower received", ae[1], rx[1])
            if fs and fe and ak:
                add("5 f: received->fsync start", rx[1], fs[1])
                add("6 f: fsync duration", fs[1], fe[1])
                add("7 f: fsync end->ack sent", fe[1], ak[1])
                follower_acks.append(ak[1])
        if ack and follower_acks:
            add("8 first follower ack sent->leader reads it", min(follower_acks), ack[1])
        if ack and app:
            add("9 leader ack read->apply", ack[1], app[1])
        if app and drn:
            add("10 apply->loop drains completion", app[1], drn[1])
        if drn:
            add("11 drain->propose returns", drn[1], done[1])
        rxs = [e for e in lev if e[0] == "http_rx" and s[1] - 0.02 < e[1] <= s[1]]
        tx = first(lev, "http_tx", done[1])
        if rxs and tx:
            add("H1 http request read->propose", rxs[-1][1], s[1])
            add("H2 propose returned->response written", done[1], tx[1])
            add("H0 http request read->response written", rxs[-1][1], tx[1])
    for name in sorted(phases, key=lambda n: (len(n.split()[0]), n)):
        v = sorted(phases[name])
        p90 = v[int(len(v) * 0.9)]
        print(f"{name:48s} n={len(v):5d} p50 {statistics.median(v):7.3f} ms  p90 {p90:7.3f}")


if __name__ == "__main__":
    main()
