"""Pure validators: the node calls them before proposing, `apply` re-checks with them.

Each raises `BrokerError("invalid_request", "<field path>: <what is wrong>")` (or
`message_too_large` / `batch_too_large`) and returns a normalized value. Unknown fields in a
message are ignored; wrong types are rejected; `bool` is never accepted as a number.
"""

from __future__ import annotations

import math
import re
from typing import Any

from storage.errors import BrokerError
from storage.limits import DEFAULT_LIMITS, Limits
from storage.queues import DEFAULT_QUEUE_CONFIG
from storage.text import utf8

NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")
OVERFLOWS = ("reject", "drop_oldest")
DURABILITIES = ("fsync", "memory")
ACK_MODES = ("manual", "auto")
NUMBER_MAX = 2**53  # exact in JSON and in msgpack floats


def bad(field: str, what: str) -> BrokerError:
    return BrokerError("invalid_request", f"{field}: {what}")


def name(value: Any, field: str, limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(value, str):
        raise bad(field, "must be a string name")
    if len(value) > limits.name_chars_max:
        raise bad(field, f"longer than {limits.name_chars_max} characters")
    if not NAME_RE.fullmatch(value):
        raise bad(field, "must match ^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")
    return value


def count(value: Any, field: str, *, minimum: int = 0, maximum: int = NUMBER_MAX) -> int:
    """An integer in [minimum, maximum] (bool is not an integer)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(field, "must be an integer")
    if value < minimum or value > maximum:
        raise bad(field, f"must be between {minimum} and {maximum}")
    return value


def seconds(value: Any, field: str, *, maximum: float = NUMBER_MAX) -> int | float:
    """A duration in seconds >= 0 (int or finite float, at most maximum)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(field, "must be a number of seconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(field, "must be finite")
    if value < 0 or value > maximum:
        raise bad(field, f"must be between 0 and {maximum}")
    return value


def optional_string(value: Any, field: str, limits: Limits = DEFAULT_LIMITS) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad(field, "must be a string")
    if not value or len(value) > limits.string_field_chars_max:
        raise bad(field, f"must be 1 to {limits.string_field_chars_max} characters")
    return value


def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(field, "must be an object")
    return value


# ----- queue config

_CONFIG_MAXIMA = {
    "visibility_timeout_s": "visibility_timeout_s_max",
    "message_ttl_s": "ttl_s_max",
    "delay_s": "delay_s_max",
    "dedup_window_s": "dedup_window_s_max",
    "expires_s": "expires_s_max",
}
_CONFIG_COUNTS = {
    "max_receives": "max_receives_max",
    "max_length": "queue_length_max",
    "max_bytes": "queue_bytes_max",
}


def queue_config(body: Any, limits: Limits = DEFAULT_LIMITS,
                 queue: str | None = None) -> dict[str, Any]:
    """The full queue config (every key of DEFAULT_QUEUE_CONFIG) from a create body."""
    raw = _object(body, "config")
    config = dict(DEFAULT_QUEUE_CONFIG)
    for key, limit_name in _CONFIG_MAXIMA.items():
        if raw.get(key) is not None:
            config[key] = seconds(raw[key], key, maximum=getattr(limits, limit_name))
    for key, limit_name in _CONFIG_COUNTS.items():
        if raw.get(key) is not None:
            config[key] = count(raw[key], key, maximum=getattr(limits, limit_name))
    if raw.get("dead_letter_queue") is not None:
        config["dead_letter_queue"] = name(raw["dead_letter_queue"], "dead_letter_queue", limits)
        if config["dead_letter_queue"] == queue:
            raise bad("dead_letter_queue", "must name another queue")
    for key, allowed in (("overflow", OVERFLOWS), ("durability", DURABILITIES)):
        if raw.get(key) is not None:
            if raw[key] not in allowed:
                raise bad(key, f"must be one of {', '.join(allowed)}")
            config[key] = raw[key]
    assert config.keys() == DEFAULT_QUEUE_CONFIG.keys()
    return config


# ----- messages

# The fields of a normalized queue message besides `body`, with their defaults.
MESSAGE_DEFAULTS: dict[str, Any] = {
    "headers": {}, "priority": 0, "delay_s": 0, "ttl_s": 0, "group": None, "dedup_id": None,
    "correlation_id": None, "reply_to": None,
}

def headers(value: Any, field: str, limits: Limits = DEFAULT_LIMITS) -> dict[str, str]:
    raw = _object(value, field)
    if len(raw) > limits.headers_max:
        raise bad(field, f"more than {limits.headers_max} headers")
    out: dict[str, str] = {}
    for key, val in raw.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise bad(f"{field}.{key}", "header keys and values must be strings")
        if not key or len(utf8(key, f"{field}.{key!r}")) > limits.header_key_bytes_max:
            raise bad(f"{field}.{key}",
                      f"header key must be 1 to {limits.header_key_bytes_max} bytes")
        if len(utf8(val, f"{field}.{key!r}")) > limits.header_value_bytes_max:
            raise bad(f"{field}.{key}",
                      f"header value longer than {limits.header_value_bytes_max} bytes")
        out[key] = val
    return out


def body_bytes(value: Any, field: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise bad(field, "must be valid UTF-8 text") from e
    elif isinstance(value, bytes):
        data = value
    else:
        raise bad(field, "required, a string (or bytes in msgpack)")
    if len(data) > limits.body_bytes_max:
        raise BrokerError("message_too_large",
                          f"{field}: {len(data)} bytes, more than body_bytes_max "
                          f"({limits.body_bytes_max})")
    return data


def message(value: Any, field: str, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """One queue message with every field present (defaults filled in)."""
    if not isinstance(value, dict):
        raise bad(field, "must be an object")
    priority = value.get("priority")
    if len(value) == 1:  # the common message: a body, nothing else
        return {"body": body_bytes(value.get("body"), f"{field}.body", limits), "headers": {},
                "priority": 0, "delay_s": 0, "ttl_s": 0, "group": None, "dedup_id": None,
                "correlation_id": None, "reply_to": None}
    return {
        "body": body_bytes(value.get("body"), f"{field}.body", limits),
        "headers": headers(value.get("headers"), f"{field}.headers", limits),
        "priority": 0 if priority is None else count(priority, f"{field}.priority",
                                                     maximum=limits.priority_max),
        "delay_s": seconds(value.get("delay_s") or 0, f"{field}.delay_s",
                           maximum=limits.delay_s_max),
        "ttl_s": seconds(value.get("ttl_s") or 0, f"{field}.ttl_s", maximum=limits.ttl_s_max),
        "group": optional_string(value.get("group"), f"{field}.group", limits),
        "dedup_id": optional_string(value.get("dedup_id"), f"{field}.dedup_id", limits),
        "correlation_id": optional_string(value.get("correlation_id"),
                                          f"{field}.correlation_id", limits),
        "reply_to": optional_string(value.get("reply_to"), f"{field}.reply_to", limits),
    }


def publish_messages(value: Any, limits: Limits = DEFAULT_LIMITS,
                     field: str = "messages") -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise bad(field, "must be a non-empty list of messages")
    if len(value) > limits.batch_messages_max:
        raise BrokerError("batch_too_large",
                          f"{field}: {len(value)} messages, more than batch_messages_max "
                          f"({limits.batch_messages_max})")
    return [message(m, f"{field}[{i}]", limits) for i, m in enumerate(value)]


def publish_messages_wire(value: Any, limits: Limits = DEFAULT_LIMITS,
                          field: str = "messages") -> list[dict[str, Any]]:
    """publish_messages for the node: the same checks and errors, but each message in its
    *wire form*: normalized, without the fields that hold their default (MESSAGE_DEFAULTS).
    The common message travels as `{"body": bytes}`: a third of the msgpack work of the full
    form on every node, and `apply` accepts it with a type check (publish_messages_checked)."""
    if type(value) is list and 0 < len(value) <= limits.batch_messages_max:
        bodies = [_plain_body(m, limits) for m in value]
        if None not in bodies:
            if all(b is m["body"] for b, m in zip(bodies, value, strict=True)):
                return value  # msgpack bodies: the messages already are their wire form
            return [{"body": b} for b in bodies]
    return [wire_form(m) for m in publish_messages(value, limits, field)]


def wire_form(normalized: dict[str, Any]) -> dict[str, Any]:
    """A normalized message without its default-valued fields (apply reads them as defaults)."""
    out = {"body": normalized["body"]}
    for key, default in MESSAGE_DEFAULTS.items():
        value = normalized[key]
        if not (value == default and type(value) is type(default)):
            out[key] = value
    assert len(out) <= len(MESSAGE_DEFAULTS) + 1
    return out


def _plain_body(m: Any, limits: Limits) -> bytes | None:
    """The body of a message that is a body and nothing else, within its limit; else None
    (and the full validation will name what is wrong)."""
    if type(m) is not dict or len(m) != 1:
        return None
    body = m.get("body")
    if type(body) is str:
        try:
            body = body.encode("utf-8")
        except UnicodeEncodeError:
            return None
    elif type(body) is not bytes:
        return None
    return body if len(body) <= limits.body_bytes_max else None


def publish_messages_checked(value: Any, limits: Limits = DEFAULT_LIMITS,
                             field: str = "messages") -> list[dict[str, Any]]:
    """publish_messages for `apply`: messages the node normalized (full or wire form) pass a
    cheap check (same rules, no copies); anything else gets the full validation and its error.
    Apply reads absent fields as their defaults (Queues.commit)."""
    if (type(value) is list and 0 < len(value) <= limits.batch_messages_max
            and all(_is_normalized(m, limits) for m in value)):
        return value
    return publish_messages(value, limits, field)


def _is_normalized(m: Any, limits: Limits) -> bool:
    if type(m) is not dict:
        return False
    body = m.get("body")
    if type(body) is not bytes or len(body) > limits.body_bytes_max:
        return False
    if len(m) == 1:  # wire form of the common message
        return True
    get = m.get
    hdrs, priority = get("headers"), get("priority")
    if hdrs is not None and (type(hdrs) is not dict or (hdrs and not _headers_ok(hdrs, limits))):
        return False
    if priority is not None and (type(priority) is not int
                                 or not 0 <= priority <= limits.priority_max):
        return False
    delay_s: Any = get("delay_s")
    ttl_s: Any = get("ttl_s")
    # bool is not int here (type, not isinstance); NaN fails the range comparison
    if delay_s is not None and (type(delay_s) not in (int, float)
                                or not 0 <= delay_s <= limits.delay_s_max):
        return False
    if ttl_s is not None and (type(ttl_s) not in (int, float)
                              or not 0 <= ttl_s <= limits.ttl_s_max):
        return False
    chars_max = limits.string_field_chars_max
    for v in (get("group"), get("dedup_id"), get("correlation_id"), get("reply_to")):
        if v is not None and (type(v) is not str or not 0 < len(v) <= chars_max):
            return False
    return True


def _headers_ok(hdrs: dict[Any, Any], limits: Limits) -> bool:
    try:
        headers(hdrs, "headers", limits)
    except BrokerError:
        return False
    return True


# ----- consumers

def receive_request(body: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    raw = _object(body, "body")
    vis = raw.get("visibility_timeout_s")
    ack = raw.get("ack", "manual")
    if ack not in ACK_MODES:
        raise bad("ack", "must be manual or auto")
    acks = raw.get("ack_receipts")
    return {
        "max_messages": count(raw.get("max_messages", 1), "max_messages", minimum=1,
                              maximum=limits.receive_max_messages),
        "wait_s": seconds(raw.get("wait_s", 0), "wait_s", maximum=limits.wait_s_max),
        "visibility_timeout_s": None if vis is None else seconds(
            vis, "visibility_timeout_s", maximum=limits.visibility_timeout_s_max),
        "ack": ack,
        # Ack these earlier deliveries first, in the same command ("ack previous, receive next").
        "ack_receipts": None if acks is None else receipts_list(acks, limits, "ack_receipts"),
    }


def receipts_list(value: Any, limits: Limits = DEFAULT_LIMITS,
                  field: str = "receipts") -> list[str]:
    if not isinstance(value, list) or not value:
        raise bad(field, "must be a non-empty list of receipts")
    if len(value) > limits.receipts_max:
        raise bad(field, f"more than {limits.receipts_max} receipts")
    for i, r in enumerate(value):
        if not isinstance(r, str) or not r or len(r) > limits.receipt_chars_max:
            raise bad(f"{field}[{i}]",
                      f"must be a receipt string of 1 to {limits.receipt_chars_max} characters")
    return list(value)


# ----- producers

def producer_ref(value: Any, field: str = "producer") -> dict[str, Any]:
    """{"id": name, "epoch": int >= 0, "seq": int >= 0}."""
    if not isinstance(value, dict):
        raise bad(field, "must be an object with id, epoch and seq")
    return {
        "id": name(value.get("id"), f"{field}.id"),
        "epoch": count(value.get("epoch"), f"{field}.epoch"),
        "seq": count(value.get("seq"), f"{field}.seq"),
    }
