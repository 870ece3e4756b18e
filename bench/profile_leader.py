"""Profile the Raft leader's process with py-spy while `raftmq bench` loads it.

  .venv/bin/pip install py-spy          # not a project dependency
  python bench/profile_leader.py --out /tmp/raftmq-profile -- publish -b 100 -c 16

Starts `raftmq cluster up` in a temp dir, finds the leader's PID (GET /v1/cluster, then the
node process whose command line names that id), runs `py-spy record --threads --nonblocking`
on it (collapsed stacks) during the bench, stops the cluster by PID, and prints where the
leader's samples went: top functions by self samples and by inclusive samples, and by thread.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOT = "import sys; from node.cli import main; sys.exit(main(sys.argv[1:]))"
READY_TIMEOUT_S = 60.0


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def wait_ready(urls: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(urls)
    while pending:
        if time.monotonic() > deadline:
            sys.exit(f"not ready: {pending}")
        left = []
        for u in pending:
            try:
                with urllib.request.urlopen(u + "/readyz", timeout=1) as resp:
                    if resp.status != 200:
                        left.append(u)
            except OSError:
                left.append(u)
        pending = left
        time.sleep(0.1)


def children(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
                out.append(int(entry))
    return out


def pid_of_node(supervisor: int, node_id: str) -> int:
    for pid in children(supervisor):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--id" in args and args[args.index(b"--id") + 1].decode() == node_id:
            return pid
    sys.exit(f"no process for node {node_id}")


# (bucket, substrings of a frame): a sample goes to the first bucket matched from the leaf up
BUCKETS = [
    ("waiting in poll/epoll (idle)", ("EpollSelector.select", "PollPoller.poll")),
    ("journal fsync (raft thread, GIL released)", ("fdatasync", "fsync (replication")),
    ("thread hand-offs (call_soon_threadsafe, pipe notifier)",
     ("_write_to_self", "PipeNotifier.notify", "_read_from_self")),
    ("HTTP gzip of answers", ("compression_utils",)),
    ("request validation (storage/validate.py)", ("storage/validate.py",)),
    ("state machine apply (storage/)", ("storage/",)),
    ("msgpack pack/unpack", ("msgpack/", "unpack_entry", "pack_command")),
    ("Raft transport: frames, MAC, send/recv (pysyncobj, replication/transport, patches)",
     ("pysyncobj/", "replication/transport", "replication/patches", "hmac.py")),
    ("journal writes (replication/journal.py)", ("replication/journal",)),
    ("HTTP server: aiohttp, middlewares, handlers, body codec",
     ("aiohttp/", "node/", "asyncio/")),
]


def bucket_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, keys in BUCKETS:
            if any(k in frame for k in keys):
                return name
    return "other"


def summarise(folded: Path, top: int) -> str:
    """Self and inclusive sample shares from py-spy's collapsed ('raw') output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        count = int(n)
        total += count
        threads[frames[0]] += count
        self_c[frames[-1]] += count
        buckets[bucket_of(frames[1:])] += count
        for f in set(frames[1:]):
            incl[f] += count
    out = [f"samples: {total}", "", "by thread:"]
    out += [f"  {100 * c / total:5.1f}%  {t}" for t, c in threads.most_common(6)]
    out += ["", "by bucket (first match from the leaf up):"]
    out += [f"  {100 * c / total:5.1f}%  {b}" for b, c in buckets.most_common()]
    out += ["", "self (leaf) samples:"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_c.most_common(top)]
    out += ["", "inclusive samples:"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/raftmq-profile"))
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--base-port", type=int, default=27400)
    ap.add_argument("--rate", type=int, default=97, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--summarise", type=Path, help="only summarise this folded file")
    ap.add_argument("--role", choices=("leader", "follower"), default="leader",
                    help="profile the leader (default) or a follower")
    ap.add_argument("--idle", action="store_true", help="py-spy --idle: include waiting")
    ap.add_argument("--gil", action="store_true",
                    help="py-spy --gil: only samples holding the GIL (where the CPU goes)")
    ap.add_argument("--spy-delay", type=float, default=1.0,
                    help="seconds between starting the bench and starting py-spy")
    ap.add_argument("bench", nargs="*", default=["publish", "-b", "100", "-c", "16"])
    a = ap.parse_args()
    if a.summarise:
        print(summarise(a.summarise, a.top))
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="raftmq-profile-"))
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sup = subprocess.Popen([py, "-c", BOOT, "cluster", "up", "--data-dir", str(data),
                            "--base-port", str(a.base_port), "--quiet"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        urls = [f"http://127.0.0.1:{a.base_port + i}" for i in (1, 2, 3)]
        wait_ready(urls)
        info = get_json(urls[0] + "/v1/cluster")
        target = info["leader"]
        if a.role == "follower":
            target = next(m["id"] for m in info["members"] if m["id"] != info["leader"])
        leader = pid_of_node(sup.pid, target)
        pids = ",".join(str(p) for p in children(sup.pid))
        leader_url = next(m["http"] for m in info["members"] if m["id"] == info["leader"])
        leader_url = leader_url if "://" in leader_url else "http://" + leader_url
        folded = a.out / "leader.folded"
        cmd = [py, "-m", "raftmq.bench", *a.bench, "--duration",
               str(a.duration - 3 + a.spy_delay), "--url", leader_url, "--pids", pids,
               "--json", "-q"]
        bench = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(a.spy_delay)  # e.g. past a receive's pre-fill
        spy = subprocess.Popen([str(Path(py).parent / "py-spy"), "record", "-p", str(leader),
                                "-d", str(int(a.duration)), "-r", str(a.rate), "--threads",
                                "--nonblocking", "-f", "raw", "-o", str(folded),
                                *(["--idle"] if a.idle else []),
                                *(["--gil"] if a.gil else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, err = bench.communicate()
        result = subprocess.CompletedProcess(cmd, bench.returncode, out, err)
        (a.out / "bench.json").write_text(result.stdout + result.stderr)
        spy.wait(a.duration + 30)
        print(f"{a.role} {target} pid {leader}; bench: {a.out / 'bench.json'}")
        r = json.loads(result.stdout)["results"][0]
        print(f"{r['label']}: {r['msgs_per_s']:,.0f} msg/s, node CPU {r['node_cpu_pct']}%, "
              f"p50 {r['latency_ms']['p50']} ms")
        print(summarise(folded, a.top))
    finally:
        sup.send_signal(signal.SIGTERM)
        try:
            sup.wait(20)
        except subprocess.TimeoutExpired:
            sup.kill()
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
