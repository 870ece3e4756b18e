"""DurableTransport: pysyncobj's TCPTransport with durability points and a chunking fix.

Passed as `transportClass` (a documented SyncObj argument). It wraps the SyncObj's poller
(`syncObj._poller`, public attribute, created before the transport) so that it runs code at the
end of every poll round, i.e. after all incoming messages of that round were handled.

1. Follower group commit: `next_node_idx` replies (the follower's ack) are held while the
   journal has unsynced records, and released after ONE fdatasync at the end of the poll round.
   Records of durability `memory` (journal.memory_class) do not hold an ack: it leaves once the
   bytes are written to the OS, and the journal's syncer thread fdatasyncs them.
   The research spike synced once per incoming message (70-85 % throughput cost without batch
   mode); this syncs once per round, however many append_entries arrived in it.
2. `request_vote` / `response_vote`: the journal is synced (and held acks released, in order)
   before they leave (the vote itself is already durable: setCurrentTerm writes the meta file).
3. Chunked entries (>= appendEntriesBatchSizeBytes): syncobj.py marks a chunk 'finish' when
   `pos + batch >= len(command)`, comparing against the command instead of the pickled entry,
   so when the pickle overhead pushes the entry into one more chunk, two chunks are marked
   'finish' and the follower unpickles a truncated entry. The transport holds each 'finish'
   chunk; if another 'finish' chunk of the same transmission follows, the held one is relabelled
   'process'. Only the real last chunk says 'finish'. Held chunks go out before any other message
   to that node and at every poll.
4. With a cluster secret, every connection is a `SecureConnection` (replication/raft_crypto.py):
   a handshake with fresh nonces from both sides, then every frame AES-GCM sealed with a
   per-direction counter. Nothing is unpickled before it is authenticated on this connection.
"""

from __future__ import annotations

import importlib
import logging
import struct
import time
from typing import Any

from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport

from replication import patches, raft_crypto

log = logging.getLogger(__name__)

_ACK = "next_node_idx"
# pysyncobj drops a forced compaction when nothing new was applied: ask again after this many
# poll rounds (a round is at most autoTickPeriod, 50 ms, when idle).
COMPACTION_RETRY_ROUNDS = 200
_VOTES = ("request_vote", "response_vote")


