"""Every operation on every zoo model: the issue-15 matrix; writes JSON and a markdown table.

Each cell (one model, one operation of the public API) runs in its own child process
(``tests/zoo.py``'s ``run_cells_in_child``), so that a SIGSEGV in the TFLite converter
or interpreter becomes a ``crashed`` cell with its signal, its last stage and the
Python stack at the crash, instead of killing the tool. Every cell is ``verified``,
``refused`` (a clean library exception: its type and one-line message),
``failed`` (the check failed, or an exception the library did not raise itself) or
``crashed``; ``tests/zoo.py``'s ``OPS`` says what each check is.

Per model, beside the cells: float32 and int8 file sizes (from the ``float32`` and
``int8`` cells), int8/float size ratio, XNNPACK latency of both files (measured in a
LiteRT-only child process, interleaved, pinned to one core; paired ratio), and the QAT
Keras-vs-file agreement (from the ``qat`` cell).

A model's cells run one after another in one child process (``--isolation=model``,
the default: TensorFlow is imported once per model, about 8 s saved per cell); a child
that dies costs only the cell it was running (recorded as ``crashed``), and a new child
takes the rest. ``--isolation=cell`` gives every cell a fresh process. Results are
written after every model (every cell with ``--isolation=cell``), so a partial run
leaves a readable table; ``--resume`` skips the cells already in ``--out``.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/zoo_benchmark.py \\
        --out=results/zoo.json [--size=small|full] [--models=a,b] [--ops=int8,qat] \\
        [--timeout=300] [--resume] [--isolation=model|cell]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common  # noqa: E402
import zoo  # noqa: E402

flags.DEFINE_string("out", "results/zoo.json", "JSON output; a .md table beside it.")
flags.DEFINE_enum("size", "small", list(zoo.SIZES), "Zoo model size.")
flags.DEFINE_list("models", [], "Zoo models (default: all). Known: " + ",".join(zoo.ZOO))
flags.DEFINE_list("ops", [], "Operations (default: all). Known: " + ",".join(zoo.OPS))
flags.DEFINE_integer("timeout", 300, "Seconds one cell may run before it counts as crashed.")
flags.DEFINE_integer("latency_runs", 30, "Timed rounds of the float / int8 latency measurement.")
flags.DEFINE_enum("isolation", "model", ["model", "cell"],
                  "One child process per model (its cells in turn) or per cell.")
flags.DEFINE_bool("resume", False, "Keep the cells already in --out and run only the others.")
flags.DEFINE_list("rerun", [], "With --out from an earlier run: run again the cells whose status "
                  "is listed (e.g. failed,refused,crashed), keep the others.")
flags.DEFINE_bool("render_only", False, "Only rewrite the markdown table from the JSON in --out.")
FLAGS = flags.FLAGS

CODES = {"verified": "V", "refused": "R", "failed": "F", "crashed": "C"}

# Runs in a child that imports only LiteRT and tfcompress' check layer (no TensorFlow),
# so that a crash of the interpreter costs only this measurement.
_LATENCY = r"""
import json, os, sys
from tfcompress import benchmark
a = json.loads(sys.argv[1])
cpus = [1] if (os.cpu_count() or 1) > 1 else None
stats = benchmark.measure_latency({"float32": a["float32"], "int8": a["int8"]}, runs=a["runs"],
                                  warmup=3, cpus=cpus)
print(json.dumps({"float32_ms": stats["float32"].p50_ms, "int8_ms": stats["int8"].p50_ms,
                  "int8_over_float": benchmark.paired_ratio(stats["int8"], stats["float32"])}))
"""


def measure_latency(workdir: Path, runs: int, timeout: int) -> dict:
    files = {m: workdir / f"{m}.tflite" for m in ("float32", "int8")}
    if not all(f.exists() for f in files.values()):
        return {"status": "skipped", "reason": "no float32 or no int8 file"}
    args = {m: str(f) for m, f in files.items()}
    args["runs"] = runs
    try:
        proc = subprocess.run([sys.executable, "-c", _LATENCY, json.dumps(args)],
                              capture_output=True, text=True, timeout=timeout,
                              env=zoo._child_env(), cwd=str(zoo.ROOT))
    except subprocess.TimeoutExpired:
        return {"status": "crashed", "reason": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        tail = zoo._stderr_tail(proc.stderr)
        why = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit code {proc.returncode}")
        return {"status": "crashed" if proc.returncode < 0 else "failed", "reason": why,
                "stderr_tail": tail}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["status"] = "verified"
    return out


def source_state() -> dict:
    """Which tfcompress code was measured: HEAD, the files changed since, a hash of them all."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  cwd=str(zoo.ROOT), timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"head": git("rev-parse", "--short", "HEAD"),
            "changed": git("status", "--porcelain", "--", "tfcompress").splitlines(),
            "package_sha256": zoo.package_hash()}


