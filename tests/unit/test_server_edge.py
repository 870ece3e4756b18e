"""The node's HTTP edge in-process: connections_max under a burst of connects, the node-level
[limits] checks at start, and the JSON shape of what aiohttp's own parser refuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from node.config import CONNECTIONS_MAX_DEFAULT, ClusterConfig, NodeSpec
from node.server import NodeRunner, NodeServer, limits_from

NODES = (NodeSpec("n1", "127.0.0.1:1", "127.0.0.1:2"),)
TIMEOUT_S = 10.0


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@asynccontextmanager
async def edge(connections_max: int, idle_timeout_s: float = 75.0
               ) -> AsyncIterator[tuple[int, NodeServer]]:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = NodeRunner(app, access_log=None, connections_max=connections_max, node_id="n1",
                        keepalive_timeout=idle_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = runner.server
    assert isinstance(server, NodeServer)
    try:
        yield site._server.sockets[0].getsockname()[1], server  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def get(port: int, keep: list[Any]) -> bytes:
    """One keep-alive GET on a new connection (kept open in `keep`); b"" if it was closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    keep.append(writer)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""


def test_a_burst_of_connects_gets_exactly_connections_max() -> None:
    async def scenario() -> None:
        async with edge(3) as (port, server):
            keep: list[Any] = []
            answers = await asyncio.gather(*(get(port, keep) for _ in range(12)))
            served = [a for a in answers if a.startswith(b"HTTP/1.1 200")]
            assert len(served) == 3 and answers.count(b"") == 9, answers
            assert server.connections_refused == 9
            for writer in keep:
                writer.close()
            deadline = asyncio.get_running_loop().time() + TIMEOUT_S
            while not (await get(port, [])).startswith(b"HTTP/1.1 200"):  # freed: served again
                assert asyncio.get_running_loop().time() < deadline, "never served again"
                await asyncio.sleep(0.02)

    asyncio.run(scenario())


def test_a_parser_refusal_is_json_in_the_error_shape() -> None:
    async def scenario() -> None:
        async with edge(CONNECTIONS_MAX_DEFAULT) as (port, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 10_000 + b"\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), TIMEOUT_S)
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b" 400 " in head.split(b"\r\n")[0] and b"application/json" in head
        error = json.loads(body)["error"]
        assert error["code"] == "invalid_request" and error["retryable"] is False

    asyncio.run(scenario())


def test_connections_max_is_a_checked_limit() -> None:
    assert ClusterConfig(name="t", nodes=NODES).node_limit("connections_max") == 1024
    config = ClusterConfig(name="t", nodes=NODES, limits={"connections_max": 50})
    limits_from(config)  # accepted beside the broker's limits
    assert config.node_limit("connections_max") == 50
    for bad in (0, -1, "10", 1.5, True):
        with pytest.raises(SystemExit, match="connections_max"):
            limits_from(ClusterConfig(name="t", nodes=NODES, limits={"connections_max": bad}))
    with pytest.raises(SystemExit, match="known: .*connections_max"):
        limits_from(ClusterConfig(name="t", nodes=NODES, limits={"connection_max": 5}))


def test_an_idle_keep_alive_connection_is_closed_and_frees_its_place() -> None:
    async def scenario() -> None:
        async with edge(1, idle_timeout_s=0.5) as (port, server):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
            assert head.startswith(b"HTTP/1.1 200") and b"keep-alive" not in head.lower()
            # the server, not the client, ends the idle connection (EOF within the deadline)
            rest = await asyncio.wait_for(reader.read(), TIMEOUT_S)
            assert rest == b"ok"
            writer.close()
            deadline = asyncio.get_running_loop().time() + TIMEOUT_S
            while not (await get(port, [])).startswith(b"HTTP/1.1 200"):  # the place is free
                assert asyncio.get_running_loop().time() < deadline, "never served again"
                await asyncio.sleep(0.02)
            assert server.connections_max == 1

    asyncio.run(scenario())


def test_idle_connection_timeout_is_a_checked_limit() -> None:
    assert ClusterConfig(name="t", nodes=NODES).node_limit("idle_connection_timeout_s") == 75
    for bad in (0, -5, "75"):
        with pytest.raises(SystemExit, match="idle_connection_timeout_s"):
            limits_from(ClusterConfig(name="t", nodes=NODES,
                                      limits={"idle_connection_timeout_s": bad}))


def test_gzip_answer_bytes_min_is_a_checked_limit_that_0_switches_off() -> None:
    assert ClusterConfig(name="t", nodes=NODES).node_limit("gzip_answer_bytes_min") == 0
    config = ClusterConfig(name="t", nodes=NODES, limits={"gzip_answer_bytes_min": 65536})
    limits_from(config)
    assert config.node_limit("gzip_answer_bytes_min") == 65536
    for bad in (-1, 1.5, "big"):
        with pytest.raises(SystemExit, match="gzip_answer_bytes_min"):
            limits_from(ClusterConfig(name="t", nodes=NODES,
                                      limits={"gzip_answer_bytes_min": bad}))
