"""The durable Raft journal: records, checksums, torn tails, group commit, deferred truncation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replication import journal as jr
from replication.journal import DurableJournal, JournalError, MetaFile


class SyncCounter:
    def __init__(self) -> None:
        self.fsyncs = 0
        self.fdatasyncs = 0


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> SyncCounter:
    counter = SyncCounter()

    def fsync(fd: int) -> None:
        counter.fsyncs += 1
        os.fsync(fd)

    def fdatasync(fd: int) -> None:
        counter.fdatasyncs += 1
        os.fdatasync(fd)

    monkeypatch.setattr(jr, "_fsync_impl", fsync)
    monkeypatch.setattr(jr, "_fdatasync_impl", fdatasync)
    return counter


def entries(first: int, count: int, term: int = 1, tag: bytes = b"c") -> list[jr.Entry]:
    return [(tag + str(i).encode(), i, term) for i in range(first, first + count)]


def fill(j: DurableJournal, items: list[jr.Entry]) -> None:
    for cmd, idx, term in items:
        j.add(cmd, idx, term)


def test_entries_survive_reopen_after_sync(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 50))
    j.sync()
    j.close()
    again = DurableJournal(path)
    assert len(again) == 50
    assert again[0] == (b"c1", 1, 1)
    assert again[-1] == (b"c50", 50, 1)
    assert again[10:12] == entries(11, 2)


def test_add_buffers_and_sync_is_one_fdatasync_for_everything(
    tmp_path: Path, syncs: SyncCounter
) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    size_empty = path.stat().st_size
    fill(j, entries(1, 100))
    assert path.stat().st_size == size_empty, "add() must not write"
    assert j.dirty
    j.sync()
    assert syncs.fdatasyncs == 1
    assert not j.dirty
    j.sync()  # nothing pending: no I/O
    assert syncs.fdatasyncs == 1
    assert len(jr.read_journal_entries(path)) == 100


def test_torn_tail_is_cut_and_fsynced_at_open(tmp_path: Path, syncs: SyncCounter) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 10))
    j.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 3)  # crash in the middle of the last record
    syncs.fsyncs = 0
    again = DurableJournal(path)
    assert len(again) == 9
    assert again.stats.torn_bytes_dropped > 0
    assert syncs.fsyncs >= 1, "the cut must be made durable"
    fill(again, [(b"new", 10, 2)])  # appends continue right after the last good record
    again.close()
    assert jr.read_journal_entries(path)[-1] == (b"new", 10, 2)


def test_corrupt_record_ends_the_log(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 10))
    j.close()
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # flip a payload byte of the last record: crc mismatch
    path.write_bytes(bytes(data))
    assert len(DurableJournal(path)) == 9


def test_bad_header_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(b"NOTAJOURNAL!" + b"\0" * 40)
    with pytest.raises(JournalError, match="bad header"):
        DurableJournal(path)


def test_identical_readd_after_truncation_costs_no_io(tmp_path: Path, syncs: SyncCounter) -> None:
    """pysyncobj's follower truncates re-sent ranges and appends the same entries (defect 9)."""
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 20))
    j.sync()
    size, before = path.stat().st_size, syncs.fdatasyncs
    j.deleteEntriesFrom(10)
    assert len(j) == 10
    fill(j, entries(11, 10))  # the leader re-sent what we had
    assert len(j) == 20
    assert not j.dirty
    j.sync()
    assert syncs.fdatasyncs == before, "an identical re-add must not fsync"
    assert path.stat().st_size == size, "an identical re-add must not write"
    assert j.stats.dedup_skips == 10
    assert j.stats.records_written == 20


def test_different_entry_after_truncation_cuts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 20))
    j.sync()
    j.deleteEntriesFrom(10)
    fill(j, entries(11, 2))  # same
    fill(j, entries(13, 3, term=2, tag=b"x"))  # conflict at idx 13: a new leader's entries
    assert j.dirty
    j.close()
    on_disk = jr.read_journal_entries(path)
    assert [e[1] for e in on_disk] == list(range(1, 16))
    assert on_disk[12] == (b"x13", 13, 2)
    assert j.stats.truncations_physical == 1


def test_truncated_tail_stays_on_disk_until_contradicted(tmp_path: Path) -> None:
    """Raft keeps entries no leader contradicted; the in-memory log is what pysyncobj sees."""
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 8))
    j.deleteEntriesFrom(5)
    assert len(j) == 5 and j[-1][1] == 5
    with pytest.raises(IndexError):
        j[5]
    j.close()
    assert len(DurableJournal(path)) == 8


