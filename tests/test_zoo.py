"""The model zoo (issue 15) within the test suite's budget.

Every zoo model builds at size "small" and runs on its own inputs and targets (cheap).
A fixed sample of (model, operation) cells then runs through the same cell runner as
``tools/zoo_benchmark.py``, in child processes, so that a crash of the converter or
interpreter fails one test instead of killing pytest. A cell passes when it did not
crash and did not fail: ``verified``, or ``refused`` with a clean library error.
The cells the library does not pass yet are ``xfail(strict=True)`` with the measured
failure as the reason, so each one flips to a failure (remove its mark) the day it is
fixed. The whole matrix is ``tools/zoo_benchmark.py`` (its smoke run is in
``tests/test_tools.py``).
"""

import numpy as np
import pytest

import zoo


# (model, op) -> the failure measured by tools/zoo_benchmark.py --size=small, or None.
SAMPLED_CELLS = {
    ("ds_cnn", "int8"): None,
    ("ds_cnn", "qat"): None,
    ("regression_mlp", "prune_sparse"): None,
    ("subclassed", "int8"): None,            # refused: "has no defined inputs"
    ("transformer_text", "int8"): None,      # verified: LayerNorm as int8 ops, int32 ids allowed
    ("transformer_text", "qat"): None,       # verified: MHA and LayerNorm split into int8 ops
    ("binary_cnn", "compress"): None,        # verified: a sigmoid output is task "binary"
    ("op_add", "qat"): None,  # fixed: operator nodes in QAT (was AttributeError on `+`)
    ("two_in_two_out", "qat"): None,
    ("dense_autoencoder", "compress"): None,
    ("conv1d_audio", "int16x8"): None,       # checked against int8-rounded kernels
    ("two_tower", "int8"): None,     # fixed: Dot(normalize=True) left float SQUARE ops
    ("augment_cnn", "qat"): None,    # fixed: RandomFlip & co. took ranges of their own
    ("causal_lm", "int8"): None,     # fixed: the causal mask's -1e9 made every score one value
    ("text_birnn", "float32"): None,  # fixed: Keras' unroll=True misapplied a backward mask
    ("masking_lstm", "qat"): None,    # fixed: masked recurrent layers were refused
    ("mixed_precision", "int8"): None,  # fixed: mixed_float16 ops had no TFLite kernel
    ("fixed_batch", "validate"): None,  # fixed: one sample fed to a batch-4 file
    # Not strict: the p99 moves between processes (2.0 passes in the suite's process,
    # 2.1 fails in tools/zoo_benchmark.py's child process on 2026-12-03).
    ("lstm_kws", "int8"): pytest.mark.xfail(strict=False, reason=(
        "the SIGSEGV is gone (the LSTM is unrolled), but over 49 unrolled steps XNNPACK and "
        "the reference kernels differ by p99 2.0 to 2.1 output steps (the check allows 2)")),
}


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_every_small_zoo_model_builds_and_runs_on_its_own_data(name):
    spec = zoo.ZOO[name]
    model = spec.build("small")
    x = spec.inputs(model, 4)
    y = spec.targets(model, x)
    outs = zoo.keras_outputs(model, x)
    assert 0 < model.count_params() <= 150_000
    assert all(o.shape[0] == 4 and np.all(np.isfinite(o)) for o in outs)
    # The outputs move with the input (BatchNorm statistics calibrated at build): a
    # random network whose every output is the same would agree with any file.
    assert all(np.ptp(o) > 0.05 * np.abs(o).max() for o in outs), [np.ptp(o) for o in outs]
    ys = y if isinstance(y, list) else [y]
    assert len(ys) == len(outs)
    for task, target, out in zip(spec.output_tasks or (spec.task,), ys, outs):
        if task == "classification":
            assert target.dtype == np.int64 and target.max() < out.shape[-1]
        else:
            assert target.shape == out.shape
    if spec.vocab:
        assert any(np.issubdtype(np.asarray(a).dtype, np.integer)
                   for a in (x.values() if isinstance(x, dict) else [x]))


