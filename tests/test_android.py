"""The Android harness against a fake adb that records commands and replays benchmark_model."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfcompress import android

HERE = Path(__file__).parent
SCRIPT = HERE.parent / "examples" / "android_benchmark" / "android_benchmark.py"
XNNPACK_OUT = HERE / "data" / "benchmark_model_xnnpack.txt"
PROFILE_OUT = HERE / "data" / "benchmark_model_profile.txt"


@pytest.fixture()
def harness():
    spec = importlib.util.spec_from_file_location("android_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def fake_adb(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_adb.py"}" "$@"\n')
    adb.chmod(0o755)
    log = tmp_path / "adb_log.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(XNNPACK_OUT))
    monkeypatch.setenv("FAKE_ADB_PROFILE_OUTPUT", str(PROFILE_OUT))

    def calls():
        return [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []

    return calls


@pytest.fixture()
def files(tmp_path):
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    a, b = tmp_path / "float.tflite", tmp_path / "int8.tflite"
    a.write_bytes(b"f" * 300)
    b.write_bytes(b"q" * 100)
    return binary, a, b


def test_parse_xnnpack_output():
    r = android.parse_benchmark_output(XNNPACK_OUT.read_text())
    assert r["init_ms"] == pytest.approx(12.104)
    assert r["first_inference_ms"] == pytest.approx(0.702)
    assert r["warmup_avg_ms"] == pytest.approx(0.3532)
    assert r["inference_avg_ms"] == pytest.approx(0.34147)
    assert r["num_runs"] == 2899  # the measured runs, not the warm-up's count=1412
    assert r["inference_median_ms"] == pytest.approx(0.331)
    assert r["inference_p95_ms"] == pytest.approx(0.401)
    assert (r["memory_init_mb"], r["memory_overall_mb"]) == (3.19531, 4.01172)
    assert r["memory_peak_mb"] == 9.45312
    assert (r["delegated_nodes"], r["total_nodes"], r["delegate"]) == (9, 11, "TfLiteXNNPackDelegate")
    assert "ops" not in r


def test_parse_op_profile():
    r = android.parse_benchmark_output(PROFILE_OUT.read_text())
    assert r["inference_avg_ms"] == pytest.approx(1.20475) and r["num_runs"] == 830
    assert r["memory_overall_mb"] == 5.12109
    # The regular-run tables, not the initialization ones.
    assert [o["node_type"] for o in r["ops"]] == [
        "CONV_2D", "CONV_2D", "ADD", "CONV_2D", "AVERAGE_POOL_2D", "FULLY_CONNECTED", "SOFTMAX"]
    assert r["ops"][1]["avg_ms"] == pytest.approx(0.389) and r["ops"][1]["pct"] == 32.512
    assert r["ops"][0]["name"] == "[model/conv2d/Relu;model/conv2d/BiasAdd]:0"
    conv = r["op_types"][0]
    assert (conv["node_type"], conv["count"], conv["avg_ms"]) == ("CONV_2D", 3.0, 1.137)


def test_parse_output_without_timings_says_what_it_saw():
    with pytest.raises(android.AndroidBenchmarkError, match="Segmentation fault"):
        android.parse_benchmark_output("STARTING!\nLoaded model x\nSegmentation fault\n")


def test_end_to_end_commands_json_and_table(harness, fake_adb, files, tmp_path, capsys):
    binary, a, b = files
    out = tmp_path / "android.json"
    rc = harness.main([f"float={a}", f"int8={b}", f"--binary={binary}", "--num_threads=4",
                       "--use_xnnpack=true", "--num_runs=100", "--warmup_runs=10",
                       "--taskset=f0", "--extra=--max_secs=60", f"--json_out={out}"])
    assert rc == 0
    calls = fake_adb()
    assert calls[0] == ["devices"]
    s = ["-s", "emulator-5554"]
    assert calls[1] == s + ["push", str(binary), "/data/local/tmp/benchmark_model"]
    assert calls[2] == s + ["shell", "chmod", "755", "/data/local/tmp/benchmark_model"]
    assert calls[3] == s + ["push", str(a), "/data/local/tmp/tfcompress_0_float.tflite"]
    assert calls[4] == s + ["shell", "taskset f0 /data/local/tmp/benchmark_model "
                            "--graph=/data/local/tmp/tfcompress_0_float.tflite --num_threads=4 "
                            "--use_xnnpack=true --num_runs=100 --warmup_runs=10 --max_secs=60"]
    assert calls[5][2] == "push" and calls[6][2] == "shell"
    assert calls[7:] == [s + ["shell", "rm", "-f", "/data/local/tmp/tfcompress_0_float.tflite"],
                         s + ["shell", "rm", "-f", "/data/local/tmp/tfcompress_1_int8.tflite"]]
    results = json.loads(out.read_text())
    assert list(results) == ["float", "int8"]
    assert results["int8"]["size_bytes"] == 100
    assert results["float"]["inference_avg_ms"] == pytest.approx(0.34147)
    assert results["float"]["command"].startswith("adb -s emulator-5554 shell 'taskset f0")
    table = capsys.readouterr().out
    assert "| int8 | 100 | 12.10 | 0.70 | 0.341 | 0.331 | 1.000 | 9.5 | 9/11 (TfLiteXNNPackDelegate) |" in table


def test_op_profiling_lands_in_the_json(harness, fake_adb, files, tmp_path):
    binary, a, _ = files
    out = tmp_path / "p.json"
    assert harness.main([str(a), f"--binary={binary}", "--enable_op_profiling=true",
                         f"--json_out={out}", "--keep"]) == 0
    r = json.loads(out.read_text())["float"]
    assert len(r["ops"]) == 7 and r["op_types"][0]["node_type"] == "CONV_2D"
    assert not any("rm" in c for c in fake_adb())  # --keep


def test_dry_run_prints_the_exact_commands_and_runs_nothing(harness, fake_adb, files, capsys):
    binary, a, _ = files
    assert harness.main([f"m={a}", f"--binary={binary}", "--serial=PHONE1", "--use_gpu=true",
                         "--dry-run"]) == 0
    assert fake_adb() == []
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"adb -s PHONE1 push {binary} /data/local/tmp/benchmark_model",
        "adb -s PHONE1 shell chmod 755 /data/local/tmp/benchmark_model",
        f"adb -s PHONE1 push {a} /data/local/tmp/tfcompress_0_float.tflite",
        "adb -s PHONE1 shell '/data/local/tmp/benchmark_model "
        "--graph=/data/local/tmp/tfcompress_0_float.tflite --use_gpu=true'",
        "adb -s PHONE1 shell rm -f /data/local/tmp/tfcompress_0_float.tflite",
    ]


@pytest.mark.parametrize("case, message", [
    ("no_adb", "adb was not found"),
    ("no_device", "No Android device found"),
    ("unauthorized", "Accept the USB debugging prompt"),
    ("two_devices", "Choose one with --serial"),
    ("wrong_serial", "Device 'XYZ' is not ready"),
    ("missing_model", "No such model file"),
    ("missing_binary", "No benchmark_model binary"),
    ("adb_error", "device offline"),
    ("no_timings", "printed no 'Inference timings in us' line"),
    ("bad_taskset", "hexadecimal CPU mask"),
])
def test_failures_exit_2_with_one_line(case, message, harness, fake_adb, files, tmp_path,
                                       monkeypatch, capsys):
    binary, a, _ = files
    argv = [str(a), f"--binary={binary}"]
    if case == "no_adb":
        argv.append(f"--adb={tmp_path / 'no-such-adb'}")
    elif case == "no_device":
        monkeypatch.setenv("FAKE_ADB_DEVICES", "")
    elif case == "unauthorized":
        monkeypatch.setenv("FAKE_ADB_DEVICES", "R58M\tunauthorized")
    elif case == "two_devices":
        monkeypatch.setenv("FAKE_ADB_DEVICES", "A1\tdevice\\nB2\tdevice")
    elif case == "wrong_serial":
        argv.append("--serial=XYZ")
    elif case == "missing_model":
        argv[0] = str(tmp_path / "nope.tflite")
    elif case == "missing_binary":
        argv[1] = f"--binary={tmp_path / 'nope'}"
    elif case == "adb_error":
        monkeypatch.setenv("FAKE_ADB_FAIL_ON", "chmod")
    elif case == "no_timings":
        crash = tmp_path / "crash.txt"
        crash.write_text("STARTING!\nERROR: Failed to allocate tensors\n")
        monkeypatch.setenv("FAKE_ADB_OUTPUT", str(crash))
    elif case == "bad_taskset":
        argv.append("--taskset=big")
    assert harness.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_script_runs_as_a_command(fake_adb, files):
    binary, a, b = files
    proc = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), f"--binary={binary}"],
                          capture_output=True, text=True, env=os.environ)
    assert proc.returncode == 0, proc.stderr
    assert "| float | 300 |" in proc.stdout and "| int8 | 100 |" in proc.stdout
