"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    """Returns the C heap's free pages to the system (glibc's malloc_trim; a no-op elsewhere):
    after a large temporary is freed the heap keeps its pages, which count as resident memory."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (glibc malloc.h) and glibc's defaults
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
DEFAULT_ARENAS_PER_CORE = 8  # glibc's limit on 64-bit systems when none is set
HELD = (1 << 31) - 1  # mallopt takes a C int


def _with_mallopt() -> Any:
    """The C library when it has glibc's mallopt, else None."""
    libc = _libc()
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def bounded_heap(threshold: int = 1 << 20) -> None:
    """Every C allocation of ``threshold`` bytes or more gets its own mapping, unmapped when freed
    (glibc's mallopt; a no-op elsewhere). glibc otherwise raises the threshold as large blocks are
    freed and keeps later ones in its heap, where freed pages stay resident: long runs that
    allocate and free large temporaries (torch's activations) grow by hundreds of MB."""
    libc = _with_mallopt()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, threshold)


@contextmanager
def reused_heap() -> Iterator[None]:
    """Inside the block, every C allocation comes from the heap and freed pages stay there for
    the next one (glibc's mallopt: no mapping of its own per large block, no trimming, one heap
    for every thread started inside), so a loop that allocates and frees the same large
    temporaries faults their pages in once, not each time; :func:`release_freed_memory` between
    the loop's steps bounds what stays resident. On exit the heap is trimmed and glibc's default
    limits are set again. A no-op elsewhere."""
    libc = _with_mallopt()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, HELD)
    libc.mallopt(M_ARENA_MAX, 1)  # threads started inside allocate from the same heap
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.mallopt(M_ARENA_MAX, DEFAULT_ARENAS_PER_CORE * (os.cpu_count() or 1))
        libc.malloc_trim(0)
