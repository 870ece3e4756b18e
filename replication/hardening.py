"""The hardened pysyncobj 0.3.17, as the replica builds it (replication/DESIGN.md).

Public interface (used by replication/replica.py):

    install_patches(secret=...)      once per process, before any SyncObj exists
    build_syncobj_args(...)          kwargs for SyncObj(...): durable journal, our transport,
                                     forked checksummed snapshots, the tuned SyncObjConf
    SnapshotHooks(encode, install)   how snapshots reach the broker state
    refuse_optimized_python()        the hardening relies on asserts
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from replication import patches
from replication.journal import (
    META_SUFFIX,
    JournalError,
    MetaFile,
    fsync_dir,
    read_journal_entries,
    write_file_atomic,
)
from replication.snapshots import (
    FAILED,
    NOT_SERIALIZING,
    SERIALIZING,
    SUCCESS,
    ForkSnapshotter,
    SnapshotError,
    SnapshotHooks,
    verify_snapshot_file,
)
from replication.transport import DurableTransport

__all__ = [
    "JournalError",
    "SnapshotError",
    "SnapshotHooks",
    "build_syncobj_args",
    "check_data_dir",
    "durability_stats",
    "install_patches",
    "mark_for_resync",
    "refuse_optimized_python",
    "snapshotter_for",
]

log = logging.getLogger(__name__)

JOURNAL_FILE_NAME = "raft.journal"
SNAPSHOT_FILE_NAME = "raft.snapshot"
# A node whose state diverged (the cluster lost entries it had applied: durability `memory`
# after a power loss) writes this marker and starts again; at start-up its
# journal, snapshot and meta are moved to `resync-<n>/` and it catches up from the leader.
RESYNC_MARKER_NAME = "resync.json"
RESYNC_DIR_PREFIX = "resync-"

# SyncObjConf defaults we set (research/pysyncobj-wire.md D, pysyncobj.md §2.2); all overridable.
APPEND_ENTRIES_PERIOD_S = 0.1
RAFT_MIN_TIMEOUT_S = 0.4
RAFT_MAX_TIMEOUT_S = 1.4
LEADER_FALLBACK_ELECTION_TIMEOUTS = 2  # a partitioned leader steps down after ~2 election timeouts
APPEND_ENTRIES_BATCH_BYTES = 65_536  # do not raise: followers time out on big frames
LOG_COMPACTION_MIN_ENTRIES = 20_000
LOG_COMPACTION_MIN_TIME_S = 300
# Entries live in RAM (and the journal) until compaction: also compact past this much payload.
LOG_COMPACTION_BYTES_MAX = 128 << 20
CONNECTION_TIMEOUT_S = 3.5
# Only the node with the higher address dials (pysyncobj `_shouldConnect`); its default retry,
# 5 s, left a restarted lower-address node waiting up to 5 s for its peers to call back
# (`raftmq bench restart`: ready 2.9-3.6 s after start with an almost empty log). A refused
# connect on a dead peer costs one syscall, so retry every half second.
CONNECTION_RETRY_S = 0.5
# pysyncobj's TcpConnection copies its whole read/write buffer per recv/send (quadratic in the
# backlog); bigger kernel buffers mean fewer, larger calls. 64 KiB default; 1 MiB measured
# 150 -> 210 entries/s of 25 KB and 8 MiB entries 5.3 -> 1.2-2.3 s each (DESIGN.md, noisy host).
SOCKET_BUFFER_BYTES = 1 << 20

_snapshotters: dict[str, ForkSnapshotter] = {}


def refuse_optimized_python() -> None:
    """Asserts guard the invariants (STYLE.md); `python -O` strips them: refuse to run."""
    if not __debug__:
        raise SystemExit("raftmq: refusing to run under `python -O` (assertions are required)")


def install_patches(*, secret: bytes | None) -> None:
    """Idempotent per process; asserts that every patch took effect."""
    refuse_optimized_python()
    patches.install(secret)
    states = importlib.import_module("pysyncobj.config").SERIALIZER_STATE
    assert (states.NOT_SERIALIZING, states.SERIALIZING, states.SUCCESS, states.FAILED) == (
        NOT_SERIALIZING,
        SERIALIZING,
        SUCCESS,
        FAILED,
    ), "pysyncobj SERIALIZER_STATE values changed"


def mark_for_resync(data_dir: Path, *, idx: int, commit: int) -> None:
    """Durably ask the next start of this node to set its Raft state aside (module constants)."""
    record = {"reason": "committed entry contradicted by the leader", "index": idx,
              "commit_index": commit, "at_unix_s": round(time.time(), 3)}
    write_file_atomic(data_dir / RESYNC_MARKER_NAME, json.dumps(record).encode())
    log.critical("node marked for re-sync: %s", record)


def resync_count(data_dir: Path) -> int:
    return sum(1 for _ in data_dir.glob(f"{RESYNC_DIR_PREFIX}*"))


def _resync_if_marked(data_dir: Path) -> None:
    """Move journal, snapshot and meta aside; keep only term and vote (a node must never vote
    twice in one term). Every step can be redone: the marker goes last."""
    marker = data_dir / RESYNC_MARKER_NAME
    if not marker.exists():
        return
    aside = data_dir / f"{RESYNC_DIR_PREFIX}{resync_count(data_dir) + 1}"
    aside.mkdir()
    meta_path = data_dir / (JOURNAL_FILE_NAME + META_SUFFIX)
    meta = MetaFile(meta_path)
    if meta_path.exists():
        (aside / meta_path.name).write_bytes(meta_path.read_bytes())
    for name in (JOURNAL_FILE_NAME, SNAPSHOT_FILE_NAME):
        if (data_dir / name).exists():
            os.rename(data_dir / name, aside / name)
    meta.values = {k: v for k, v in meta.values.items() if k in ("term", "vote")}
    meta.store()
    fsync_dir(aside)
    os.rename(marker, aside / RESYNC_MARKER_NAME)
    fsync_dir(data_dir)
    log.warning("re-sync: this node's Raft state was set aside in %s; it catches up from the "
                "leader", aside)


def check_data_dir(data_dir: Path) -> None:
    """Refuse to start from files we cannot trust; raise SnapshotError / JournalError."""
    snapshot = data_dir / SNAPSHOT_FILE_NAME
    journal = data_dir / JOURNAL_FILE_NAME
    _resync_if_marked(data_dir)
    _remove_temp_files(data_dir)
    if snapshot.exists():
        verify_snapshot_file(snapshot)
        return
    if journal.exists():
        entries = read_journal_entries(journal)
        if entries and entries[0][1] > 1:
            raise JournalError(
                f"journal {journal} starts at index {entries[0][1]} but the snapshot "
                f"{snapshot} is missing: refusing to start with a hole in the log"
            )


def _remove_temp_files(data_dir: Path) -> None:
    """Temp files of interrupted writes are never the durable state: remove them."""
    patterns = (f"{SNAPSHOT_FILE_NAME}.tmp*", f"{SNAPSHOT_FILE_NAME}.1.tmp", "raft.journal*.tmp")
    for pattern in patterns:
        for path in data_dir.glob(pattern):
            log.info("removing temp file of an interrupted write: %s", path)
            path.unlink()


def build_syncobj_args(
    *,
    node_id: str,
    raft_addr: str,
    peers: dict[str, str],
    data_dir: Path,
    snapshot_hooks: SnapshotHooks,
    log_compaction_bytes_max: int = LOG_COMPACTION_BYTES_MAX,
    **conf_overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for `SyncObj(...)` (or a subclass's `super().__init__(**args)`).

    `conf_overrides` are SyncObjConf options (unknown names are refused);
    `log_compaction_bytes_max` forces a snapshot when the log holds more payload than that.
    """
    assert log_compaction_bytes_max > 0
    patches.assert_installed()
    assert ":" in raft_addr, f"raft_addr must be host:port, got {raft_addr!r}"
    assert peers.get(node_id, raft_addr) == raft_addr, "peers[node_id] differs from raft_addr"
    data_dir.mkdir(parents=True, exist_ok=True)
    check_data_dir(data_dir)
    dump_file = str((data_dir / SNAPSHOT_FILE_NAME).resolve())
    snapshotter = ForkSnapshotter(Path(dump_file), snapshot_hooks)
    _snapshotters[dump_file] = snapshotter
    patches.register_fork_managed_dump(dump_file)
    conf = _make_conf(data_dir, raft_addr, snapshotter, conf_overrides)
    patches.set_compaction_bytes_max(conf.journalFile, log_compaction_bytes_max)
    others = [addr for pid, addr in sorted(peers.items()) if pid != node_id and addr != raft_addr]
    log.info("raft_conf node=%s raft=%s peers=%s", node_id, raft_addr, others)
    return {
        "selfNode": raft_addr,
        "otherNodes": others,
        "conf": conf,
        "transportClass": DurableTransport,
    }


