"""Any-node HTTP transport: one request, retried across the cluster's URLs until a deadline.

Each attempt ends in one of four ways:
* answered 2xx: done;
* not sent (connection refused, connect timeout): safe to retry anything on the next URL;
* answered 503 (`no_leader`, `unavailable`: the node proposed nothing): retried on the next URL;
* outcome unknown (504 `commit_timeout`, a dropped connection or a read timeout after sending):
  retried only when the caller says a retry is safe (`retry_unknown`: reads, idempotent writes,
  publishes that carry a producer seq). Every other answer is raised as a typed error.
Retries back off exponentially with jitter, move to the next URL, wait for that node's own
`Retry-After` if it sent one, and stop at the call's deadline or after `retries` retries
(whichever first).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack

from raftmq.errors import ClientTimeout, ConnectionFailed, RaftmqError, from_response

JSON = "application/json"
MSGPACK = "application/msgpack"
DEFAULT_URLS = ("http://127.0.0.1:8701", "http://127.0.0.1:8702", "http://127.0.0.1:8703")
RETRIABLE_STATUSES = (503,)


@dataclass(frozen=True)
class RetryPolicy:
    """Limits of one call. `timeout_s` bounds the whole call, retries and back-off included."""

    timeout_s: float = 30.0
    retries: int = 10
    attempt_timeout_s: float = 5.0
    connect_timeout_s: float = 1.0
    backoff_initial_s: float = 0.02
    backoff_max_s: float = 1.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.attempt_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")

    def backoff_s(self, retry: int) -> float:
        """Delay before retry number `retry` (0-based): exponential, capped, half jitter."""
        assert retry >= 0, retry
        base = min(self.backoff_max_s, self.backoff_initial_s * (2 ** min(retry, 30)))
        return float(base * random.uniform(0.5, 1.0))


def parse_urls(urls: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """`"http://a:1,http://b:2"`, a list, or None (the local cluster's defaults)."""
    if urls is None:
        items = list(DEFAULT_URLS)
    elif isinstance(urls, str):
        items = [u for u in urls.split(",")]
    else:
        items = list(urls)
    out = [u.strip().rstrip("/") for u in items if u.strip()]
    if not out:
        raise ValueError("at least one node URL is needed")
    for url in out:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"node URL must start with http:// or https://: {url!r}")
    return out


class _NotSent(Exception):
    pass


class _Unknown(Exception):
    pass


@dataclass
class _Attempts:
    """What the retry loop has learnt so far in one call."""

    deadline: float
    retry: int = 0
    unknown: bool = False
    last: RaftmqError | None = None
    answer: Any = None


