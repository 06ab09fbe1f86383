"""Tables and plots shared by the benchmark command and the compression reports.

Plots are written with matplotlib's non-interactive ``Agg`` backend, so they work
on a server without a display. Every plot labels both axes and says its units.

Example:
    >>> print(markdown_table(("model", "ms"), [("float", 1.5), ("int8", 0.5)]))
    | model | ms |
    |---|---|
    | float | 1.5 |
    | int8 | 0.5 |
    >>> pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.93)])
    [0, 1]
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfcompress import _io

__all__ = [
    "bar_chart",
    "csv_text",
    "markdown_table",
    "pareto_front",
    "tradeoff_plot",
]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with one column per key of the first row."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats: lower cost, higher value.

    ``points`` are ``(cost, value)`` pairs (for example size and accuracy). A
    point is on the front when no other point has a cost at most as high and a
    value at least as high, with one of the two strictly better. The indices are
    sorted by cost.
    """
    front = []
    for i, (c, v) in enumerate(points):
        dominated = any(
            (c2 <= c and v2 >= v) and (c2 < c or v2 > v)
            for j, (c2, v2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _pyplot():
    try:
        # Optional and slow to import: matplotlib loads only when a plot is drawn.
        import matplotlib
    except ImportError:  # pragma: no cover - matplotlib is an install requirement
        raise ImportError("Plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    # (see above)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, overwrite: bool) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return _io.atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def bar_chart(
    path,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    title: str,
    errors: Optional[Mapping[str, Sequence[float]]] = None,
    overwrite: bool = False,
) -> Path:
    """Horizontal grouped bars: one group per label, one bar per series.

    Args:
        path: the PNG to write (atomically; refuses to overwrite by default).
        labels: the groups (for example model names), top to bottom.
        series: ``{series name: one value per label}``; NaN values draw no bar.
        xlabel: axis label, with units.
        title: the chart title.
        errors: optional ``{series name: upper whisker per label}`` (for example
            p90 - p50), drawn as one-sided error bars.
        overwrite: replace an existing file.
    """

    plt = _pyplot()
    n, k = len(labels), max(len(series), 1)
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(7.5, 0.5 + 0.45 * n * k + 0.6))
    y = np.arange(n)
    for j, (name, values) in enumerate(series.items()):
        pos = y + (j - (k - 1) / 2) * height
        err = None
        if errors is not None and name in errors:
            err = [np.zeros(n), np.asarray(errors[name], dtype=float)]
        bars = ax.barh(pos, values, height=height * 0.95, label=name, xerr=err, capsize=2)
        for b, v in zip(bars, values):
            if v == v:  # skip NaN
                ax.annotate(f"{v:.3g}", (b.get_width(), b.get_y() + b.get_height() / 2),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, overwrite)


def tradeoff_plot(
    path,
    points: Sequence[Tuple[float, float]],
    labels: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    chosen: Optional[int] = None,
    reference: Optional[Tuple[float, float]] = None,
    budget: Optional[float] = None,
    overwrite: bool = False,
) -> Path:
    """Scatter of ``(cost, value)`` points with their Pareto front drawn as a step line.

    Args:
        path: the PNG to write.
        points: ``(cost, value)`` per tried recipe, e.g. (size in KB, accuracy in %).
        labels: a short name per point, written next to it.
        xlabel, ylabel, title: axis labels (with units) and title.
        chosen: index of the chosen point, circled.
        reference: ``(cost, value)`` of the uncompressed model, drawn as a star.
        budget: lowest acceptable value, drawn as a dashed horizontal line.
        overwrite: replace an existing file.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = pareto_front(points)
    on_front = set(front)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    ax.scatter([x for i, x in enumerate(xs) if i not in on_front],
               [y for i, y in enumerate(ys) if i not in on_front],
               color="tab:gray", label="tried recipe", zorder=2)
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], color="tab:blue",
               label="Pareto front", zorder=3)
    if front:
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post",
                color="tab:blue", alpha=0.6, zorder=1)
    for x, y, text in zip(xs, ys, labels):
        ax.annotate(text, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    if chosen is not None:
        ax.scatter([xs[chosen]], [ys[chosen]], s=220, facecolors="none",
                   edgecolors="tab:red", linewidths=2, label="chosen", zorder=4)
    if reference is not None:
        ax.scatter([reference[0]], [reference[1]], marker="*", s=160, color="tab:green",
                   label="original (float)", zorder=4)
    if budget is not None:
        ax.axhline(budget, color="tab:red", linestyle="--", linewidth=1,
                   label="accuracy budget")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path, overwrite)
