"""`raftmq cluster up`: a local cluster of N node processes on 127.0.0.1, one command.

Layout of the data directory (kept across restarts, so a second `up` keeps every message):
    DIR/cluster.toml   the generated cluster file (node ids, Raft and HTTP addresses)
    DIR/raft.secret    the generated secret that authenticates Raft frames (mode 0600)
    DIR/<id>/          each node's journal and snapshots
    DIR/<id>.log       each node's log
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from node import config
from node.config import NodeSpec

HOST = "127.0.0.1"
BASE_PORT_DEFAULT = 8700
RAFT_PORT_OFFSET = 100      # node i: HTTP base+i, Raft base+100+i
NODES_MAX = 9
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "up":
        print("usage: raftmq cluster up [--nodes 3] [--data-dir DIR] [--base-port PORT]",
              file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="raftmq cluster up",
                                     description="Start a local cluster on 127.0.0.1.")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path(".raftmq-data"))
    parser.add_argument("--base-port", type=int, default=BASE_PORT_DEFAULT,
                        help="node i serves HTTP on base+i and Raft on base+100+i")
    parser.add_argument("--auth-file", type=Path,
                        help="tokens file (TOML, docs/security.md): turn on authentication")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS with a self-signed certificate made in the data dir")
    parser.add_argument("--quiet", action="store_true", help="print only the node addresses")
    opts = parser.parse_args(argv[1:])
    if not 1 <= opts.nodes <= NODES_MAX:
        print(f"raftmq cluster up: --nodes must be 1..{NODES_MAX}", file=sys.stderr)
        return 2
    try:
        cfg_path = prepare(opts.data_dir, opts.nodes, opts.base_port)
        cluster = config.load(cfg_path)
    except config.ConfigError as exc:
        print(f"raftmq cluster up: {exc}", file=sys.stderr)
        return 2
    extra = ["--auth-file", str(opts.auth_file.resolve())] if opts.auth_file else []
    if opts.tls:
        cert, key = self_signed(opts.data_dir)
        extra += ["--tls-cert", str(cert), "--tls-key", str(key)]
        cluster = dataclasses.replace(cluster, tls_cert_file=cert, tls_key_file=key)
    return run(cluster, cfg_path, opts.data_dir, quiet=opts.quiet, node_args=extra)


def prepare(data_dir: Path, nodes: int, base_port: int) -> Path:
    """Write the cluster file and secret once; reuse them (and the data) on later runs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = data_dir / "raft.secret"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    cfg_path = data_dir / "cluster.toml"
    specs = [NodeSpec(f"n{i}", f"{HOST}:{base_port + RAFT_PORT_OFFSET + i}",
                      f"{HOST}:{base_port + i}") for i in range(1, nodes + 1)]
    if cfg_path.exists():
        existing = config.load(cfg_path)
        if existing.nodes != tuple(specs):
            raise config.ConfigError(
                f"{cfg_path} describes another cluster ({len(existing.nodes)} nodes, "
                f"{existing.nodes[0].http} ...); use another --data-dir or the same options")
        return cfg_path
    cfg_path.write_text(config.render("local", specs, raft_secret_file="raft.secret"))
    return cfg_path


