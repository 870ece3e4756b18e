"""The Raft wire: entries up to 8 MiB across every 64 KiB boundary, and MAC'd frames.

Chunking (defect 3): syncobj.py sends an entry of >= appendEntriesBatchSizeBytes in chunks and
marks a chunk 'finish' when `pos + 65536 >= len(command)`, i.e. against the command, not the
pickled entry. When the entry's few bytes of pickle overhead push it into one more chunk than
the command (the 24-byte window below each multiple of 64 KiB from 128 KiB on), the follower
gets 'finish' one chunk early and cannot unpickle the entry: it never acknowledges it.

Authentication (defect 4, then issue 9): with a cluster secret every connection starts with a
handshake and every frame is AES-GCM sealed (replication/raft_crypto.py), opened before
pickle.loads; a stranger's pickle is never unpickled, a node with another secret cannot join.
"""

from __future__ import annotations

import json
import math
import pickle
import socket
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from replication.patches import FrameCodec
from tests.support.cluster import wait_until
from tests.support.durability_cluster import DCluster, wait_acks, wait_or_describe
from tests.support.raft_wire import closed_by_peer, handshake, recv_frame, send_frame

pytestmark = pytest.mark.integration

CHUNK = 65_536
SECRET_HEX = "00112233445566778899aabbccddeeff"
MULTIPLES = [2, 3, 17, 128]  # 128 x 64 KiB = 8 MiB


def entry_lengths(payload: int, idx: int = 100) -> tuple[int, int]:
    """(command bytes, pickled entry bytes) as pysyncobj builds them for durability_node."""
    blob = msgpack.packb(["n1", 5, b"x" * payload])
    command = b"\x00" + pickle.dumps((0, (blob,)), 5)  # _COMMAND_TYPE.REGULAR + (funcID, args)
    return len(command), len(pickle.dumps((command, idx, 1), 5))


def lands_in_bad_window(payload: int) -> bool:
    command, entry = entry_lengths(payload)
    return command >= CHUNK and math.ceil(entry / CHUNK) != max(2, math.ceil(command / CHUNK))


