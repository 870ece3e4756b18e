"""Bearer-token authentication and roles (docs/security.md).

A tokens file (TOML) names who may do what:

```toml
[[tokens]]
token = "s3cr3t-admin-token-..."
role = "admin"                      # everything
[[tokens]]
token = "..."
role = ["producer", "consumer"]     # one role or several
queues = ["orders*", "billing"]     # globs limiting the names it may touch (default: all)
topics = "orders.*"
```
Roles: `admin` (everything), `producer` (publish to queues and topics, register producers),
`consumer` (receive, ack, nack, visibility, streams, read topics, commit offsets). Every
role may read the cluster status and the info of the queues and topics its globs allow; the
lists GET /v1/queues and /v1/topics show only those names (`visible`).
Missing or unknown token -> 401 `unauthorized`; known but not allowed -> 403 `forbidden`.
Tokens are compared in constant time and never logged. /healthz, /readyz, the API
documents and the console's page and files (no data: it asks for a token) stay open;
/metrics is open unless `metrics_auth = true` is set in the tokens file.
"""

from __future__ import annotations

import fnmatch
import hmac
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from storage.errors import BrokerError

ROLES = ("admin", "producer", "consumer")
TOKEN_BYTES_MIN = 16
OPEN_PATHS = ("/healthz", "/readyz")
# The console page and its files hold no data (the page asks for a token and sends it on
# every API call); a browser loading a page sends no bearer header, so they must stay open.
DOC_PATHS = ("/v1/openapi.json", "/docs", "/ui")

# (method, route) -> (action, kind of the name in the path or None)
# actions: "admin", "publish", "consume", "read"
RULES: dict[tuple[str, str], tuple[str, str | None]] = {
    ("GET", "/v1/cluster"): ("read", None),
    ("GET", "/metrics"): ("read", None),
    ("GET", "/v1/queues"): ("read", None),
    ("PUT", "/v1/queues/{queue}"): ("admin", "queue"),
    ("GET", "/v1/queues/{queue}"): ("read", "queue"),
    ("DELETE", "/v1/queues/{queue}"): ("admin", "queue"),
    ("POST", "/v1/queues/{queue}/messages"): ("publish", "queue"),
    ("POST", "/v1/queues/{queue}/receive"): ("consume", "queue"),
    ("POST", "/v1/queues/{queue}/ack"): ("consume", "queue"),
    ("POST", "/v1/queues/{queue}/nack"): ("consume", "queue"),
    ("POST", "/v1/queues/{queue}/visibility"): ("consume", "queue"),
    ("GET", "/v1/queues/{queue}/stream"): ("consume", "queue"),
    ("POST", "/v1/queues/{queue}/request"): ("publish", "queue"),
    ("POST", "/v1/queues/{queue}/purge"): ("admin", "queue"),
    ("POST", "/v1/queues/{queue}/redrive"): ("admin", "queue"),
    ("PUT", "/v1/queues/{queue}/push"): ("admin", "queue"),
    ("DELETE", "/v1/queues/{queue}/push"): ("admin", "queue"),
    ("POST", "/v1/queues/{queue}/bindings"): ("admin", "queue"),
    ("GET", "/v1/queues/{queue}/bindings"): ("read", "queue"),
    ("DELETE", "/v1/queues/{queue}/bindings/{binding}"): ("admin", "queue"),
    ("GET", "/v1/topics"): ("read", None),
    ("PUT", "/v1/topics/{topic}"): ("admin", "topic"),
    ("GET", "/v1/topics/{topic}"): ("read", "topic"),
    ("DELETE", "/v1/topics/{topic}"): ("admin", "topic"),
    ("POST", "/v1/topics/{topic}/messages"): ("publish", "topic"),
    ("GET", "/v1/topics/{topic}/partitions/{p}/messages"): ("consume", "topic"),
    ("POST", "/v1/topics/{topic}/groups/{group}/offsets"): ("consume", "topic"),
    ("GET", "/v1/topics/{topic}/groups/{group}/offsets"): ("read", "topic"),
    ("GET", "/v1/subscribe"): ("consume", None),
    ("POST", "/v1/producers"): ("publish", None),
    ("POST", "/v1/transactions"): ("txn", None),  # checked per part in the handler
}
ACTIONS_OF_ROLE = {
    "admin": {"admin", "publish", "consume", "read", "txn"},
    "producer": {"publish", "read", "txn"},
    "consumer": {"consume", "read", "txn"},
}


class AuthError(Exception):
    pass


