"""node/gc_pauses.py: slow full collections freeze their survivors; garbage is still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from node import gc_pauses


class Obj:
    def __init__(self) -> None:
        self.other: Obj | None = None


@pytest.fixture
def policy() -> Iterator[None]:
    gc_pauses.uninstall()
    yield
    gc_pauses.uninstall()


def test_a_slow_full_collection_freezes_what_survived_it(policy: None) -> None:
    stats = gc_pauses.install(freeze_after_s=0.0)  # every full collection counts as slow
    seen: list[float] = []
    stats.observers[:] = [seen.append]
    before = stats.freezes
    keep = [Obj() for _ in range(1000)]
    gc.collect()
    assert stats.freezes == before + 1 and stats.full_collections >= 1 and seen
    assert gc.get_freeze_count() >= len(keep)
    gc_pauses.uninstall()
    assert gc.get_freeze_count() == 0


def test_a_fast_full_collection_freezes_nothing(policy: None) -> None:
    stats = gc_pauses.install(freeze_after_s=60.0)
    before = stats.freezes
    gc.collect()
    assert stats.freezes == before and gc.get_freeze_count() == 0


def test_garbage_cycles_are_collected_before_the_freeze(policy: None) -> None:
    gc_pauses.install(freeze_after_s=0.0)
    a, b = Obj(), Obj()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None  # the collection freed the cycle; only survivors were frozen
    kept = Obj()
    gc.collect()
    frozen = weakref.ref(kept)
    assert frozen() is not None
    del kept  # a frozen object without cycles is still freed by reference counting
    assert frozen() is None
