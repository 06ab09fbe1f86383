"""Host latency of `.tflite` models in the LiteRT interpreter.

Latency ratios are only meaningful when measured in one run on one machine
state, so :func:`measure_latency` interleaves the models: each round invokes
every model once, and the statistics are taken over rounds.

Example:
    >>> from tfcompress.benchmark import measure_latency
    >>> measure_latency({}, runs=10)
    Traceback (most recent call last):
    ...
    ValueError: `models` is empty: pass {name: .tflite bytes or path}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfcompress import _io, inspector, runtime
from tfcompress._progress import Progress
from tfcompress.report import bar_chart, csv_text, markdown_table

__all__ = [
    "BenchmarkReport",
    "LatencyStats",
    "benchmark_models",
    "measure_latency",
    "paired_ratio",
    "peak_memory",
]


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Latency of one model on one kernel path, in milliseconds."""

    name: str
    xnnpack: bool
    num_threads: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    init_ms: float
    size_bytes: int
    samples_ms: Tuple[float, ...] = dataclasses.field(default=(), repr=False)


def measure_latency(
    models: Mapping[str, inspector.ModelSource],
    *,
    xnnpack: bool = True,
    num_threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    cpus: Optional[Sequence[int]] = None,
    on_round: Optional[Callable[[], None]] = None,
) -> Dict[str, LatencyStats]:
    """Times ``invoke`` of each model, interleaved, on random inputs.

    Args:
        models: ``{name: .tflite bytes or path}``.
        xnnpack: XNNPACK delegate (default) or builtin reference kernels.
        num_threads: interpreter threads.
        warmup: untimed invocations per model before measuring.
        runs: timed rounds; each round invokes every model once.
        cpus: CPU cores to pin the process to while measuring (Linux), e.g. ``[1]``
            for one thread. Without pinning, a small model's latency on a 2-core
            VM moved by 50% between runs as the process migrated; pinned, by 1%.
        on_round: called after each timed round (drives a progress bar).

    Returns:
        ``{name: LatencyStats}``.
    """
    if not models:
        raise ValueError("`models` is empty: pass {name: .tflite bytes or path}.")
    if cpus is not None:
        if not hasattr(os, "sched_setaffinity"):
            raise ValueError("`cpus` needs os.sched_setaffinity (Linux). Received: "
                             f"cpus={cpus!r} on {sys.platform}")
        previous = os.sched_getaffinity(0)
        if not cpus or not set(cpus) <= previous:
            raise ValueError(f"`cpus` must be cores this process may run on: "
                             f"{sorted(previous)}. Received: cpus={list(cpus)!r}")
        os.sched_setaffinity(0, set(cpus))
        try:
            return measure_latency(models, xnnpack=xnnpack, num_threads=num_threads,
                                   warmup=warmup, runs=runs, on_round=on_round)
        finally:
            os.sched_setaffinity(0, previous)
    if runs < 1 or warmup < 0:
        raise ValueError(f"`runs` must be >= 1 and `warmup` >= 0. Received: runs={runs}, warmup={warmup}")
    interpreters, init_ms, sizes = {}, {}, {}
    for name, model in models.items():
        buf = inspector.load(model)  # verified before timing: init_ms is LiteRT's alone
        # ... and tried in a child process (once per model and kernel path) likewise.
        runtime.trial_run(buf, kernels=("xnnpack" if xnnpack else "reference",),
                          num_threads=num_threads)
        start = time.perf_counter()
        interpreter = runtime.make_interpreter(buf, xnnpack=xnnpack, num_threads=num_threads)
        init_ms[name] = 1e3 * (time.perf_counter() - start)
        bounds = inspector.id_bounds(buf)
        for d, a in zip(interpreter.get_input_details(),
                        runtime.random_inputs(interpreter, bounds=bounds)):
            interpreter.set_tensor(d["index"], a)
        for _ in range(warmup):
            interpreter.invoke()
        interpreters[name], sizes[name] = interpreter, len(buf)
    times: Dict[str, List[float]] = {name: [] for name in models}
    for _ in range(runs):
        for name, interpreter in interpreters.items():
            start = time.perf_counter()
            interpreter.invoke()
            times[name].append(1e3 * (time.perf_counter() - start))
        if on_round is not None:
            on_round()
    out = {}
    for name, t in times.items():
        t = np.asarray(t)
        out[name] = LatencyStats(
            name, xnnpack, num_threads, runs,
            float(np.percentile(t, 50)), float(np.percentile(t, 90)), float(np.percentile(t, 99)),
            float(t.mean()), init_ms[name], sizes[name], tuple(float(v) for v in t),
        )
    return out


