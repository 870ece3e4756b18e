"""Suite-wide: how tests are spread over pytest-xdist workers (`make test` runs two).

Each test file stays on one worker (its module-scoped clusters start once), and every chaos
test shares one group: they use the same network-namespace addresses and must run one at a
time."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        group = "chaos" if "/tests/chaos/" in path else path
        item.add_marker(pytest.mark.xdist_group(group))
