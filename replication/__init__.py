"""replication/: the only importer of pysyncobj (architecture.md §2)."""

from replication.replica import Replica
from replication.types import MemberStatus, ProposalError, ReplicaConfig, ReplicaStatus

__all__ = ["MemberStatus", "ProposalError", "Replica", "ReplicaConfig", "ReplicaStatus"]
