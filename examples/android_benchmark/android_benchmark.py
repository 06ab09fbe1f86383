"""Benchmark .tflite models on an Android phone with TFLite's benchmark_model.

    python examples/android_benchmark/android_benchmark.py \
        --binary=android_aarch64_benchmark_model \
        float=model_float.tflite int8=model_int8.tflite pruned=model_pruned_int8.tflite \
        --num_threads=4 --use_xnnpack=true --num_runs=100 --warmup_runs=10 \
        --taskset=f0 --json_out=android.json

Pushes the binary and the models to /data/local/tmp, runs each model with the same
flags, parses init / first / warm-up / inference times, memory and (with
--enable_op_profiling=true) the per-op profile into JSON, and prints a comparison
table. --dry-run prints the exact adb commands and runs nothing.

Exit codes: 0 success; 2 no adb, no device, no binary, a missing model, an adb error
or benchmark_model output without timings (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tfcompress import android


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="MODEL.tflite or NAME=MODEL.tflite, in table order")
    p.add_argument("--binary", required=True, help="local benchmark_model for the phone's ABI")
    p.add_argument("--adb", default="adb", help="the adb executable")
    p.add_argument("--serial", default=None, help="device serial when several are connected")
    p.add_argument("--num_threads", type=int, default=None)
    p.add_argument("--use_xnnpack", type=_bool, default=None)
    p.add_argument("--use_gpu", type=_bool, default=None)
    p.add_argument("--use_nnapi", type=_bool, default=None)
    p.add_argument("--enable_op_profiling", type=_bool, default=None)
    p.add_argument("--num_runs", type=int, default=None)
    p.add_argument("--warmup_runs", type=int, default=None)
    p.add_argument("--extra", action="append", default=[],
                   help="another benchmark_model flag, e.g. --extra=--max_secs=60 (repeatable)")
    p.add_argument("--taskset", default=None, help="CPU mask, e.g. f0 for the big cores")
    p.add_argument("--remote_dir", default=android.REMOTE_DIR)
    p.add_argument("--keep", action="store_true", help="leave the models on the device")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the adb commands instead of running them")
    p.add_argument("--json_out", default=None, help="write every parsed result here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    models = {}
    for spec in args.models:
        name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).stem, "", spec)
        models[name] = path
    flags = android.BenchmarkFlags(
        num_threads=args.num_threads, use_xnnpack=args.use_xnnpack, use_gpu=args.use_gpu,
        use_nnapi=args.use_nnapi, enable_op_profiling=args.enable_op_profiling,
        num_runs=args.num_runs, warmup_runs=args.warmup_runs, extra=tuple(args.extra))
    adb = android.Adb(adb=args.adb, serial=args.serial, dry_run=args.dry_run)
    try:
        if args.json_out and Path(args.json_out).exists():
            raise FileExistsError(f"Refusing to overwrite {args.json_out!r}.")
        results = android.run_on_device(args.binary, models, flags=flags, adb=adb,
                                        taskset=args.taskset, remote_dir=args.remote_dir,
                                        cleanup=not args.keep)
    except (android.AndroidBenchmarkError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}".replace("\n", " | "), file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    print(android.comparison_table(results))
    if args.json_out:
        from tfcompress import _io

        _io.atomic_write_bytes(args.json_out, json.dumps(results, indent=2).encode())
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
