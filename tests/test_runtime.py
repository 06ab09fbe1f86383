"""runtime.trial_run: what the verifier cannot rule out is tried in a child process first."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfcompress import inspector, runtime

RESNET8 = "mlperf_tiny_resnet8_cifar10_int8.tflite"


@pytest.fixture(autouse=True)
def forking(monkeypatch):
    """The trial forks here even if an earlier test loaded TensorFlow into the process."""
    monkeypatch.setattr(runtime, "_fork_is_safe", lambda: True)


def _crash(buf, kernels, invoke, num_threads, report):
    report(kernels[0], "allocate")
    os.kill(os.getpid(), signal.SIGSEGV)  # what a kernel reading out of bounds does


def test_a_kernel_that_crashes_kills_only_the_child(models_dir, monkeypatch):
    monkeypatch.setattr(runtime, "_trial_steps", _crash)
    model = inspector.load(models_dir / RESNET8)
    with pytest.raises(inspector.InvalidModelError,
                       match=r"LiteRT crashed \(SIGSEGV\) on this file with XNNPACK \(allocate\)"):
        runtime.make_interpreter(model)
    with pytest.raises(inspector.InvalidModelError, match="SIGSEGV"):  # remembered, not retried
        runtime.trial_run(model, kernels=("xnnpack",))


def test_a_hanging_kernel_is_killed_after_the_time_limit(models_dir, monkeypatch):
    monkeypatch.setattr(runtime, "_trial_steps", lambda *a: time.sleep(60))
    start = time.monotonic()
    with pytest.raises(inspector.InvalidModelError, match="did not finish"):
        runtime.trial_run(inspector.load(models_dir / RESNET8), timeout=1.0)
    assert time.monotonic() - start < 10


def test_litert_refusals_come_back_as_runtime_errors(models_dir, monkeypatch):
    def refuse(buf, kernels, invoke, num_threads, report):
        report("reference", "allocate")
        raise RuntimeError("conv.cc:357 filter->dims->size != 4\nNode number 0 failed")

    monkeypatch.setattr(runtime, "_trial_steps", refuse)
    with pytest.raises(RuntimeError, match=r"filter->dims->size != 4 Node number 0 failed "
                                           r"\[the reference kernels \(allocate\)\]"):
        runtime.make_interpreter(inspector.load(models_dir / RESNET8), xnnpack=False)


def test_each_model_and_kernel_path_is_tried_once(models_dir, monkeypatch):
    forks = []
    real = runtime._run_child
    monkeypatch.setattr(runtime, "_run_child", lambda *a, **k: forks.append(a[1]) or real(*a, **k))
    model = inspector.load(models_dir / RESNET8)
    runtime.delegation(model)  # builds XNNPACK only, no invoke
    runtime.make_interpreter(model)  # XNNPACK with an invoke
    runtime.make_interpreter(model)
    runtime.make_interpreter(model, xnnpack=False)
    runtime.make_interpreter(model, xnnpack=False)
    assert forks == [["xnnpack"], ["xnnpack"], ["reference"]]
    runtime.make_interpreter(model, isolate=False)
    assert len(forks) == 3


def test_the_cli_turns_a_crash_into_one_line_and_exit_2(models_dir, tmp_path):
    # The child of a real CLI process crashes (the trial is patched through the
    # interpreter's own command line), the CLI process survives.
    script = ("import os, signal, sys\n"
              "from tfcompress import runtime, cli\n"
              "def crash(buf, kernels, invoke, n, report):\n"
              "    report(kernels[0], 'invoke'); os.kill(os.getpid(), signal.SIGSEGV)\n"
              "runtime._trial_steps = crash\n"
              "sys.argv = ['tfcompress'] + sys.argv[1:]\n"
              "cli.run()\n")
    for args in (["inspect"], ["benchmark", "--runs=1", "--nomemory"]):
        out = subprocess.run([sys.executable, "-c", script, args[0],
                              str(models_dir / RESNET8), *args[1:]],
                             capture_output=True, text=True, timeout=120)
        lines = [line for line in out.stderr.splitlines() if line.startswith("error")]
        assert out.returncode == 2, out.stderr[-2000:]
        assert len(lines) == 1 and "LiteRT crashed (SIGSEGV)" in lines[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr


def test_a_process_with_tensorflow_loaded_spawns_instead_of_forking(models_dir, monkeypatch):
    monkeypatch.setattr(runtime, "_fork_is_safe", lambda: False)
    model = inspector.load(models_dir / RESNET8)
    runtime.trial_run(model)  # isolate=None: skipped where a fork is unsafe
    assert model.trials == {}
    runtime.trial_run(model, isolate=True)  # a fresh LiteRT-only process
    assert model.trials == {("xnnpack", True): True, ("reference", True): True}


def test_shapes_the_kernels_derive_from_a_grown_input_are_bounded_too(models_dir, monkeypatch):
    import flatbuffers
    import numpy as np

    from tfcompress._compat_litert import tflite_schema as fb

    buf = (models_dir / RESNET8).read_bytes()
    tree = fb.ModelT.InitFromObj(fb.Model.GetRootAs(buf, 0))
    graph = tree.subgraphs[0]
    image = graph.tensors[int(graph.inputs[0])]
    image.shape = np.array([1, 32, 3200, 3], np.int32)  # 300k elements: within the limit
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    monkeypatch.setenv("TFCOMPRESS_MAX_TENSOR_ELEMENTS", "1000000")
    model = inspector.load(bytes(builder.Output()))  # every stored shape is within it
    with pytest.raises(inspector.InvalidModelError,
                       match=r"has shape \[1, 32, 3200, 16\] once the kernels derive it from "
                             r"the inputs: 1638400 elements, over the limit of 1000000"):
        runtime.trial_run(model)


def test_bad_thread_counts_are_refused_before_any_child(models_dir, monkeypatch):
    monkeypatch.setattr(runtime, "_run_child", lambda *a, **k: pytest.fail("forked"))
    for n in (0, -2):
        with pytest.raises(ValueError, match=f"num_threads` must be at least 1. Received: "
                                             f"num_threads={n}"):
            runtime.make_interpreter(inspector.load(models_dir / RESNET8), num_threads=n)


def test_a_file_with_a_fixed_batch_runs_any_number_of_samples():
    # keras.Input((10,), batch_size=4): validate and compress fed one sample at a time
    # and failed ("Dimension mismatch. Got 1 but expected 4") until session 17.
    import keras

    import tfcompress as tc
    from tfcompress import validation

    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,), batch_size=4)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(
        inputs)))
    x = np.random.default_rng(0).uniform(-1, 1, (10, 10)).astype("float32")  # 4 + 4 + 2
    f32 = tc.convert(model, mode="float32", progress=False)
    interpreter = runtime.make_interpreter(f32.model_bytes)
    assert runtime.fixed_batch(runtime.input_details(interpreter)) == 4
    out = runtime.predict(interpreter, x)[0]
    assert out.shape == (10, 3)
    padded = np.concatenate([x, x[-1:], x[-1:]])  # Keras runs whole batches of 4 too
    np.testing.assert_allclose(out, model.predict(padded, batch_size=4, verbose=0)[:10],
                               atol=1e-5)
    int8 = tc.convert(model, representative_data=x, progress=False)
    report = validation.validate(int8.model_bytes, x, reference=model)
    assert report.num_samples == 10 and report.passed
