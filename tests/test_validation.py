import json

import numpy as np
import pytest

from tfcompress import runtime
from tfcompress.validation import Thresholds, validate


@pytest.fixture(scope="module")
def published(models_dir, cifar):
    return validate(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite",
                    cifar["x_test"].astype("float32"), y=cifar["y_test"],
                    reference=models_dir / "mlperf_tiny_resnet8_cifar10_float.tflite", progress=False)


def test_published_resnet8_numbers_on_both_kernel_paths(published):
    assert published.num_samples == 1000
    assert published.xnnpack.accuracy == pytest.approx(0.878, abs=0.002)
    assert 0.85 < published.reference.accuracy < 0.90
    # The two kernel paths disagree on some images: reported, not hidden.
    assert published.xnnpack_vs_reference_top1_agreement < 1.0
    assert published.xnnpack_vs_reference_within_2_steps < 0.99
    assert published.fully_integer
    assert published.size_ratio == pytest.approx(98496 / 318144)


def test_xnnpack_leaves_average_pool_in_the_middle(published):
    d = published.delegation
    assert d.num_partitions == 2
    assert [op for _, op, _ in d.left] == ["AVERAGE_POOL_2D", "SOFTMAX"]
    assert "AVERAGE_POOL_2D" in d.describe()


def test_per_layer_error_lists_every_quantized_layer(published):
    ops = [e.op for e in published.per_layer]
    assert ops.count("CONV_2D") == 9 and "FULLY_CONNECTED" in ops
    assert all(e.rmse_over_scale >= 0 for e in published.per_layer)


def test_thresholds_turn_into_pass_and_fail(models_dir, cifar):
    x, y = cifar["x_test"][:100].astype("float32"), cifar["y_test"][:100]
    model = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    ok = validate(model, x, y=y, thresholds=Thresholds(min_accuracy=0.5, require_fully_integer=True),
                  per_layer=False, progress=False)
    assert ok.passed
    bad = validate(model, x, y=y, thresholds=Thresholds(min_accuracy=0.99), per_layer=False,
                   progress=False)
    assert not bad.passed and "accuracy on XNNPACK" in bad.failures[0]


def test_report_saves_as_json(tmp_path, published):
    path = published.save(tmp_path / "r.json")
    loaded = json.loads(path.read_text())
    assert loaded["passed"] is True and loaded["delegation"]["num_ops"] == 16
    with pytest.raises(FileExistsError):
        published.save(path)


def test_coral_mobilenet_top5_on_sample_images(models_dir, data_dir):
    from tfcompress.data import load_image_folder

    x, y, _ = load_image_folder(data_dir / "samples" / "imagenet_foolbox", size=(224, 224),
                                label_regex=r"_(\d+)\.\w+$")
    report = validate(models_dir / "coral_mobilenet_v2_1.0_224_quant.tflite", x, y=y + 1,
                      per_layer=False, progress=False)
    assert report.xnnpack.top5_accuracy == 1.0 and report.reference.top5_accuracy == 1.0
    assert report.xnnpack.accuracy >= 0.85
    # A uint8-quantized file is integer all through (issue 15: it was reported "no").
    assert report.fully_integer and not report.non_integer_tensors


@pytest.mark.parametrize("kwargs", [{"min_accuracy": 1.5}, {"min_xnnpack_agreement": -0.1},
                                    {"max_size_ratio": -1}])
def test_bad_thresholds(kwargs):
    with pytest.raises(ValueError, match="Received"):
        Thresholds(**kwargs)


def test_predict_maps_inputs_by_name(tiny_dense):
    from tfcompress import convert

    result = convert(tiny_dense, mode="float32", progress=False)
    interpreter = runtime.make_interpreter(result.model_bytes)
    x = np.ones((3, 6), np.float32)
    by_name = runtime.predict(interpreter, {"features": x})[0]
    np.testing.assert_allclose(by_name, runtime.predict(interpreter, x)[0])
    with pytest.raises(ValueError, match="No data for model input 'features'"):
        runtime.predict(interpreter, {"other": x})


def test_without_thresholds_the_default_checks_apply_and_a_good_file_passes(models_dir, cifar):
    report = validate(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite",
                      cifar["x_test"][:64].astype("float32"),
                      reference=models_dir / "mlperf_tiny_resnet8_cifar10_float.tflite",
                      per_layer=False, progress=False)
    assert report.checks.startswith("default: ") and "max_error_steps_p99=48.0" in report.checks
    assert report.passed and "checks: default" in report.summary()


def test_without_thresholds_a_file_far_from_its_reference_fails(models_dir, cifar):
    import keras

    from tfcompress import convert

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    unrelated = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x * 0.1))
    wrong_reference = convert(unrelated, mode="float32", progress=False).model_bytes
    report = validate(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite",
                      cifar["x_test"][:64].astype("float32"), reference=wrong_reference,
                      per_layer=False, progress=False)
    assert not report.passed
    assert any("p99 output error" in f for f in report.failures), report.failures


