"""The client knows every error code the server can send (storage/errors.py is the registry)."""

from __future__ import annotations

from raftmq.errors import RaftmqError, error_class
from storage.errors import KINDS


def test_every_server_error_code_has_its_own_client_exception() -> None:
    missing = [code for code in KINDS if error_class(code) is RaftmqError]
    assert missing == [], f"raftmq/errors.py has no exception for {missing}"
    for code in KINDS:
        assert error_class(code).code == code
