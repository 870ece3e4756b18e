import json, glob, statistics, sys
def load(d):
    rows = {}
    for f in sorted(glob.glob(d + "/raftmq-*.json")):
        for r in json.load(open(f))["results"]:
            rows.setdefault(r["label"], []).append(r)
    return rows
ev, th = load("bench/results/20261208s6/standard-ab-helper-process/event"), load("bench/results/20261208s6/standard-ab-helper-process/thread")
print(f"{'label':28} {'event msg/s':>26} {'thread msg/s':>26} | p50 ev / th | cpu us ev / th")
for label in ev:
    e, t = ev[label], th.get(label, [])
    f = lambda rs: "/".join(f"{r['msgs_per_s']/1000:.1f}k" for r in rs)
    p = lambda rs: statistics.median(r["latency_ms"]["p50"] for r in rs)
    c = lambda rs: statistics.median((r["node_cpu_s_per_msg"] or 0) * 1e6 for r in rs)
    print(f"{label:28} {f(e):>26} {f(t):>26} | {p(e):6.2f} / {p(t):6.2f} | {c(e):6.1f} / {c(t):6.1f}")
