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

import base64
import csv
import html
import io
import re
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfcompress import _io

__all__ = [
    "Document",
    "bar_chart",
    "csv_text",
    "dot_chart",
    "latency_text",
    "markdown_table",
    "pareto_front",
    "tradeoff_plot",
    "user_layer_name",
]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _parse_markdown_table(text: str) -> Tuple[List[str], List[List[str]]]:
    lines = [l.strip() for l in text.strip().splitlines()]
    cells = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
    return cells[0], [c for c in cells[2:]]


# A Keras 3 model or layer cloned or rebuilt gets "_1", "_2", ... after its name in
# the TensorFlow graph; the QAT rebuild names its wrappers "quant_<layer>".
_KERAS_SUFFIX = re.compile(r"_\d+$")


def user_layer_name(tensor_name: str, known: Iterable[str] = ()) -> str:
    """The Keras layer name, as the user wrote it, behind a TFLite tensor name.

    Each ``/``-separated part of the name (right to left, the op name last) is tried
    without the QAT wrapper's ``quant_`` prefix and Keras' ``_N`` suffix, then as
    written; the first that is one of the ``known`` layer names wins. With no
    ``known`` names, the layer part loses the prefix and the suffix.

    Example:
        >>> t = "small_cnn_1/small_cnn_1/quant_conv1_1/convolution;small_cnn_1/x/y"
        >>> user_layer_name(t, ["conv1", "conv2"])
        'conv1'
        >>> user_layer_name("functional_1/dense_3_1/MatMul")
        'dense_3'
        >>> user_layer_name("serving_default_input:0", ["conv1"])
        'serving_default_input:0'
    """
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    known = set(known)

    def candidates(part):
        bare = part[len("quant_"):] if part.startswith("quant_") else part
        return [_KERAS_SUFFIX.sub("", bare), bare, _KERAS_SUFFIX.sub("", part), part]

    if known:
        for part in reversed(parts):
            for c in candidates(part):
                if c in known:
                    return c
        return first
    if len(parts) >= 3:
        return candidates(parts[-2])[0]
    return first


class Document:
    """A report written once as markdown and once as a self-contained HTML page.

    The HTML page embeds every plot as a base64 PNG, so it can be mailed or attached
    on its own; the markdown file links the PNG files beside it.

    Example:
        >>> doc = Document("Report")
        >>> doc.heading("Numbers"); doc.table(("a", "b"), [(1, 2)])
        >>> print(doc.markdown())
        # Report
        <BLANKLINE>
        ## Numbers
        <BLANKLINE>
        | a | b |
        |---|---|
        | 1 | 2 |
        <BLANKLINE>
        >>> "<td>2</td>" in doc.html()
        True
    """

    def __init__(self, title: str):
        self.title = title
        self._blocks: List[Tuple[str, Any]] = []

    def heading(self, text: str) -> None:
        self._blocks.append(("h2", text))

    def paragraph(self, text: str) -> None:
        self._blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self._blocks.append(("table", (list(header), [list(r) for r in rows])))

    def markdown_table(self, text: str) -> None:
        """A table given as markdown (what ``markdown_table`` and ``.table()`` methods return)."""
        self._blocks.append(("table", _parse_markdown_table(text)))

    def code(self, text: str, language: str = "") -> None:
        self._blocks.append(("pre", (text, language)))

    def image(self, path, alt: str) -> None:
        """A PNG written beside the report (``path``); the HTML embeds its bytes."""
        self._blocks.append(("img", (Path(path), alt)))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, value in self._blocks:
            if kind == "h2":
                lines += [f"## {value}", ""]
            elif kind == "p":
                lines += [value, ""]
            elif kind == "table":
                lines += [markdown_table(*value), ""]
            elif kind == "pre":
                lines += [f"```{value[1]}", value[0], "```", ""]
            elif kind == "img":
                lines += [f"![{value[1]}]({value[0].name})", ""]
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, value in self._blocks:
            if kind == "h2":
                body.append(f"<h2>{e(value)}</h2>")
            elif kind == "p":
                text = re.sub(r"`([^`]+)`", r"<code>\1</code>", e(value))
                body.append(f"<p>{text}</p>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{e(str(c))}</th>" for c in header)
                trs = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>"
                              for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "pre":
                body.append(f"<pre>{e(value[0])}</pre>")
            elif kind == "img":
                data = base64.b64encode(Path(value[0]).read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{e(value[1])}" '
                            f'src="data:image/png;base64,{data}"></figure>')
        return _HTML.format(title=e(self.title), body="\n".join(body))

    def save(self, directory, *, name: str = "report", overwrite: bool = False) -> Path:
        """Writes ``<name>.md`` and ``<name>.html`` in ``directory``; returns the markdown path."""
        directory = Path(directory)
        _io.atomic_write_bytes(directory / f"{name}.html", self.html().encode(),
                               overwrite=overwrite)
        return _io.atomic_write_bytes(directory / f"{name}.md", self.markdown().encode(),
                                      overwrite=overwrite)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1000px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }}