def _make_conf(
    data_dir: Path, raft_addr: str, snap: ForkSnapshotter, overrides: dict[str, Any]
) -> Any:
    syncobj_conf = importlib.import_module("pysyncobj").SyncObjConf
    known = vars(syncobj_conf())
    unknown = sorted(k for k in overrides if k not in known)
    assert not unknown, f"unknown SyncObjConf options (silently ignored by pysyncobj): {unknown}"
    for fixed in ("journalFile", "fullDumpFile", "serializer", "deserializer", "bindAddress"):
        assert fixed not in overrides, f"{fixed} is set by the hardening layer"
    max_timeout_s = overrides.get("raftMaxTimeout", RAFT_MAX_TIMEOUT_S)
    kwargs: dict[str, Any] = {
        "appendEntriesUseBatch": False,
        "appendEntriesPeriod": APPEND_ENTRIES_PERIOD_S,
        "raftMinTimeout": RAFT_MIN_TIMEOUT_S,
        "raftMaxTimeout": RAFT_MAX_TIMEOUT_S,
        "leaderFallbackTimeout": LEADER_FALLBACK_ELECTION_TIMEOUTS * max_timeout_s,
        "appendEntriesBatchSizeBytes": APPEND_ENTRIES_BATCH_BYTES,
        "dynamicMembershipChange": True,
        "logCompactionMinEntries": LOG_COMPACTION_MIN_ENTRIES,
        "logCompactionMinTime": LOG_COMPACTION_MIN_TIME_S,
        "connectionTimeout": CONNECTION_TIMEOUT_S,
        "connectionRetryTime": CONNECTION_RETRY_S,
        "sendBufferSize": SOCKET_BUFFER_BYTES,
        "recvBufferSize": SOCKET_BUFFER_BYTES,
    }
    kwargs.update(overrides)
    kwargs.update(
        journalFile=str((data_dir / JOURNAL_FILE_NAME).resolve()),
        fullDumpFile=str((data_dir / SNAPSHOT_FILE_NAME).resolve()),
        serializer=snap.serialize,
        deserializer=snap.deserialize,
        serializeChecker=snap.check,
        bindAddress=raft_addr,
    )
    conf = syncobj_conf(**kwargs)
    conf.validate()
    return conf


