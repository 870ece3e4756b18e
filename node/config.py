"""Cluster files: TOML describing the cluster name, its nodes and the optional shared settings.

```toml
cluster = "local-3"
raft_secret = "..."          # optional: encrypts + authenticates Raft traffic; or raft_secret_file
[[nodes]]
id = "n1"
raft = "127.0.0.1:8801"      # the node binds Raft exactly here
http = "127.0.0.1:8701"      # and serves HTTP here
```
A node is identified by its `id`; its addresses may change without changing its identity.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAFT_SECRET_BYTES_MIN = 16
# [limits] that the node's HTTP server applies itself; storage.limits.Limits holds the broker's
# (those reach the state machine, these never do). Same rules: positive integers, checked at
# start by node/server.py limits_from.
CONNECTIONS_MAX_DEFAULT = 1024  # open HTTP connections per node; past it: closed at accept
# seconds an idle keep-alive connection is kept; then closed, so idle sockets cannot hold
# connections_max for long (aiohttp's own default is about an hour)
IDLE_CONNECTION_TIMEOUT_S_DEFAULT = 75
# Answers of at least this many bytes are gzip'd for clients that accept gzip; 0 (default):
# never. Most HTTP clients ask for gzip unprompted, and on a LAN deflating a receive answer
# costs the broker more than it saves (receive b1000 with gzip: 34 vs 25 us/msg of node CPU,
# docs/benchmarks.md session 4). Set it (e.g. 65536) for clients on slow links.
GZIP_ANSWER_BYTES_MIN_DEFAULT = 0
NODE_LIMIT_DEFAULTS: dict[str, int] = {
    "connections_max": CONNECTIONS_MAX_DEFAULT,
    "idle_connection_timeout_s": IDLE_CONNECTION_TIMEOUT_S_DEFAULT,
    "gzip_answer_bytes_min": GZIP_ANSWER_BYTES_MIN_DEFAULT,
}
NODE_LIMITS_ZERO_OFF = frozenset({"gzip_answer_bytes_min"})  # 0 switches the feature off


def limit_floor(name: str) -> int:
    """The least value a [limits] key takes: 1, or 0 where 0 switches a feature off."""
    return 0 if name in NODE_LIMITS_ZERO_OFF else 1

NODE_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
ADDR_RE = re.compile(r"^(?P<host>[A-Za-z0-9_.:\[\]-]+):(?P<port>\d{1,5})$")


class ConfigError(Exception):
    """A cluster file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class NodeSpec:
    id: str
    raft: str
    http: str

    @property
    def http_url(self) -> str:
        return f"http://{self.http}"


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    nodes: tuple[NodeSpec, ...]
    raft_secret: bytes | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    raft: dict[str, Any] = field(default_factory=dict)
    auth_file: Path | None = None  # tokens file (docs/security.md); None: no authentication
    tls_cert_file: Path | None = None  # [tls] cert_file: serve HTTPS with this certificate
    tls_key_file: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"

    def node_limit(self, name: str) -> int:
        """A node-level [limits] value (NODE_LIMIT_DEFAULTS), validated by limits_from."""
        value = self.limits.get(name, NODE_LIMIT_DEFAULTS[name])
        assert isinstance(value, int) and value >= limit_floor(name), \
            f"[limits] {name} was not validated"
        return value

    def node(self, node_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        known = ", ".join(n.id for n in self.nodes)
        raise ConfigError(f"node id {node_id!r} is not in the cluster file (known: {known})")


def split_addr(addr: str) -> tuple[str, int]:
    match = ADDR_RE.match(addr)
    if not match:
        raise ConfigError(f"address {addr!r} is not host:port")
    port = int(match.group("port"))
    if not 0 < port < 65536:
        raise ConfigError(f"address {addr!r}: port out of range")
    return match.group("host"), port


def load(path: Path) -> ClusterConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse(raw, base_dir=path.parent, source=str(path))


def parse(raw: dict[str, Any], *, base_dir: Path, source: str = "cluster file") -> ClusterConfig:
    name = raw.get("cluster")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: 'cluster' must be a non-empty string")
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise ConfigError(f"{source}: at least one [[nodes]] entry is required")
    nodes = tuple(_parse_node(n, i, source) for i, n in enumerate(nodes_raw))
    for attr in ("id", "raft", "http"):
        values = [getattr(n, attr) for n in nodes]
        if len(set(values)) != len(values):
            raise ConfigError(f"{source}: node {attr} values must be unique")
    return ClusterConfig(
        name=name,
        nodes=nodes,
        raft_secret=_secret(raw, base_dir, source),
        limits=_table(raw, "limits", source),
        raft=_table(raw, "raft", source),
        auth_file=_path(raw, "auth_file", base_dir, source),
        **_tls(raw, base_dir, source),
    )


def _tls(raw: dict[str, Any], base_dir: Path, source: str) -> dict[str, Path | None]:
    table = _table(raw, "tls", source)
    cert = _path(table, "cert_file", base_dir, f"{source} [tls]")
    key = _path(table, "key_file", base_dir, f"{source} [tls]")
    if (cert is None) != (key is None):
        raise ConfigError(f"{source}: [tls] needs both cert_file and key_file")
    return {"tls_cert_file": cert, "tls_key_file": key}


def _path(raw: dict[str, Any], key: str, base_dir: Path, source: str) -> Path | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key} must be a non-empty string")
    return (base_dir / value).resolve()