def test_compaction_rewrites_atomically(tmp_path: Path, syncs: SyncCounter) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 100))
    j.deleteEntriesTo(90)
    assert len(j) == 10 and j[0][1] == 91
    assert syncs.fsyncs >= 2, "temp file and directory are fsync'd"
    assert not (tmp_path / "j.tmp").exists()
    fill(j, entries(101, 5))
    j.close()
    assert [e[1] for e in jr.read_journal_entries(path)] == list(range(91, 106))


def test_clear_keeps_tail_after_the_snapshot_entry(tmp_path: Path) -> None:
    """Crash after the snapshot rename, before compaction: __loadDumpFile clears, then adds
    (prev, last) of the snapshot. Entries after `last` must survive (research §3.3)."""
    path = tmp_path / "j"
    j = DurableJournal(path)
    log = entries(1, 30)
    fill(j, log)
    j.clear()
    j.add(*log[19])  # snapshot prev = idx 20
    j.add(*log[20])  # snapshot last = idx 21
    assert [e[1] for e in j[:]] == list(range(20, 31))
    j.close()
    assert [e[1] for e in jr.read_journal_entries(path)] == list(range(20, 31))


def test_clear_drops_log_when_snapshot_entry_differs(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 30))
    j.clear()
    j.add(b"other20", 20, 3)
    j.add(b"other21", 21, 3)
    assert j[:] == [(b"other20", 20, 3), (b"other21", 21, 3)]


def test_leader_syncs_before_commit_follower_does_not(tmp_path: Path, syncs: SyncCounter) -> None:
    leader = [True]
    j = DurableJournal(tmp_path / "j", leader_probe=lambda: leader[0])
    fill(j, entries(1, 5))
    j.setRaftCommitIndex(5)
    assert syncs.fdatasyncs == 1 and not j.dirty
    leader[0] = False
    fill(j, entries(6, 5))
    j.setRaftCommitIndex(10)  # followers sync in the transport, once per poll round
    assert j.dirty and syncs.fdatasyncs == 1


def test_term_and_vote_are_durable_and_reloaded(tmp_path: Path, syncs: SyncCounter) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    j.setCurrentTerm(7, "127.0.0.1:1")
    assert syncs.fsyncs >= 2, "meta temp file and directory fsync'd before the vote leaves"
    j.close()
    again = DurableJournal(path)
    assert again.getCurrentTerm() == 7
    assert again.getVotedForNodeId() == "127.0.0.1:1"


def test_journal_ending_before_the_committed_index_refuses_to_start(tmp_path: Path) -> None:
    """The meta commit index is written after a journal sync, so a crash never leaves the
    journal shorter than it: if it is, entries were lost or corrupted."""
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 5))
    j.setRaftCommitIndex(5)
    j.onOneSecondTimer()
    j.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1)  # the committed last record is damaged
    with pytest.raises(JournalError, match="index 5 was committed"):
        DurableJournal(path)


def test_corrupt_record_with_good_records_after_it_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 10))
    j.close()
    data = bytearray(path.read_bytes())
    data[len(jr._HEADER) + jr._REC.size + 1] ^= 0x40  # payload of record 1: crc mismatch
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="good records after it"):
        DurableJournal(path)


def test_commit_index_read_is_clamped_to_the_log(tmp_path: Path) -> None:
    j = DurableJournal(tmp_path / "j")
    fill(j, entries(1, 3))
    j.setRaftCommitIndex(9)  # pysyncobj's own clamp happens later; the read never exceeds
    assert j.getRaftCommitIndex() == 3


def test_corrupt_meta_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "j"
    DurableJournal(path).setCurrentTerm(3, None)
    meta = tmp_path / "j.meta"
    meta.write_bytes(meta.read_bytes()[:-1] + b"X")
    with pytest.raises(JournalError, match="corrupt"):
        MetaFile(meta)


def test_index_gap_is_an_invariant_violation(tmp_path: Path) -> None:
    j = DurableJournal(tmp_path / "j")
    fill(j, entries(1, 3))
    with pytest.raises(AssertionError, match="gap"):
        j.add(b"x", 9, 1)