class DurableTransport(TCPTransport):  # type: ignore[misc]
    # False = sync before every ack instead (the research spike's way; measurement only).
    _release_acks_at_round_end = True

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        self._journal = patches.journal_for(syncObj.conf.journalFile)
        patches.register_transport(syncObj.conf.journalFile, self)
        self._sync_obj = syncObj
        self._compaction_bytes_max = patches.compaction_bytes_max(syncObj.conf.journalFile)
        self._compaction_forced_at = -1  # journal rewrites count when we last forced one
        self._compaction_forced_round = 0
        self.compactions_forced = 0
        self._journal.leader_probe = syncObj._isLeader
        self._held_acks: list[tuple[Any, dict[str, Any]]] = []
        self._held_finish: dict[Any, dict[str, Any]] = {}
        self.rounds = 0
        self.round_syncs = 0
        self.round_sync_s_total = 0.0
        self.chunks_relabelled = 0
        self.acks_before_sync = 0  # durability `memory`: acks that did not wait for fdatasync
        self.resends_absorbed = 0
        self.backtracks_kept = 0
        self._floor: dict[Any, tuple[int, int]] = {}  # node -> (leader term, backtrack floor)
        self.entries_absorbed = 0
        secret = patches.installed_secret()
        self._raft_master = raft_crypto.master_key(secret) if secret else None
        self._wrap_poller(syncObj._poller)
        super().__init__(syncObj, selfNode, otherNodes)

    # -- encrypted connections (raft_crypto) ---------------------------------------------------
    def addNode(self, node: Any) -> None:  # noqa: N802
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None and type(conn) is TcpConnection:
            self._secure(conn, raft_crypto.ROLE_CONNECTOR)

    def _onNewIncomingConnection(self, conn: Any) -> None:  # noqa: N802
        self._secure(conn, raft_crypto.ROLE_ACCEPTOR)
        super()._onNewIncomingConnection(conn)

    def _secure(self, conn: Any, role: bytes) -> None:
        """pysyncobj builds its TcpConnections itself (transport.addNode, tcp_server): we turn
        each into a SecureConnection before it carries a byte."""
        if self._raft_master is not None:
            secure_connection(conn, self._raft_master, role)

    def _wrap_poller(self, poller: Any) -> None:
        inner = poller.poll

        def poll(timeout: float) -> None:
            self._release_chunks()
            self._release_acks()
            inner(timeout)
            self._release_chunks()
            self._release_acks()
            self._maybe_force_compaction()
            self.rounds += 1

        poller.poll = poll

    def send(self, node: Any, message: Any) -> bool:
        if not isinstance(message, dict):
            return bool(super().send(node, message))
        kind = message.get("type")
        if kind == _ACK:
            message = self._apply_floor(node, message)
        if kind == _ACK and (self._held_acks or self._journal.must_sync):
            self._held_acks.append((node, message))
            if not self._release_acks_at_round_end:
                self._release_acks()
            return True
        if kind == _ACK and self._journal.dirty:
            self._journal.write_pending()  # durability `memory`: in the OS before the ack
            self.acks_before_sync += 1
        if kind in _VOTES:
            self._release_acks(everything=True)
        if kind == "append_entries" and "transmission" in message:
            return self._send_chunk(node, message)
        self._release_chunk(node)
        return bool(super().send(node, message))

    # -- compaction by size --------------------------------------------------------------------
    def _maybe_force_compaction(self) -> None:
        """pysyncobj compacts by entry count or time only; every entry also lives in RAM until
        then. Past `log_compaction_bytes_max` of payload we ask for a snapshot (public API)."""
        limit = self._compaction_bytes_max
        if limit is None or self._journal.payload_bytes <= limit:
            return
        asked_recently = self.rounds - self._compaction_forced_round < COMPACTION_RETRY_ROUNDS
        if self._compaction_forced_at == self._journal.stats.rewrites and asked_recently:
            return  # already asked; wait until a compaction rewrote the journal
        self._compaction_forced_at = self._journal.stats.rewrites
        self._compaction_forced_round = self.rounds
        self.compactions_forced += 1
        self._sync_obj.forceLogCompaction()

    # -- follower: absorb re-sent ranges (defect 9) ---------------------------------------------
    def _onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        if isinstance(message, dict) and message.get("type") == "append_entries":
            self._note_conflict(node, message)
            message = self._absorb_resend(message)
        super()._onMessageReceived(node, message)

    # -- follower: keep the backtrack point (research/pysyncobj.md §5.3) ----------------------
    def _note_conflict(self, node: Any, msg: dict[str, Any]) -> None:
        """prevLogIdx holds an entry of another term: remember where our suspect run starts.

        pysyncobj answers the first message of a round "go back to prevLogIdx" and the later
        ones of the same round "my end is last+1"; the leader applies the replies in order and
        ends at last+1 again, every round (the restarted ex-leader livelock). We answer every
        reset with at most this floor until a success: the start of our run of entries of the
        conflicting term, never below our commit index + 1 (those entries are committed).
        """
        held = self._floor.get(node)
        if held is not None and held[0] != msg["term"]:
            del self._floor[node]
        prev = msg.get("prevLogIdx")
        if prev is None or "transmission" in msg or len(self._journal) == 0:
            return
        j = self._journal
        first, last = j[0][1], j[-1][1]
        if not first < prev <= last or j[prev - first][2] == msg["prevLogTerm"]:
            return
        if msg["term"] >= j.getCurrentTerm():  # a current leader holds every committed entry
            j.contradicted(prev)  # so one at or below our commit index is lost: diverged
        term = j[prev - first][2]
        start = prev
        lowest = max(first + 1, j.getRaftCommitIndex() + 1)
        while start - 1 >= lowest and j[start - 1 - first][2] == term:
            start -= 1
        floor = max(start, lowest)
        held = self._floor.get(node)
        self._floor[node] = (msg["term"], floor if held is None else min(held[1], floor))

    def _apply_floor(self, node: Any, message: dict[str, Any]) -> dict[str, Any]:
        held = self._floor.get(node)
        if held is None:
            return message
        if message["success"]:
            del self._floor[node]
            return message
        if message["reset"] and message["next_node_idx"] > held[1]:
            self.backtracks_kept += 1
            return {**message, "next_node_idx": held[1]}
        return message

    def _absorb_resend(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Rewrite an append_entries whose entries we already hold into a pure append.

        pysyncobj's follower deletes everything after prevLogIdx on every message (no conflict
        check) and the leader re-sends in-flight ranges, so the logical log could shrink below
        what this node already acknowledged; an election in that window can lose committed
        entries. Raft only truncates on a conflict. When every entry of the message is already
        in our log (same idx, term and bytes), we move prevLogIdx to our last entry, provided
        that entry is of the sender's term: then our whole log is a prefix of the leader's
        (Log Matching + one leader per term), nothing needs truncating, and pysyncobj's commit
        rule min(leaderCommit, lastIndex) only covers the leader's entries.
        """
        entries = msg.get("entries")
        if not entries or "transmission" in msg or msg.get("prevLogIdx") is None:
            return msg
        j = self._journal
        if len(j) == 0:
            return msg
        first, last_entry = j[0][1], j[-1]
        last = last_entry[1]
        prev = msg["prevLogIdx"]
        if not first <= prev <= last or j[prev - first][2] != msg["prevLogTerm"]:
            return msg
        matched = 0
        for entry in entries:
            if entry[1] > last or j[entry[1] - first] != tuple(entry):
                break
            matched += 1
        if matched == 0:
            return msg
        if matched == len(entries):
            if entries[-1][1] < last and last_entry[2] != msg["term"]:
                return msg  # our tail may be stale: let pysyncobj truncate it
            new_prev, rest = last_entry, []
        else:
            if entries[matched - 1][1] != last:
                return msg  # a real conflict follows: pysyncobj truncates
            new_prev, rest = entries[matched - 1], list(entries[matched:])
        self.resends_absorbed += 1
        self.entries_absorbed += matched
        return {**msg, "prevLogIdx": new_prev[1], "prevLogTerm": new_prev[2], "entries": rest}

    # -- follower group commit ---------------------------------------------------------------
    def _release_acks(self, *, everything: bool = False) -> None:
        """Sync what held acks wait for, send them, and leave the rest (durability `memory`
        records only) to the journal's syncer thread. `everything`: sync it all here."""
        journal = self._journal
        if not self._held_acks and not journal.dirty:
            return
        if journal.must_sync or (everything and journal.dirty):
            start = time.perf_counter()
            journal.sync()
            self.round_sync_s_total += time.perf_counter() - start
            self.round_syncs += 1
        held, self._held_acks = self._held_acks, []
        for node, message in held:
            super().send(node, message)
        if journal.dirty:
            journal.sync_soon()

    # -- chunked transmission fix ------------------------------------------------------------
    def _send_chunk(self, node: Any, message: dict[str, Any]) -> bool:
        held = self._held_finish.pop(node, None)
        if message["transmission"] == "finish":
            if held is not None and _same_transmission(held, message):
                held["transmission"] = "process"  # not the last chunk after all
                self.chunks_relabelled += 1
            if held is not None:
                super().send(node, held)
            self._held_finish[node] = message
            return True
        if held is not None:
            super().send(node, held)
        return bool(super().send(node, message))

    def _release_chunk(self, node: Any) -> None:
        held = self._held_finish.pop(node, None)
        if held is not None:
            super().send(node, held)

    def _release_chunks(self) -> None:
        for node in list(self._held_finish):
            self._release_chunk(node)


