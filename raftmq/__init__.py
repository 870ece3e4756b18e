"""raftmq: the Python client of the raftmq broker (sync `Client`, asyncio `AsyncClient`).

Exactly-once publishing is the default: see docs/client.md.
"""

from raftmq.aio import AsyncClient, AsyncTransaction
from raftmq.client import Client, Transaction
from raftmq.errors import (
    AlreadyExists,
    ClientTimeout,
    CommitTimeout,
    ConnectionFailed,
    InvalidRequest,
    NoLeader,
    NotFound,
    OutOfOrderSequence,
    ProducerFenced,
    ProducerUnknown,
    QueueFull,
    QueueNotFound,
    RaftmqError,
    ReplyTimeout,
    StaleReceipt,
    TopicNotFound,
    Unavailable,
)
from raftmq.models import (
    AckResult,
    Message,
    ProducerRef,
    Published,
    PublishResult,
    TopicBatch,
    TopicMessage,
    TopicPublishResult,
    TopicRecordRef,
)

__all__ = [
    "AckResult", "AlreadyExists", "AsyncClient", "AsyncTransaction", "Client", "ClientTimeout",
    "CommitTimeout", "ConnectionFailed", "InvalidRequest", "Message", "NoLeader", "NotFound",
    "OutOfOrderSequence", "ProducerFenced", "ProducerRef", "ProducerUnknown", "PublishResult",
    "Published", "QueueFull", "QueueNotFound", "RaftmqError", "ReplyTimeout", "StaleReceipt",
    "TopicBatch", "TopicMessage", "TopicNotFound", "TopicPublishResult", "TopicRecordRef",
    "Transaction", "Unavailable",
]
