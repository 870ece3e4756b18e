"""Request and response bodies: JSON by default, MessagePack on request (API.md, General).

Message bodies are bytes inside the broker. In JSON a body is text; a body that is not valid
UTF-8 is answered base64-encoded with `"body_encoding": "base64"`, and a client may send
`"body_encoding": "base64"` to publish arbitrary bytes as JSON. MessagePack carries raw bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import msgpack
from aiohttp import web

from storage.answers import LazyList, encode_default
from storage.errors import BrokerError

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack", "application/vnd.msgpack")
JSON_DEPTH_MAX = 32
# Parsed as JSON too: curl's `-d` sends form-urlencoded unless told otherwise, and a newcomer's
# first request should not fail on a header.
JSON_LIKE = (JSON, "application/x-www-form-urlencoded", "application/octet-stream", "text/plain",
             "")


READ_TIMEOUT_KEY = "raftmq_read_timeout_s"  # set per request by node.app.limits_middleware


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request body as a dict ({} when empty). Malformed input is a 400 naming the problem;
    a body that does not arrive within request_read_timeout_s (a slow or stalled client) is a
    408."""
    timeout_s: float = request.get(READ_TIMEOUT_KEY, 30.0)
    try:
        raw = await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise BrokerError("request_timeout", f"the request body did not arrive within "
                          f"request_read_timeout_s ({timeout_s} s)") from None
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding gzip with a non-gzip body
        raise BrokerError("invalid_request", f"body: cannot be read ({exc.__cause__ or exc}); "
                          "check Content-Encoding") from None
    if not raw.strip():
        return {}
    ctype = request.content_type
    if ctype in MSGPACK_TYPES:
        try:
            value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise BrokerError("invalid_request", f"body: malformed msgpack ({exc})") from exc
    elif ctype in JSON_LIKE:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise BrokerError("invalid_request", f"body: malformed JSON ({exc})") from exc
    else:
        raise BrokerError("unsupported_media_type",
                          f"Content-Type {ctype!r} is not supported; use {JSON} or {MSGPACK}")
    if not isinstance(value, dict):
        raise BrokerError("invalid_request", "body: must be an object")
    # JSON (escapes such as \\ud800, or a UTF-16 body) can make strings that are not Unicode text
    # (lone surrogates); they cannot be encoded as UTF-8 further on, so refuse them here.
    _check_depth(value, 0, check_text=ctype not in MSGPACK_TYPES)
    return value


def _check_depth(value: Any, depth: int, check_text: bool = False) -> None:
    if depth > JSON_DEPTH_MAX:
        raise BrokerError("invalid_request", f"body: nested deeper than {JSON_DEPTH_MAX} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if check_text:
                _check_text(key)
            if item.__class__ in _SCALARS:  # no call per scalar (a body is most of a message)
                if check_text and item.__class__ is str:
                    _check_text(item)
                if depth >= JSON_DEPTH_MAX:
                    _check_depth(item, depth + 1)
            else:
                _check_depth(item, depth + 1, check_text)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1, check_text)
    elif check_text:
        _check_text(value)


_SCALARS = frozenset((str, bytes, int, float, bool, type(None)))


def _check_text(value: Any) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BrokerError("invalid_request", f"body: {value[:40]!r} is not valid Unicode "
                              "text (a lone surrogate escape such as \\ud800)") from None


def decode_bodies(messages: Any, field: str = "messages") -> Any:
    """Turn `{"body": "<base64>", "body_encoding": "base64"}` into raw bytes, in place."""
    if not isinstance(messages, list):
        return messages
    for i, msg in enumerate(messages):
        if isinstance(msg, dict) and msg.get("body_encoding") is not None:
            encoding = msg.pop("body_encoding")
            if encoding != "base64":
                raise BrokerError("invalid_request",
                                  f"{field}[{i}].body_encoding: only 'base64' is supported")
            if not isinstance(msg.get("body"), str):
                raise BrokerError("invalid_request", f"{field}[{i}].body: base64 text expected")
            try:
                msg["body"] = base64.b64decode(msg["body"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BrokerError("invalid_request", f"{field}[{i}].body: bad base64") from exc
    return messages


def wants_msgpack(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    if any(t in accept for t in MSGPACK_TYPES):
        return True
    return request.content_type in MSGPACK_TYPES and JSON not in accept


def respond(request: web.Request, data: Any, status: int = 200,
            headers: dict[str, str] | None = None) -> web.Response:
    if wants_msgpack(request):
        return web.Response(body=msgpack.packb(data, use_bin_type=True, default=encode_default),
                            status=status, content_type=MSGPACK, headers=headers)
    return web.Response(text=dump_json(data), status=status, content_type=JSON,
                        headers=headers)


def dump_json(data: Any) -> str:
    """JSON text of a result. Fast path: bytes that are UTF-8 become text in json.dumps itself;
    only when some body is not UTF-8 does the slower walk (base64 + marker) run."""
    try:
        return json.dumps(data, separators=(",", ":"), default=_json_default)
    except (UnicodeDecodeError, TypeError):
        return json.dumps(jsonable(data), separators=(",", ":"))


def sse_event(event: str, data: Any) -> bytes:
    """One server-sent event carrying a JSON document."""
    return f"event: {event}\ndata: {dump_json(data)}\n\n".encode()


def _json_default(value: Any) -> str | list[dict[str, Any]]:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return encode_default(value)


def jsonable(value: Any) -> Any:
    """Make a result JSON-safe: bytes become text (UTF-8) or base64 with a marker."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "body" and isinstance(item, bytes):
                try:
                    out[key] = item.decode("utf-8")
                except UnicodeDecodeError:
                    out[key] = base64.b64encode(item).decode("ascii")
                    out["body_encoding"] = "base64"
            else:
                out[key] = jsonable(item)
        return out
    if isinstance(value, list | tuple | LazyList):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    return value


def query_int(query: Any, field: str, default: int | None, low: int, high: int) -> int:
    """An integer query parameter in [low, high]; a missing one takes `default`."""
    return int(_query_number(query, field, default, low, high, int, "an integer"))


def query_float(query: Any, field: str, default: float, low: float, high: float) -> float:
    return float(_query_number(query, field, default, low, high, float, "a number"))


def _query_number(query: Any, field: str, default: float | None, low: float, high: float,
                  parse: Callable[[str], float], kind: str) -> float:
    raw = query.get(field)
    if raw is None:
        if default is None:
            raise BrokerError("invalid_request", f"{field}: required")
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise BrokerError("invalid_request", f"{field}: must be {kind}") from None
    if not low <= value <= high:
        raise BrokerError("invalid_request", f"{field}: must be between {low} and {high}")
    return value
