"""The replicated membership table (storage/state.py ops cluster.member_*), on the state alone:
one change at a time, retries resume, the table survives a snapshot. No processes needed."""

from __future__ import annotations

from typing import Any

from storage.state import MEMBER_CHANGE_TIMEOUT_MS, BrokerState

N4 = {"id": "n4", "raft": "127.0.0.1:9004", "http": "127.0.0.1:8004"}
N5 = {"id": "n5", "raft": "127.0.0.1:9005", "http": "127.0.0.1:8005"}


def apply(state: BrokerState, cmd: dict[str, Any], now_ms: int = 1_000) -> dict[str, Any]:
    return state.apply(cmd, now_ms)


def code(result: dict[str, Any]) -> str | None:
    err = result.get("error")
    return str(err["code"]) if err else None


def test_second_change_while_one_is_pending_is_refused() -> None:
    s = BrokerState()
    assert not apply(s, {"op": "cluster.member_add", **N4})["resumed"]
    refused = apply(s, {"op": "cluster.member_add", **N5})
    assert code(refused) == "membership_change_in_progress"
    assert "n4" in refused["error"]["message"]
    assert code(apply(s, {"op": "cluster.member_remove", "id": "n1",
                          "raft": "127.0.0.1:9001"})) == "membership_change_in_progress"
    assert apply(s, {"op": "cluster.member_add", **N4})["resumed"]  # the same request resumes
    assert s.cluster_members()["change"]["id"] == "n4"
    assert s.cluster_members()["members"] == {}


def test_commit_updates_the_table_and_frees_the_slot() -> None:
    s = BrokerState()
    apply(s, {"op": "cluster.member_add", **N4})
    wrong = apply(s, {"op": "cluster.member_commit", "id": "n5", "change": "add", "ok": True})
    assert wrong == {"committed": False} and s.cluster_members()["change"] is not None
    done = apply(s, {"op": "cluster.member_commit", "id": "n4", "change": "add", "ok": True})
    assert done == {"committed": True}
    table = s.cluster_members()
    assert table["change"] is None
    assert table["members"]["n4"] == {"raft": N4["raft"], "http": N4["http"], "status": "member"}
    assert code(apply(s, {"op": "cluster.member_add", **N4})) == "already_exists"
    apply(s, {"op": "cluster.member_remove", "id": "n4", "raft": N4["raft"]})
    apply(s, {"op": "cluster.member_commit", "id": "n4", "change": "remove", "ok": True})
    assert s.cluster_members()["members"]["n4"]["status"] == "removed"
    assert not apply(s, {"op": "cluster.member_add", **N4})["resumed"]  # may come back


def test_aborted_change_changes_nothing_and_stale_change_can_be_replaced() -> None:
    s = BrokerState()
    apply(s, {"op": "cluster.member_add", **N4})
    assert apply(s, {"op": "cluster.member_commit", "id": "n4", "change": "add",
                     "ok": False}) == {"committed": False}
    assert s.cluster_members() == {"members": {}, "change": None}
    apply(s, {"op": "cluster.member_add", **N4}, now_ms=1_000)
    later = 1_000 + MEMBER_CHANGE_TIMEOUT_MS
    assert not apply(s, {"op": "cluster.member_add", **N5}, now_ms=later)["resumed"]
    assert s.cluster_members()["change"]["id"] == "n5"


def test_bad_fields_are_errors_naming_the_field() -> None:
    s = BrokerState()
    for cmd, field in (({**N4, "id": "no spaces"}, "id"), ({**N4, "raft": "nohost"}, "raft"),
                       ({**N4, "http": None}, "http"), ({**N4, "raft": "h:1\n"}, "raft")):
        result = apply(s, {"op": "cluster.member_add", **cmd})
        assert code(result) == "invalid_request" and result["error"]["message"].startswith(field)
    assert s.cluster_members()["change"] is None


def test_table_and_pending_change_survive_a_snapshot() -> None:
    s = BrokerState()
    apply(s, {"op": "cluster.member_add", **N4})
    apply(s, {"op": "cluster.member_commit", "id": "n4", "change": "add", "ok": True})
    apply(s, {"op": "cluster.member_add", **N5})
    restored = BrokerState.decode_snapshot(s.encode_snapshot())
    assert restored.cluster_members() == s.cluster_members()
    assert restored.encode_snapshot() == s.encode_snapshot()
