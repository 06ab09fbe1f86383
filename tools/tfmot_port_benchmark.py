"""Runs tfmot's own tests, ported to Keras 3 and tfcompress (tests/tfmot_port/), and counts.

The issue-16 yardstick: how much of tensorflow-model-optimization's pruning and
quantization test suites passes when a user changes only the imports. Every test of
``tests/tfmot_port`` runs (``TFCOMPRESS_TFMOT_PORT=1``) in one pytest process; the
result per tfmot file and per test, the pass rate, and each failure's reason (from
``KNOWN_DIFFERENCES`` when it is a documented difference) go to JSON and markdown.

Usage:
    .venv/bin/python tools/tfmot_port_benchmark.py --out=results/tfmot_port.json
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
PORT = ROOT / "tests" / "tfmot_port"

flags.DEFINE_string("out", "results/tfmot_port.json", "JSON output (markdown beside it).")
flags.DEFINE_string("k", None, "Only tests matching this pytest -k expression (smoke runs).")
FLAGS = flags.FLAGS

# tfmot test -> why it does not pass (also read by tests/tfmot_port/conftest.py).
_KNOWN = runpy.run_path(str(PORT / "known_differences.py"))
KNOWN_DIFFERENCES, KERAS3_IMPOSSIBLE = _KNOWN["KNOWN_DIFFERENCES"], _KNOWN["KERAS3_IMPOSSIBLE"]


def _run(junit: Path) -> int:
    env = dict(os.environ, TFCOMPRESS_TFMOT_PORT="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PORT),
           f"--junitxml={junit}"]
    if FLAGS.k:
        cmd += ["-k", FLAGS.k]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def _tfmot_name(test_name: str) -> str:
    name = test_name.split("[", 1)[0]
    return name[len("test_"):] if name.startswith("test_") else name


def _results(junit: Path) -> list:
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        status = ("failed" if failure is not None else "error" if error is not None
                  else "skipped" if skipped is not None else "passed")
        module = case.get("classname", "").split(".")[-1]
        tfmot = _tfmot_name(case.get("name", ""))
        message = (failure if failure is not None else error)
        rows.append({"file": module.replace("_port", "_test").replace("test_", "", 1),
                     "test": case.get("name"), "status": status,
                     "reason": (KNOWN_DIFFERENCES.get(tfmot) if status != "passed" else None)
                     or ((message.get("message") or "")[:200] if message is not None else None)})
    return rows


def _markdown(summary: dict, rows: list) -> str:
    lines = ["# tfmot's tests, ported to Keras 3 and tfcompress", "",
             f"**{summary['passed']} of {summary['total']} pass "
             f"({100 * summary['pass_rate']:.1f}%)**; without the tests whose mechanics "
             "Keras 3 cannot express (TF-format checkpoints, rebuilding a Sequential with "
             f"another input shape, extra batch axes): {summary['portable_passed']} of "
             f"{summary['portable_total']} ({100 * summary['portable_pass_rate']:.1f}%).", "",
             "| tfmot file | passed | total |", "|---|---|---|"]
    for name, counts in sorted(summary["by_file"].items()):
        lines.append(f"| {name} | {counts['passed']} | {counts['total']} |")
    failed = [r for r in rows if r["status"] not in ("passed", "skipped")]
    if failed:
        lines += ["", "## Not passing", "", "| test | reason |", "|---|---|"]
        lines += [f"| {r['file']}::{r['test']} | {r['reason']} |" for r in failed]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        _run(junit)
        rows = _results(junit)
    counted = [r for r in rows if r["status"] != "skipped"]
    by_file: dict = {}
    for r in counted:
        entry = by_file.setdefault(r["file"], {"passed": 0, "total": 0})
        entry["total"] += 1
        entry["passed"] += r["status"] == "passed"
    passed = sum(r["status"] == "passed" for r in counted)
    portable = [r for r in counted if _tfmot_name(r["test"]) not in KERAS3_IMPOSSIBLE]
    portable_passed = sum(r["status"] == "passed" for r in portable)
    summary = {"passed": passed, "total": len(counted),
               "pass_rate": passed / len(counted) if counted else 0.0, "by_file": by_file,
               "portable_passed": portable_passed, "portable_total": len(portable),
               "portable_pass_rate": portable_passed / len(portable) if portable else 0.0}
    out = ROOT / FLAGS.out if not os.path.isabs(FLAGS.out) else Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "tests": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(summary, rows))
    print(_markdown(summary, rows))
    return 0


if __name__ == "__main__":
    app.run(main)