def test_data_of_the_wrong_shape_is_refused_not_resized(models_dir):
    model = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    with pytest.raises(ValueError, match=r"takes samples of shape \(32, 32, 3\); received data "
                                         r"of shape \(20, 5, 5, 3\)"):
        validate(model, np.zeros((20, 5, 5, 3), "float32"), progress=False)
    with pytest.raises(ValueError, match="No samples"):
        validate(model, np.zeros((0, 32, 32, 3), "float32"), progress=False)


def test_a_list_in_the_keras_order_reaches_the_right_inputs():
    import keras

    from tfcompress import convert

    keras.utils.set_random_seed(0)
    zeta, alpha = keras.Input((3,), name="zeta"), keras.Input((5,), name="alpha")
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([zeta, alpha]))
    model = keras.Model([zeta, alpha], out)
    interpreter = runtime.make_interpreter(convert(model, mode="float32", progress=False).model_bytes)
    x = [np.random.default_rng(0).normal(size=(4, 3)).astype("float32"),
         np.random.default_rng(1).normal(size=(4, 5)).astype("float32")]
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(runtime.predict(interpreter, x)[0], expected, atol=1e-5)
    np.testing.assert_allclose(runtime.predict(interpreter, {"zeta": x[0], "alpha": x[1]})[0],
                               expected, atol=1e-5)
    with pytest.raises(ValueError, match="same number of samples"):
        runtime.predict(interpreter, {"zeta": x[0], "alpha": x[1][:2]})


@pytest.mark.parametrize("labels, message", [
    ([1000] * 4, r"Labels must be in \[0, 10\) .* from 1000 to 1000"),
    ([-3, 0, 1, 2], r"from -3 to 2"),
    ([2.7, 0, 1, 2], "integer class indices"),
    ([0, 1], "one label per sample"),
])
def test_labels_that_cannot_index_the_outputs_are_refused(models_dir, cifar, labels, message):
    with pytest.raises(ValueError, match=message):
        validate(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite",
                 cifar["x_test"][:4].astype("float32"), y=np.asarray(labels), progress=False,
                 per_layer=False)


def test_a_reference_of_another_model_is_refused_before_running(models_dir, monkeypatch):
    monkeypatch.setattr(runtime, "predict", lambda *a, **k: pytest.fail("ran the models"))
    with pytest.raises(ValueError, match=r"The reference model does not match the model: its "
                                         r"inputs have sample shapes \[\(224, 224, 3\)\], the "
                                         r"model's \[\(32, 32, 3\)\]"):
        validate(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite",
                 np.zeros((2, 32, 32, 3), "float32"),
                 reference=models_dir / "coral_mobilenet_v2_1.0_224_quant.tflite", progress=False)


def test_both_kernel_paths_are_tried_in_one_child_before_validation(models_dir, monkeypatch):
    calls = []
    real = runtime._run_child
    monkeypatch.setattr(runtime, "_fork_is_safe", lambda: True)  # TensorFlow may be loaded
    monkeypatch.setattr(runtime, "_run_child",
                        lambda buf, kernels, *a, **k: calls.append(list(kernels)) or
                        real(buf, kernels, *a, **k))
    validate(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite",
             np.zeros((2, 32, 32, 3), "float32"), progress=False)
    assert calls == [["xnnpack", "reference"]]


def test_a_second_output_far_from_its_reference_fails_the_default_checks():
    # The error in steps covers every quantized output, each in its own step: the first
    # output being right does not make a file right.
    import keras

    from tfcompress import convert

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    first = keras.layers.Dense(4, activation="softmax", name="first")(h)
    second = keras.layers.Dense(3, name="second")(h)
    model = keras.Model(inputs, [first, second])
    x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    good = convert(model, representative_data=x, progress=False).verified
    assert validate(good, x, reference=model, progress=False).passed
    other = keras.models.clone_model(model)
    other.set_weights(model.get_weights())
    # Change the output that is not the file's first (the converter orders them its way).
    later = "first" if good.report.outputs[0].shape[-1] == 3 else "second"
    kernel, bias = other.get_layer(later).get_weights()
    other.get_layer(later).set_weights([-kernel, bias])  # same shapes, other answers
    report = validate(good, x, reference=other, progress=False)
    assert not report.passed and report.xnnpack.error_steps["p99"] > 48
    assert report.xnnpack.float_agreement > 0.95  # the file's first output is still right


def _with_changed_quantization(path, tensor_of_op, factor):
    """The file at ``path`` with one tensor's scale multiplied by ``factor``:
    ``tensor_of_op(graph, codes)`` picks the tensor index."""
    import flatbuffers

    from tfcompress import inspector
    from tfcompress._compat_litert import tflite_schema as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(path.read_bytes()), 0))
    graph = model.subgraphs[0]
    codes = [inspector.op_name(c) for c in model.operatorCodes]
    index, op_index = tensor_of_op(graph, codes)
    q = graph.tensors[index].quantization
    q.scale = [float(s) * factor for s in q.scale]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), op_index


