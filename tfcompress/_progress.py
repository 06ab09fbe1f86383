"""A one-line progress display with no TensorFlow or Keras behind it.

The check layer shows progress while it runs a model over data or times it; Keras'
``Progbar`` would load TensorFlow for that.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["Progress"]


class Progress:
    """``12/40 samples [=======>......] 1.2s`` on one line, redrawn at most 10 times a second.

    Args:
        total: the count that means done.
        unit: what is counted ("sample", "round").
        stream: where to draw (standard error by default, so that JSON on standard
            output stays clean).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = Progress(4, unit="sample", stream=out)
        >>> bar.add(2); bar.update(4)
        >>> out.getvalue().splitlines()[-1].startswith("4/4 samples")
        True
    """

    def __init__(self, total: int, *, unit: str = "step", stream: Optional[TextIO] = None):
        if total < 0:
            raise ValueError(f"`total` must be >= 0. Received: total={total!r}")
        self.total = int(total)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start = time.perf_counter()
        self._drawn = 0.0

    def add(self, n: int = 1) -> None:
        """Counts ``n`` more units."""
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """Sets the count to ``done``; the line is redrawn when due and at the end."""
        self.done = min(int(done), self.total)
        now = time.perf_counter()
        finished = self.done >= self.total
        if not finished and now - self._drawn < 0.1:
            return
        self._drawn = now
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        bar = "=" * filled + (">" if filled < width else "") + "." * max(0, width - filled - 1)
        plural = "s" if self.total != 1 else ""
        self.stream.write(f"\r{self.done}/{self.total} {self.unit}{plural} [{bar}] "
                          f"{now - self._start:.1f}s" + ("\n" if finished else ""))
        self.stream.flush()