def test_payload_bytes_follow_appends_cuts_and_compaction(tmp_path: Path) -> None:
    j = DurableJournal(tmp_path / "j")
    fill(j, entries(1, 10))  # payloads b"c1".."c10": 2*9 + 3 bytes
    assert j.payload_bytes == 21
    j.deleteEntriesFrom(5)
    fill(j, [(b"xxxx", 6, 2)])  # a different entry: records 6..10 are cut
    assert j.payload_bytes == 2 * 5 + 4
    j.deleteEntriesTo(3)
    assert j.payload_bytes == 2 * 2 + 4
    j.close()
    assert DurableJournal(tmp_path / "j").payload_bytes == 8


# -- payloads evicted to the file (RAM_TAIL_BYTES) ------------------------------------------
@pytest.fixture
def tiny_tail(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(jr, "RAM_TAIL_BYTES", 10)
    return 10


def test_written_payloads_leave_memory_and_read_back_identical(
        tmp_path: Path, tiny_tail: int) -> None:
    j = DurableJournal(tmp_path / "j")
    log = entries(1, 200)
    fill(j, log)
    assert j.payload_bytes_in_memory == j.payload_bytes, "nothing is evicted before it is written"
    j.sync()
    assert j.payload_bytes_in_memory <= tiny_tail + len(log[0][0]) + len(log[1][0])
    assert j.payload_bytes == sum(len(e[0]) for e in log)
    assert (j[0], j[1], j[-1]) == (log[0], log[1], log[-1])
    assert j.stats.payload_reads == 0, "log[0] and log[1] (read on every append) stay in memory"
    assert [j[i] for i in range(200)] == log
    assert j[-1] == log[-1] and j[0] == log[0]
    assert j.stats.payload_reads > 0


def test_a_slice_into_evicted_payloads_acts_as_the_list(tmp_path: Path, tiny_tail: int) -> None:
    """pysyncobj slices to the end, indexes, reverses, re-slices and pickles the result."""
    import pickle

    j = DurableJournal(tmp_path / "j")
    log = entries(1, 100)
    fill(j, log)
    j.sync()
    tail = j[40:]
    assert len(tail) == 60 and tail[0][2] == 1 and tail[-1] == log[-1]
    assert list(tail) == log[40:] and tail == log[40:]
    assert list(reversed(tail[1:])) == list(reversed(log[41:]))
    assert [e for _i, e in enumerate(tail[:3])] == log[40:43]
    assert tail[5:2] == [] and tail[::2] == log[40::2]
    assert pickle.loads(pickle.dumps(tail[:3])) == log[40:43]
    assert type(pickle.loads(pickle.dumps(tail))) is list, "sent to followers as a plain list"
    reads = j.stats.payload_reads
    assert j[10:][0] == log[10] and j.stats.payload_reads == reads + 1, "read one at a time"


def test_evicted_payloads_survive_truncation_compaction_clear_and_reopen(
        tmp_path: Path, tiny_tail: int) -> None:
    path = tmp_path / "j"
    j = DurableJournal(path)
    fill(j, entries(1, 50))
    j.sync()
    j.deleteEntriesFrom(20)
    fill(j, entries(21, 5))  # identical re-adds, compared against evicted payloads
    assert j.stats.dedup_skips == 5
    fill(j, [(b"new", 26, 2)])  # a different entry cuts records 26..50
    assert j.payload_bytes == sum(len(e[0]) for e in entries(1, 25)) + 3
    j.sync()
    j.deleteEntriesTo(5)  # compaction rewrites from evicted payloads
    assert j[:] == entries(6, 20) + [(b"new", 26, 2)]
    j.sync()
    j.clear()
    j.add(*entries(9, 1)[0])  # snapshot prev
    j.add(*entries(10, 1)[0])  # snapshot last: kept tail read back from the file
    assert j[:] == entries(9, 17) + [(b"new", 26, 2)]
    j.close()
    again = DurableJournal(path)
    assert again.payload_bytes_in_memory <= tiny_tail + len(again[0][0]) + len(again[1][0])
    assert again[:] == entries(9, 17) + [(b"new", 26, 2)]


def test_a_slice_used_after_the_log_changed_is_refused(tmp_path: Path, tiny_tail: int) -> None:
    j = DurableJournal(tmp_path / "j")
    fill(j, entries(1, 30))
    j.sync()
    stale = j[0:]
    j.deleteEntriesTo(10)
    with pytest.raises(AssertionError, match="after a rewrite"):
        stale[0]