class Transport:
    """An aiohttp session plus the retry loop. Lives on one event loop."""

    def __init__(self, urls: list[str], policy: RetryPolicy, token: str | None,
                 codec: str) -> None:
        if codec not in ("json", "msgpack"):
            raise ValueError("codec must be 'json' or 'msgpack'")
        self.urls = urls
        self.policy = policy
        self.codec = codec
        # identity: a node gzips answers of 64 KiB or more for clients that ask (aiohttp asks
        # by default), which costs the node more CPU than it saves on a LAN (receive b1000:
        # 34 vs 25 us per message, docs/benchmarks.md session 4)
        self._headers = {"Accept": MSGPACK if codec == "msgpack" else JSON,
                         "Accept-Encoding": "identity"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None
        self._preferred = 0
        self._not_before: dict[int, float] = {}   # url index -> monotonic time (Retry-After)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    async def call(self, method: str, path: str, body: Any = None, *,
                   params: dict[str, str] | None = None, retry_unknown: bool = True,
                   retries: int | None = None, extra_wait_s: float = 0.0) -> Any:
        """The decoded 2xx answer (None when empty) or a typed RaftmqError.

        `retries=None` means the policy's; publishes with a producer seq pass a huge number so
        only the deadline stops them. `extra_wait_s` lengthens each attempt (long polls).
        """
        answer, _ = await self.call_info(method, path, body, params=params,
                                         retry_unknown=retry_unknown, retries=retries,
                                         extra_wait_s=extra_wait_s)
        return answer

    async def call_info(self, method: str, path: str, body: Any = None, *,
                        params: dict[str, str] | None = None, retry_unknown: bool = True,
                        retries: int | None = None,
                        extra_wait_s: float = 0.0) -> tuple[Any, bool]:
        """As `call`, plus whether an earlier attempt had an unknown outcome."""
        assert path.startswith("/"), path
        max_retries = self.policy.retries if retries is None else retries
        state = _Attempts(deadline=time.monotonic() + self.policy.timeout_s + extra_wait_s)
        payload, ctype = self._encode(body)
        while True:
            index = (self._preferred + state.retry) % len(self.urls)
            retry_after = await self._attempt(state, index, method, path, payload, ctype, params,
                                              retry_unknown, extra_wait_s)
            if retry_after is None:
                return state.answer, state.unknown
            if retry_after > 0:
                self._not_before[index] = time.monotonic() + retry_after
            await self._before_retry(state, max_retries)

    async def _attempt(self, state: _Attempts, index: int, method: str, path: str,
                       payload: bytes | None, ctype: str | None, params: dict[str, str] | None,
                       retry_unknown: bool, extra_wait_s: float) -> float | None:
        """One try. Returns None with the answer in `state.last`, or the Retry-After (0 if none)
        when the call should be retried; raises when it must not be."""
        url = self.urls[index]
        try:
            status, data, headers = await self._send(state, url, method, path, payload, ctype,
                                                     params, extra_wait_s)
        except _NotSent as exc:
            state.last = ConnectionFailed(f"{url}: {exc}", retryable=True)
            return 0.0
        except _Unknown as exc:
            state.unknown = True
            state.last = ClientTimeout(f"{url}: no answer ({exc})", retryable=True,
                                       outcome_unknown=True)
            if not retry_unknown:
                raise state.last from None
            return 0.0
        if status < 300:
            self._preferred = index
            state.answer = data
            return None
        err = from_response(status, data, headers.get("X-Raftmq-Node"))
        if err.outcome_unknown:
            state.unknown = True
        err.outcome_unknown = state.unknown
        state.last = err
        if status in RETRIABLE_STATUSES or (status == 504 and err.code == "commit_timeout"
                                            and retry_unknown):
            return _retry_after_s(headers.get("Retry-After"))
        raise err

    async def _before_retry(self, state: _Attempts, max_retries: int) -> None:
        """Back off before the next node. A node's Retry-After holds for that node only, so a
        503 from one node moves on to the next at once (after the back-off)."""
        now = time.monotonic()
        following = (self._preferred + state.retry + 1) % len(self.urls)
        delay_s = max(self.policy.backoff_s(state.retry), self._not_before.get(following, 0) - now)
        remaining_s = state.deadline - now
        last = state.last
        assert isinstance(last, RaftmqError), last
        if state.retry >= max_retries or delay_s >= remaining_s:
            last.outcome_unknown = state.unknown
            raise last
        state.retry += 1
        await asyncio.sleep(delay_s)

    async def _send(self, state: _Attempts, url: str, method: str, path: str,
                    payload: bytes | None, ctype: str | None, params: dict[str, str] | None,
                    extra_wait_s: float) -> tuple[int, Any, Any]:
        remaining_s = state.deadline - time.monotonic()
        if remaining_s <= 0:
            if state.last is not None:  # the back-off overshot: report what really failed
                state.last.outcome_unknown = state.unknown
                raise state.last
            raise _NotSent("deadline passed")
        total_s = min(remaining_s, self.policy.attempt_timeout_s + extra_wait_s)
        timeout = aiohttp.ClientTimeout(total=total_s,
                                        sock_connect=min(total_s, self.policy.connect_timeout_s))
        headers = {"Content-Type": ctype} if ctype else None
        try:
            async with self._get_session().request(method, url + path, data=payload,
                                                   params=params, headers=headers,
                                                   timeout=timeout) as resp:
                raw = await resp.read()
                return resp.status, _decode(raw, resp.content_type), resp.headers
        except aiohttp.ClientConnectorError as exc:
            raise _NotSent(str(exc) or type(exc).__name__) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise _NotSent("connect timeout") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Unknown(str(exc) or type(exc).__name__) from exc

    async def open_stream(self, path: str, params: dict[str, str]) -> EventStream:
        """GET a server-sent-event stream from any node, retrying like a read until the call's
        deadline; raises the typed error for answers that are not retryable."""
        state = _Attempts(deadline=time.monotonic() + self.policy.timeout_s)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.policy.connect_timeout_s,
                                        sock_read=SSE_IDLE_S)
        while True:
            index = (self._preferred + state.retry) % len(self.urls)
            url = self.urls[index]
            try:
                resp = await self._get_session().get(url + path, params=params, timeout=timeout,
                                                     headers={"Accept": "text/event-stream"})
            except (aiohttp.ClientError, TimeoutError) as exc:
                state.last = ConnectionFailed(f"{url}: {exc or type(exc).__name__}",
                                              retryable=True)
            else:
                if resp.status == 200:
                    self._preferred = index
                    return EventStream(resp)
                raw = await resp.read()
                resp.release()
                state.last = from_response(resp.status, _decode(raw, resp.content_type),
                                           resp.headers.get("X-Raftmq-Node"))
                if resp.status not in RETRIABLE_STATUSES:
                    raise state.last
            await self._before_retry(state, self.policy.retries)

    def _encode(self, body: Any) -> tuple[bytes | None, str | None]:
        if body is None:
            return None, None
        if self.codec == "msgpack":
            return msgpack.packb(body, use_bin_type=True), MSGPACK
        return json.dumps(body, separators=(",", ":")).encode("utf-8"), JSON


SSE_IDLE_S = 45.0   # nodes send a heartbeat every 15 s: this long without a byte is a dead stream
SSE_LINE_BYTES_MAX = 16 * 1024 * 1024


class EventStream:
    """The events of one text/event-stream response: `async for name, data in stream.events()`.
    Ends (StopAsyncIteration) when the node closes it; raises StreamBroken when it breaks."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        name, data, buf = "message", [], b""
        try:
            async for chunk in self._resp.content.iter_any():
                buf += chunk
                if len(buf) > SSE_LINE_BYTES_MAX:
                    raise StreamBroken("an event over the size limit")
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    text = line.decode("utf-8").rstrip("\r")
                    if text.startswith(":"):
                        continue
                    if text:
                        field, _, value = text.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "event":
                            name = value
                        elif field == "data":
                            data.append(value)
                        continue
                    if data:
                        yield name, json.loads("\n".join(data))
                    name, data = "message", []
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self._resp.close()


class StreamBroken(Exception):
    """An event stream ended abnormally (connection lost, idle too long, garbage)."""


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if content_type in (MSGPACK, "application/x-msgpack", "application/vnd.msgpack"):
        return msgpack.unpackb(raw, raw=False)
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def _retry_after_s(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: not worth parsing, back off normally
        return 0.0