def durability_stats(data_dir: Path) -> dict[str, Any]:
    """Counters of a node's journal, transport and snapshots (metrics, tests, DESIGN.md)."""
    journal = patches.journal_for(str((data_dir / JOURNAL_FILE_NAME).resolve()))
    stats: dict[str, Any] = dataclasses.asdict(journal.stats)
    stats.pop("extra", None)
    stats["payload_bytes"] = journal.payload_bytes
    stats["payload_bytes_in_memory"] = journal.payload_bytes_in_memory
    stats["background_syncs"] = journal.background_syncs
    stats["resyncs"] = resync_count(data_dir)
    transport = patches.transport_for(str(journal.path))
    if transport is not None:
        for name in ("rounds", "round_syncs", "chunks_relabelled", "resends_absorbed",
                     "entries_absorbed", "backtracks_kept", "compactions_forced",
                     "acks_before_sync"):
            stats[name] = getattr(transport, name)
    snap = snapshotter_for(data_dir)
    stats.update(snapshots_ok=snap.count_ok, snapshots_failed=snap.count_failed,
                 snapshot_last_duration_s=snap.last_duration_s,
                 frames_rejected=patches.frame_codec().rejected_frames)
    return stats


def snapshotter_for(data_dir: Path) -> ForkSnapshotter:
    """The snapshot writer of a node (metrics: count_ok, count_failed, last_duration_s)."""
    return _snapshotters[str((data_dir / SNAPSHOT_FILE_NAME).resolve())]