def boundary_sizes() -> tuple[list[int], int]:
    """Payload sizes around each multiple: the edges of the bad window, its middle, and the
    good sizes right outside it. Returns (sizes, how many are in the bad window)."""
    sizes = [CHUNK - 40, CHUNK - 20, CHUNK]
    for m in MULTIPLES:
        bad = [s for s in range(m * CHUNK - 200, m * CHUNK + 50) if lands_in_bad_window(s)]
        assert bad, f"no bad window found below {m} x 64 KiB: pysyncobj's framing changed?"
        if m == MULTIPLES[-1]:  # 8 MiB entries cost seconds each: only the window's edges
            sizes += [bad[0], bad[-1]]
        else:
            sizes += [bad[0] - 1, bad[0], bad[len(bad) // 2], bad[-1], bad[-1] + 1]
    return sizes, sum(lands_in_bad_window(s) for s in sizes)


def run_writer(cluster: DCluster, sizes: list[int], env: dict[str, str] | None = None) -> None:
    writer, *others = cluster.nodes
    for node in others:
        cluster.start(node, "idle", env=env)
    cluster.start(writer, "write", "--window", "1", "--retry", "--max-entries", str(len(sizes)),
                  "--sizes", ",".join(map(str, sizes)), env=env)


def tick_failures(cluster: DCluster) -> str:
    return "".join(n.stderr_file.read_text() for n in cluster.nodes if n.stderr_file.exists())


def test_entries_across_every_chunk_boundary_replicate(tmp_path: Path) -> None:
    sizes, bad_count = boundary_sizes()
    assert bad_count == 3 * (len(MULTIPLES) - 1) + 2
    cluster = DCluster(tmp_path, 3)
    try:
        run_writer(cluster, sizes)
        wait_acks(cluster.nodes[:1], len(sizes), timeout_s=240)
        assert len(set(cluster.nodes[0].acks())) == len(sizes)
        # Each bad-window entry sent alone is relabelled once per follower (22-26 on a quiet
        # host for 11 entries). Under load a lagging follower catches up with several entries
        # per message, framed differently (often needing no relabel; one CI run: 10), so the
        # count is not fixed; the fix path must still be well exercised. The checks after it
        # (no truncated pickle, every acked entry on every node) are what prove the fix.
        # Nodes write their counters twice a second: poll until they show them.
        wait_or_describe(lambda: sum((n.stats() or {}).get("chunks_relabelled", 0)
                                     for n in cluster.nodes) >= bad_count // 2,
                         cluster.nodes, timeout_s=10,
                         what=f"at least {bad_count // 2} chunks relabelled")
        assert "pickle data was truncated" not in tick_failures(cluster)
        acked = set(cluster.nodes[0].acks())
        cluster.kill_all()
        for node_id, ids in cluster.verify_all(timeout_s=120).items():
            assert acked <= ids, f"{node_id} misses {sorted(acked - ids)[:3]} after restart"
    finally:
        cluster.kill_all()


def test_sensitivity_stock_chunk_labels_break_the_follower(tmp_path: Path) -> None:
    """Without the relabelling, a bad-window entry makes the followers unpickle a truncated
    entry (an exception out of pysyncobj's tick). With protocol 5 the entry is at most one
    chunk longer, so the next 'finish' chunk happens to complete it; with protocol 2 it never
    did (research/pysyncobj-wire.md A)."""
    bad = next(s for s in range(2 * CHUNK - 200, 2 * CHUNK) if lands_in_bad_window(s))
    cluster = DCluster(tmp_path, 3)
    try:
        run_writer(cluster, [bad, bad], env={"RAFTMQ_TEST_STOCK_CHUNKS": "1"})
        wait_until(lambda: "pickle data was truncated" in tick_failures(cluster),
                   timeout_s=60, what="a follower to fail on the early 'finish' chunk")
    finally:
        cluster.kill_all()


# -- authentication -------------------------------------------------------------------------------
class CreatesFile:
    """Unpickling this creates a file: proof of code execution on the Raft port."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_stranger_pickle_is_never_unpickled_and_the_handshake_is_the_gate(tmp_path: Path) -> None:
    cluster = DCluster(tmp_path, 3, secret=SECRET_HEX)
    marker = tmp_path / "pwned"
    secret = bytes.fromhex(SECRET_HEX)
    try:
        cluster.start_all("idle")
        wait_until(cluster.leader, what="a leader")
        host, port = cluster.nodes[0].raft.split(":")
        evil = zlib.compress(pickle.dumps(CreatesFile(marker), 2), 3)  # a stock pysyncobj frame
        v1 = FrameCodec(secret).compress(pickle.dumps(CreatesFile(marker), 5), 3)  # old MAC'd
        for rejected, frame in enumerate((evil, v1), start=1):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                send_frame(sock, frame)
                assert closed_by_peer(sock, timeout_s=5), "the node must drop the connection"
            wait_until(lambda n=rejected: (cluster.nodes[0].stats() or {}).get(  # type: ignore[misc]
                "frames_rejected", 0) >= n, what="the rejection to be counted")
        assert not marker.exists(), "a frame from outside the handshake was unpickled"
        with socket.create_connection((host, int(port)), timeout=5) as sock:  # positive control
            session = handshake(sock, secret)
            send_frame(sock, session.seal(pickle.dumps(["status"], 5)))
            reply = recv_frame(sock, timeout_s=5)
        assert reply is not None, "a utility frame sealed in a session is answered"
        status = pickle.loads(session.open(reply))
        assert status["self"].id == cluster.nodes[0].raft
    finally:
        cluster.kill_all()


def test_node_with_another_secret_cannot_join(tmp_path: Path) -> None:
    cluster = DCluster(tmp_path, 3, secret=SECRET_HEX)
    good, intruder = cluster.nodes[:2], cluster.nodes[2]
    try:
        cluster.start(good[0], "write", "--window", "5", "--max-entries", "200")
        cluster.start(good[1], "idle")
        cluster.start(intruder, "idle", secret="ff" * 16)
        wait_acks([good[0]], 200)
        intruder_stats = wait_until(intruder.stats, what="intruder stats")
        assert intruder_stats["commit"] <= 1 and not intruder_stats["leader"]
        assert intruder_stats["applied"] <= 1, "the intruder must never receive an entry"
        # The good pair can reach 200 acks before the intruder's first connection attempt:
        # the refusal is counted within a reconnect interval or two, so wait for it.
        wait_until(lambda: sum((n.stats() or {}).get("frames_rejected", 0)
                               for n in cluster.nodes) > 0,
                   what="whichever side connected, its frames to be refused")
        intruder_stats = wait_until(intruder.stats, what="intruder stats")
        assert intruder_stats["applied"] <= 1, "the intruder must never receive an entry"
        print("intruder:", json.dumps(intruder_stats))
    finally:
        cluster.kill_all()
