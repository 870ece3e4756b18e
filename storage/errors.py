"""One registry of broker error codes: stable name -> HTTP status and retryability.

The state machine returns errors as results (never raises for bad input); the HTTP edge maps
them through this table. Codes are only ever added, never renamed (API.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorKind:
    code: str
    status: int
    retryable: bool


_KINDS = [
    ErrorKind("invalid_request", 400, False),
    ErrorKind("unauthorized", 401, False),
    ErrorKind("forbidden", 403, False),
    ErrorKind("not_found", 404, False),
    ErrorKind("queue_not_found", 404, False),
    ErrorKind("topic_not_found", 404, False),
    ErrorKind("binding_not_found", 404, False),
    ErrorKind("method_not_allowed", 405, False),
    ErrorKind("request_timeout", 408, True),
    ErrorKind("unsupported_media_type", 415, False),
    ErrorKind("already_exists", 409, False),
    ErrorKind("out_of_order_sequence", 409, False),
    ErrorKind("producer_fenced", 409, False),
    ErrorKind("producer_unknown", 409, False),
    ErrorKind("stale_receipt", 409, False),
    ErrorKind("offset_out_of_range", 416, False),
    ErrorKind("message_too_large", 413, False),
    ErrorKind("batch_too_large", 413, False),
    ErrorKind("request_too_large", 413, False),
    ErrorKind("queue_full", 429, True),
    ErrorKind("overloaded", 429, True),
    # Not retryable: apply may have changed state before it failed, so a blind retry could
    # apply a write twice; the node's log has the traceback.
    ErrorKind("internal_error", 500, False),
    ErrorKind("no_leader", 503, True),
    ErrorKind("unavailable", 503, True),
    ErrorKind("commit_timeout", 504, True),
    ErrorKind("reply_timeout", 504, True),
    ErrorKind("membership_change_in_progress", 409, True),
    ErrorKind("member_not_found", 404, False),
]

KINDS: dict[str, ErrorKind] = {k.code: k for k in _KINDS}


class BrokerError(Exception):
    """A typed, user-facing error. Validation raises it; apply() turns it into a result."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        assert code in KINDS, f"unregistered error code {code!r}"
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_result(self) -> dict[str, Any]:
        return error_result(self.code, self.message, **self.details)


def error_result(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The result shape of a failed command: {"error": {"code", "message", ...details}}."""
    assert code in KINDS, f"unregistered error code {code!r}"
    err: dict[str, Any] = {"code": code, "message": message}
    err.update(details)
    return {"error": err}


def is_error(result: Any) -> bool:
    return isinstance(result, dict) and "error" in result
