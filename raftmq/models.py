"""The small value types the client returns, and the conversion of message bodies.

Bodies: a `str` is sent as text, `bytes` that are valid UTF-8 as text too, other `bytes` as
base64 with `"body_encoding": "base64"` (the node's JSON convention) or raw over MessagePack.
A received body is `str` when it came as text and `bytes` when it came as bytes; `Message.data`
and `Message.text` give either form.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Body = str | bytes
MessageSpec = Body | dict[str, Any]
Messages = MessageSpec | Sequence[MessageSpec]   # one message or a batch

MESSAGE_FIELDS = ("body", "headers", "priority", "delay_s", "group", "dedup_id", "ttl_s",
                  "correlation_id", "reply_to", "key")


def _as_bytes(body: Body) -> bytes:
    return body if isinstance(body, bytes) else body.encode("utf-8")


def _as_text(body: Body) -> str:
    return body if isinstance(body, str) else body.decode("utf-8", errors="replace")


def encode_message(spec: MessageSpec, *, binary_ok: bool) -> dict[str, Any]:
    """One outgoing message dict from a body or a dict with `body` and optional fields.

    `binary_ok` is True for MessagePack requests (raw bytes allowed), False for JSON.
    """
    msg: dict[str, Any] = dict(spec) if isinstance(spec, dict) else {"body": spec}
    if "body" not in msg:
        raise ValueError("a message needs a 'body'")
    unknown = sorted(set(msg) - set(MESSAGE_FIELDS) - {"body_encoding"})
    if unknown:
        raise ValueError(f"unknown message field(s): {', '.join(unknown)}")
    body = msg["body"]
    if not isinstance(body, str | bytes | bytearray | memoryview):
        raise TypeError(f"message body must be str or bytes, not {type(body).__name__}")
    if isinstance(body, bytearray | memoryview):
        body = bytes(body)
    if isinstance(body, bytes) and not binary_ok:
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            body = base64.b64encode(body).decode("ascii")
            msg["body_encoding"] = "base64"
    msg["body"] = body
    return msg


def encode_messages(specs: Messages, *, binary_ok: bool) -> list[dict[str, Any]]:
    """A list of outgoing messages: one body/dict or a list of them (an empty list is refused)."""
    items = [specs] if isinstance(specs, str | bytes | bytearray | dict) else list(specs)
    if not items:
        raise ValueError("publish needs at least one message")
    return [encode_message(s, binary_ok=binary_ok) for s in items]


def decode_body(raw: dict[str, Any]) -> Body:
    body = raw.get("body", "")
    if raw.get("body_encoding") == "base64" and isinstance(body, str):
        return base64.b64decode(body)
    if isinstance(body, bytes | str):
        return body
    return str(body)


@dataclass(frozen=True)
class Message:
    """A message delivered from a queue. `receipt` names this delivery (ack/nack/visibility)."""

    id: str
    body: Body
    receipt: str
    queue: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    group: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    published_at: int = 0
    receive_count: int = 0
    lease_expires_at: int | None = None

    @property
    def data(self) -> bytes:
        return _as_bytes(self.body)

    @property
    def text(self) -> str:
        return _as_text(self.body)

    @classmethod
    def from_api(cls, raw: dict[str, Any], queue: str = "") -> Message:
        return cls(id=str(raw.get("id", "")), body=decode_body(raw),
                   receipt=str(raw.get("receipt", "")), queue=queue,
                   headers=dict(raw.get("headers") or {}), priority=int(raw.get("priority") or 0),
                   group=raw.get("group"), correlation_id=raw.get("correlation_id"),
                   reply_to=raw.get("reply_to"), published_at=int(raw.get("published_at") or 0),
                   receive_count=int(raw.get("receive_count") or 0),
                   lease_expires_at=raw.get("lease_expires_at"))


@dataclass(frozen=True)
class AckResult:
    """How many receipts took effect (acked/nacked), and which were stale (redelivered since,
    already acked, or unknown)."""

    count: int
    stale: list[str]


@dataclass(frozen=True)
class Published:
    id: str
    duplicate: bool = False


@dataclass(frozen=True)
class PublishResult:
    """The answer to a queue publish. `duplicate` is True when the node had already applied this
    exact request (a retry): the ids are then the original ones."""

    messages: list[Published]
    duplicate: bool = False

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.messages]

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> PublishResult:
        msgs = [Published(str(m.get("id")), bool(m.get("duplicate", False)))
                for m in raw.get("messages", [])]
        return cls(msgs, bool(raw.get("duplicate", False)))


@dataclass(frozen=True)
class TopicRecordRef:
    partition: int
    offset: int
    duplicate: bool = False


@dataclass(frozen=True)
class TopicPublishResult:
    messages: list[TopicRecordRef]
    duplicate: bool = False

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> TopicPublishResult:
        msgs = [TopicRecordRef(int(m.get("partition", 0)), int(m.get("offset", 0)),
                               bool(m.get("duplicate", False))) for m in raw.get("messages", [])]
        return cls(msgs, bool(raw.get("duplicate", False)))


@dataclass(frozen=True)
class TopicMessage:
    """A message read from a topic partition at `offset`."""

    offset: int
    body: Body
    topic: str = ""
    partition: int = 0
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    published_at: int = 0

    @property
    def data(self) -> bytes:
        return _as_bytes(self.body)

    @property
    def text(self) -> str:
        return _as_text(self.body)


@dataclass(frozen=True)
class TopicBatch:
    messages: list[TopicMessage]
    next_offset: int
    high_watermark: int
    low_watermark: int

    @classmethod
    def from_api(cls, raw: dict[str, Any], topic: str, partition: int) -> TopicBatch:
        msgs = [TopicMessage(offset=int(m.get("offset", 0)), body=decode_body(m), topic=topic,
                             partition=int(m.get("partition", partition)), key=m.get("key"),
                             headers=dict(m.get("headers") or {}),
                             published_at=int(m.get("published_at") or 0))
                for m in raw.get("messages", [])]
        return cls(msgs, int(raw.get("next_offset", 0)), int(raw.get("high_watermark", 0)),
                   int(raw.get("low_watermark", 0)))


@dataclass(frozen=True)
class ProducerRef:
    """A registered producer: `seq` is the next sequence number it will send."""

    id: str
    epoch: int
    seq: int = 0

    def as_api(self) -> dict[str, Any]:
        return {"id": self.id, "epoch": self.epoch, "seq": self.seq}
