"""Durability `memory` in the journal: acks that do not wait for the disk, the syncer thread,
and the divergence check (a committed entry contradicted by the leader)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from replication import hardening
from replication import journal as jr
from replication.journal import DurableJournal, MetaFile, read_journal_entries
from tests.support.cluster import wait_until


class Disk:
    """Counts fdatasyncs; `gate` can hold the syncer thread's sync until the test opens it."""

    def __init__(self) -> None:
        self.fdatasyncs = 0
        self.gate = threading.Event()
        self.gate.set()

    def fdatasync(self, fd: int) -> None:
        self.gate.wait(10)
        self.fdatasyncs += 1
        os.fdatasync(fd)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    d = Disk()
    monkeypatch.setattr(jr, "_fdatasync_impl", d.fdatasync)
    return d


def memory_journal(path: Path) -> DurableJournal:
    j = DurableJournal(path)
    j.memory_class = lambda payload: payload.startswith(b"m")
    return j


def test_memory_records_need_no_sync_before_their_ack_and_reach_the_os_when_written(
        tmp_path: Path, disk: Disk) -> None:
    j = memory_journal(tmp_path / "j")
    j.add(b"m1", 1, 1)
    j.add(b"m2", 2, 1)
    assert j.dirty and not j.must_sync
    j.write_pending()  # what the transport does before a `memory` ack leaves
    assert [e[1] for e in read_journal_entries(tmp_path / "j")] == [1, 2]  # survives kill -9
    assert disk.fdatasyncs == 0 and j.dirty
    j.close()


def test_the_syncer_thread_fsyncs_memory_records_and_the_journal_sees_it(
        tmp_path: Path, disk: Disk) -> None:
    j = memory_journal(tmp_path / "j")
    j.add(b"m1", 1, 1)
    disk.gate.clear()
    j.sync_soon()  # returns while the sync is held
    assert disk.fdatasyncs == 0 and j.dirty
    disk.gate.set()
    wait_until(lambda: not j.dirty, 10, what="the syncer's fdatasync")
    assert disk.fdatasyncs == 1 and j.background_syncs == 1
    j.sync()  # clean: nothing to do
    assert disk.fdatasyncs == 1
    j.close()


def test_a_record_added_during_a_background_sync_stays_dirty(tmp_path: Path, disk: Disk) -> None:
    j = memory_journal(tmp_path / "j")
    j.add(b"m1", 1, 1)
    disk.gate.clear()
    j.sync_soon()
    j.add(b"m2", 2, 1)  # not covered by the sync in flight
    disk.gate.set()
    wait_until(lambda: j.background_syncs == 1, 10, what="the syncer's fdatasync")
    assert j.dirty
    j.sync_soon()
    wait_until(lambda: not j.dirty, 10, what="the second fdatasync")
    j.close()


@pytest.mark.parametrize("change", ["fsync record", "cut"])
def test_an_fsync_record_or_a_cut_makes_the_ack_wait_for_sync(tmp_path: Path, disk: Disk,
                                                              change: str) -> None:
    j = memory_journal(tmp_path / "j")
    j.add(b"m1", 1, 1)
    j.add(b"m2", 2, 1)
    j.sync()
    if change == "fsync record":
        j.add(b"f3", 3, 1)
    else:
        j.deleteEntriesFrom(1)
        j.add(b"m2-other", 2, 2)  # a different entry: the file is cut
    assert j.must_sync
    before = disk.fdatasyncs
    j.sync_soon()  # with must_sync it syncs here, not in the background
    assert disk.fdatasyncs == before + 1 and not j.dirty and not j.must_sync
    j.close()


def test_without_a_classifier_every_record_must_be_synced(tmp_path: Path, disk: Disk) -> None:
    j = DurableJournal(tmp_path / "j")
    j.add(b"m1", 1, 1)
    assert j.must_sync
    j.close()


