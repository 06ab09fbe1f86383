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
import os
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfcompress import inspector, runtime


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


def _random_inputs(interpreter, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            arrays.append(rng.integers(info.min, info.max, size=d["shape"], endpoint=True).astype(dtype))
        else:
            arrays.append(rng.random(d["shape"]).astype(dtype))
    return arrays


def measure_latency(
    models: Mapping[str, inspector.ModelSource],
    *,
    xnnpack: bool = True,
    num_threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    cpus: Optional[Sequence[int]] = None,
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
        os.sched_setaffinity(0, set(cpus))
        try:
            return measure_latency(models, xnnpack=xnnpack, num_threads=num_threads,
                                   warmup=warmup, runs=runs)
        finally:
            os.sched_setaffinity(0, previous)
    if runs < 1 or warmup < 0:
        raise ValueError(f"`runs` must be >= 1 and `warmup` >= 0. Received: runs={runs}, warmup={warmup}")
    interpreters, init_ms, sizes = {}, {}, {}
    for name, model in models.items():
        buf = inspector.read_model(model)
        start = time.perf_counter()
        interpreter = runtime.make_interpreter(buf, xnnpack=xnnpack, num_threads=num_threads)
        init_ms[name] = 1e3 * (time.perf_counter() - start)
        for d, a in zip(interpreter.get_input_details(), _random_inputs(interpreter)):
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
