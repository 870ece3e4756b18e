"""Fixtures for the chaos tier: skip (never pass) when namespaces / iptables are unavailable."""

from __future__ import annotations

import pytest

from chaos.netns import unavailable_reason


@pytest.fixture(scope="session")
def netns_available() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"chaos harness unavailable: {reason}")
