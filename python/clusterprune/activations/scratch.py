"""A scratch file for sums too large to hold in memory: an unlinked temporary file read and written
at byte offsets with pread / pwrite. Its pages belong to the kernel's file cache, which gives them
back under memory pressure, not to the process's resident memory; it disappears with the process,
whatever way the process ends."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ClusterpruneError


class ScratchFile:
    """Float arrays at fixed byte offsets of one temporary file (zeros where nothing was written)."""

    def __init__(self, directory: Path | None = None) -> None:
        try:
            self._fh = tempfile.TemporaryFile(dir=directory, prefix=".clusterprune-scratch-")
        except OSError as exc:
            raise ClusterpruneError(
                f"{directory or tempfile.gettempdir()}: cannot create a scratch file: {exc.strerror}"
            ) from None
        self.size = 0

    def reserve(self, nbytes: int) -> int:
        """The offset of ``nbytes`` new bytes (zeros) at the end of the file."""
        offset = self.size
        self.size += nbytes
        return offset

    def read(self, offset: int, out: np.ndarray) -> np.ndarray:
        """Fills the contiguous array ``out`` with the bytes at ``offset`` (zeros past the end written)."""
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            got = os.preadv(self._fh.fileno(), [view[done:]], offset + done)
            if got == 0:  # never written: a hole
                view[done:] = bytes(len(view) - done)
                break
            done += got
        return out

    def write(self, offset: int, data: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.pwritev(self._fh.fileno(), [view[done:]], offset + done)
        except OSError as exc:
            raise ClusterpruneError(f"scratch file in {tempfile.gettempdir()}: cannot write: {exc.strerror}") from None

    def clear(self) -> None:
        """Every byte back to zero (the file emptied)."""
        self._fh.truncate(0)

    def close(self) -> None:
        self._fh.close()
