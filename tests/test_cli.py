"""The CLI: documented exit codes, one-line errors, no tracebacks, no partial files."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from tfcompress import cli


def run_cli(argv):
    flags.FLAGS.unparse_flags()
    rest = flags.FLAGS(["tfcompress"] + argv)
    return cli.main(rest)


@pytest.fixture()
def calib(tmp_path, cifar):
    path = tmp_path / "calib.npz"
    np.savez(path, x=cifar["x_train"][:100])
    return path


def test_convert_inspect_validate_round_trip(tmp_path, resnet8_h5, calib, cifar, capsys):
    out = tmp_path / "r8.tflite"
    assert run_cli(["convert", str(resnet8_h5), f"--output={out}", f"--data={calib}",
                    "--noprogress"]) == 0
    assert out.exists()
    assert run_cli(["inspect", str(out)]) == 0
    assert "XNNPACK took" in capsys.readouterr().out
    test = tmp_path / "test.npz"
    np.savez(test, x_test=cifar["x_test"][:100], y_test=cifar["y_test"][:100])
    assert run_cli(["validate", str(out), f"--data={test}", "--min_accuracy=0.5",
                    "--require_fully_integer", "--noprogress"]) == 0
    assert run_cli(["validate", str(out), f"--data={test}", "--min_accuracy=0.99",
                    "--noprogress"]) == 1


def test_validate_per_op_prints_each_op_against_its_float_op(models_dir, cifar, tmp_path, capsys):
    test = tmp_path / "test.npz"
    np.savez(test, x_test=cifar["x_test"][:16], y_test=cifar["y_test"][:16])
    model = str(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    assert run_cli(["validate", model, f"--data={test}", "--max_op_steps=1", "--noprogress"]) == 0
    out = capsys.readouterr().out
    assert "each integer op vs its float op on the same inputs (" in out and "CONV_2D" in out
    assert "max_op_steps=1.0" in out and "PASSED" in out
    assert run_cli(["validate", model, f"--data={test}", "--max_op_steps=0", "--noprogress"]) == 1
    assert "further than 0.0 steps from their float op" in capsys.readouterr().out


def test_validate_coral_on_image_folder(models_dir, data_dir, capsys):
    assert run_cli(["validate", str(models_dir / "coral_mobilenet_v2_1.0_224_quant.tflite"),
                    f"--data={data_dir / 'samples' / 'imagenet_foolbox'}", "--label_offset=1",
                    "--noprogress", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"top5_accuracy": 1.0' in out


@pytest.mark.parametrize("case", ["missing", "not_a_model", "truncated", "wrong_shape", "wrong_dtype",
                                  "empty", "unknown_mode", "existing_output", "no_command"])
def test_bad_input_exits_2_with_one_line(case, tmp_path, resnet8_h5, models_dir, calib, capsys):
    out = tmp_path / "out.tflite"
    tflite = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    if case == "missing":
        argv = ["inspect", str(tmp_path / "nope.tflite")]
    elif case == "not_a_model":
        junk = tmp_path / "junk.tflite"
        junk.write_bytes(b"hello world, not a model at all")
        argv = ["inspect", str(junk)]
    elif case == "truncated":
        cut = tmp_path / "cut.tflite"
        cut.write_bytes(tflite.read_bytes()[:5000])
        argv = ["validate", str(cut), f"--data={calib}"]
    elif case in ("wrong_shape", "wrong_dtype", "empty"):
        data = {"wrong_shape": np.zeros((4, 28, 28, 1)), "wrong_dtype": np.full((4, 32, 32, 3), "a"),
                "empty": np.zeros((0, 32, 32, 3))}[case]
        path = tmp_path / "bad.npy"
        np.save(path, data)
        argv = ["convert", str(resnet8_h5), f"--output={out}", f"--data={path}"]
    elif case == "unknown_mode":
        argv = ["convert", str(resnet8_h5), f"--output={out}", "--mode=int4"]
    elif case == "existing_output":
        out.write_bytes(b"keep me")
        argv = ["convert", str(resnet8_h5), f"--output={out}", f"--data={calib}"]
    else:
        argv = ["frobnicate"]
    # An unknown mode exits 2 like any bad input (issue 17: absl's enum check exited 1).
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "Traceback" not in err[0]
    if case == "existing_output":
        assert out.read_bytes() == b"keep me"
    elif case != "no_command":
        assert not out.exists()


def test_console_entry_point_exit_codes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfcompress.cli", "convert", "x.keras",
                           "--mode=int4"], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tfcompress.cli", "inspect",
                           str(tmp_path / "missing.tflite")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "No such TFLite file" in proc.stderr


def test_benchmark_command_writes_every_format(models_dir, tmp_path, capsys):
    f = models_dir / "mlperf_tiny_resnet8_cifar10_float.tflite"
    q = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    out = tmp_path / "bench"
    assert run_cli(["benchmark", str(f), str(q), "--runs=10", "--warmup=1", "--kernels=xnnpack",
                    "--threads=1", "--nomemory", "--noprogress", f"--output_dir={out}"]) == 0
    text = capsys.readouterr().out
    assert "mlperf_tiny_resnet8_cifar10_int8 | xnnpack | 1 |" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "benchmark.csv", "benchmark.json", "benchmark.md", "benchmark.png"]
    # A second run refuses to overwrite, before timing anything.
    assert run_cli(["benchmark", str(q), f"--output_dir={out}", "--noprogress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    ([], "one or more .tflite"),
    (["missing.tflite"], "No such model file"),
    (["{q}", "--threads=one"], "--threads takes comma-separated integers"),
    (["{q}", "--kernels=gpu"], "Unknown kernels"),
])
def test_benchmark_command_errors(argv, message, models_dir, capsys):
    q = str(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    assert run_cli(["benchmark"] + [a.format(q=q) for a in argv] + ["--noprogress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_compress_command_with_a_yaml_recipe(tmp_path, capsys):
    import keras

    from tfcompress import data, pipeline

    ds = data.load_dataset("digits")
    model = pipeline.small_cnn(ds.input_shape, ds.num_classes)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ds.x_train, ds.y_train, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
             y_test=ds.y_test)
    (tmp_path / "r.yaml").write_text(
        "name: cli\nquantize:\n  method: qat\n  epochs: 2\nbenchmark:\n  runs: 10\n")
    out = tmp_path / "out"
    argv = ["compress", str(tmp_path / "m.keras"), f"--data={tmp_path / 'd.npz'}",
            f"--recipe={tmp_path / 'r.yaml'}", f"--output_dir={out}"]
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "| int8 .tflite |" in text and f"Report: {out}/report.md" in text
    # One line for the training step (not a terminal: written once), no Keras bars.
    assert "  epoch 2/2, loss " in text and "epoch 1/2" not in text and "━" not in text, text
    assert (out / "model_int8.tflite").exists()
    assert run_cli(argv) == 2  # the output exists
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("prune:\n  kind: random\n")
    argv[3] = f"--recipe={tmp_path / 'bad.yaml'}"
    argv[4] = f"--output_dir={tmp_path / 'other'}"
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prune.kind must be one of" in err[0]
    assert not (tmp_path / "other").exists()


def test_convert_sparse_writes_sparse_weights(tmp_path, resnet8_h5, calib):
    import keras

    from tfcompress import inspector

    model = keras.models.load_model(resnet8_h5, compile=False)
    layer = model.get_layer("conv2d_7")  # the largest kernel: keep its largest 20%
    w = layer.kernel.numpy()
    layer.kernel.assign(np.where(np.abs(w) > np.quantile(np.abs(w), 0.8), w, 0))
    model.save(tmp_path / "pruned.keras")
    sizes = {}
    for extra in ([], ["--sparse"]):
        out = tmp_path / f"r8{len(extra)}.tflite"
        assert run_cli(["convert", str(tmp_path / "pruned.keras"), f"--output={out}",
                        f"--data={calib}", "--noprogress"] + extra) == 0
        sizes[len(extra)] = out.stat().st_size
        ops = inspector.inspect(out.read_bytes()).op_histogram
        assert ops.get("DENSIFY", 0) == len(extra)
    assert sizes[1] < sizes[0] - 15000  # 29,491 zero bytes, less an index byte per kept weight


def test_validate_with_data_of_the_wrong_shape_exits_2_without_a_traceback(models_dir, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "wrong.npz"
    np.savez(data, x=np.zeros((20, 5, 5, 3), "float32"), y=np.zeros(20, "int64"))
    proc = subprocess.run([sys.executable, "-m", "tfcompress.cli", "validate",
                           str(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"),
                           f"--data={data}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "takes samples of shape (32, 32, 3)" in proc.stderr and "Traceback" not in proc.stderr
    assert "PASSED" not in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["benchmark", "{model}", "--cpus=99", "--runs=2"], "`cpus` must be cores this process may"),
    (["convert", "{model}", "--output={tmp}/o.tflite", "--mode=int3"], "Unknown --mode"),
    (["inspect", "/dev/zero"], "not a regular file"),
    (["validate", "{model}", "--data={tmp}/pickled.npy"], "as a numeric array: Object arrays"),
    (["validate", "{model}", "--data={tmp}/x.npy", "--num_threads=0"],
     "`num_threads` must be at least 1. Received: num_threads=0"),
    (["validate", "{model}", "--data={tmp}/x.npy", "--reference={coral}"],
     "The reference model does not match the model"),
])
def test_bad_command_lines_exit_2_with_one_line(models_dir, tmp_path, args, message):
    model = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    coral = models_dir / "coral_mobilenet_v2_1.0_224_quant.tflite"
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "x.npy", np.zeros((2, 32, 32, 3), "float32"))
    args = [a.format(model=model, tmp=tmp_path, coral=coral) for a in args]
    proc = subprocess.run([sys.executable, "-m", "tfcompress.cli", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfcompress.cli", "inspect",
                           str(tmp_path / "missing.tflite"), "--debug"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "error: No such" in proc.stderr


_FAKE_MAIN = """
import os, sys
from tfcompress import cli

