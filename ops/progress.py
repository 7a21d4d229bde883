"""A one-line progress bar on stderr, drawn only on a terminal, so pipes and files stay clean."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_REDRAW_SECONDS = 0.2
_WIDTH = 30


class Progress:
    def __init__(
        self, label: str, *, stream: TextIO | None = None, enabled: bool | None = None, unit: str = "events"
    ) -> None:
        """``unit`` names what is counted, in the rate: events (replay), bytes (backup, restore)."""
        self._unit = unit
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._label = label
        self._total = 0
        self._done = 0
        self._started = time.monotonic()
        self._drawn = 0.0

    def start(self, total: int) -> None:
        """``total`` is an estimate: the bar never runs past full when more arrives."""
        self._total = total
        self._started = time.monotonic()
        self._draw()

    def advance(self, count: int) -> None:
        self._done += count
        if time.monotonic() - self._drawn >= _REDRAW_SECONDS:
            self._draw()

    def finish(self) -> None:
        """The work is done: the bar shows full, whatever the estimate was (a backup's is the
        stream's size, which its compressed archive falls short of)."""
        self._total = self._done
        if self._enabled:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self) -> None:
        if not self._enabled:
            return
        self._drawn = time.monotonic()
        fraction = min(1.0, self._done / self._total) if self._total else 1.0
        filled = int(fraction * _WIDTH)
        rate = self._done / max(self._drawn - self._started, 1e-9)
        self._stream.write(
            f"\r{self._label} [{'#' * filled}{'.' * (_WIDTH - filled)}] {self._done:,}/{self._total:,}"
            f" {fraction:4.0%} {rate:,.0f} {self._unit}/s"
        )
        self._stream.flush()
