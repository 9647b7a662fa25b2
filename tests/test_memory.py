"""The C heap settings of a long loop: set inside the block, glibc's defaults set again after it
(also when the block raises), the heap trimmed; nothing done where there is no glibc."""

from __future__ import annotations

import os

import pytest

from clusterprune import memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int] | tuple[str, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


SET = [
    ("mallopt", memory.M_MMAP_MAX, 0),
    ("mallopt", memory.M_TRIM_THRESHOLD, memory.HELD),
    ("mallopt", memory.M_ARENA_MAX, 1),
]
RESTORED = [
    ("mallopt", memory.M_MMAP_MAX, memory.DEFAULT_MMAP_MAX),
    ("mallopt", memory.M_TRIM_THRESHOLD, memory.DEFAULT_TRIM_THRESHOLD),
    ("mallopt", memory.M_ARENA_MAX, memory.DEFAULT_ARENAS_PER_CORE * (os.cpu_count() or 1)),
    ("malloc_trim", 0),
]


def test_the_heap_is_held_inside_the_block_and_given_back_after(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    with memory.reused_heap():
        assert libc.calls == SET
    assert libc.calls == SET + RESTORED
    libc.calls.clear()
    with pytest.raises(RuntimeError), memory.reused_heap():
        raise RuntimeError("a module failed")
    assert libc.calls == SET + RESTORED


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc", lambda: None)
    ran = []
    with memory.reused_heap():
        ran.append(True)
    memory.release_freed_memory()
    assert ran == [True]
    trims: list[int] = []

    class NoMallopt:  # a C library with malloc_trim only: the block runs, nothing is set
        def malloc_trim(self, pad: int) -> int:
            trims.append(pad)
            return 1

    monkeypatch.setattr(memory, "_libc", lambda: NoMallopt())
    with memory.reused_heap():
        ran.append(True)
    assert ran == [True, True] and trims == []


def test_the_held_threshold_fits_a_c_int() -> None:
    assert 0 < memory.HELD < 2**31
