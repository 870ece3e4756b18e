"""Defect 9: the follower absorbs ranges the leader re-sends instead of truncating below its acks.

pysyncobj's follower deletes everything after prevLogIdx on every append_entries; with the
leader re-sending in-flight ranges, its log could shrink below what it acknowledged, and an
election in that window can lose committed entries. DurableTransport rewrites such messages
into pure appends when that is provably safe (replication/transport.py `_absorb_resend`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replication.journal import DurableJournal, Entry
from replication.transport import DurableTransport


def make(tmp_path: Path, log: list[Entry]) -> DurableTransport:
    journal = DurableJournal(tmp_path / "j")
    for entry in log:
        journal.add(*entry)
    transport = DurableTransport.__new__(DurableTransport)  # no sockets: only the rewrite logic
    transport._journal = journal
    transport.resends_absorbed = 0
    transport.entries_absorbed = 0
    return transport


def log_of(first: int, last: int, term: int, tag: bytes = b"e") -> list[Entry]:
    return [(tag + str(i).encode(), i, term) for i in range(first, last + 1)]


def append(prev: Entry, entries: list[Entry], term: int) -> dict[str, Any]:
    return {"type": "append_entries", "term": term, "commit_index": 1,
            "prevLogIdx": prev[1], "prevLogTerm": prev[2], "entries": entries}


@pytest.fixture
def log5() -> list[Entry]:
    return log_of(1, 20, 5)


def test_fully_held_resend_becomes_heartbeat_at_our_end(tmp_path: Path, log5: list[Entry]) -> None:
    t = make(tmp_path, log5)
    out = t._absorb_resend(append(log5[9], log5[10:15], term=5))  # re-send of 11..15, we hold 20
    assert (out["prevLogIdx"], out["prevLogTerm"], out["entries"]) == (20, 5, [])
    assert t.entries_absorbed == 5


def test_overlap_then_new_entries_becomes_pure_append(tmp_path: Path, log5: list[Entry]) -> None:
    t = make(tmp_path, log5)
    more = log5[15:] + log_of(21, 23, 5)
    out = t._absorb_resend(append(log5[14], more, term=5))
    assert out["prevLogIdx"] == 20 and [e[1] for e in out["entries"]] == [21, 22, 23]


def test_stale_tail_of_older_term_is_left_to_truncate(tmp_path: Path) -> None:
    log = log_of(1, 10, 3) + log_of(11, 15, 4, tag=b"old")  # 11..15 from a deposed leader
    t = make(tmp_path, log)
    msg = append(log[4], log[5:8], term=6)  # new leader (term 6) re-sends 6..8
    assert t._absorb_resend(msg) is msg


def test_conflicting_entry_is_left_to_pysyncobj(tmp_path: Path, log5: list[Entry]) -> None:
    t = make(tmp_path, log5)
    msg = append(log5[9], [log5[10], (b"other", 12, 6)], term=6)
    assert t._absorb_resend(msg) is msg


def test_prev_term_mismatch_is_left_to_pysyncobj(tmp_path: Path, log5: list[Entry]) -> None:
    t = make(tmp_path, log5)
    msg = append((b"x", 10, 4), log5[10:12], term=5)
    assert t._absorb_resend(msg) is msg


def test_plain_append_at_our_end_is_unchanged(tmp_path: Path, log5: list[Entry]) -> None:
    t = make(tmp_path, log5)
    msg = append(log5[19], log_of(21, 22, 5), term=5)
    assert t._absorb_resend(msg) is msg
    assert t.resends_absorbed == 0


# -- the restarted ex-leader livelock (research/pysyncobj.md §5.3) --------------------------------
def make_follower(tmp_path: Path, log: list[Entry]) -> DurableTransport:
    t = make(tmp_path, log)
    t._floor = {}
    t.backtracks_kept = 0
    return t


def ack(next_idx: int, *, success: bool = False, reset: bool = True) -> dict[str, Any]:
    return {"type": "next_node_idx", "next_node_idx": next_idx, "reset": reset,
            "success": success}


def test_backtrack_point_survives_the_later_replies_of_the_round(tmp_path: Path) -> None:
    """Our tail 11..15 is of an old term (3) the new leader (term 5) does not have."""
    ours = log_of(1, 10, 2) + log_of(11, 15, 3, tag=b"old")
    t = make_follower(tmp_path, ours)
    leader = "L"
    first = append((b"new15", 15, 5), [(b"new16", 16, 5)], term=5)  # prevLogIdx 15: mismatch
    t._note_conflict(leader, first)
    # pysyncobj answers "go back to 15", then for the next message of the round (prevLogIdx
    # 40, which we lack) "my end is 16"; both must say 11, the start of our term-3 run.
    assert t._apply_floor(leader, ack(15))["next_node_idx"] == 11
    later = append((b"new40", 40, 5), [(b"new41", 41, 5)], term=5)
    t._note_conflict(leader, later)
    assert t._apply_floor(leader, ack(16))["next_node_idx"] == 11
    assert t.backtracks_kept == 2
    assert t._apply_floor(leader, ack(30, success=True, reset=False))["next_node_idx"] == 30
    assert leader not in t._floor, "a success ends the backtrack"


def test_floor_never_goes_below_the_commit_index(tmp_path: Path) -> None:
    ours = log_of(1, 15, 3)
    t = make_follower(tmp_path, ours)
    t._journal.setRaftCommitIndex(12)
    t._note_conflict("L", append((b"x", 14, 5), [], term=5))
    assert t._floor["L"] == (5, 13)


def test_matching_prev_sets_no_floor(tmp_path: Path) -> None:
    ours = log_of(1, 15, 3)
    t = make_follower(tmp_path, ours)
    t._note_conflict("L", append(ours[13], [], term=5))
    assert t._floor == {}
    assert t._apply_floor("L", ack(16)) == ack(16)


# -- durability `memory`: a committed entry contradicted (docs/durability.md) ------------------
def diverged_follower(tmp_path: Path, current_term: int) -> tuple[DurableTransport, list[int]]:
    t = make_follower(tmp_path, log_of(1, 15, 3))
    t._journal.setCurrentTerm(current_term, None)
    t._journal.setRaftCommitIndex(12)
    seen: list[int] = []
    t._journal.on_divergence = lambda idx, commit: seen.append(idx)
    return t, seen


def test_a_current_leader_contradicting_a_committed_entry_is_divergence(tmp_path: Path) -> None:
    t, seen = diverged_follower(tmp_path, current_term=5)
    t._note_conflict("L", append((b"x", 14, 5), [], term=5))  # above commit 12: normal repair
    assert seen == []
    t._note_conflict("L", append((b"x", 11, 5), [], term=5))
    assert seen == [11]


def test_a_stale_leader_contradicting_a_committed_entry_is_ignored(tmp_path: Path) -> None:
    """pysyncobj drops messages of an older term; so does the divergence check."""
    t, seen = diverged_follower(tmp_path, current_term=6)
    t._note_conflict("L", append((b"x", 11, 5), [], term=5))
    assert seen == []
