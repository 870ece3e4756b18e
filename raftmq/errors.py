"""Typed exceptions for the error shape of API.md: `{"error": {"code", "message", "retryable"}}`.

Every error a node answers becomes a `RaftmqError` (or the subclass registered for its code), with
`code`, `message`, `status`, `retryable`, the answering `node` and any extra `details`. Errors the
client makes itself (no node reachable, no answer before the deadline) use status 0.

`outcome_unknown` is True when a write may or may not have been applied: the node answered 504
`commit_timeout`, or the connection dropped or timed out after the request was sent.
"""

from __future__ import annotations

from typing import Any


class RaftmqError(Exception):
    """Base of every error raised by the raftmq client."""

    code: str = "error"
    default_status: int = 0

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retryable: bool = False, node: str | None = None,
                 details: dict[str, Any] | None = None, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = self.default_status if status is None else status
        self.retryable = retryable
        self.node = node
        self.details: dict[str, Any] = dict(details or {})
        self.outcome_unknown = outcome_unknown

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequest(RaftmqError):
    code, default_status = "invalid_request", 400


class Unauthorized(RaftmqError):
    code, default_status = "unauthorized", 401


class Forbidden(RaftmqError):
    code, default_status = "forbidden", 403


class NotFound(RaftmqError):
    code, default_status = "not_found", 404


class QueueNotFound(NotFound):
    code = "queue_not_found"


class TopicNotFound(NotFound):
    code = "topic_not_found"


class BindingNotFound(NotFound):
    code = "binding_not_found"


class Conflict(RaftmqError):
    default_status = 409


class AlreadyExists(Conflict):
    code = "already_exists"


class OutOfOrderSequence(Conflict):
    code = "out_of_order_sequence"


class ProducerFenced(Conflict):
    """Another client registered this producer id again: this one is a zombie and must stop."""

    code = "producer_fenced"


class ProducerUnknown(Conflict):
    code = "producer_unknown"


class StaleReceipt(Conflict):
    code = "stale_receipt"


class OffsetOutOfRange(RaftmqError):
    code, default_status = "offset_out_of_range", 416


class TooLarge(RaftmqError):
    default_status = 413


class MessageTooLarge(TooLarge):
    code = "message_too_large"


class BatchTooLarge(TooLarge):
    code = "batch_too_large"


class RequestTooLarge(TooLarge):
    code = "request_too_large"


class QueueFull(RaftmqError):
    code, default_status = "queue_full", 429


class Overloaded(RaftmqError):
    code, default_status = "overloaded", 429


class InternalError(RaftmqError):
    code, default_status = "internal_error", 500


class Unavailable(RaftmqError):
    """503: the cluster could not take the request now (not applied); retry later."""

    code, default_status = "unavailable", 503


class NoLeader(Unavailable):
    code = "no_leader"


class CommitTimeout(RaftmqError):
    """504: the write's outcome is unknown; the same producer seq or dedup id makes a retry safe."""

    code, default_status = "commit_timeout", 504


class ReplyTimeout(RaftmqError):
    code, default_status = "reply_timeout", 504


class UnsupportedMediaType(InvalidRequest):
    code = "unsupported_media_type"


class MethodNotAllowed(InvalidRequest):
    code = "method_not_allowed"


class RequestTimeout(RaftmqError):
    """The request body did not reach the node in time (a stalled upload); nothing applied."""

    code = "request_timeout"


class MembershipChangeInProgress(Conflict):
    """Another membership change is under way; retry once it is done."""

    code = "membership_change_in_progress"


class MemberNotFound(NotFound):
    code = "member_not_found"


class ConnectionFailed(RaftmqError):
    """Client-side: no node could be reached (connection refused, reset or DNS failure)."""

    code = "connection_failed"


class ClientTimeout(RaftmqError):
    """Client-side: no answer before the call's deadline (`timeout_s`)."""

    code = "client_timeout"


_BY_CODE: dict[str, type[RaftmqError]] = {
    cls.code: cls
    for cls in (InvalidRequest, Unauthorized, Forbidden, NotFound, QueueNotFound, TopicNotFound,
                BindingNotFound, AlreadyExists, OutOfOrderSequence, ProducerFenced,
                ProducerUnknown, StaleReceipt, OffsetOutOfRange, MessageTooLarge, BatchTooLarge,
                RequestTooLarge, QueueFull, Overloaded, InternalError, Unavailable, NoLeader,
                CommitTimeout, ReplyTimeout, UnsupportedMediaType, MethodNotAllowed,
                RequestTimeout, MembershipChangeInProgress, MemberNotFound)
}


def error_class(code: str) -> type[RaftmqError]:
    """The exception class for an API error code (RaftmqError for codes this client predates)."""
    return _BY_CODE.get(code, RaftmqError)


def from_response(status: int, body: Any, node: str | None = None) -> RaftmqError:
    """Build the typed exception for a non-2xx answer (any body shape is tolerated)."""
    assert status >= 300, status
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"code": _fallback_code(status), "message": f"HTTP {status}: {str(body)[:200]}"}
    code = str(err.get("code") or _fallback_code(status))
    message = str(err.get("message") or code)
    retryable = bool(err.get("retryable", status in (429, 503, 504)))
    details = {k: v for k, v in err.items() if k not in ("code", "message", "retryable")}
    return error_class(code)(message, code=code, status=status, retryable=retryable, node=node,
                             details=details, outcome_unknown=(code == "commit_timeout"))


def _fallback_code(status: int) -> str:
    return {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
            413: "request_too_large", 429: "overloaded", 503: "unavailable",
            504: "commit_timeout"}.get(status, "internal_error" if status >= 500 else "error")


__all__ = [
    "AlreadyExists", "BatchTooLarge", "BindingNotFound", "ClientTimeout", "CommitTimeout",
    "Conflict", "ConnectionFailed", "Forbidden", "InternalError", "InvalidRequest",
    "MessageTooLarge", "NoLeader", "NotFound", "OffsetOutOfRange", "OutOfOrderSequence",
    "Overloaded", "ProducerFenced", "ProducerUnknown", "QueueFull", "QueueNotFound",
    "RaftmqError", "ReplyTimeout", "RequestTooLarge", "StaleReceipt", "TooLarge", "TopicNotFound",
    "Unauthorized", "Unavailable", "error_class", "from_response",
]