def test_zoo_covers_the_architectures_of_issue_15():
    assert {"mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_small_nopre",
            "mobilenet_v3_large", "mobilenet_v3_large_nopre", "efficientnet_b0",
            "efficientnet_v2_b0", "resnet50_v2", "xception", "ds_cnn", "lstm_kws", "gru_kws",
            "conv1d_audio", "transformer_text", "vit", "dense_autoencoder", "regression_mlp",
            "two_in_two_out", "nested", "subclassed", "op_add", "op_mul", "op_slice",
            "op_keras_ops"} <= set(zoo.ZOO)
    assert {spec.task for spec in zoo.ZOO.values()} == set(zoo.TASKS)


def test_a_clean_library_error_is_a_refusal_and_anything_else_a_failure(tmp_path):
    import importlib.util

    library = tmp_path / "library.py"
    library.write_text("def refuse():\n    raise ValueError('Layer x cannot be quantized.')\n\n"
                       "def bad_call():\n    return int('not a number')\n")
    module_spec = importlib.util.spec_from_file_location("library", library)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)

    def classify(fn, stage):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - what the cell runner sees
            return zoo.classify_exception(e, stage, package_dir=tmp_path)["status"]

    assert classify(module.refuse, "op: quantize_model") == "refused"
    assert classify(module.refuse, "check: run the file") == "failed"   # checking a result
    assert classify(module.bad_call, "op: quantize_model") == "failed"  # raised in C code
    assert classify(lambda: {}["k"], "op: quantize_model") == "failed"  # not the library's


def test_the_int8_rounded_kernel_reference_rounds_per_channel_and_restores_the_model():
    spec = zoo.ZOO["lstm_kws"]  # a model that lists its LSTM's weights again at the top
    model = spec.build("small")
    x = zoo.make_data(spec, model, "small")["eval"][:4]
    before = [w.copy() for w in model.get_weights()]
    plain = zoo.keras_outputs(model, x)[0]
    rounded = zoo.weight_rounded_outputs(model, x, "int16x8")[0]
    assert 0 < np.max(np.abs(rounded - plain)) < 0.1 * np.max(np.abs(plain))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(zoo.keras_outputs(model, x)[0], plain)
    # One scale per output channel (column): 0.5 / 127 and 2 / 127; 63.5 rounds to 64.
    w = np.array([[0.5, -2.0], [0.25, 1.0], [-0.25, 0.0]], "float32")
    np.testing.assert_allclose(zoo._rounded_to_int8(w, False),
                               [[0.5, -2.0], [64 * 0.5 / 127, 64 * 2 / 127],
                                [-64 * 0.5 / 127, 0.0]], rtol=1e-6)
    # A depthwise kernel (kh, kw, in, multiplier) has one scale per in x multiplier.
    d = np.zeros((3, 3, 2, 1), "float32")
    d[0, 0, 0, 0], d[1, 1, 0, 0], d[0, 0, 1, 0], d[2, 2, 1, 0] = 1.0, 0.25, 100.0, 0.25
    rounded = zoo._rounded_to_int8(d, True)
    assert rounded[1, 1, 0, 0] == pytest.approx(32 / 127) and rounded[2, 2, 1, 0] == 0.0


def test_input_rounding_steps_measures_the_float_model_under_half_an_input_step():
    # y = 4 * sum(x) over 4 inputs in [-1, 1]: half an int8 input step is 1/255, so the
    # output moves by at most 16/255, i.e. 16 output steps of 1/255, and by 0 for y = 0.
    keras = zoo._keras()
    spec = zoo.ZooModel("linear", None, "regression")
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    model = keras.Model(inputs, dense(inputs) * 4.0)
    x = np.random.default_rng(0).uniform(-1, 1, (64, 4)).astype("float32")
    details = [{"quantization": (1 / 255, 0), "name": "y"}]
    steps = zoo.input_rounding_steps(model, spec, x, zoo.keras_outputs(model, x), details)
    assert 4.0 < steps <= 16.0
    dense.set_weights([np.zeros((4, 1), "float32")])
    assert zoo.input_rounding_steps(model, spec, x, zoo.keras_outputs(model, x), details) == 0
    tokens = np.zeros((8, 4), "int32")
    assert zoo.input_rounding_steps(model, spec, tokens, zoo.keras_outputs(model, x), details) \
        is None


