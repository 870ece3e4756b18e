"""How a node names the Raft members it lists in GET /v1/cluster (replication/membership.py).

The state is the real replicated state machine; the Raft configuration is given as pysyncobj
would report it at each step of an add, so no Raft runs here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replication.membership import Member, Membership
from storage.state import BrokerState

STATIC = [Member("n1", "127.0.0.1:7001", "127.0.0.1:8001"),
          Member("n2", "127.0.0.1:7002", "127.0.0.1:8002"),
          Member("n3", "127.0.0.1:7003", "127.0.0.1:8003")]
N4 = {"id": "n4", "raft": "127.0.0.1:7004", "http": "127.0.0.1:8004"}


class ReplicaView:
    """The two things Membership.members reads from a replica: applied state, Raft config."""

    def __init__(self) -> None:
        self.state = BrokerState()
        self.raft = [m.raft for m in STATIC]

    def read(self, fn: Callable[[BrokerState], Any]) -> Any:
        return fn(self.state)

    def raft_members(self) -> list[str]:
        return list(self.raft)


def listed(replica: ReplicaView) -> list[tuple[str, str | None]]:
    membership = Membership(replica, "n2", STATIC)  # type: ignore[arg-type]
    return [(m.id, m.http) for m in membership.members()]


def test_a_member_being_added_is_named_by_its_id_before_the_commit_is_applied() -> None:
    """A follower appends the Raft configuration entry before it applies
    cluster.member_commit: the new member is still listed by id, with its HTTP address."""
    replica = ReplicaView()
    begun = replica.state.apply({"op": "cluster.member_add", **N4}, 1_000)
    assert begun["change"]["id"] == "n4"
    assert [i for i, _ in listed(replica)] == ["n1", "n2", "n3"], "not in Raft yet"
    replica.raft.append(N4["raft"])
    assert ("n4", N4["http"]) in listed(replica)
    replica.state.apply({"op": "cluster.member_commit", "id": "n4", "change": "add",
                         "ok": True}, 2_000)
    assert listed(replica) == [("n1", "127.0.0.1:8001"), ("n2", "127.0.0.1:8002"),
                               ("n3", "127.0.0.1:8003"), ("n4", N4["http"])]


def test_a_raft_member_no_table_names_is_listed_by_its_address() -> None:
    replica = ReplicaView()
    replica.raft.append("127.0.0.1:7009")
    assert ("127.0.0.1:7009", None) in listed(replica)