def _same_transmission(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["prevLogIdx"] == b["prevLogIdx"] and a["term"] == b["term"])


_tcp = importlib.import_module("pysyncobj.tcp_connection")  # its `pickle` (protocol 5, patched)
_LENGTH = struct.Struct("i")  # pysyncobj's frame header: native int length
_LOG_FIRST_REJECTIONS = 10


class SecureConnection(TcpConnection):  # type: ignore[misc]
    """pysyncobj's TcpConnection with raft_crypto frames instead of zlib(pickle) frames.

    Made by a class swap (`DurableTransport._secure`); overrides `send`, `connect`,
    `disconnect` and the private frame parser. Before the handshake only a HELLO-sized frame
    is read (a stranger can make us buffer 41 bytes, not megabytes); what we send meanwhile
    waits, pickled, until the peer's HELLO arrives.
    """

    _rmq_master: bytes
    _rmq_role: bytes
    _rmq_hello: bytes | None
    _rmq_session: raft_crypto.Session | None
    _rmq_peer_ok: bool
    _rmq_pending: list[bytes]
    _TcpConnection__readBuffer: bytes  # pysyncobj's private buffers (name-mangled)
    _TcpConnection__writeBuffer: bytes

    def rmq_setup(self, master: bytes, role: bytes) -> None:
        self._rmq_master = master
        self._rmq_role = role
        self._rmq_reset()

    def _rmq_reset(self) -> None:
        self._rmq_hello = None
        self._rmq_session = None
        self._rmq_peer_ok = False
        self._rmq_pending = []

    def connect(self, host: Any, port: Any) -> bool:
        self._rmq_reset()
        return bool(super().connect(host, port))

    def disconnect(self) -> None:
        self._rmq_reset()
        super().disconnect()

    def send(self, message: Any) -> None:
        data = _tcp.pickle.dumps(message)
        if self._rmq_hello is None and not self._rmq_say_hello():
            return  # the write failed and dropped the connection: so is the message
        if self._rmq_session is None:
            self._rmq_pending.append(data)
            return
        self._rmq_write([self._rmq_session.seal(data)])

    def _rmq_say_hello(self) -> bool:
        """Send our HELLO; False if the write dropped the connection (state reset)."""
        assert self._rmq_hello is None and self._rmq_session is None
        self._rmq_hello = raft_crypto.make_hello(self._rmq_role)
        self._rmq_write([self._rmq_hello])
        return self._rmq_hello is not None

    def _rmq_write(self, frames: list[bytes]) -> None:
        self._TcpConnection__writeBuffer += b"".join(_LENGTH.pack(len(f)) + f for f in frames)
        self._TcpConnection__trySendBuffer()

    def _TcpConnection__processParseMessage(self) -> Any:  # noqa: N802
        try:
            return self._rmq_next_message()
        except raft_crypto.FrameRejected as exc:
            count_rejected(exc.reason)
            self.disconnect()
            return None

    def _rmq_next_message(self) -> Any:
        """The next pysyncobj message, handling handshake frames on the way; None = wait."""
        while True:
            frame = self._rmq_take_frame()
            if frame is None:
                return None
            if self._rmq_session is None:
                self._rmq_on_hello(frame)
            elif not self._rmq_peer_ok:
                self._rmq_session.check_finished(frame)
                self._rmq_peer_ok = True
            else:
                plain = self._rmq_session.open(frame)
                try:
                    return _tcp.pickle.loads(plain)
                except Exception:  # authenticated, yet not a pickle: a peer bug
                    raise raft_crypto.FrameRejected("bad_pickle") from None

    def _rmq_take_frame(self) -> bytes | None:
        buf: bytes = self._TcpConnection__readBuffer
        if len(buf) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(buf)
        if self._rmq_session is None and size != raft_crypto.HELLO_BYTES:
            raise raft_crypto.FrameRejected("bad_hello")
        if not 0 <= size <= raft_crypto.FRAME_BYTES_MAX:
            raise raft_crypto.FrameRejected("bad_size")
        end = _LENGTH.size + size
        if len(buf) < end:
            return None
        self._TcpConnection__readBuffer = buf[end:]
        return buf[_LENGTH.size : end]

    def _rmq_on_hello(self, peer_hello: bytes) -> None:
        if self._rmq_hello is None and not self._rmq_say_hello():
            return
        assert self._rmq_hello is not None
        session = raft_crypto.derive_session(self._rmq_master, self._rmq_hello, peer_hello)
        pending, self._rmq_pending = self._rmq_pending, []
        self._rmq_session = session
        self._rmq_write([session.finished()] + [session.seal(p) for p in pending])


def secure_connection(conn: Any, master: bytes, role: bytes) -> None:
    """Turn a fresh pysyncobj TcpConnection into a SecureConnection (before any byte)."""
    assert type(conn) is TcpConnection, f"unexpected connection class {type(conn)}"
    assert conn.encryptor is None, "pysyncobj's own password option is not used"
    conn.__class__ = SecureConnection
    conn.rmq_setup(master, role)


def count_rejected(reason: str) -> None:
    """The existing counter (raftmq_raft_frames_rejected_total), with the reason in the log."""
    codec = patches.frame_codec()
    codec.rejected_frames += 1
    count = codec.rejected_frames
    if count <= _LOG_FIRST_REJECTIONS or count % 1000 == 0:
        log.warning("raft_frame_rejected reason=%s count=%d", reason, count)