def _parse_node(raw: Any, index: int, source: str) -> NodeSpec:
    where = f"{source}: nodes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    values = {}
    for key in ("id", "raft", "http"):
        value = raw.get(key)
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a string")
        values[key] = value
    if not NODE_ID_RE.match(values["id"]):
        raise ConfigError(f"{where}.id {values['id']!r} must match {NODE_ID_RE.pattern}")
    split_addr(values["raft"])
    split_addr(values["http"])
    return NodeSpec(**values)


def _secret(raw: dict[str, Any], base_dir: Path, source: str) -> bytes | None:
    secret = _secret_value(raw, base_dir, source)
    if secret is not None and len(secret) < RAFT_SECRET_BYTES_MIN:
        raise ConfigError(f"{source}: the Raft secret must be at least {RAFT_SECRET_BYTES_MIN} "
                          f"bytes (got {len(secret)})")
    return secret


def _secret_value(raw: dict[str, Any], base_dir: Path, source: str) -> bytes | None:
    inline = raw.get("raft_secret")
    file_name = raw.get("raft_secret_file")
    if inline is not None and file_name is not None:
        raise ConfigError(f"{source}: give raft_secret or raft_secret_file, not both")
    if isinstance(inline, str) and inline:
        return inline.encode()
    if isinstance(file_name, str) and file_name:
        path = (base_dir / file_name).resolve()
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{source}: raft_secret_file: {exc}") from exc
        if not secret:
            raise ConfigError(f"{source}: raft_secret_file {path} is empty")
        return secret
    if inline is not None or file_name is not None:
        raise ConfigError(f"{source}: raft_secret / raft_secret_file must be a non-empty string")
    return None


def _table(raw: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{key}] must be a table")
    return dict(value)


def render(cluster: str, nodes: list[NodeSpec], *, raft_secret_file: str | None = None,
           auth_file: str | None = None) -> str:
    """The TOML text of a cluster file (used by `raftmq cluster up`)."""
    lines = [f'cluster = "{cluster}"']
    if raft_secret_file:
        lines.append(f'raft_secret_file = "{raft_secret_file}"')
    if auth_file:
        lines.append(f"auth_file = {json.dumps(auth_file)}")
    for spec in nodes:
        lines += ["", "[[nodes]]", f'id = "{spec.id}"', f'raft = "{spec.raft}"',
                  f'http = "{spec.http}"']
    return "\n".join(lines) + "\n"
