"""A small HTTP client for the harness that classifies every answer as ok / fail / info.

* ``ok``: 2xx.
* ``fail`` (definitely no effect): the connection could not be made (nothing was sent), any
  4xx, 429, and 503 ``no_leader`` / ``unavailable`` (API.md: "not applied").
* ``info`` (unknown): timeouts after sending, resets, 504 ``commit_timeout``, other 5xx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from chaos.history import FAIL, INFO, OK

OP_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 1.0
NOT_APPLIED_CODES = ("no_leader", "unavailable")


@dataclass
class Outcome:
    type: str
    status: int | None
    body: Any
    code: str | None = None
    node: str | None = None

    def short(self) -> dict[str, Any]:
        """What the history keeps of a failed answer."""
        return {"status": self.status, "code": self.code,
                "error": self.body if self.status is None else None}


def classify(status: int, body: Any) -> tuple[str, str | None]:
    code = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
    if 200 <= status < 300:
        return OK, None
    if 400 <= status < 500:
        return FAIL, code
    if status == 503 and code in NOT_APPLIED_CODES:
        return FAIL, code
    return INFO, code


class Http:
    """One aiohttp session; call `close` when done."""

    def __init__(self, op_timeout_s: float = OP_TIMEOUT_S) -> None:
        self.op_timeout_s = op_timeout_s
        timeout = aiohttp.ClientTimeout(total=op_timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        self.session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=False))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, url: str, body: Any = None,
                   timeout_s: float | None = None) -> Outcome:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        if timeout_s is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout_s,
                                                      sock_connect=CONNECT_TIMEOUT_S)
        try:
            async with self.session.request(method, url, **kwargs) as resp:
                raw = await resp.read()
                node = resp.headers.get("X-Raftmq-Node")
                parsed = _parse(raw)
                kind, code = classify(resp.status, parsed)
                return Outcome(kind, resp.status, parsed, code, node)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return Outcome(FAIL, None, f"connect: {type(exc).__name__}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Outcome(INFO, None, f"{type(exc).__name__}: {exc}"[:200])


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:200].decode(errors="replace")