def test_a_crash_or_a_hang_costs_only_its_cell():
    # One child per batch: the SIGSEGV ends it, a new child hangs in the next cell until
    # the per-cell watchdog ends it, and a third child runs the last cell.
    cells = [("op_add", "float32"), ("op_add", "int8"), ("op_add", "float16")]
    fault_segv = zoo.run_cells_in_child(cells[:2], "small", timeout=60,
                                        _fault={"cell": ["op_add", "float32"], "kind": "segv"})
    assert [c["status"] for c in fault_segv] == ["crashed", "verified"]
    assert fault_segv[0]["signal"] == "SIGSEGV" and fault_segv[1]["op"] == "int8"
    hang = zoo.run_cells_in_child(cells[2:], "small", timeout=3,
                                  _fault={"cell": ["op_add", "float16"], "kind": "hang"})
    assert [(c["status"], c["signal"]) for c in hang] == [("crashed", "timeout")]
    assert "timed out after 3 s" in hang[0]["reason"]


@pytest.fixture(scope="module")
def cell_results(request):
    """Runs the selected sampled cells in child processes, crash-prone ones last."""
    wanted = [item.callspec.params["cell"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_sampled_zoo_cell_neither_crashes_nor_fails"]
    wanted = sorted(set(wanted), key=lambda c: SAMPLED_CELLS[c] is not None)
    results = zoo.run_cells_in_child(wanted, "small", timeout=240)
    return {(r["model"], r["op"]): r for r in results}


@pytest.mark.parametrize("cell", [pytest.param(c, marks=m or (), id=f"{c[0]}-{c[1]}")
                                  for c, m in SAMPLED_CELLS.items()])
def test_sampled_zoo_cell_neither_crashes_nor_fails(cell, cell_results):
    result = cell_results[cell]
    assert result["status"] in ("verified", "refused"), (
        f"{cell}: {result['status']}: {result.get('reason')}\n{result.get('traceback', '')}"
        f"{result.get('stderr_tail', '')}")
    if result["status"] == "refused":
        assert result["message"], "a refusal says why"


def test_a_failed_cell_carries_the_per_op_check_of_its_file(models_dir, cifar):
    buf = (models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes()
    x = cifar["x_test"][:8].astype("float32")
    cell = zoo._Cell(None)
    assert zoo._op_check(cell, buf, x, []) == [] and "op_check" not in cell.details
    problems = zoo._op_check(cell, buf, x, ["reference: Keras QAT model vs file max 3.0 steps > 2.0"])
    assert problems[1].startswith("per-op check: all ") and "within 1 step" in problems[1]
    check = cell.details["op_check"]
    assert check["ops"] >= 10 and check["beyond_one_step"] == []


def test_the_matrix_says_how_many_failed_cells_are_per_op_clean(tmp_path):
    import shutil
    import subprocess
    import sys

    out = tmp_path / "zoo.json"
    shutil.copy(zoo.ROOT / "benchmarks" / "zoo_s13_check_small.json", out)
    proc = subprocess.run([sys.executable, str(zoo.ROOT / "tools" / "zoo_benchmark.py"),
                           f"--out={out}", "--render_only"], capture_output=True, text=True,
                          timeout=300, cwd=str(zoo.ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.with_suffix(".md").read_text()
    assert "Per-op check of the failed cells" in text and "15 of 15 have every op within 1 step" in text
