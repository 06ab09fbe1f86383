"""Wall time and peak memory of the TensorFlow-free check commands; writes JSON and a table.

Target (issue "A layered house"): `tfcompress inspect` on the Coral MobileNetV2 file
in under 1 s and under 150 MB of peak resident memory. Each command runs in a fresh
process (as a user runs it), a few times; the table gives the median wall time and the
largest peak RSS (VmHWM, read by the process itself just before it exits, so the
measurement does not include this script's own memory).

``--tree`` points at another source tree (an old checkout) to measure it with the same
virtual environment, which is how the "before" numbers were taken:

    git worktree add /tmp/before d00e06d
    .venv/bin/python tools/inspect_benchmark.py --tree=/tmp/before --out=results/inspect_before.json

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/inspect_benchmark.py \
        --out=results/inspect.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

flags.DEFINE_string("out", "results/inspect.json", "JSON output; a .md table is written beside it.")
flags.DEFINE_string("tree", str(_common.ROOT), "Source tree whose tfcompress is measured.")
flags.DEFINE_integer("repeats", 3, "Fresh processes per command.")
flags.DEFINE_bool("quick", False, "One repeat of `inspect --json` only (a smoke run).")
FLAGS = flags.FLAGS

# Runs the CLI in this process and reports VmHWM (peak RSS) on the way out.
_WRAPPER = r"""
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("PEAK_KIB " + line.split()[1] + "\n")
atexit.register(_peak)
sys.argv = ["tfcompress"] + sys.argv[1:]
from tfcompress.cli import run
run()
"""


def measure(tree: str, args, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    walls, peaks, code = [], [], None
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], env=env, cwd=tree,
                              capture_output=True, text=True, timeout=600)
        walls.append(time.perf_counter() - start)
        code = proc.returncode
        kib = [int(l.split()[1]) for l in proc.stderr.splitlines() if l.startswith("PEAK_KIB ")]
        peaks.append(kib[-1] / 1024 if kib else float("nan"))
    return {"args": list(args), "exit_code": code, "wall_s_median": statistics.median(walls),
            "wall_s": walls, "peak_rss_mb_max": max(peaks), "peak_rss_mb": peaks}


def main(argv):
    del argv
    models = _common.data_dir() / "models"
    coral = str(models / "coral_mobilenet_v2_1.0_224_quant.tflite")
    resnet8 = str(models / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    commands = {"inspect --json (Coral MobileNetV2)": ["inspect", coral, "--json"]}
    if not FLAGS.quick:
        import numpy as np

        tmp = tempfile.mkdtemp()
        x = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)).astype("float32")
        np.savez(f"{tmp}/data.npz", x=x, y=np.zeros(8, "int64"))
        commands.update({
            "inspect (Coral MobileNetV2, with XNNPACK partitions)": ["inspect", coral],
            "validate (ResNet-8 int8, 8 samples)": ["validate", resnet8, f"--data={tmp}/data.npz"],
            "benchmark (ResNet-8 int8, 20 runs)": ["benchmark", resnet8, "--runs=20",
                                                   "--warmup=2"],
        })
    repeats = 1 if FLAGS.quick else FLAGS.repeats
    results = {"tree": FLAGS.tree, "python": sys.executable,
               "commands": {name: measure(FLAGS.tree, args, repeats)
                            for name, args in commands.items()}}
    rows = [(name, r["exit_code"], f"{r['wall_s_median']:.2f}", f"{r['peak_rss_mb_max']:.0f}")
            for name, r in results["commands"].items()]
    _common.write_results(Path(FLAGS.out), results, _common.table(
        ["command", "exit", "wall s (median)", "peak RSS MB"], rows))
    print(json.dumps({k: (v["wall_s_median"], v["peak_rss_mb_max"])
                      for k, v in results["commands"].items()}, indent=1))


if __name__ == "__main__":
    app.run(main)
