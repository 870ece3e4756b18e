import json, statistics, sys, glob, os
for d in sys.argv[1:]:
    for w in ("latency", "publish"):
        rows = []
        for f in sorted(glob.glob(f"{d}/{w}_*.json")):
            try:
                r = json.load(open(f))["results"][0]
            except Exception:
                continue
            load = open(f.replace(".json", ".load")).read().split("load average:")[1].split(",")[0].strip()
            rows.append((r["msgs_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["node_cpu_s_per_msg"] * 1e6, r["other_cpu_pct"], load))
        if not rows:
            continue
        med = lambda i: statistics.median(x[i] for x in rows)
        print(f"{os.path.basename(d):10s} {w:8s} n={len(rows)} msg/s {med(0):8.0f} p50 {med(1):6.2f} p99 {med(2):6.1f} cpu/msg {med(3):7.1f} us | runs p50 {[x[1] for x in rows]} p99 {[x[2] for x in rows]} cpu {[round(x[3],1) for x in rows]} msg/s {[round(x[0]) for x in rows]} other% {[x[4] for x in rows]} load {[x[5] for x in rows]}")
