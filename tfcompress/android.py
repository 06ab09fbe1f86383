"""Benchmarks on an Android phone through ``adb`` and TFLite's ``benchmark_model``.

The official ``benchmark_model`` binary does the timing on the phone; this module
checks that ``adb`` and a device are there, pushes the binary and the models to
``/data/local/tmp``, runs each model with the chosen flags (optionally pinned to
the big cores with ``taskset``), and parses what the binary prints: init, first
inference, warm-up and inference times, memory footprint and the per-op profile.
``examples/android_benchmark/`` wraps it in a command.

Example:
    >>> text = '''
    ... INFO: count=50 first=1250 curr=1240 min=1238 max=1262 avg=1242.5 std=5
    ... INFO: Inference timings in us: Init: 5579, First inference: 1357, Warmup (avg): 1300, Inference (avg): 1242.5
    ... INFO: Memory footprint delta from the start of the tool (MB): init=6.36 overall=9.83
    ... '''
    >>> r = parse_benchmark_output(text)
    >>> r["inference_avg_ms"], r["init_ms"], r["memory_overall_mb"], r["num_runs"]
    (1.2425, 5.579, 9.83, 50)
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from tfcompress.report import markdown_table

__all__ = [
    "Adb",
    "AndroidBenchmarkError",
    "BenchmarkFlags",
    "REMOTE_DIR",
    "comparison_table",
    "parse_benchmark_output",
    "run_on_device",
]

REMOTE_DIR = "/data/local/tmp"

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_SUMMARY = re.compile(
    rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, "
    rf"Warmup \(avg\): {_NUM}, Inference \(avg\): {_NUM}")
_MEMORY = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init={_NUM} overall={_NUM}")
_PEAK_MONITORED = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}")
_COUNT = re.compile(r"^count=(\d+)(.*)$")
_FIELD = re.compile(rf"(\w+)={_NUM}")


class AndroidBenchmarkError(RuntimeError):
    """adb, the device or ``benchmark_model`` did not do what was asked."""


def _strip_log_prefix(line: str) -> str:
    # "INFO: ...", "I tflite  : ..." (logcat) or a bare line.
    line = line.rstrip("\r")
    m = re.match(r"^(?:INFO|WARNING|ERROR): |^[IWE] tflite\s*: ", line)
    return line[m.end():] if m else line.strip()


def _profile_tables(lines: Sequence[str]) -> Dict[str, List[dict]]:
    """The "Operator-wise Profiling Info for Regular Benchmark Runs" tables."""
    tables: Dict[str, List[dict]] = {}
    try:
        start = next(i for i, l in enumerate(lines)
                     if l.startswith("Operator-wise Profiling Info for Regular Benchmark Runs"))
    except StopIteration:
        return tables
    current, header = None, None
    for line in lines[start + 1:]:
        title = re.match(r"^=+ (.+?) =+$", line.strip())
        if title:
            current, header = title.group(1), None
            tables[current] = []
            continue
        cells = [c.strip() for c in line.split("\t") if c.strip()]
        if current is None or not cells:
            continue
        if cells[0].startswith("["):
            header = [c.strip("[]").lower() for c in cells]
            continue
        if header is None or len(cells) != len(header):
            continue
        row = dict(zip(header, cells))
        parsed = {}
        for key, value in row.items():
            key = key.replace(" ", "_").replace("%", "pct")
            try:
                parsed[key] = float(value.rstrip("%"))
            except ValueError:
                parsed[key] = value
        tables[current].append(parsed)
    return tables


def parse_benchmark_output(text: str) -> dict:
    """Parses what ``benchmark_model`` prints into numbers (milliseconds, MB).

    Understands the lines of the TFLite benchmark tool: the ``count=...`` statistics
    of the warm-up and the measured runs, the ``Inference timings in us`` summary,
    the memory footprint (``Memory footprint delta ...``, ``Peak memory footprint``
    or the periodic-monitoring peak), ``Replacing N out of M node(s) with delegate``
    and, with ``--enable_op_profiling=true``, the per-op tables.

    Raises:
        AndroidBenchmarkError: the text has no ``Inference timings`` line, which
            means the binary failed before it timed anything; the last lines of
            its output are in the message.
    """
    lines = [_strip_log_prefix(l) for l in text.splitlines()]
    summary = next((m for m in map(_SUMMARY.search, lines) if m), None)
    if summary is None:
        tail = "\n".join(l for l in lines if l)[-800:]
        raise AndroidBenchmarkError(
            "benchmark_model printed no 'Inference timings in us' line, so it did not "
            f"finish a benchmark. The end of its output:\n{tail}")
    init, first, warm, avg = (float(v) / 1e3 for v in summary.groups())
    result = {"init_ms": init, "first_inference_ms": first, "warmup_avg_ms": warm,
              "inference_avg_ms": avg}
    counts = [dict((k, float(v)) for k, v in _FIELD.findall(m.group(0)))
              for m in map(_COUNT.match, lines) if m]
    if counts:
        runs = counts[-1]  # the measured runs come after the warm-up runs
        result["num_runs"] = int(runs["count"])
        for key in ("min", "max", "std", "p5", "median", "p95"):
            if key in runs:
                result[f"inference_{key}_ms"] = runs[key] / 1e3
    memory = next((m for m in map(_MEMORY.search, lines) if m), None)
    if memory:
        result["memory_init_mb"], result["memory_overall_mb"] = map(float, memory.groups())
    peak = next((m for m in map(_PEAK_MONITORED.search, lines) if m), None)
    if peak:
        result["memory_peak_mb"] = float(peak.group(1))
    delegated = next((m for m in (re.search(r"Replacing (\d+) out of (\d+) node\(s\) with "
                                            r"delegate \((\w+)\)", l) for l in lines) if m), None)
    if delegated:
        result["delegated_nodes"] = int(delegated.group(1))
        result["total_nodes"] = int(delegated.group(2))
        result["delegate"] = delegated.group(3)
    tables = _profile_tables(lines)
    if tables:
        result["ops"] = tables.get("Run Order", [])
        result["op_types"] = tables.get("Summary by node type", [])
    return result


@dataclasses.dataclass(frozen=True)
class BenchmarkFlags:
    """The ``benchmark_model`` flags the harness sets (None leaves the binary's default)."""

    num_threads: Optional[int] = None
    use_xnnpack: Optional[bool] = None
    use_gpu: Optional[bool] = None
    use_nnapi: Optional[bool] = None
    enable_op_profiling: Optional[bool] = None
    num_runs: Optional[int] = None
    warmup_runs: Optional[int] = None
    extra: Sequence[str] = ()

    def args(self) -> List[str]:
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            out.append(f"--{f.name}={value}")
        for e in self.extra:
            if not e.startswith("--"):
                raise ValueError(f"Extra benchmark_model flags look like --name=value. Received: {e!r}")
            out.append(e)
        return out


class Adb:
    """Runs ``adb`` (or only prints the commands, with ``dry_run``)."""

    def __init__(self, *, adb: str = "adb", serial: Optional[str] = None, dry_run: bool = False,
                 echo: Callable[[str], None] = print, timeout: float = 900):
        self.adb, self.serial, self.dry_run, self.echo, self.timeout = (
            adb, serial, dry_run, echo, timeout)

    def argv(self, *args: str) -> List[str]:
        return [self.adb] + (["-s", self.serial] if self.serial else []) + list(args)

    def __call__(self, *args: str) -> str:
        argv = self.argv(*args)
        if self.dry_run:
            self.echo(shlex.join(argv))
            return ""
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise AndroidBenchmarkError(
                f"`{shlex.join(argv)}` did not finish in {self.timeout:.0f} s.") from None
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip())[-800:]
            raise AndroidBenchmarkError(
                f"`{shlex.join(argv)}` failed with exit code {proc.returncode}: {detail}")
        return proc.stdout

    def check(self) -> str:
        """Checks that ``adb`` runs and sees exactly one device (or the chosen one).

        Returns:
            The serial of the device the harness will use.
        """
        if shutil.which(self.adb) is None:
            raise AndroidBenchmarkError(
                f"adb was not found (looked for {self.adb!r} on PATH). Install the Android "
                "SDK platform-tools and put adb on PATH, or pass its path with --adb.")
        listing = subprocess.run([self.adb, "devices"], capture_output=True, text=True,
                                 timeout=60)
        if listing.returncode != 0:
            raise AndroidBenchmarkError(f"`{self.adb} devices` failed: {listing.stderr.strip()}")
        devices = {}
        for line in listing.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2:
                devices[parts[0]] = parts[1]
        ready = [s for s, state in devices.items() if state == "device"]
        if self.serial is not None:
            if devices.get(self.serial) != "device":
                raise AndroidBenchmarkError(
                    f"Device {self.serial!r} is not ready. `adb devices` lists: "
                    f"{devices or 'no devices'}.")
            return self.serial
        if not ready:
            hint = (f" Listed but not ready: {devices}. Accept the USB debugging prompt on "
                    "the phone." if devices else " Connect a phone with USB debugging on.")
            raise AndroidBenchmarkError("No Android device found by `adb devices`." + hint)
        if len(ready) > 1:
            raise AndroidBenchmarkError(
                f"Several devices are connected: {ready}. Choose one with --serial.")
        self.serial = ready[0]
        return self.serial