def fake(argv):
    print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), "tensorflow" in sys.modules)
    os.write(2, b"native chatter\\n")
    print("python stderr", file=sys.stderr)
    return int(os.environ["FAKE_EXIT"])

cli.main = fake
cli.run(["tfcompress", "inspect"] + sys.argv[1:])
"""


@pytest.mark.parametrize("exit_code", [0, 2])
def test_quiet_by_default_sets_the_log_level_before_tensorflow_loads(exit_code):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["FAKE_EXIT"] = str(exit_code)
    quiet = subprocess.run([sys.executable, "-c", _FAKE_MAIN], capture_output=True, text=True,
                           env=env, timeout=120)
    assert quiet.returncode == exit_code
    assert quiet.stdout.split() == ["3", "False"]  # set, and TensorFlow not loaded yet
    assert "python stderr" in quiet.stderr and "native chatter" not in quiet.stderr
    # A failed command names the file that kept the native log lines; a good one deletes it.
    kept = re.findall(r"own log lines: (\S+?);", quiet.stderr)
    assert len(kept) == (exit_code != 0)
    for path in kept:
        assert "native chatter" in Path(path).read_text()
        os.unlink(path)
    loud = subprocess.run([sys.executable, "-c", _FAKE_MAIN, "--verbose"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert loud.stdout.split() == ["None", "False"] and "native chatter" in loud.stderr


def test_inspect_hides_litert_info_lines_unless_verbose(models_dir):
    model = str(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    quiet = subprocess.run([sys.executable, "-m", "tfcompress.cli", "inspect", model],
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "XNNPACK took" in quiet.stdout
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-m", "tfcompress.cli", "inspect", model, "--verbose"],
                          capture_output=True, text=True, timeout=120)
    assert "Created TensorFlow Lite XNNPACK delegate" in loud.stderr
