"""`raftmq backup` never leaves a bad file: a corrupt or cut answer is refused, nothing written."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import cluster_cli
from storage.state import BrokerState

GOOD = BrokerState().encode_snapshot()


class Handler(http.server.BaseHTTPRequestHandler):
    body = GOOD
    length = len(GOOD)

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(self.length))
        self.send_header("X-Raftmq-Index", "7")
        self.send_header("X-Raftmq-Term", "2")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        Handler.body, Handler.length = GOOD, len(GOOD)


def run(srv: http.server.HTTPServer, out: Path) -> int:
    return cluster_cli.backup_main(["--url", f"http://127.0.0.1:{srv.server_port}", "-o",
                                    str(out), "--timeout", "10"])


def test_a_good_answer_is_written(server: http.server.HTTPServer, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.snapshot"
    assert run(server, out) == 0
    assert out.read_bytes() == GOOD
    assert "applied index 7 (term 2)" in capsys.readouterr().out


@pytest.mark.parametrize("body,length,why", [
    (GOOD[:-3] + b"xyz", len(GOOD), "checksum"),  # corrupt
    (GOOD[: len(GOOD) // 2], len(GOOD), "short download"),  # cut: shorter than Content-Length
    (b"<html>proxy error</html>", 24, "bad magic"),  # not a snapshot at all
])
def test_a_bad_answer_is_refused_and_leaves_no_file(
        server: http.server.HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        body: bytes, length: int, why: str) -> None:
    Handler.body, Handler.length = body, length
    out = tmp_path / "b.snapshot"
    out.write_bytes(b"an older good backup")
    assert run(server, out) == 1
    assert why in capsys.readouterr().err
    assert out.read_bytes() == b"an older good backup"  # not replaced
    assert list(tmp_path.iterdir()) == [out]  # no temp file left


def test_restore_refuses_another_format_version_and_seeds_nothing(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    future = tmp_path / "future.snapshot"
    future.write_bytes(GOOD[:4] + (2).to_bytes(2, "big") + GOOD[6:])  # RMQS, version 2
    config = tmp_path / "c.toml"
    config.write_text('cluster = "c"\n[[nodes]]\nid = "n1"\nraft = "127.0.0.1:1"\n'
                      'http = "127.0.0.1:2"\n')
    argv = ["--snapshot", str(future), "--config", str(config), "--all", "--data-dir",
            str(tmp_path / "data")]
    assert cluster_cli.restore_main(argv) == 1
    assert "format version 2, expected 1" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    good = tmp_path / "good.snapshot"
    good.write_bytes(GOOD)
    assert cluster_cli.restore_main(["--snapshot", str(good), *argv[2:]]) == 0
    assert (tmp_path / "data" / "n1" / "raft.snapshot").exists()
