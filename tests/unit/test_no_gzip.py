"""Our client and the bench ask for uncompressed answers (a node gzips large answers for
clients that ask, which aiohttp does by default: node CPU spent for nothing on a LAN)."""

from __future__ import annotations

import asyncio

from raftmq import bench
from raftmq._http import RetryPolicy, Transport


def test_the_client_asks_for_identity() -> None:
    transport = Transport(["http://127.0.0.1:1"], RetryPolicy(), None, "msgpack")
    assert transport._headers["Accept-Encoding"] == "identity"


def test_the_bench_asks_for_identity_unless_told_gzip() -> None:
    async def headers(gzip: bool) -> str:
        async with bench.client_session(gzip) as session:
            return str(session.headers["Accept-Encoding"])

    assert asyncio.run(headers(False)) == "identity"
    assert "gzip" in asyncio.run(headers(True))
