"""probe.py VARIANT_DIR PORT WORKLOAD ARGS...: start a cluster from VARIANT_DIR, run the bench
against its leader, print msg/s, p50, node cpu, leader fsyncs and raft entries per 1k msgs."""
import json, os, signal, subprocess, sys, time, urllib.request
d, port, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
py = "/work/main/.venv/bin/python"
env = dict(os.environ, PYTHONPATH=d)
data = f"/tmp/s6/probe-{port}"
subprocess.run(["rm", "-rf", data])
up = subprocess.Popen(["nice", "-n", "-10", py, "-m", "node.cli", "cluster", "up", "--data-dir", data,
                       "--base-port", str(port)], cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                      start_new_session=True)
def get(url):
    with urllib.request.urlopen(url, timeout=5) as r: return r.read().decode()
try:
    deadline = time.time() + 30
    while True:
        try:
            c = json.loads(get(f"http://127.0.0.1:{port+1}/v1/cluster"))
            if c.get("leader"): break
        except Exception: pass
        if time.time() > deadline: raise SystemExit("no leader")
        time.sleep(0.3)
    leader = c["leader"]; lurl = f"http://127.0.0.1:{port + int(leader[1:])}"
    time.sleep(1.0)
    pids = subprocess.run(["pgrep", "-f", f"data-dir {data}/n"], capture_output=True, text=True).stdout.split()
    def metric(name):
        for line in get(lurl + "/metrics").splitlines():
            if line.startswith(name + " "): return float(line.split()[1])
        return 0.0
    f0 = metric("raftmq_journal_fsyncs_total"); i0 = json.loads(get(lurl + "/v1/cluster"))["commit_index"]
    out = subprocess.run(["nice", "-n", "-10", py, "-m", "raftmq.bench", *rest, "--url", lurl, "--pids", ",".join(pids), "--json", "-q"],
                         cwd=d, env=env, capture_output=True, text=True)
    r = json.loads(out.stdout)["results"][0]
    f1 = metric("raftmq_journal_fsyncs_total"); i1 = json.loads(get(lurl + "/v1/cluster"))["commit_index"]
    n = r["msgs"] / 1000
    print(os.path.basename(d.rstrip('/')), r["label"], "msg/s", r["msgs_per_s"], "p50", r["latency_ms"]["p50"],
          "cpu_us", round((r["node_cpu_s_per_msg"] or 0) * 1e6, 1), "fsyncs/1k", round((f1 - f0) / n, 1),
          "entries/1k", round((i1 - i0) / n, 1), "other%", r.get("other_cpu_pct"))
finally:
    os.killpg(up.pid, signal.SIGTERM)
    try: up.wait(10)
    except subprocess.TimeoutExpired: os.killpg(up.pid, signal.SIGKILL)