def paired_ratio(a: LatencyStats, b: LatencyStats) -> float:
    """Median over rounds of ``a``'s time divided by ``b``'s time in the same round.

    :func:`measure_latency` interleaves the models, so each round's pair saw the same
    machine state; the median of the paired ratios resists load that comes and goes
    far better than the ratio of the two medians does.

    >>> x = LatencyStats("a", True, 1, 3, 0, 0, 0, 0, 0, 0, (1.0, 2.0, 10.0))
    >>> y = LatencyStats("b", True, 1, 3, 0, 0, 0, 0, 0, 0, (2.0, 4.0, 20.0))
    >>> paired_ratio(x, y)
    0.5
    """
    if len(a.samples_ms) != len(b.samples_ms) or not a.samples_ms:
        raise ValueError("Both stats must come from the same measure_latency call. Received: "
                         f"{len(a.samples_ms)} and {len(b.samples_ms)} samples")
    return float(np.median(np.asarray(a.samples_ms) / np.asarray(b.samples_ms)))


# Runs in a fresh interpreter process that imports only LiteRT, so that its memory is
# the model's and the runtime's, not TensorFlow's. The peak is VmHWM (per address space;
# ru_maxrss would carry the parent's peak across fork + exec on Linux).
_MEMORY_PROBE = r"""
import json, resource, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

def rss(field):
    try:
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith(field + ":"))
        return float(line.split()[1]) / 1024.0
    except OSError:  # no /proc (macOS): ru_maxrss is in bytes there
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2.0**20

a = json.loads(sys.argv[1])
before = rss("VmRSS")
kw = {} if a["xnnpack"] else {
    "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
it = Interpreter(model_path=a["path"], num_threads=a["num_threads"], **kw)
it.allocate_tensors()
for d in it.get_input_details():  # zeros: in range for ids, unlike the arena's bytes
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
for _ in range(a["runs"]):
    it.invoke()
print(json.dumps({"peak": rss("VmHWM"), "model": rss("VmRSS") - before}))
"""


def peak_memory(model: inspector.ModelSource, *, xnnpack: bool = True, num_threads: int = 1,
                runs: int = 3) -> Tuple[float, float]:
    """Resident memory of a process that loads and runs ``model``, in MiB.

    The model runs in a fresh Python process that imports only the LiteRT
    interpreter. Like ``benchmark_model``'s memory footprint, this is approximate.

    Returns:
        ``(peak_mib, model_mib)``: the process's peak resident memory, and how
        much its resident memory grew from just before the interpreter was built
        to after ``runs`` invocations.
    """
    buf = inspector.load(model).bytes
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(buf)
        args = json.dumps({"path": path, "xnnpack": xnnpack, "num_threads": num_threads,
                           "runs": runs})
        out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, args], capture_output=True,
                             text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"The memory probe failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak"], result["model"]


_KERNELS = ("xnnpack", "reference")


@dataclasses.dataclass(frozen=True)
class BenchmarkReport:
    """Latency, start-up time, memory and size of several models, side by side.

    ``rows`` holds one dict per (model, kernels, threads) with the keys of
    :data:`BenchmarkReport.COLUMNS`. ``ratio_to_first`` is the median over rounds of
    the model's time over the first model's time in the same round.
    """

    rows: Tuple[dict, ...]
    warmup: int
    runs: int
    cpus: Optional[Tuple[int, ...]]

    COLUMNS = ("model", "kernels", "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
               "init_ms", "peak_rss_mib", "model_rss_mib", "size_bytes", "gzip_bytes",
               "ratio_to_first")

    def table(self) -> str:
        """The rows as a markdown table."""

        def f(v, fmt):
            return "-" if v is None or v != v else format(v, fmt)

        return markdown_table(
            ("model", "kernels", "threads", "p50 ms", "p90 ms", "p99 ms", "init ms",
             "peak RSS MiB", "model RSS MiB", "size B", "gzip B", "p50 / first"),
            [(r["model"], r["kernels"], r["threads"], f(r["p50_ms"], ".4f"),
              f(r["p90_ms"], ".4f"), f(r["p99_ms"], ".4f"), f(r["init_ms"], ".2f"),
              f(r["peak_rss_mib"], ".1f"), f(r["model_rss_mib"], ".1f"), r["size_bytes"],
              r["gzip_bytes"], f(r["ratio_to_first"], ".3f")) for r in self.rows])

    def to_dict(self) -> dict:
        return {"warmup": self.warmup, "runs": self.runs,
                "cpus": list(self.cpus) if self.cpus is not None else None,
                "rows": [dict(r) for r in self.rows]}

    def save_json(self, path, *, overwrite: bool = False):


        return _io.atomic_write_bytes(
            path, json.dumps(self.to_dict(), indent=2).encode(), overwrite=overwrite)

    def save_csv(self, path, *, overwrite: bool = False):

        return _io.atomic_write_bytes(path, csv_text(self.rows).encode(), overwrite=overwrite)

    def plot(self, path, *, overwrite: bool = False):
        """A PNG bar chart of p50 latency (whisker to p90) per model and configuration."""

        models = list(dict.fromkeys(r["model"] for r in self.rows))
        configs = list(dict.fromkeys((r["kernels"], r["threads"]) for r in self.rows))
        series, errors = {}, {}
        for kernels, threads in configs:
            key = f"{kernels}, {threads} thread{'s' if threads > 1 else ''}"
            by_model = {r["model"]: r for r in self.rows
                        if (r["kernels"], r["threads"]) == (kernels, threads)}
            series[key] = [by_model[m]["p50_ms"] for m in models]
            errors[key] = [by_model[m]["p90_ms"] - by_model[m]["p50_ms"] for m in models]
        return bar_chart(path, models, series, errors=errors, overwrite=overwrite,
                         xlabel="latency per invocation, p50 (ms); whisker: p90",
                         title=f"LiteRT host latency ({self.runs} runs each, interleaved)")


