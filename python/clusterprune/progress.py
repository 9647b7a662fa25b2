"""A dependency-free progress bar on stderr (shown only on a terminal unless forced): steps done,
time elapsed and, once a step is done, an estimate of the time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.label, self.done = total, label, 0
        self.start = time.monotonic()

    def update(self, detail: str = "") -> None:
        """One step done; ``detail`` says what."""
        self.done += 1
        self.show(detail)

    def show(self, detail: str) -> None:
        """Redraws the bar with ``detail`` (what is being done now), no step counted."""
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        elapsed = time.monotonic() - self.start
        bar = "#" * filled + "-" * (width - filled)
        left = f"~{elapsed / self.done * (self.total - self.done):.0f}s left" if 0 < self.done < self.total else ""
        self.stream.write(
            f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:6.1f}s {left:>10} {detail[:48]:<48}"
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()
