"""Fixtures for the fuzz tier: bounded example counts, a real cluster shared by a module.

`FUZZ_EXAMPLES` raises the number of hypothesis examples for long runs (`make fuzz`); the suite
default keeps the whole tier near a minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster, running_cluster

FUZZ_EXAMPLES_DEFAULT = 100


def fuzz_examples(default: int = FUZZ_EXAMPLES_DEFAULT) -> int:
    """Examples per property: `FUZZ_EXAMPLES` when set (long runs), else `default`."""
    raw = os.environ.get("FUZZ_EXAMPLES", "")
    return int(raw) if raw.strip() else default


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: property tests and hostile-input fuzzing")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fuzz" in str(item.fspath):
            item.add_marker(pytest.mark.fuzz)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 3-node cluster for a whole module of tests that do not kill nodes."""
    with running_cluster(tmp_path_factory.mktemp("fuzz"), size=3) as c:
        yield c
