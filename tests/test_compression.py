"""compress(): steps, files, distillation, refusal to overwrite, and resume after a kill."""

import json

import keras
import numpy as np
import pytest

import tfcompress as tc
from tfcompress import compression
from tfcompress.compression import compress


RECIPE = {"prune": {"kind": "channels", "sparsity": 0.25, "epochs": 1},
          "distill": {"temperature": 2.0, "alpha": 0.5}, "quantize": {"epochs": 1},
          "benchmark": {"runs": 20}}


def _fake_latency(monkeypatch):
    """Replaces the benchmark step's timing with injected per-round times (ms).

    The paired ratio of these (median of 0.5, 2, 0.4 -> 0.5) differs from the ratio of
    their medians (4 / 5 = 0.8), so the test sees which one compress() reports. Real
    latencies are measured by tools/latency_benchmark.py, not asserted in unit tests.
    """
    from tfcompress import benchmark

    timed = {"float": (2.0, 5.0, 10.0), "int8": (1.0, 10.0, 4.0)}
    calls = []

    def measure_latency(models, *, runs, num_threads, **kwargs):
        files = {name: bytes(getattr(m, "bytes", m)) for name, m in models.items()}  # or verified
        calls.append({"models": files, "runs": runs, "num_threads": num_threads, **kwargs})
        return {name: benchmark.LatencyStats(name, True, num_threads, 3,
                                             float(np.median(timed[name])), 0.0, 0.0, 0.0, 0.0,
                                             len(buf), timed[name])
                for name, buf in models.items()}

    monkeypatch.setattr(benchmark, "measure_latency", measure_latency)
    return calls


def test_pipeline_writes_every_result_and_shrinks_the_model(digits_model, tmp_path, monkeypatch):
    model, ds = digits_model
    out = tmp_path / "out"
    before = [w.copy() for w in model.get_weights()]
    timings = _fake_latency(monkeypatch)
    r = tc.compress(model, ds, recipe=RECIPE, output_dir=out, verbose=0, learning_rate=5e-4)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # untouched
    assert [s["stage"] for s in r.stages] == ["original", "prune", "quantize"]
    assert r.stages[1]["params"] < 0.7 * r.stages[0]["params"]
    assert r.validation.fully_integer and r.validation.passed
    assert r.size_ratio < 0.3
    # The benchmark step times the two files it wrote, interleaved in one call, and
    # reports the median of the per-round int8 / float ratios.
    (call,) = timings
    assert call["models"] == {"float": r.float_tflite, "int8": r.tflite}
    assert (call["runs"], call["num_threads"]) == (20, 1)
    assert r.latency == {"float_ms": 5.0, "int8_ms": 4.0, "ratio": 0.5, "runs": 20,
                         "num_threads": 1}
    assert "| 4.0000 (0.500x) |" in r.table()
    assert r.validation.xnnpack.accuracy > r.stages[0]["accuracy"] - 0.15
    names = {p.name for p in out.iterdir()}
    assert {"model_int8.tflite", "original_float.tflite", "model.keras", "validation.json",
            "recipe.json", "result.json", "report.md", "stages.png", "params.png"} <= names
    assert not (tmp_path / "out.partial").exists() and "steps" not in names
    assert (out / "model_int8.tflite").read_bytes() == r.tflite
    assert json.loads((out / "result.json").read_text())["int8_tflite_bytes"] == len(r.tflite)
    report = (out / "report.md").read_text()
    assert "## What each step bought" in report and "![accuracy after each stage]" in report
    loaded = keras.models.load_model(out / "model.keras")  # plain load_model
    x = ds.x_test[:8].astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), r.model.predict(x, verbose=0),
                               atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tc.compress(model, ds, recipe=RECIPE, output_dir=out, verbose=0)


