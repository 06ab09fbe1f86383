"""One-line progress displays with no TensorFlow or Keras behind them.

The check layer shows progress while it runs a model over data or times it; Keras'
``Progbar`` would load TensorFlow for that. On a terminal the line is redrawn in place;
written to a file or a pipe (``make main | tee log``), only its final state is written,
so a log holds one line per display instead of hundreds of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

__all__ = ["Progress", "StatusLine"]


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


class StatusLine:
    """A line of text redrawn in place on a terminal; elsewhere written once, when done.

    Args:
        stream: where to draw (standard error by default).
        live: redraw while running; default: when ``stream`` is a terminal.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> line = StatusLine(out)
        >>> line.show("epoch 1/2")  # not a terminal: nothing drawn yet
        >>> line.done("epoch 2/2, 1.0s")
        >>> out.getvalue()
        'epoch 2/2, 1.0s\\n'
    """

    def __init__(self, stream: Optional[TextIO] = None, *, live: Optional[bool] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.live = _is_terminal(self.stream) if live is None else bool(live)
        self._drawn = 0.0
        self._width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        """Redraws the line with ``text`` (at most 10 times a second unless ``force``)."""
        if not self.live:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        self._write("\r" + text + " " * max(0, self._width - len(text)))
        self._width = len(text)

    def done(self, text: str) -> None:
        """Draws ``text`` as the line's final state and ends the line."""
        prefix = "\r" if self.live and self._width else ""
        self._write(prefix + text + " " * max(0, self._width - len(text)) + "\n")
        self._width = 0

    def _write(self, s: str) -> None:
        self.stream.write(s)
        self.stream.flush()


class Progress:
    """``12/40 samples [=======>......] 1.2s`` on one line, redrawn at most 10 times a second.

    Args:
        total: the count that means done.
        unit: what is counted ("sample", "round").
        stream: where to draw (standard error by default, so that JSON on standard
            output stays clean). Not a terminal: only the finished line is written.

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
        self.done = 0
        self._start = time.perf_counter()
        self._line = StatusLine(stream)
        self.stream = self._line.stream

    def add(self, n: int = 1) -> None:
        """Counts ``n`` more units."""
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """Sets the count to ``done``; the line is redrawn when due and at the end."""
        self.done = min(int(done), self.total)
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        bar = "=" * filled + (">" if filled < width else "") + "." * max(0, width - filled - 1)
        plural = "s" if self.total != 1 else ""
        text = (f"{self.done}/{self.total} {self.unit}{plural} [{bar}] "
                f"{time.perf_counter() - self._start:.1f}s")
        if self.done >= self.total:
            self._line.done(text)
        else:
            self._line.show(text)