def model_summary(name: str, cells: dict, latency: dict) -> dict:
    f32, i8, qat = cells.get("float32", {}), cells.get("int8", {}), cells.get("qat", {})
    fb = f32.get("details", {}).get("size_bytes") if f32.get("status") == "verified" else None
    ib = (i8.get("details", {}).get("size_bytes")
          if i8.get("status") in ("verified", "failed") else None)
    qsteps = qat.get("details", {}).get("keras_vs_file_steps")
    spec = zoo.ZOO[name]
    return {"family": spec.family, "task": spec.task, "note": spec.note,
            "params": next((c.get("params") for c in cells.values() if c.get("params")), None),
            "float32_bytes": fb, "int8_bytes": ib,
            "int8_over_float_size": ib / fb if fb and ib else None,
            "latency": latency,
            "qat_max_steps": (max(v["max"] for v in qsteps.values()) if qsteps else None),
            # How far the outputs move across inputs, and under the input's own int8
            # rounding (float model), in the int8 file's output steps: a check to 2 steps
            # means something only when the first is large and the second small.
            "output_spread_steps": min(i8.get("details", {}).get("output_std_steps") or [None],
                                       key=lambda v: v if v is not None else 0),
            "input_rounding_steps": i8.get("details", {}).get("input_rounding_steps")}


def _message_key(cell: dict) -> str:
    status = cell["status"]
    if status == "refused":
        return f"refused: {cell.get('error_type')}: {cell.get('message')}"
    if status == "crashed":
        return f"crashed: {cell.get('reason')}"
    return f"failed: {cell.get('reason')}"


def op_check_lines(results: dict) -> list:
    """One paragraph on the failed cells' per-op checks (tests/zoo.py `_op_check`)."""
    checked = {f"{name}/{op}": cell["details"]["op_check"]
               for name, cells in results["cells"].items() for op, cell in cells.items()
               if cell.get("status") == "failed" and "ops" in cell.get("details", {}).get("op_check", {})}
    if not checked:
        return []
    off = {k: v for k, v in checked.items()
           if max(v["reference_max_steps"], v["xnnpack_max_steps"] or 0.0) > zoo.OP_STEPS}
    text = (f"Per-op check of the failed cells (each integer op of the file run alone against "
            f"its float op, on the inputs the file gave it, both kernel paths): "
            f"{len(checked) - len(off)} of {len(checked)} have every op within "
            f"{zoo.OP_STEPS:.0f} step")
    text += (": their end-to-end distance is single-step rounding, amplified by the network."
             if not off else "; an op further off in " + ", ".join(
                 f"{k} ({v['worst']})" for k, v in off.items()) + ".")
    return ["", text]


def markdown(results: dict) -> list:
    # Every operation any kept cell ran (a --resume run may name fewer), in zoo.OPS order.
    present = {op for cells in results["cells"].values() for op in cells}
    ops = [op for op in zoo.OPS if op in present or op in results["ops"]]
    keys: dict = {}
    for name, cells in results["cells"].items():
        for op in ops:
            cell = cells.get(op)
            if cell and cell["status"] != "verified":
                keys.setdefault(_message_key(cell), []).append(f"{name}/{op}")
    number = {k: i + 1 for i, k in enumerate(keys)}

    def code(cell):
        if not cell:
            return "·"
        c = CODES[cell["status"]]
        return c if c == "V" else f"{c}{number[_message_key(cell)]}"

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    header = ["model", "params"] + ops + ["float KB", "int8 KB", "int8/float", "lat float ms",
                                           "lat int8 ms", "lat int8/float", "QAT steps",
                                           "spread steps", "input-rounding steps"]
    rows = []
    for name, cells in results["cells"].items():
        m = results["models"].get(name, {})
        lat = m.get("latency") or {}
        rows.append([name, num(m.get("params"), "d")] + [code(cells.get(op)) for op in ops] + [
            num(m["float32_bytes"] / 1024 if m.get("float32_bytes") else None, ".1f"),
            num(m["int8_bytes"] / 1024 if m.get("int8_bytes") else None, ".1f"),
            num(m.get("int8_over_float_size"), ".3f"), num(lat.get("float32_ms"), ".3f"),
            num(lat.get("int8_ms"), ".3f"), num(lat.get("int8_over_float"), ".2f"),
            num(m.get("qat_max_steps"), ".1f"), num(m.get("output_spread_steps"), ".2f"),
            num(m.get("input_rounding_steps"), ".2f")])
    counts = results["summary"]
    lines = [f"# Zoo matrix ({results['size']}): {counts}", "",
             f"tfcompress {results['source']['head']} (package {results['source']['package_sha256']}, "
             f"{len(results['source']['changed'])} files changed since HEAD); "
             f"{results.get('seconds', 0) / 60:.1f} min", ""]
    lines += _common.table(header, rows)
    lines += op_check_lines(results)
    lines += ["", "Legend: V verified, R refused (a clean library exception), F failed (wrong "
              "result, or an exception the library did not raise itself), C crashed (killed by "
              "a signal or timed out), · not run; the number points into the list below. "
              "Latency: XNNPACK, 1 thread, pinned to one core, p50 (ratio: median of paired "
              "rounds). QAT steps: max |Keras QAT model - int8 file| in output steps, worst "
              "kernel path. Spread steps: the float model's output standard deviation across "
              "inputs, in the int8 file's output steps (the smallest output's). Input-rounding "
              "steps: p99 of how far the float model's outputs move when its inputs move by "
              "half an int8 step, what rounding the input alone costs any int8 file.",
              "", "Checks:", ""]
    lines += [f"- `{op}`: {what}" for op, what in zoo.OPS.items() if op in ops]
    lines += ["", "## Refusals, failures and crashes", ""]
    for key, where in keys.items():
        first = results["cells"][where[0].split("/")[0]][where[0].split("/")[1]]
        lines.append(f"{number[key]}. {key}  \n   cells: {', '.join(where)}  \n   {_origin(first)}")
    return lines