def test_resume_after_a_kill_ends_with_the_same_files(digits_model, tmp_path):
    model, ds = digits_model
    recipe = {"prune": {"kind": "unstructured", "sparsity": 0.5, "epochs": 1},
              "quantize": {"epochs": 1}, "benchmark": None}
    clean = tc.compress(model, ds, recipe=recipe, output_dir=tmp_path / "a", verbose=0)

    class Kill(keras.callbacks.Callback):
        fits = 0

        def on_train_begin(self, logs=None):
            Kill.fits += 1

        def on_train_batch_end(self, batch, logs=None):
            if Kill.fits == 2 and batch == 5:  # in the middle of the QAT step
                raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        tc.compress(model, ds, recipe=recipe, output_dir=tmp_path / "b", verbose=0,
                    callbacks=[Kill()])
    partial = tmp_path / "b.partial"
    state = json.loads((partial / "state.json").read_text())
    assert [c["step"] for c in state["completed"]] == ["prune"]
    assert not (tmp_path / "b").exists()
    resumed = tc.compress(model, ds, recipe=recipe, output_dir=tmp_path / "b", verbose=0)
    assert resumed.stages[1] == state["completed"][0]["metrics"]  # not retrained
    assert (tmp_path / "b" / "model_int8.tflite").read_bytes() == \
        (tmp_path / "a" / "model_int8.tflite").read_bytes()
    assert resumed.tflite == clean.tflite


def test_a_different_recipe_does_not_resume_someone_elses_run(digits_model, tmp_path):
    model, ds = digits_model
    (tmp_path / "o.partial").mkdir()
    (tmp_path / "o.partial" / "state.json").write_text(json.dumps(
        {"fingerprint": "0123", "completed": []}))
    with pytest.raises(ValueError, match="resume=False"):
        tc.compress(model, ds, recipe={"benchmark": None}, output_dir=tmp_path / "o", verbose=0)
    r = tc.compress(model, ds, recipe={"quantize": {"method": "ptq"}, "benchmark": None},
                    output_dir=tmp_path / "o", verbose=0, resume=False)
    assert [s["stage"] for s in r.stages] == ["original", "quantize"]


def test_in_memory_run_with_lowrank_and_ptq_only(digits_model):
    model, ds = digits_model
    r = tc.compress(model, ds, recipe={"lowrank": {"ratio": 0.5, "epochs": 0, "reconstruct": True},
                                       "quantize": {"method": "ptq"}, "validate": None,
                                       "benchmark": None}, verbose=0)
    assert r.output_dir is None and r.validation is None and r.latency is None
    assert r.stages[1]["factored_layers"] >= 1
    assert "| int8 .tflite |" in r.table()


def test_reconstructed_channel_pruning_starts_close_to_the_original(digits_model):
    from tfcompress import channel_pruning, pruning

    model, ds = digits_model
    r = tc.compress(model, ds, recipe={"prune": {"kind": "channels", "sparsity": 0.5, "epochs": 0,
                                                 "reconstruct": True},
                                       "quantize": None, "validate": None, "benchmark": None},
                    verbose=0)
    # The same channels masked without the refit, and no training either.
    masked = channel_pruning.prune_channels(model, pruning_schedule=pruning.ConstantSparsity(0.5, 0))
    channel_pruning.ChannelController(masked).update(0.5)
    one_shot = tc.compression.top1_accuracy(masked, ds.x_test, ds.y_test)
    assert r.stages[1]["params"] < 0.6 * r.stages[0]["params"]
    assert r.stages[1]["accuracy"] > one_shot + 0.05


def test_bad_arguments(digits_model, tmp_path):
    model, ds = digits_model
    with pytest.raises(TypeError, match="x_train, y_train, x_test, y_test"):
        tc.compress(model, ds.x_train)
    with pytest.raises(ValueError, match="equal length"):
        tc.compress(model, (ds.x_train, ds.y_train[:3], ds.x_test, ds.y_test))
    with pytest.raises(ValueError, match="epochs come from the recipe"):
        tc.compress(model, ds, fit_kwargs={"epochs": 3})


def test_under_a_distribution_strategy(digits_model):
    import tensorflow as tf

    model, ds = digits_model
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    r = tc.compress(model, ds, recipe={"prune": {"kind": "unstructured", "sparsity": 0.5,
                                                 "epochs": 1}, "quantize": {"epochs": 1},
                                       "validate": None, "benchmark": None},
                    strategy=strategy, verbose=0)
    assert r.stages[1]["sparsity"] == pytest.approx(0.5, abs=0.05)


