"""The check path runs where TensorFlow and Keras cannot be imported.

Each test starts a fresh Python in which importing ``tensorflow``, ``keras``,
``tf_keras`` or ``sklearn`` raises ModuleNotFoundError (as on a machine without the
``tensorflow`` extra), then runs the real ``tfcompress`` CLI or the check modules.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Installed before anything else runs: a finder that refuses the heavy frameworks.
_BLOCKER = r"""
import sys
class _Refuse:
    BLOCKED = ("tensorflow", "keras", "tf_keras", "sklearn")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _Refuse())
"""

_CLI = _BLOCKER + r"""
sys.argv = ["tfcompress"] + sys.argv[1:]
from tfcompress.cli import run
try:
    run()
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in _Refuse.BLOCKED)
    sys.stderr.write("LOADED " + ",".join(loaded) + "\n")
"""


def _run(*args, timeout=300):
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    return subprocess.run([sys.executable, "-c", _CLI, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _loaded(proc) -> str:
    return [line for line in proc.stderr.splitlines() if line.startswith("LOADED ")][-1]


@pytest.fixture(scope="module")
def resnet8_int8(models_dir):
    return models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"


def test_blocker_really_blocks_tensorflow():
    proc = subprocess.run([sys.executable, "-c", _BLOCKER + "import tensorflow"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr


def test_inspect_runs_without_tensorflow(models_dir):
    coral = models_dir / "coral_mobilenet_v2_1.0_224_quant.tflite"
    proc = _run("inspect", coral)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "XNNPACK took" in proc.stdout and "QUANTIZE" not in proc.stderr
    assert _loaded(proc) == "LOADED "
    as_json = _run("inspect", coral, "--json")
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    assert len(json.loads(as_json.stdout)["ops"]) == 66  # the Coral MobileNetV2 graph


def test_validate_runs_without_tensorflow(resnet8_int8, models_dir, cifar, tmp_path):
    data = tmp_path / "test.npz"
    np.savez(data, x=cifar["x_test"][:64].astype("float32"), y=cifar["y_test"][:64])
    proc = _run("validate", resnet8_int8, f"--data={data}",
                f"--reference={models_dir / 'mlperf_tiny_resnet8_cifar10_float.tflite'}",
                "--min_accuracy=0.6", "--require_fully_integer", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PASSED" in proc.stdout and "top-1 agreement with float" in proc.stdout
    assert _loaded(proc) == "LOADED "


def test_benchmark_runs_without_tensorflow(resnet8_int8, models_dir, tmp_path):
    out = tmp_path / "bench"
    proc = _run("benchmark", resnet8_int8, models_dir / "mlperf_tiny_resnet8_cifar10_float.tflite",
                "--runs=5", "--warmup=1", "--kernels=xnnpack", f"--output_dir={out}",
                "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"mlperf_tiny_resnet8_cifar10_int8",
                                          "mlperf_tiny_resnet8_cifar10_float"}
    assert _loaded(proc) == "LOADED "


def test_a_training_command_without_tensorflow_says_what_to_install(tmp_path):
    proc = _run("convert", tmp_path / "model.keras", f"--output={tmp_path / 'out.tflite'}")
    assert proc.returncode == 2
    assert "pip install 'tfcompress[tensorflow]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_modules_import_without_tensorflow():
    code = _BLOCKER + (
        "import tfcompress\n"
        "from tfcompress import android, benchmark, inspector, report, rewrite, runtime, validation\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in _Refuse.BLOCKED]\n"
        "print(tfcompress.inspect.__module__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "tfcompress.inspector"