def test_leader_applies_memory_records_written_but_syncs_fsync_records(
        tmp_path: Path, disk: Disk) -> None:
    j = memory_journal(tmp_path / "j")
    j.leader_probe = lambda: True
    j.add(b"m1", 1, 1)
    j.setRaftCommitIndex(1)
    assert disk.fdatasyncs == 0 and len(read_journal_entries(tmp_path / "j")) == 1
    j.add(b"f2", 2, 1)
    j.setRaftCommitIndex(2)
    assert disk.fdatasyncs == 1 and not j.dirty
    j.close()


def test_a_different_entry_at_a_committed_index_is_reported_as_divergence(
        tmp_path: Path, disk: Disk) -> None:
    j = memory_journal(tmp_path / "j")
    seen: list[tuple[int, int]] = []
    j.on_divergence = lambda idx, commit: seen.append((idx, commit))
    for i in range(1, 6):
        j.add(b"m%d" % i, i, 1)
    j.setRaftCommitIndex(3)
    j.deleteEntriesFrom(3)  # pysyncobj truncates before every append: not a conflict yet
    j.add(b"m4", 4, 1)  # the same entry again: not a conflict
    j.deleteEntriesFrom(4)
    j.add(b"x5", 5, 2)  # different, above the commit index: Raft's normal repair
    assert seen == []
    j.deleteEntriesFrom(2)
    j.add(b"x3", 3, 2)  # different, at a committed index
    assert seen == [(3, 3)] and j.stats.divergences == 1
    j.close()


def test_resync_marker_sets_the_raft_state_aside_and_keeps_term_and_vote(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    j = DurableJournal(data / hardening.JOURNAL_FILE_NAME)
    for i in range(1, 4):
        j.add(b"f%d" % i, i, 1)
    j.setCurrentTerm(7, "n2")
    j.setRaftCommitIndex(3)
    j.onOneSecondTimer()
    j.close()
    (data / hardening.SNAPSHOT_FILE_NAME).write_bytes(b"would fail verification")
    hardening.mark_for_resync(data, idx=2, commit=3)

    hardening.check_data_dir(data)

    aside = data / "resync-1"
    assert sorted(p.name for p in aside.iterdir()) == sorted([
        hardening.JOURNAL_FILE_NAME, hardening.JOURNAL_FILE_NAME + jr.META_SUFFIX,
        hardening.SNAPSHOT_FILE_NAME, hardening.RESYNC_MARKER_NAME])
    assert not (data / hardening.RESYNC_MARKER_NAME).exists()
    assert not (data / hardening.JOURNAL_FILE_NAME).exists()
    meta = MetaFile(data / (hardening.JOURNAL_FILE_NAME + jr.META_SUFFIX))
    assert meta.values == {"term": 7, "vote": "n2"}  # never vote twice in one term
    fresh = DurableJournal(data / hardening.JOURNAL_FILE_NAME)  # starts empty, and starts
    assert len(fresh) == 0 and fresh.getCurrentTerm() == 7
    fresh.close()
    hardening.check_data_dir(data)  # no marker: nothing more is moved
    assert hardening.resync_count(data) == 1


def test_memory_entries_are_told_apart_by_their_method_id_at_any_size() -> None:
    from pysyncobj import pickle as raft_pickle
    from pysyncobj.syncobj import _COMMAND_TYPE, _bchr

    from replication.replica import memory_classifier

    class Sync:
        _methodToID = {"apply_batch_v0": 0, "apply_memory_batch_v0": 1}

        def _getFuncName(self, name: str) -> str:  # noqa: N802 (pysyncobj's name)
            return name + "_v0"

    is_memory = memory_classifier(Sync())
    for size in (0, 10, 1000, 100_000):
        blob = os.urandom(size)
        for fid, expected in ((0, False), (1, True)):
            payload = _bchr(_COMMAND_TYPE.REGULAR) + raft_pickle.dumps((fid, (blob,)))
            assert is_memory(payload) is expected
    assert not is_memory(b"")
    assert not is_memory(_bchr(_COMMAND_TYPE.MEMBERSHIP) + raft_pickle.dumps(["add", 1, 2]))