def test_augmentation_runs_once_per_epoch_with_a_seeded_generator(digits_model):
    model, ds = digits_model
    with pytest.raises(ValueError, match="Unknown augmentation 'rotate'"):
        tc.compress(model, ds, augment="rotate")
    draws = []

    def augment(x, rng):
        draws.append(int(rng.integers(1 << 30)))
        return x

    recipe = {"quantize": {"epochs": 2}, "distill": {}, "validate": None, "benchmark": None}
    tc.compress(model, ds, recipe=recipe, augment=augment, verbose=0)
    tc.compress(model, ds, recipe=recipe, augment=augment, verbose=0)
    assert len(draws) == 4 and draws[:2] == draws[2:] and draws[0] != draws[1]


def test_flip_and_shift_only_flips_and_shifts():
    from tfcompress.data import flip_and_shift

    x = np.random.default_rng(1).random((16, 6, 6, 2)).astype("float32")
    out = flip_and_shift(x, np.random.default_rng(0), pad=0)  # no room to shift: flips only
    flipped = [np.array_equal(o, a[:, ::-1]) and not np.array_equal(o, a) for o, a in zip(out, x)]
    same = [np.array_equal(o, a) for o, a in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    shifted = flip_and_shift(x, np.random.default_rng(0), pad=2)
    assert shifted.shape == x.shape and not np.array_equal(shifted, x)


def test_unstructured_pruning_writes_sparse_weights_that_change_no_output(digits_model):
    from tfcompress import runtime

    model, ds = digits_model
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    recipe = {"prune": {"kind": "unstructured", "sparsity": 0.8, "epochs": 1,
                        "layers": convs[1:]},
              "quantize": {"method": "ptq"}, "validate": None, "benchmark": None}
    r = tc.compress(model, ds, recipe=recipe, verbose=0)
    ops = tc.inspect(r.tflite).op_histogram
    assert ops.get("DENSIFY") == 2  # the two pruned convolutions, nothing else
    dense = tc.convert(r.model, progress=False).model_bytes
    assert len(r.tflite) < len(dense) - 4000
    x = ds.x_test[:64].astype("float32")
    np.testing.assert_array_equal(runtime.predict(runtime.make_interpreter(r.tflite), x)[0],
                                  runtime.predict(runtime.make_interpreter(dense), x)[0])
    off = dict(recipe, prune=dict(recipe["prune"], sparse_weights=False))
    assert "DENSIFY" not in tc.inspect(tc.compress(model, ds, recipe=off, verbose=0).tflite).op_histogram


def _regression_mlp():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 13)).astype("float32")
    y = (2 * x[:, :1] - x[:, 1:2] + 0.1).astype("float32")
    model = keras.Sequential([keras.Input((13,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(x, y, epochs=3, verbose=0)
    return model, (x, y, x[:64], y[:64])


def test_a_regression_model_is_compressed_with_mse_not_labels(tmp_path):
    model, data = _regression_mlp()
    result = compress(model, data, output_dir=tmp_path / "out", verbose=0, recipe={
        "prune": {"kind": "unstructured", "sparsity": 0.5, "epochs": 1},
        "distill": {"temperature": 1.0, "alpha": 0.5}, "quantize": {"method": "qat", "epochs": 1},
        "validate": {}, "benchmark": {"runs": 5}})
    assert result.task == "regression"
    assert all(s["accuracy"] is None and s["mse"] >= 0 for s in result.stages)
    float_mse = result.stages[0]["mse"]
    pred = model.predict(data[2], verbose=0)
    assert float_mse == pytest.approx(float(np.mean((pred - data[3]) ** 2)), rel=1e-5)
    assert set(result.int8_mse) == {"xnnpack", "reference"}
    assert "test MSE" in result.table() and "max_error_steps_p99=48.0" in result.validation.checks
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "stages.png").exists()


def test_an_autoencoder_is_a_regression_of_its_own_inputs():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(16)(keras.layers.Dense(4)(inputs)))
    assert compression.detect_task(model, compression.CompressionData.from_any(
        (x, x, x[:8], x[:8]))) == "regression"


@pytest.mark.parametrize("case, message", [
    ("two_outputs", r"`y_train` needs one array per model output \['a', 'b'\]"),
    ("labels_out_of_range", r"Labels must be in \[0, 3\) .* from -3 to 7"),
    ("wrong_input_shape", r"inputs have shape \(5,\) per sample; model .* takes \(4,\)"),
    ("nan_inputs", r"`x_train` holds 1 NaN or infinite value"),
    ("targets_fit_nothing", r"fit neither task"),
    ("unknown_task", r"Unknown task. Received: task='ranking'"),
])
def test_data_that_does_not_fit_the_model_is_refused_before_any_training(case, message):
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    labels, task = np.zeros(16, "int64"), "auto"
    if case == "two_outputs":
        model = keras.Model(inputs, [keras.layers.Dense(3, name="a")(inputs),
                                     keras.layers.Dense(1, name="b")(inputs)])
    elif case == "labels_out_of_range":
        labels, task = np.arange(16) % 11 - 3, "classification"
    elif case == "wrong_input_shape":
        x = np.zeros((16, 5), "float32")
    elif case == "nan_inputs":
        x[3, 1] = np.nan
    elif case == "targets_fit_nothing":
        labels = np.zeros((16, 7), "float32")
    elif case == "unknown_task":
        task = "ranking"
    with pytest.raises(ValueError, match=message):
        compress(model, (x, labels, x, labels), task=task, verbose=0)


def _two_in_two_out(n=160):
    """Two inputs, a classifier head and a regression head whose names the converter
    sorts the other way round in the file (``zz_class`` after ``aa_value``)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    a, b = keras.Input((8,), name="signal"), keras.Input((4,), name="meta")
    h = keras.layers.Dense(24, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], [keras.layers.Dense(3, activation="softmax", name="zz_class")(h),
                                 keras.layers.Dense(2, name="aa_value")(h)])
    x = [rng.normal(size=(n, 8)).astype("float32"), rng.normal(size=(n, 4)).astype("float32")]
    y = [(x[0][:, 0] > 0).astype("int64") + (x[1][:, 0] > 1), x[0][:, :2] * 0.5 + x[1][:, 2:]]
    model.compile("adam", ["sparse_categorical_crossentropy", "mse"])
    model.fit(x, y, epochs=8, verbose=0)
    return model, x, y


def test_a_two_input_two_output_model_is_compressed_with_a_loss_and_a_score_per_output(tmp_path):
    model, x, y = _two_in_two_out()
    k = 128
    # Training data keyed by name in another order, test data as lists in model order.
    data = ({"meta": x[1][:k], "signal": x[0][:k]}, {"aa_value": y[1][:k], "zz_class": y[0][:k]},
            [x[0][k:], x[1][k:]], [y[0][k:], y[1][k:]])
    recipe = {"prune": {"kind": "unstructured", "sparsity": 0.5, "epochs": 1},
              "distill": {"alpha": 0.5}, "quantize": {"method": "qat", "epochs": 1},
              "benchmark": None}
    result = compress(model, data, recipe=recipe, output_dir=tmp_path / "out", verbose=0)
    assert result.task == "multi_output"
    keras_scores = result.stages[0]["outputs"]
    assert set(keras_scores) == {"zz_class", "aa_value"}
    pred = model.predict([x[0][k:], x[1][k:]], verbose=0)
    assert keras_scores["zz_class"]["accuracy"] == pytest.approx(
        float(np.mean(np.argmax(pred[0], -1) == y[0][k:])))
    assert keras_scores["aa_value"]["mse"] == pytest.approx(
        float(np.mean((pred[1] - y[1][k:]) ** 2)), rel=1e-5)
    # The file's outputs are matched to the Keras outputs by the signature, not by order:
    # each int8 score is close to the final Keras model's score of the same output.
    final = result.stages[-1]["outputs"]
    for path in ("xnnpack", "reference"):
        scores = result.int8_outputs[path]
        assert abs(scores["zz_class"]["accuracy"] - final["zz_class"]["accuracy"]) <= 2 / 32
        assert scores["aa_value"]["mse"] == pytest.approx(final["aa_value"]["mse"], rel=0.1)
    assert "zz_class" in result.table() and "aa_value MSE" in result.table()
    assert (tmp_path / "out" / "report.md").exists()
    assert json.loads((tmp_path / "out" / "result.json").read_text())["task"] == "multi_output"


def test_a_model_with_dict_outputs_is_compressed_through_qat_with_scores_by_key():
    # Outputs written as a dict: Keras orders them by key; after QAT the output layers
    # are FakeQuants named quant_out_<name> (a KeyError in the scores once).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = keras.Input((12,), name="feats")
    h = keras.layers.Dense(32, activation="relu")(inputs)
    model = keras.Model(inputs, {"score": keras.layers.Dense(1, name="score")(h),
                                 "cls": keras.layers.Dense(3, name="cls")(h)})
    x = rng.normal(size=(192, 12)).astype("float32")
    y = {"score": x[:, :1] * 0.5, "cls": (x[:, 1] > 0).astype("int64") + (x[:, 2] > 1)}
    model.compile("adam", {"score": "mse",
                           "cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    model.fit(x, y, epochs=4, verbose=0)
    test_y = {k: v[128:] for k, v in y.items()}
    recipe = {"quantize": {"method": "qat", "epochs": 1}, "benchmark": None}
    result = compress(model, (x[:128], {k: v[:128] for k, v in y.items()}, x[128:], test_y),
                      recipe=recipe, verbose=0)
    assert result.task == "multi_output"
    pred = model.predict(x[128:], verbose=0)
    first = result.stages[0]["outputs"]
    assert first["cls"]["accuracy"] == pytest.approx(
        float(np.mean(np.argmax(pred["cls"], -1) == test_y["cls"])))
    assert first["score"]["mse"] == pytest.approx(
        float(np.mean((pred["score"] - test_y["score"]) ** 2)), rel=1e-5)
    final = result.stages[-1]["outputs"]
    for path in ("xnnpack", "reference"):
        scores = result.int8_outputs[path]
        assert abs(scores["cls"]["accuracy"] - final["cls"]["accuracy"]) <= 2 / 64
        assert scores["score"]["mse"] == pytest.approx(final["score"]["mse"], rel=0.1)


def test_one_hot_targets_of_a_softmax_classifier_make_a_classification():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 10)).astype("float32")
    labels = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
    one_hot = np.eye(3, dtype="float32")[labels]
    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(16, activation="relu")(inputs)))
    model.compile("adam", "categorical_crossentropy")
    model.fit(x, one_hot, epochs=4, verbose=0)
    result = compress(model, (x[:128], one_hot[:128], x[128:], one_hot[128:]),
                      recipe=PTQ_ONLY, verbose=0)
    assert result.task == "classification"
    pred = np.argmax(model.predict(x[128:], verbose=0), -1)
    assert result.stages[0]["accuracy"] == pytest.approx(float(np.mean(pred == labels[128:])))
    # Told it is a regression, the same rows stay targets of the output's shape.
    result = compress(model, (x[:128], one_hot[:128], x[128:], one_hot[128:]),
                      recipe=PTQ_ONLY, verbose=0, task="regression")
    assert result.task == "regression" and result.stages[0]["accuracy"] is None


def test_a_two_input_classifier_is_scored_and_validated_with_its_labels():
    model, x, y = _two_in_two_out(n=96)
    classifier = keras.Model(model.inputs, model.outputs[0])
    result = compress(classifier, (x, y[0], x, y[0]), recipe=PTQ_ONLY | {"validate": {}},
                      verbose=0)
    assert result.task == "classification"
    pred = np.argmax(classifier.predict(x, verbose=0), -1)
    assert result.stages[0]["accuracy"] == pytest.approx(float(np.mean(pred == y[0])))
    assert abs(result.validation.reference.accuracy - result.stages[-1]["accuracy"]) <= 2 / 96


def test_refits_of_a_two_input_model_read_both_inputs():
    # Low-rank and channel-pruning reconstruction read the layers' inputs through the
    # model, so they get one array per model input.
    model, x, y = _two_in_two_out(n=64)
    recipe = {"lowrank": {"ratio": 0.5, "reconstruct": True, "epochs": 0},
              "prune": {"kind": "channels", "sparsity": 0.25, "reconstruct": True, "epochs": 1},
              "quantize": {"method": "ptq"}, "benchmark": None}
    result = compress(model, (x, y, x, y), recipe=recipe, verbose=0)
    assert [s["stage"] for s in result.stages] == ["original", "lowrank", "prune", "quantize"]
    assert result.stages[1]["factored_layers"] >= 1
    assert result.stages[2]["params"] < result.stages[0]["params"]
    assert set(result.int8_outputs["reference"]) == {"zz_class", "aa_value"}


@pytest.mark.parametrize("task, data_case, message", [
    ("classification", "ok", r"has 2 outputs .*pass task='auto' or a list"),
    (["classification"], "ok", r"one of 'auto', 'classification', 'binary', 'regression' per output"),
    (["regression", "regression"], "ok", r"output 'zz_class' fit neither task"),
    ("auto", "x_one_array", r"`x_train` needs one array per model input \['signal', 'meta'\]"),
    ("auto", "x_missing_name", r"Missing: \['meta'\]"),
    ("auto", "y_swapped", r"output 'zz_class' fit neither task"),
])
def test_data_and_tasks_of_a_multi_output_model_are_checked_before_training(
        task, data_case, message):
    model, x, y = _two_in_two_out(n=16)
    xs, ys = list(x), list(y)
    if data_case == "x_one_array":
        xs = x[0]
    elif data_case == "x_missing_name":
        xs = {"signal": x[0]}
    elif data_case == "y_swapped":
        ys = [y[1], y[0]]
    with pytest.raises(ValueError, match=message):
        compress(model, (xs, ys, xs, ys), task=task, verbose=0)
    tasks = compression.output_tasks(model, compression.CompressionData.from_any(
        (x, y, x, y), inputs=["signal", "meta"], outputs=["zz_class", "aa_value"]))
    assert tasks == ("classification", "regression")


def test_search_refuses_a_regression_model():
    from tfcompress import search

    model, data = _regression_mlp()
    with pytest.raises(ValueError, match=r"search\(\) ranks recipes by top-1 accuracy"):
        search(model, data, verbose=0)


PTQ_ONLY = {"quantize": {"method": "ptq"}, "validate": None, "benchmark": None}


def test_a_second_run_on_one_output_is_refused_naming_the_first_ones_pid(digits_model, tmp_path):
    import os

    from tfcompress import _io

    model, ds = digits_model
    with _io.exclusive_lock(tmp_path / "o.partial.lock", what="o"):
        with pytest.raises(BlockingIOError, match=f"pid {os.getpid()}"):
            tc.compress(model, ds, recipe=PTQ_ONLY, output_dir=tmp_path / "o", verbose=0)
    assert not (tmp_path / "o.partial").exists()


def test_a_kill_while_writing_the_results_resumes_instead_of_retraining(
        digits_model, tmp_path, monkeypatch):
    model, ds = digits_model
    out = tmp_path / "o"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(compression, "_publish", killed)
    with pytest.raises(KeyboardInterrupt) as info:
        tc.compress(model, ds, recipe=PTQ_ONLY, output_dir=out, verbose=0)
    assert "run the same command again to resume" in " ".join(info.value.__notes__)
    state = json.loads((tmp_path / "o.partial" / "state.json").read_text())
    assert [c["step"] for c in state["completed"]] == ["quantize"]
    assert not out.exists()
    monkeypatch.undo()
    trained = []
    monkeypatch.setitem(compression._TRAINING_STEPS, "quantize",
                        lambda *a: trained.append(1) or pytest.fail("retrained"))
    r = tc.compress(model, ds, recipe=PTQ_ONLY, output_dir=out, verbose=0)
    assert not trained and r.stages[1] == state["completed"][0]["metrics"]
    assert (out / "model_int8.tflite").read_bytes() == r.tflite
    assert not (tmp_path / "o.partial").exists() and not (tmp_path / "o.partial.lock").exists()
    assert not {"steps", "state.json"} & {p.name for p in out.iterdir()}


def test_an_output_another_run_created_meanwhile_is_never_replaced(
        digits_model, tmp_path, monkeypatch):
    model, ds = digits_model
    out = tmp_path / "o"
    write = compression._write_outputs

    def and_someone_else_writes_the_output(work, *args):
        write(work, *args)
        out.mkdir()  # empty: a plain rename would replace it silently

    monkeypatch.setattr(compression, "_write_outputs", and_someone_else_writes_the_output)
    with pytest.raises(FileExistsError, match="created while this run worked") as info:
        tc.compress(model, ds, recipe=PTQ_ONLY, output_dir=out, verbose=0)
    assert "resume" in " ".join(info.value.__notes__)
    assert out.is_dir() and not list(out.iterdir())
    assert (tmp_path / "o.partial" / "final" / "model_int8.tflite").exists()


def test_a_run_that_fails_before_any_step_leaves_nothing(digits_model, tmp_path, monkeypatch):
    model, ds = digits_model

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(compression._TRAINING_STEPS, "quantize", broken)
    with pytest.raises(RuntimeError, match="disk on fire") as info:
        tc.compress(model, ds, recipe=PTQ_ONLY, output_dir=tmp_path / "o", verbose=0)
    assert "was removed" in " ".join(info.value.__notes__)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, error, message", [
    ({"learning_rate": float("nan")}, ValueError, r"learning_rate` must be a positive finite number. Received: learning_rate="),
    ({"learning_rate": -1e-3}, ValueError, r"learning_rate` must be a positive finite number. Received: learning_rate="),
    ({"batch_size": 0}, ValueError, r"batch_size` must be a positive integer. Received: 0"),
    ({"batch_size": True}, ValueError, r"batch_size` must be a positive integer"),
    ({"recipe": {"benchmark": {"runs": -5}}}, ValueError, r"benchmark.runs must be a positive"),
    ({"recipe": {"quantize": {"epochs": True}}}, TypeError, r"quantize.epochs must be an integer"),
])
def test_arguments_are_refused_before_any_training(digits_model, tmp_path, monkeypatch, kwargs,
                                                   error, message):
    model, ds = digits_model
    monkeypatch.setattr(compression, "_train", lambda *a: pytest.fail("trained"))
    with pytest.raises(error, match=message):
        tc.compress(model, ds, output_dir=tmp_path / "o", verbose=0, **kwargs)


def test_an_output_dir_inside_a_file_is_refused_before_any_training(digits_model, tmp_path):
    model, ds = digits_model
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="which is a file, not a folder"):
        tc.compress(model, ds, output_dir=tmp_path / "file" / "sub", verbose=0)


def test_a_model_with_an_input_of_unknown_length_is_compressed_at_the_datas_length():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = keras.Input((None, 8), name="frames")
    h = keras.layers.Conv1D(8, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(h)))
    x = rng.normal(size=(96, 20, 8)).astype("float32")
    y = (x[:, :, 0].mean(1) > 0).astype("int64")
    result = compress(model, (x[:64], y[:64], x[64:], y[64:]), recipe=PTQ_ONLY, verbose=0)
    assert result.task == "classification"
    interpreter = tc.runtime.make_interpreter(result.tflite, xnnpack=True)
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, 20, 8]


def _binary_mlp(labels: int = 1, logits: bool = False):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype("float32")
    y = np.stack([x[:, i] + 0.5 * x[:, i + 1] > 0 for i in range(labels)], 1).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(labels, activation=None if logits else "sigmoid")])
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=logits))
    model.fit(x, y, epochs=30, verbose=0)
    return model, (x, y, x[:64], y[:64])


def test_a_sigmoid_classifier_is_binary_not_a_regression_of_its_probability():
    model, (x, y, xt, yt) = _binary_mlp()
    data = compression.CompressionData.from_any((x, y[:, 0].astype("int64"), xt,
                                                 yt[:, 0].astype("int64")))
    assert compression.detect_task(model, data) == "binary"  # 1-D labels too
    result = compress(model, (x, y, xt, yt), verbose=0, recipe={
        "quantize": {"method": "qat", "epochs": 1}, "distill": {"temperature": 1.0, "alpha": 0.5},
        "validate": {}, "benchmark": None})
    assert result.task == "binary"
    expected = float(np.mean((model.predict(xt, verbose=0) > 0.5) == (yt > 0.5)))
    assert result.stages[0]["accuracy"] == pytest.approx(expected) and expected > 0.85
    assert all(s["accuracy"] > 0.8 for s in result.stages)
    int8 = result.int8_outputs["xnnpack"]
    assert list(int8.values())[0]["accuracy"] > 0.8
    assert "top-1" in result.table() and "max_error_steps_p99=48.0" in result.validation.checks
    loss = compression._loss(result.recipe, False, "binary")
    assert isinstance(loss, keras.losses.BinaryCrossentropy)


def test_multi_label_and_logit_outputs_are_binary_by_their_own_thresholds():
    model, data = _binary_mlp(labels=3)
    assert compression.detect_task(model, compression.CompressionData.from_any(data)) == "binary"
    # A row with a single 1 is not a one-hot class index for a sigmoid output.
    one = np.eye(3, dtype="float32")[np.arange(256) % 3]
    single = compression.CompressionData.from_any((data[0], one, data[2], one[:64]))
    assert compression.labels_from_one_hot(model, single) is single
    logits, (x, y, xt, yt) = _binary_mlp(logits=True)
    data = compression.CompressionData.from_any((x, y, xt, yt))
    # A linear output is a regression unless told: its 0/1 targets could be either.
    assert compression.detect_task(logits, data) == "regression"
    assert compression.detect_task(logits, data, task="binary") == "binary"
    assert compression._outputs_from_logits(logits, ("binary",)) == (True,)
    score = compression._output_score("binary", logits.predict(xt, verbose=0), yt, True)
    assert score["accuracy"] == pytest.approx(
        float(np.mean((logits.predict(xt, verbose=0) > 0) == (yt > 0.5))))
    with pytest.raises(ValueError, match=r"task='binary' needs targets of 0 and 1"):
        compression.detect_task(logits, compression.CompressionData.from_any(
            (x, 2 * y, xt, 2 * yt)), task="binary")


def _tagger():
    """A per-token classifier: ids -> Embedding -> Conv1D -> a softmax per position."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    h = keras.layers.Conv1D(16, 3, padding="same", activation="relu")(
        keras.layers.Embedding(30, 8)(tokens))
    return keras.Model(tokens, keras.layers.Dense(5, activation="softmax")(h))


def test_labels_per_position_of_a_sequence_output_make_a_classification():
    # A tagger's (or a language model's) labels have the output's shape without the class
    # axis: they were taken for regression targets of the wrong shape and refused.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, (96, 10)).astype("int32")
    y = (x % 5).astype("int64")  # learnable: the class of each token is its id mod 5
    model = _tagger()
    assert compression.detect_task(model, compression.CompressionData.from_any(
        (x[:64], y[:64], x[64:], y[64:]))) == "classification"
    recipe = {"name": "tagger", "distill": {"temperature": 2.0, "alpha": 0.5},
              "quantize": {"method": "qat", "epochs": 1}, "validate": None, "benchmark": None}
    result = compress(model, (x[:64], y[:64], x[64:], y[64:]), recipe=recipe, verbose=0)
    assert result.task == "classification"
    pred = tc.runtime.predict(tc.runtime.make_interpreter(result.tflite, xnnpack=True), x[64:])[0]
    assert pred.shape == (32, 10, 5)
    accuracy = float(np.mean(pred.argmax(-1) == y[64:]))
    assert abs(accuracy - result.stages[-1]["accuracy"]) < 0.05, (accuracy, result.stages[-1])