h1 {{ font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }}
h2 {{ font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .92em; }}
th, td {{ border: 1px solid #ccc; padding: .3em .7em; text-align: left; }}
th {{ background: #f3f5f7; }}
tbody tr:nth-child(even) {{ background: #fafafa; }}
td:not(:first-child) {{ font-variant-numeric: tabular-nums; }}
pre {{ background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }}
code {{ background: #f3f3f3; padding: 0 .2em; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; height: auto; }}
</style></head>
<body>
{body}
</body></html>
"""


def _time(ms: float) -> str:
    return f"{1e3 * ms:.1f} us" if ms < 1 else f"{ms:.3f} ms"


def latency_text(lat: Mapping[str, Any]) -> str:
    """A sentence for a float-vs-int8 latency dict (``compress()``'s or the demo's).

    With the demo's confidence intervals and noise floor (see
    :func:`tfcompress.pipeline.compare_latency`), it says whether the difference is
    within noise.

    Example:
        >>> print(latency_text({"float_ms": 2.0, "int8_ms": 1.0, "ratio": 0.5, "runs": 100,
        ...                     "num_threads": 1}))
        int8 / float latency 0.50x (p50 1.000 ms against 2.000 ms; median of 100 interleaved rounds, 1 thread).
    """
    text = (f"int8 / float latency {lat['ratio']:.2f}x (p50 {_time(lat['int8_ms'])} against "
            f"{_time(lat['float_ms'])}; median of {lat['runs']} interleaved rounds, "
            f"{lat['num_threads']} thread{'s' if lat['num_threads'] != 1 else ''})")
    if "ratio_ci95" not in lat:
        return text + "."
    lo, hi = lat["ratio_ci95"]
    nlo, nhi = lat["noise_ci95"]
    band = f" (+-{100 * lat['noise_band']:.0f}%)" if "noise_band" in lat else ""
    verdict = ("within noise" if lat["within_noise"] else
               ("faster" if lat["ratio"] < 1 else "slower") + ", beyond noise") + band
    return (f"{text}, 95% CI {lo:.3f}-{hi:.3f}; the float file timed against itself gives "
            f"{lat['noise_ratio']:.3f}x ({nlo:.3f}-{nhi:.3f}): {verdict}.")


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
    fmt: str = "{:.3g}",
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
        fmt: how each value is written at the end of its bar (``"{:,.0f}"`` for counts).
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
                ax.annotate(fmt.format(v), (b.get_width(), b.get_y() + b.get_height() / 2),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.margins(x=0.1)  # room for the value written after the longest bar
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, overwrite)


def dot_chart(
    path,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    xlabel: str,
    title: str,
    fmt: str = "{:.2f}",
    overwrite: bool = False,
) -> Path:
    """One dot per label on an axis scaled to the values (not from zero).

    For numbers that differ by little against their size, like accuracies of 99.2%
    and 99.4%: bars from zero would all look the same.

    Args:
        path: the PNG to write.
        labels: one per value, top to bottom.
        values: NaN values draw no dot.
        xlabel: axis label, with units.
        title: the chart title.
        fmt: how each value is written next to its dot.
        overwrite: replace an existing file.
    """
    plt = _pyplot()
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.42 * len(labels)))
    y = np.arange(len(labels))
    ax.hlines(y, *(_padded_range(finite) if finite.size else (0, 1)), color="#ddd", zorder=1)
    ax.scatter(v, y, color="tab:blue", zorder=2)
    for yi, vi in zip(y, v):
        if np.isfinite(vi):
            ax.annotate(fmt.format(vi), (vi, yi), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=8)
    if finite.size:
        ax.set_xlim(*_padded_range(finite))
    ax.set_yticks(y, labels)
    ax.set_ylim(len(labels) - 0.4, -0.7)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, overwrite)


def _padded_range(v: np.ndarray) -> Tuple[float, float]:
    lo, hi = float(v.min()), float(v.max())
    pad = max((hi - lo) * 0.25, abs(hi) * 0.002, 1e-9)
    return lo - pad, hi + pad


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