def test_every_op_of_the_published_files_is_within_a_step_of_its_float_op(models_dir, cifar, data_dir):
    from PIL import Image

    from tfcompress.validation import op_errors

    errors = op_errors(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite",
                       cifar["x_test"][:8].astype("float32"), samples=4)
    ops = [e.op for e in errors]
    assert ops.count("CONV_2D") == 9 and "FULLY_CONNECTED" in ops and "SOFTMAX" in ops
    assert max(e.reference_steps for e in errors) <= 1.0
    assert max(e.xnnpack_steps for e in errors) <= 1.0
    # The third-party MobileNetV2: every op within a step on both paths, while the file's
    # two kernel paths end several steps apart at its softmax on the same images.
    coral = models_dir / "coral_mobilenet_v2_1.0_224_quant.tflite"
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224)), np.uint8)
                       for p in sorted((data_dir / "samples" / "imagenet_foolbox").glob("*.jpg"))[:4]])
    errors = op_errors(coral, images, samples=4)
    assert len(errors) == 66
    assert max(max(e.reference_steps, e.xnnpack_steps) for e in errors) <= 1.0
    from tfcompress import inspector

    step = runtime.output_step(inspector.inspect(coral))
    xnn = runtime.predict(runtime.make_interpreter(coral, xnnpack=True), images)[0]
    ref = runtime.predict(runtime.make_interpreter(coral, xnnpack=False), images)[0]
    assert np.abs(xnn - ref).max() / step > 2


def test_an_op_whose_file_contradicts_itself_is_named(models_dir, cifar):
    from tfcompress.validation import op_errors

    def second_conv_bias(graph, codes):
        convs = [i for i, op in enumerate(graph.operators) if codes[op.opcodeIndex] == "CONV_2D"]
        return int(graph.operators[convs[1]].inputs[2]), convs[1]

    # The int8 kernel derives the bias scale from its input and weight scales; the
    # float op reads the stored one: a file whose two disagree computes another function.
    broken, index = _with_changed_quantization(
        models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite", second_conv_bias, 3.0)
    errors = {e.index: e for e in op_errors(broken, cifar["x_test"][:4].astype("float32"))}
    assert errors[index].reference_steps > 2 and errors[index].xnnpack_steps > 2
    assert all(e.reference_steps <= 1 for i, e in errors.items() if i < index)
    report = validate(broken, cifar["x_test"][:4].astype("float32"),
                      thresholds=Thresholds(max_op_steps=1.0), progress=False)
    assert not report.passed and report.per_op
    assert f"worst #{index} CONV_2D" in report.failures[0], report.failures
    assert f"#{index}" in report.summary().split("each integer op vs its float op")[1]


def test_a_grid_too_narrow_for_its_values_shows_as_saturation(models_dir, cifar):
    from tfcompress.validation import op_errors

    def first_conv_output(graph, codes):
        first = next(i for i, op in enumerate(graph.operators) if codes[op.opcodeIndex] == "CONV_2D")
        return int(graph.operators[first].outputs[0]), first

    path = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    x = cifar["x_test"][:4].astype("float32")
    before = {e.index: e for e in op_errors(path, x)}
    narrow, index = _with_changed_quantization(path, first_conv_output, 0.1)
    after = {e.index: e for e in op_errors(narrow, x)}
    assert before[index].saturated < 0.001 and after[index].saturated > 0.01, (before[index], after[index])
    assert after[index].reference_steps <= 1  # clipped on its grid, as the float op rounds


def test_op_errors_skips_float_ops_and_refuses_no_samples(tiny_dense):
    from tfcompress import convert
    from tfcompress.validation import op_errors

    float_file = convert(tiny_dense, mode="float32", progress=False).model_bytes
    x = np.zeros((2,) + tuple(tiny_dense.input_shape[1:]), "float32")
    assert op_errors(float_file, x) == ()
    with pytest.raises(ValueError, match="`samples` must be at least 1. Received: samples=0"):
        op_errors(float_file, x, samples=0)


def test_labels_per_position_of_a_sequence_output_are_scored_per_position():
    # A tagger's labels (samples, steps) were refused: "Expected one label per sample".
    import keras

    import tfcompress as tc

    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32")
    model = keras.Model(tokens, keras.layers.Dense(4)(keras.layers.Embedding(20, 8)(tokens)))
    x = np.random.default_rng(0).integers(0, 20, (32, 6)).astype("int32")
    result = tc.convert(model, representative_data=x, progress=False)
    y = model.predict(x, verbose=0).argmax(-1)
    y[:, 0] = (y[:, 0] + 1) % 4  # one position in six wrong
    report = validate(result.model_bytes, x, y=y, progress=False, per_layer=False)
    assert abs(report.xnnpack.accuracy - 5 / 6) < 0.05
    with pytest.raises(ValueError, match=r"one per position of the output \(6,\)"):
        validate(result.model_bytes, x, y=y[:, :3], progress=False, per_layer=False)


def test_a_keras_reference_with_free_input_axes_takes_the_datas_size():
    import keras

    import tfcompress as tc

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 8))
    h = keras.layers.Conv1D(8, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(h)))
    x = np.random.default_rng(0).normal(size=(32, 12, 8)).astype("float32")
    result = tc.convert(model, representative_data=x, progress=False)
    report = validate(result.model_bytes, x, reference=model, progress=False, per_layer=False)
    assert report.xnnpack.error_steps is not None and report.passed, report.failures
