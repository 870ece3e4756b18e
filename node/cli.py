"""The `raftmq` command: `node` and `cluster` here; client commands in raftmq.cli, bench in
raftmq.bench."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

CLIENT_COMMANDS = {"queue", "topic", "publish", "receive", "status", "producer", "dlq"}
USAGE = """usage: raftmq <command> ...

  cluster up [--nodes 3] [--data-dir DIR] [--base-port PORT] [--tls] [--auth-file F]
                                                                 start a local cluster
  cluster add-node --url URL --id ID --raft H:P --http H:P       add a (started) node
  cluster remove-node --url URL --id ID                          remove a node
  node --config FILE --id ID [--data-dir DIR]                    run one node of a cluster
  backup --url URL -o FILE                                       download a snapshot (backup)
  restore --snapshot FILE --config F (--id ID | --all) --data-dir DIR
  restore --snapshot FILE --cluster-up DIR [--nodes N] [--base-port P]
                                                                 seed a NEW cluster from it
  status | queue | topic | publish | receive | producer | dlq    client commands (--help)
  bench                                                          benchmarks (--help)
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "node":
        return node_main(rest)
    if command == "cluster" and rest[:1] in (["add-node"], ["remove-node"]):
        from node import members_cli

        return members_cli.main(rest)
    if command == "cluster":
        from node import cluster_cli

        return cluster_cli.main(rest)
    if command in ("backup", "restore"):
        from node import cluster_cli

        return cluster_cli.backup_main(rest) if command == "backup" else \
            cluster_cli.restore_main(rest)
    if command == "bench":
        from raftmq import bench

        return bench.main(rest)
    if command in CLIENT_COMMANDS:
        from raftmq import cli

        return cli.main(args)
    print(f"raftmq: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def node_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="raftmq node", description="Run one node of a cluster.")
    parser.add_argument("--config", required=True, type=Path, help="cluster file (TOML)")
    parser.add_argument("--id", required=True, help="this node's id in the cluster file")
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./data/<id>)")
    parser.add_argument("--auth-file", type=Path,
                        help="tokens file (TOML); overrides the cluster file's auth_file")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS: certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="serve HTTPS: private key (PEM)")
    parser.add_argument("--log-level", default="INFO")
    opts = parser.parse_args(argv)
    if (opts.tls_cert is None) != (opts.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    setup_logging(opts.id, opts.log_level)
    if not __debug__:
        print("raftmq node: refusing to run under python -O: it strips the state machine's "
              "invariant checks (assert)", file=sys.stderr)
        return 2
    from node import auth, config, server

    try:
        cluster = config.load(opts.config)
        cluster.node(opts.id)
        if opts.tls_cert:
            cluster = dataclasses.replace(cluster, tls_cert_file=opts.tls_cert.resolve(),
                                          tls_key_file=opts.tls_key.resolve())
        auth_file = opts.auth_file or cluster.auth_file
        auth_config = auth.load(auth_file) if auth_file else None
    except (config.ConfigError, auth.AuthError) as exc:
        print(f"raftmq node: {exc}", file=sys.stderr)
        return 2
    data_dir = opts.data_dir or Path("data") / opts.id
    from replication.journal import JournalError
    from replication.snapshots import SnapshotError

    try:
        server.run(cluster, opts.id, data_dir, auth_config)
    except (JournalError, SnapshotError) as exc:
        print(f"raftmq node {opts.id}: refusing to start from {data_dir}: {exc}\n"
              "The node's files are damaged; see docs/operations.md (a node down): wipe this "
              "node's data dir and let it catch up from the others.", file=sys.stderr)
        return 3
    return 0


LOG_FORMAT = "%(asctime)s level=%(levelname)s %(name)s %(raft)s %(message)s"


def setup_logging(node_id: str, level: str) -> None:
    """key=value lines; every line carries node, term, commit_index and applied_index."""
    from replication.replica import RaftLogFilter

    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    log_filter = RaftLogFilter(node_id)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)


if __name__ == "__main__":
    raise SystemExit(main())