def benchmark_models(
    models: Mapping[str, inspector.ModelSource],
    *,
    kernels: Sequence[str] = _KERNELS,
    num_threads: Sequence[int] = (1,),
    warmup: int = 10,
    runs: int = 100,
    cpus: Optional[Sequence[int]] = None,
    memory: bool = True,
    progress: bool = True,
) -> BenchmarkReport:
    """Benchmarks several ``.tflite`` models side by side on this host.

    For every kernel path and thread count, the models are timed interleaved by
    :func:`measure_latency`, so their ratios come from one machine state.

    Args:
        models: ``{name: .tflite bytes or path}``; the first is the baseline of
            ``ratio_to_first``.
        kernels: any of ``"xnnpack"`` (the delegate LiteRT applies by default) and
            ``"reference"`` (the builtin kernels without default delegates).
        num_threads: thread counts to measure.
        warmup: untimed invocations per model and configuration.
        runs: timed invocations per model and configuration.
        cpus: cores to pin to while timing (Linux), e.g. ``[1]``.
        memory: also measure peak resident memory (:func:`peak_memory`, one small
            process per model and configuration).
        progress: show a progress bar over the timed rounds.

    Returns:
        A :class:`BenchmarkReport`.

    Example:
        >>> benchmark_models({"m": b""}, kernels=["gpu"])
        Traceback (most recent call last):
        ...
        ValueError: Unknown kernels ['gpu']. Allowed: ('xnnpack', 'reference').
    """
    bad = [k for k in kernels if k not in _KERNELS]
    if bad or not kernels:
        raise ValueError(f"Unknown kernels {bad or list(kernels)}. Allowed: {_KERNELS}.")
    if not num_threads or any(int(t) < 1 for t in num_threads):
        raise ValueError(f"`num_threads` must be positive integers. Received: {num_threads!r}")
    if not models:
        raise ValueError("`models` is empty: pass {name: .tflite bytes or path}.")
    if cpus is not None and max(int(t) for t in num_threads) > len(cpus):
        raise ValueError("More threads than pinned cores makes the threads queue for a core, "
                         f"and the timings measure that. Received: num_threads={num_threads!r}, "
                         f"cpus={cpus!r}.")
    buffers = {name: inspector.load(m) for name, m in models.items()}
    for buf in buffers.values():  # every kernel path in one child per model
        runtime.trial_run(buf, kernels=kernels, num_threads=max(int(t) for t in num_threads))
    gzip_bytes = {name: inspector.gzip_size(buf) for name, buf in buffers.items()}
    configs = [(k, int(t)) for k in kernels for t in num_threads]
    bar = None
    if progress:
        bar = Progress(len(configs) * runs, unit="round")
    first = next(iter(buffers))
    rows = []
    for k, t in configs:
        stats = measure_latency(buffers, xnnpack=k == "xnnpack", num_threads=t, warmup=warmup,
                                runs=runs, cpus=cpus,
                                on_round=(lambda: bar.add(1)) if bar is not None else None)
        for name, s in stats.items():
            peak, own = (peak_memory(buffers[name], xnnpack=k == "xnnpack", num_threads=t)
                         if memory else (float("nan"), float("nan")))
            rows.append({
                "model": name, "kernels": k, "threads": t, "p50_ms": s.p50_ms,
                "p90_ms": s.p90_ms, "p99_ms": s.p99_ms, "mean_ms": s.mean_ms,
                "init_ms": s.init_ms, "peak_rss_mib": peak, "model_rss_mib": own,
                "size_bytes": s.size_bytes, "gzip_bytes": gzip_bytes[name],
                "ratio_to_first": paired_ratio(s, stats[first]),
            })
    return BenchmarkReport(tuple(rows), warmup, runs, tuple(cpus) if cpus is not None else None)
