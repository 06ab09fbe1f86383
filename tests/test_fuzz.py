"""tools/fuzz_tflite.py: a small fixed-seed run, its determinism, and that it sees failures.

The full run (10,000 mutants through inspect, inspect --json, validate and benchmark)
is in WORKSPACE.md; these runs use the data folder's three files only, so that no
TensorFlow conversion is needed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "fuzz_tflite.py"


def _env(data_dir):
    return dict(os.environ, TFCOMPRESS_DATA_DIR=str(data_dir))


def _run(data_dir, tmp_path, *args, script=None):
    out = tmp_path / "fuzz.json"
    argv = [*args, "--seed_files=data", "--parts=mutants", f"--out={out}",
            f"--keep_dir={tmp_path / 'cases'}"]
    cmd = [sys.executable, str(TOOL), *argv] if script is None else \
        [sys.executable, "-c", script, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=_env(data_dir), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_fixed_seed_run_finds_no_crash_traceback_or_hang(data_dir, tmp_path):
    r = _run(data_dir, tmp_path, "--mutants=80", "--seed=17")
    assert (r["crashes"], r["tracebacks"], r["hangs"]) == (0, 0, 0), r["bad"]
    assert r["runs_per_command"] == {c: 80 for c in
                                     ("inspect", "inspect_json", "validate", "benchmark")}
    json_counts = r["counts"]["inspect_json"]
    # The mutants are neither all refused nor all accepted: the mutations reach both sides.
    assert json_counts.get("ok", 0) >= 5 and json_counts.get("refused", 0) >= 20, json_counts
    assert max(r["peak_rss_mib"].values()) > 0
    assert (tmp_path / "fuzz.md").read_text().count("\n") >= 6


def test_a_case_is_rebuilt_byte_for_byte_from_its_number(data_dir, tmp_path):
    files = []
    for i in range(2):
        _run(data_dir, tmp_path / str(i), "--case=123", "--commands=inspect_json")
        files.append((tmp_path / str(i) / "cases" / "case123.tflite").read_bytes())
    assert files[0] == files[1]
    _run(data_dir, tmp_path / "2", "--case=124", "--commands=inspect_json")
    assert (tmp_path / "2" / "cases" / "case124.tflite").read_bytes() != files[0]


# The tool itself, with a CLI that crashes in validate and raises in benchmark.
BROKEN_CLI = """
import os, signal, sys
sys.path.insert(0, "tools")
sys.argv = ["fuzz_tflite.py"] + sys.argv[1:]
import fuzz_tflite as f
real = f.run_cli
def run_cli(argv):
    if argv[0] == "validate":
        os.kill(os.getpid(), signal.SIGSEGV)
    if argv[0] == "benchmark":
        raise IndexError("an uncaught exception")
    return real(argv)
f.run_cli = run_cli
from absl import app
app.run(f.main)
"""


def test_crashes_and_uncaught_exceptions_are_counted_and_kept(data_dir, tmp_path):
    r = _run(data_dir, tmp_path, "--mutants=6", script=BROKEN_CLI)
    assert r["counts"]["validate"] == {"crash": 6}
    assert r["counts"]["benchmark"] == {"traceback": 6}
    assert r["crashes"] == 6 and r["tracebacks"] == 6
    assert sum(r["counts"]["inspect"].values()) == 6 and "crash" not in r["counts"]["inspect"]
    kept = sorted(p.name for p in (tmp_path / "cases").iterdir())
    assert len(kept) == 12 and "case0_validate_crash.tflite" in kept
    assert all(b["message"] for b in r["bad"])
    assert any("IndexError: an uncaught exception" in (b["traceback"] or "") for b in r["bad"])