def run_on_device(
    binary,
    models: Mapping[str, os.PathLike],
    *,
    flags: BenchmarkFlags = BenchmarkFlags(),
    adb: Optional[Adb] = None,
    taskset: Optional[str] = None,
    remote_dir: str = REMOTE_DIR,
    cleanup: bool = True,
    echo: Callable[[str], None] = print,
) -> Dict[str, dict]:
    """Pushes ``binary`` and ``models`` to the device and benchmarks each model.

    Args:
        binary: the local ``benchmark_model`` built for the phone's ABI.
        models: ``{name: local .tflite path}``, run in this order.
        flags: ``benchmark_model`` flags, the same for every model.
        adb: an :class:`Adb` (serial, dry run); a default one otherwise.
        taskset: a CPU mask such as ``"f0"`` to pin the binary to the big cores.
        remote_dir: where files go on the device.
        cleanup: remove the pushed models afterwards.
        echo: where progress lines go.

    Returns:
        ``{name: parsed output}`` (see :func:`parse_benchmark_output`), each with
        ``model``, ``size_bytes``, ``command`` and ``output`` (the raw text) added;
        empty results in a dry run.
    """
    adb = adb or Adb()
    binary = Path(binary)
    if not binary.is_file():
        raise FileNotFoundError(
            f"No benchmark_model binary at {str(binary)!r}. Download the prebuilt "
            "android_aarch64_benchmark_model or build //tensorflow/lite/tools/benchmark:"
            "benchmark_model with --config=android_arm64 (see examples/android_benchmark/).")
    if not models:
        raise ValueError("No models given: pass at least one .tflite.")
    for name, path in models.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"No such model file for {name!r}. Received: {str(path)!r}.")
    if taskset is not None and not re.fullmatch(r"[0-9a-fA-F]+", taskset):
        raise ValueError(f"`taskset` is a hexadecimal CPU mask such as f0. Received: {taskset!r}")
    if not adb.dry_run:
        echo(f"device: {adb.check()}")
    remote_bin = f"{remote_dir}/{binary.name}"
    adb("push", str(binary), remote_bin)
    adb("shell", "chmod", "755", remote_bin)
    results = {}
    try:
        for i, (name, path) in enumerate(models.items()):
            remote = f"{remote_dir}/tfcompress_{i}_{Path(path).name}"
            adb("push", str(path), remote)
            command = (["taskset", taskset] if taskset else []) + [
                remote_bin, f"--graph={remote}"] + flags.args()
            if not adb.dry_run:
                echo(f"[{i + 1}/{len(models)}] {name}")
            output = adb("shell", shlex.join(command))
            if adb.dry_run:
                continue
            try:
                parsed = parse_benchmark_output(output)
            except AndroidBenchmarkError as e:
                raise AndroidBenchmarkError(f"{name}: {e}") from None
            results[name] = dict(parsed, model=str(path), size_bytes=Path(path).stat().st_size,
                                 command=shlex.join(adb.argv("shell", shlex.join(command))),
                                 output=output)
    finally:
        if cleanup:
            for i, path in enumerate(models.values()):
                try:
                    adb("shell", "rm", "-f", f"{remote_dir}/tfcompress_{i}_{Path(path).name}")
                except AndroidBenchmarkError:
                    pass  # best effort; the real error, if any, is already on its way
    return results


def comparison_table(results: Mapping[str, dict]) -> str:
    """Markdown: one row per model, with its average latency over the first model's."""

    if not results:
        return "(no results)"
    base = next(iter(results.values()))["inference_avg_ms"]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    return markdown_table(
        ("model", "size B", "init ms", "first ms", "avg ms", "median ms", "avg / first model",
         "memory MB", "delegated nodes"),
        [(name, r["size_bytes"], f(r.get("init_ms"), ".2f"), f(r.get("first_inference_ms"), ".2f"),
          f(r["inference_avg_ms"], ".3f"), f(r.get("inference_median_ms"), ".3f"),
          f(r["inference_avg_ms"] / base, ".3f"),
          f(r.get("memory_peak_mb", r.get("memory_overall_mb")), ".1f"),
          (f"{r['delegated_nodes']}/{r['total_nodes']} ({r['delegate']})"
           if "delegated_nodes" in r else "-"))
         for name, r in results.items()])
