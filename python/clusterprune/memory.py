"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)


def bounded_heap(threshold: int = 1 << 20) -> None:
    """Every C allocation of ``threshold`` bytes or more gets its own mapping, unmapped when freed
    (glibc's mallopt; a no-op elsewhere). glibc otherwise raises the threshold as large blocks are
    freed and keeps later ones in its heap, where freed pages stay resident: long runs that
    allocate and free large temporaries (torch's activations) grow by hundreds of MB."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, threshold)