def _origin(cell: dict) -> str:
    """Where the first cell of a group stopped: stage, raising line, library frame."""
    parts = [f"stage `{cell.get('stage')}`"]
    if cell["status"] == "crashed":
        if cell.get("crash_frame"):
            parts.append(f"Python frame at the crash `{cell['crash_frame']}`")
    else:
        if cell.get("raised_at"):
            parts.append(f"raised at `{cell['raised_at']}`")
        if cell.get("library_frame"):
            parts.append(f"from `{cell['library_frame']}`")
    return "; ".join(parts)


def write(out: Path, results: dict) -> None:
    counts = {s: 0 for s in zoo.STATUSES}
    for cells in results["cells"].values():
        for cell in cells.values():
            counts[cell["status"]] += 1
    results["summary"] = counts
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    os.replace(tmp, out)
    out.with_suffix(".md").write_text("\n".join(markdown(results)) + "\n")


def main(argv):
    del argv
    models = FLAGS.models or list(zoo.ZOO)
    ops = FLAGS.ops or list(zoo.OPS)
    unknown = [m for m in models if m not in zoo.ZOO] + [o for o in ops if o not in zoo.OPS]
    if unknown:
        raise app.UsageError(f"Unknown models or ops: {unknown}. Models: {list(zoo.ZOO)}; "
                             f"ops: {list(zoo.OPS)}")
    out = Path(FLAGS.out)
    if FLAGS.render_only:
        write(out, json.loads(out.read_text()))
        print(out.with_suffix(".md").read_text())
        return
    results = {"size": FLAGS.size, "ops": ops, "timeout_s": FLAGS.timeout,
               "thresholds": {"float_tolerance": zoo.FLOAT_TOLERANCE,
                              "int8_p99_steps": zoo.INT8_P99_STEPS,
                              "qat_max_steps": zoo.QAT_MAX_STEPS,
                              "channel_exact": zoo.CHANNEL_EXACT},
               "samples": zoo.SAMPLES[FLAGS.size], "source": source_state(),
               "cells": {}, "models": {}, "seconds": 0.0}
    bad = [s for s in FLAGS.rerun if s not in zoo.STATUSES]
    if bad:
        raise app.UsageError(f"--rerun takes statuses {zoo.STATUSES}. Received: {bad}")
    if (FLAGS.resume or FLAGS.rerun) and out.exists():
        old = json.loads(out.read_text())
        if old.get("size") == FLAGS.size:
            results["cells"], results["models"] = old["cells"], old["models"]
            results["seconds"] = old.get("seconds", 0.0)
            results["earlier_source"] = old.get("source")
            for cells in results["cells"].values():
                for op in [op for op, c in cells.items() if c["status"] in FLAGS.rerun]:
                    del cells[op]
    start = time.perf_counter() - results["seconds"]
    for name in models:
        cells = results["cells"].setdefault(name, {})
        with tempfile.TemporaryDirectory(prefix=f"zoo_{name}_") as workdir:
            latency = (results["models"].get(name) or {}).get("latency")
            # On --resume, a kept cell is not run again, except float32 and int8 when
            # the latency still needs their files.
            todo = [op for op in ops
                    if op not in cells or (op in ("float32", "int8") and latency is None)]
            batches = [todo] if FLAGS.isolation == "model" else [[op] for op in todo]
            for batch in batches:
                if not batch:
                    continue
                ran = zoo.run_cells_in_child([(name, op) for op in batch], FLAGS.size,
                                             timeout=FLAGS.timeout, workdir=workdir)
                for op, cell in zip(batch, ran):
                    cells[op] = cell
                    print(f"{name:26s} {op:15s} {cell['status']:9s} "
                          f"{cell.get('seconds', 0):6.1f} s  "
                          f"{cell.get('reason') or cell.get('message') or ''}"[:220], flush=True)
                results["models"][name] = model_summary(name, cells, latency)
                results["seconds"] = time.perf_counter() - start
                write(out, results)
            if latency is None:
                latency = measure_latency(Path(workdir), FLAGS.latency_runs, FLAGS.timeout)
            results["models"][name] = model_summary(name, cells, latency)
        results["seconds"] = time.perf_counter() - start
        write(out, results)
    print("\n".join(markdown(results)))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    app.run(main)