def self_signed(data_dir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made once with openssl and reused."""
    cert, key = (data_dir / "tls.crt").resolve(), (data_dir / "tls.key").resolve()
    if not cert.exists() or not key.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-days", "825", "-subj", "/CN=raftmq-local",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        key.chmod(0o600)
    return cert, key


def run(cluster: config.ClusterConfig, cfg_path: Path, data_dir: Path, *, quiet: bool,
        node_args: list[str]) -> int:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for spec in cluster.nodes:
            procs[spec.id] = start_node(cfg_path, spec, data_dir, node_args)
        ready = wait_ready(cluster, procs, lambda: stopping)
        print_banner(cluster, data_dir, ready, quiet)
        while not stopping:
            time.sleep(0.2)
            for node_id, proc in procs.items():
                if proc.poll() is not None and not stopping:
                    print(f"raftmq: node {node_id} exited with {proc.returncode}; "
                          f"see {data_dir / (node_id + '.log')}", file=sys.stderr, flush=True)
            if all(p.poll() is not None for p in procs.values()):
                return 1
        return 0
    finally:
        stop_all(procs)
        if not quiet:
            print("raftmq: cluster stopped", flush=True)


def start_node(cfg_path: Path, spec: NodeSpec, data_dir: Path,
               node_args: list[str]) -> subprocess.Popen[bytes]:
    log = open(data_dir / f"{spec.id}.log", "ab")  # noqa: SIM115 - owned by the child process
    cmd = [sys.executable, "-m", "node.cli", "node", "--config", str(cfg_path),
           "--id", spec.id, "--data-dir", str(data_dir / spec.id), *node_args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def wait_ready(cluster: config.ClusterConfig, procs: dict[str, subprocess.Popen[bytes]],
               stopping: object) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    tls = (ssl.create_default_context(cafile=str(cluster.tls_cert_file))
           if cluster.tls_cert_file else None)
    pending = {n.id: n for n in cluster.nodes}
    while pending and time.monotonic() < deadline:
        if callable(stopping) and stopping():
            return False
        for node_id, spec in list(pending.items()):
            if procs[node_id].poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{url(cluster, spec)}/readyz", timeout=1,
                                            context=tls) as resp:
                    if resp.status == 200:
                        del pending[node_id]
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.1)
    return not pending


def print_banner(cluster: config.ClusterConfig, data_dir: Path, ready: bool, quiet: bool) -> None:
    for spec in cluster.nodes:
        print(f"{spec.id}  {url(cluster, spec)}  (raft {spec.raft})", flush=True)
    if quiet:
        return
    first = url(cluster, cluster.nodes[0])
    state = "ready" if ready else "NOT ready yet (see the node logs)"
    print(f"\nraftmq: {len(cluster.nodes)}-node cluster {state}; data in {data_dir}/", flush=True)
    print("try:", flush=True)
    print(f"  curl -X PUT {first}/v1/queues/hello", flush=True)
    print(f"  curl -X POST {first}/v1/queues/hello/messages "
          "-H 'Content-Type: application/json' -d '{\"messages\":[{\"body\":\"hi\"}]}'", flush=True)
    print(f"  curl -X POST {url(cluster, cluster.nodes[-1])}/v1/queues/hello/receive -d '{{}}'",
          flush=True)
    if cluster.tls_cert_file:
        print(f"  (self-signed TLS: add --cacert {cluster.tls_cert_file} to curl)", flush=True)
    print("Ctrl-C stops every node.", flush=True)


def url(cluster: config.ClusterConfig, spec: NodeSpec) -> str:
    return f"{cluster.scheme}://{spec.http}"


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- backup and restore (docs/deploy.md section 5) ------------------------------------------------
BACKUP_TIMEOUT_S_DEFAULT = 300.0  # the node encodes the whole state before the first byte
BACKUP_CHUNK_BYTES = 1 << 20
NOOP_COMMAND = b"\x01"  # pysyncobj's _COMMAND_TYPE.NO_OP entry (the log around a seed)


class RestoreError(Exception):
    """A snapshot file or a target data dir that a restore must not use; says which and why."""


def backup_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="raftmq backup", description="Download a consistent snapshot of a cluster's state.")
    parser.add_argument("--url", default=os.environ.get("RAFTMQ_URL"),
                        help="any node's HTTP URL (default $RAFTMQ_URL)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="snapshot file to write")
    parser.add_argument("--token", default=os.environ.get("RAFTMQ_TOKEN"),
                        help="an admin token when authentication is on (default $RAFTMQ_TOKEN)")
    parser.add_argument("--consistency", default="linearizable",
                        choices=["local", "linearizable"],
                        help="linearizable (default): every write acknowledged before is in it")
    parser.add_argument("--timeout", type=float, default=BACKUP_TIMEOUT_S_DEFAULT)
    opts = parser.parse_args(argv)
    if not opts.url:
        parser.error("--url (or $RAFTMQ_URL) is required")
    url = f"{opts.url.split(',')[0].rstrip('/')}/v1/cluster/snapshot?consistency={opts.consistency}"
    try:
        index, term, size = download(url, opts.output, opts.token, opts.timeout)
    except (RestoreError, OSError) as exc:
        print(f"raftmq backup: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {opts.output}: {size} bytes, state at applied index {index} (term {term})")
    return 0


def download(url: str, output: Path, token: str | None, timeout_s: float) -> tuple[str, str, int]:
    """GET the snapshot into output.tmp, check length and checksum, fsync, rename."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    tmp = output.with_name(output.name + ".tmp")
    try:
        index, term = _fetch(req, tmp, timeout_s, context)
    except urllib.error.HTTPError as exc:
        raise RestoreError(f"{url}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, RestoreError) as exc:
        raise RestoreError(f"{url}: {exc!s}; nothing written") from None
    try:
        state_bytes(tmp)  # the checksum and the format, before it may replace a good backup
    except RestoreError as exc:
        tmp.unlink(missing_ok=True)
        raise RestoreError(f"{url}: refused the download, nothing written: {exc}") from None
    os.replace(tmp, output)
    return index, term, output.stat().st_size


def _fetch(req: urllib.request.Request, tmp: Path, timeout_s: float,
           context: ssl.SSLContext | None) -> tuple[str, str]:
    """Stream the answer into tmp and fsync it; tmp is removed if anything fails."""
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp, \
                open(tmp, "wb") as f:
            got = 0
            while chunk := resp.read(BACKUP_CHUNK_BYTES):
                f.write(chunk)
                got += len(chunk)
            want = int(resp.headers.get("Content-Length", got))
            if got != want:
                raise RestoreError(f"short download: {got} of {want} bytes (connection cut)")
            f.flush()
            os.fsync(f.fileno())
            return resp.headers["X-Raftmq-Index"], resp.headers["X-Raftmq-Term"]
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def state_bytes(path: Path) -> bytes:
    """The backup's state, checked (magic, version, crc32, decodable), with the old cluster's
    membership table cleared: the new cluster's members come from its own cluster file."""
    from storage.snapshot import SnapshotError
    from storage.state import BrokerState

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RestoreError(f"cannot read {path}: {exc}") from None
    try:
        state = BrokerState.decode_snapshot(data)
    except SnapshotError as exc:
        raise RestoreError(f"{path} is not a usable raftmq snapshot: {exc}") from None
    state.members = {}
    state.member_change = None
    return state.encode_snapshot()


def check_empty(data_dir: Path) -> None:
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RestoreError(f"{data_dir} is not empty: a restore seeds a NEW node (the files of "
                           "another run would mix two histories); use an empty directory")


def seed_data_dir(state: bytes, data_dir: Path, raft_addrs: list[str]) -> Path:
    """Write the node's Raft snapshot file (replication/snapshots.py format) holding `state`
    at log index 2, term 0, with the new cluster's members; the node loads it at start."""
    from replication.hardening import SNAPSHOT_FILE_NAME
    from replication.snapshots import SnapshotFile, verify_snapshot_file, write_snapshot_file

    assert raft_addrs and len(set(raft_addrs)) == len(raft_addrs), raft_addrs
    check_empty(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SNAPSHOT_FILE_NAME
    snap = SnapshotFile(last=(NOOP_COMMAND, 2, 0), prev=(NOOP_COMMAND, 1, 0),
                        cluster=sorted(raft_addrs), state=state)
    write_snapshot_file(path, snap)
    verify_snapshot_file(path)
    return path


def restore_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="raftmq restore",
        description="Seed a NEW cluster's data directories from a `raftmq backup` snapshot.")
    parser.add_argument("--snapshot", required=True, type=Path, help="the backup file")
    parser.add_argument("--config", type=Path, help="the new cluster's file (TOML)")
    parser.add_argument("--id", help="seed this node's --data-dir (run it on every host)")
    parser.add_argument("--all", action="store_true",
                        help="seed every node of --config under --data-dir/<id>")
    parser.add_argument("--data-dir", type=Path, help="the node's data dir (with --all: the root)")
    parser.add_argument("--cluster-up", type=Path, metavar="DIR",
                        help="seed a `raftmq cluster up --data-dir DIR` layout (writes its "
                        "cluster file); start it with the same --nodes/--base-port")
    parser.add_argument("--nodes", type=int, default=3, help="with --cluster-up")
    parser.add_argument("--base-port", type=int, default=BASE_PORT_DEFAULT,
                        help="with --cluster-up")
    opts = parser.parse_args(argv)
    if opts.cluster_up is not None and not 1 <= opts.nodes <= NODES_MAX:
        parser.error(f"--nodes must be 1..{NODES_MAX}")
    if opts.cluster_up is None and (opts.config is None or opts.data_dir is None
                                    or (opts.id is None) == (not opts.all)):
        parser.error("give --config and --data-dir with --id ID or --all (or --cluster-up DIR)")
    try:
        state = state_bytes(opts.snapshot)  # checked before anything is written
        targets = restore_targets(opts)
        raft_addrs = [spec.raft for spec, _ in targets]
        for _, data_dir in targets:  # all or none: check every target before writing one
            check_empty(data_dir)
        for spec, data_dir in targets:
            seed_data_dir(state, data_dir, raft_addrs)
            print(f"seeded {spec.id}: {data_dir}")
    except (RestoreError, config.ConfigError) as exc:
        print(f"raftmq restore: {exc}", file=sys.stderr)
        return 1
    return 0


def restore_targets(opts: argparse.Namespace) -> list[tuple[NodeSpec, Path]]:
    """(node, data dir) to seed; with --cluster-up, writes that layout's cluster file first."""
    if opts.cluster_up is not None:
        cluster = config.load(prepare(opts.cluster_up, opts.nodes, opts.base_port))
        return [(spec, opts.cluster_up / spec.id) for spec in cluster.nodes]
    cluster = config.load(opts.config)
    if opts.all:
        return [(spec, opts.data_dir / spec.id) for spec in cluster.nodes]
    return [(cluster.node(opts.id), opts.data_dir)]