@dataclass(frozen=True)
class Token:
    secret: bytes
    roles: frozenset[str]
    queues: tuple[str, ...]
    topics: tuple[str, ...]

    def may(self, action: str, kind: str | None, name: str | None) -> bool:
        if not any(action in ACTIONS_OF_ROLE[r] for r in self.roles):
            return False
        if kind is None or name is None:
            return True
        return self.sees(kind, name)

    def sees(self, kind: str, name: str) -> bool:
        """The name is within this token's globs for its kind ("queue" or "topic")."""
        globs = self.queues if kind == "queue" else self.topics
        return any(fnmatch.fnmatchcase(name, g) for g in globs)


@dataclass(frozen=True)
class AuthConfig:
    tokens: tuple[Token, ...]
    metrics_auth: bool = False

    def find(self, presented: bytes) -> Token | None:
        """Constant time in the token compared; every token is compared."""
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.secret, presented):
                found = token
        return found


def load(path: Path) -> AuthConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AuthError(f"{path}: {exc}") from exc
    entries = raw.get("tokens")
    if not isinstance(entries, list) or not entries:
        raise AuthError(f"{path}: at least one [[tokens]] entry is required")
    tokens = tuple(_token(e, i, path) for i, e in enumerate(entries))
    if len({t.secret for t in tokens}) != len(tokens):
        raise AuthError(f"{path}: two entries share a token")
    return AuthConfig(tokens=tokens, metrics_auth=bool(raw.get("metrics_auth", False)))


def _token(raw: Any, i: int, path: Path) -> Token:
    where = f"{path}: tokens[{i}]"
    if not isinstance(raw, dict):
        raise AuthError(f"{where} must be a table")
    secret = raw.get("token")
    if not isinstance(secret, str) or len(secret.encode()) < TOKEN_BYTES_MIN:
        raise AuthError(f"{where}.token must be a string of at least {TOKEN_BYTES_MIN} bytes")
    roles = raw.get("role")
    roles = [roles] if isinstance(roles, str) else roles
    if not isinstance(roles, list) or not roles or any(r not in ROLES for r in roles):
        raise AuthError(f"{where}.role must be one of {ROLES} or a list of them")
    return Token(secret.encode(), frozenset(roles), _globs(raw.get("queues"), f"{where}.queues"),
                 _globs(raw.get("topics"), f"{where}.topics"))


def _globs(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ("*",)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthError(f"{where} must be a glob or a non-empty list of globs")


AUTH = web.AppKey("raftmq_auth", AuthConfig)
TOKEN = "raftmq_token"  # request key: the authenticated Token


def presented_token(request: web.Request) -> bytes | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    # surrogateescape: a header with non-UTF-8 bytes is just a token that matches nothing (401)
    return value.strip().encode("utf-8", "surrogateescape")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[AUTH]
    path = request.path
    if path in OPEN_PATHS or path in DOC_PATHS or path.startswith("/ui/"):
        return await handler(request)
    if path == "/metrics" and not config.metrics_auth:
        return await handler(request)
    presented = presented_token(request)
    token = config.find(presented) if presented else None
    if token is None:
        raise BrokerError("unauthorized", "a valid 'Authorization: Bearer <token>' is required")
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    rule = RULES.get((request.method, route))
    if rule is None:
        if not token.may("admin", None, None):
            raise BrokerError("forbidden", f"{request.method} {path} needs the admin role")
    else:
        action, kind = rule
        name = request.match_info.get(kind) if kind else None
        if not token.may(action, kind, name):
            target = f" on {kind} {name!r}" if name else ""
            raise BrokerError("forbidden", f"this token may not {action}{target}")
    request[TOKEN] = token
    return await handler(request)


def check_txn(request: web.Request, acks: list[str], publishes: list[tuple[str, str]]) -> None:
    """A transaction needs consume rights on every acked queue and publish rights on every
    target (a token with both the producer and the consumer role can do both)."""
    token: Token | None = request.get(TOKEN)
    if token is None:
        return  # authentication is off
    for queue in acks:
        if not token.may("consume", "queue", queue):
            raise BrokerError("forbidden", f"this token may not consume on queue {queue!r}")
    for kind, name in publishes:
        if not token.may("publish", kind, name):
            raise BrokerError("forbidden", f"this token may not publish on {kind} {name!r}")


def visible(request: web.Request, kind: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries of a list (GET /v1/queues, /v1/topics) whose names the request's token
    may see: those within its globs for `kind`. Without authentication: every entry."""
    token: Token | None = request.get(TOKEN)
    if token is None:
        return items
    return [item for item in items if token.sees(kind, item["name"])]
