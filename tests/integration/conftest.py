"""Fixtures for integration tests: real node processes on loopback, always killed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, running_cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh 3-node cluster, ready (every node knows the leader and has applied the log)."""
    with running_cluster(tmp_path) as c:
        yield c


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 3-node cluster for a whole module of tests that do not kill nodes (faster)."""
    with running_cluster(tmp_path_factory.mktemp("shared")) as c:
        yield c
