import keras
import numpy as np
import pytest

import tfcompress as tc
from tfcompress import inspector, post_training, quantization, runtime
from tfcompress.pruning import ConstantSparsity, UpdatePruningStep, prune_low_magnitude, strip_pruning
from tfcompress.quantization import (FakeQuant, FreezeBatchNormStatistics, FreezeQuantizerRanges,
                                     QuantizeWrapper, quantize_annotate_layer, quantize_apply,
                                     quantize_model)

L = keras.layers


def _cnn(*, softmax=True, seed=0):
    """Conv+BN+ReLU, DepthwiseConv+BN+ReLU6, residual Add, whole-input pooling, Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.ReLU(6.0)(L.BatchNormalization()(y))
    y = L.Conv2D(8, 1)(y)
    x = L.ReLU()(L.Add()([x, y]))
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(L.AveragePooling2D(6)(x))
    return keras.Model(inputs, L.Dense(5, activation="softmax" if softmax else None)(x))


def _data(n=64, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 12, 12, 3).astype("float32") * 4 - 1, rng.randint(0, 5, n)


def _train(model, x, y, epochs=2, callbacks=()):
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def _fit_logits(model, x, y, epochs=2, callbacks=()):
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def test_qat_model_converts_without_calibration_to_a_fully_int8_single_partition():
    x, y = _data()
    qat = _train(quantize_model(_cnn()), x, y)
    result = tc.convert(qat, progress=False)
    report = result.report
    assert result.num_calibration_samples == 0
    assert not report.non_integer_tensors()
    for t in report.tensors:
        if t.is_constant and len(t.shape) >= 2:
            assert t.dtype == "int8", t
        elif t.is_constant and len(t.shape) == 1 and t.quantization and "bias" not in t.name.lower():
            assert t.dtype in ("int32", "int8"), t
        elif not t.is_constant:
            assert t.dtype == "int8", t
    assert "AVERAGE_POOL_2D" not in report.op_histogram and report.op_histogram["MEAN"] == 1
    delegation = runtime.delegation(result.model_bytes)
    assert delegation.num_partitions == 1
    assert [op for _, op, _ in delegation.left] == ["SOFTMAX"]


def test_transform_folds_batchnorm_and_does_not_quantize_between_conv_and_relu():
    qat = quantize_model(_cnn())
    report = qat.quantize_report
    assert len(report.folded_batchnorms) == 2
    assert all(bn.startswith("batch_normalization") for _, bn in report.folded_batchnorms)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in qat.layers)
    assert report.rewrites and "GlobalAveragePooling2D(keepdims=True)" in report.rewrites[0]
    kinds = [type(layer).__name__ for layer in qat.layers]
    for i, kind in enumerate(kinds):
        if kind == "QuantizeWrapper" and kinds[i + 1] == "ReLU":
            assert kinds[i + 2] == "FakeQuant"  # after the ReLU, never between
    softmax_quantizer = qat.layers[-1]
    assert isinstance(softmax_quantizer, FakeQuant) and softmax_quantizer.fixed_range == (
        0.0, 255.0 / 256.0)


def test_keras_qat_model_and_int8_tflite_agree_within_two_steps_on_logits():
    x, y = _data(96)
    qat = _fit_logits(quantize_model(_cnn(softmax=False)), x, y,
                      callbacks=[FreezeBatchNormStatistics(0)])
    int8 = tc.convert(qat, progress=False).model_bytes
    step = runtime.output_step(inspector.inspect(int8))
    keras_out = qat.predict(x, verbose=0)
    for xnnpack in (False, True):
        out = runtime.predict(runtime.make_interpreter(int8, xnnpack=xnnpack), x)[0]
        diff = np.abs(out - keras_out) / step
        assert np.mean(diff <= 2.0 + 1e-3) >= 0.99, (xnnpack, np.percentile(diff, [50, 99, 100]))
        assert np.mean(out.argmax(-1) == keras_out.argmax(-1)) >= 0.97


def test_separable_conv_is_split_into_depthwise_and_pointwise_halves():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    h = L.SeparableConv2D(8, 3, padding="same", use_bias=False, name="sep")(inputs)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.SeparableConv2D(6, 3, strides=2, depth_multiplier=2, name="sep2")(h)
    model = keras.Model(inputs, L.Dense(5)(L.Flatten()(h)))
    x, y = _data(96)
    qat = quantize_model(model)
    report = qat.quantize_report
    assert sum("SeparableConv2D -> DepthwiseConv2D + 1x1 Conv2D" in r for r in report.rewrites) == 2
    assert {"sep_depthwise", "sep_pointwise", "sep2_depthwise", "sep2_pointwise"} <= set(
        report.quantized)
    assert [p for p, _ in report.folded_batchnorms] == ["sep_pointwise"]
    # Calibrated, the split model computes what the float model does, up to int8 steps.
    from tfcompress.post_training import post_training_quantize

    reference = model.predict(x, verbose=0)
    calibrated = post_training_quantize(model, x, progress=False).predict(x, verbose=0)
    assert np.abs(calibrated - reference).max() < 0.05 * np.abs(reference).max()
    qat = _fit_logits(qat, x, y, epochs=1)
    int8 = tc.convert(qat, progress=False)
    assert not int8.report.non_integer_tensors()
    assert int8.report.op_histogram["DEPTHWISE_CONV_2D"] == 2
    assert runtime.delegation(int8.model_bytes).num_partitions == 1


def test_qat_model_saves_and_loads_with_plain_load_model(tmp_path):
    x, y = _data()
    qat = _train(quantize_model(_cnn()), x, y, epochs=1)
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert tc.convert(loaded, progress=False).model_bytes == tc.convert(qat, progress=False).model_bytes


def test_sequential_and_nested_models_are_quantized():
    seq = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(4, 3, activation="relu"),
                            L.Flatten(), L.Dense(3)])
    inner = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(4, 3), L.ReLU()], name="inner")
    inputs = keras.Input((6, 6, 2))
    nested = keras.Model(inputs, L.Dense(3)(L.Flatten()(inner(inputs))))
    rng = np.random.RandomState(0)
    x = rng.rand(32, 6, 6, 2).astype("float32")
    for model in (seq, nested):
        qat = _fit_logits(quantize_model(model), x, rng.randint(0, 3, 32), epochs=1)
        assert sum(isinstance(layer, QuantizeWrapper) for layer in qat.layers) == 2
        assert not tc.convert(qat, progress=False).report.non_integer_tensors()


def test_subclassed_model_error_says_how_to_make_it_functional():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed model of class Net. Rebuild it with the "
                                         "Functional API"):
        quantize_model(Net())


def test_unsupported_layer_is_named_with_class_position_and_supported_list():
    inputs = keras.Input((5, 4, 2))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(L.ConvLSTM1D(3, 2, name="rnn")(inputs))))
    with pytest.raises(ValueError, match=r"'rnn' \(class ConvLSTM1D, position 1\) cannot be quantized\. "
                                         r"Supported: Dense, Conv1D"):
        quantize_model(model)


@pytest.mark.parametrize("make, message", [
    (lambda: quantize_model(_cnn(), scheme="default_8bits"), "scheme='default_8bits'"),
    (lambda: FakeQuant(num_bits=4), "num_bits=4"),
    (lambda: FakeQuant(decay=1.5), "decay=1.5"),
    (lambda: FreezeQuantizerRanges(-1), "after_steps=-1"),
])
def test_bad_arguments_are_clear_value_errors(make, message):
    with pytest.raises(ValueError, match="Received: " + message.replace(".", r"\.")):
        make()


def test_selective_quantization_lists_layers_left_in_float():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    x = quantize_annotate_layer(L.Dense(4, activation="relu", name="q"))(inputs)
    model = keras.Model(inputs, L.Dense(2, name="kept_float")(x))
    qat = quantize_apply(model)
    assert qat.quantize_report.quantized == ("q",)
    assert qat.quantize_report.left_in_float == ("kept_float",)


def test_custom_layer_with_quantize_config():
    @keras.saving.register_keras_serializable(package="tests")
    class Scale(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), name="w")

        def call(self, x):
            return x * self.w

    @keras.saving.register_keras_serializable(package="tests")
    class ScaleConfig(quantization.QuantizeConfig):
        def get_weights_to_quantize(self, layer):
            return [layer.w]

    inputs = keras.Input((4,))
    model = keras.Model(inputs, quantize_annotate_layer(Scale(), ScaleConfig())(inputs))
    qat = quantize_apply(model)
    qat.predict(np.ones((2, 4), "float32"), verbose=0)
    w = qat.layers[2].layer.w.numpy()
    step = np.abs(w).max() / 127
    np.testing.assert_allclose(w / step, np.round(w / step), atol=1e-3)


def test_pruned_model_keeps_its_zeros_through_qat_and_conversion():
    x, y = _data()
    pruned = prune_low_magnitude(_cnn(softmax=False),
                                 pruning_schedule=ConstantSparsity(0.6, 0, frequency=1))
    _fit_logits(pruned, x, y, epochs=1, callbacks=[UpdatePruningStep()])
    qat = _fit_logits(quantize_model(strip_pruning(pruned)), x, y, epochs=2)
    wrappers = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    for w in wrappers:
        if w.layer.kernel.shape[-2] > 1:
            kernel = (w.layer.kernel * w.sparsity_mask).numpy()
            assert np.mean(kernel == 0) == pytest.approx(0.6, abs=0.02), w.name
    int8 = tc.convert(qat, progress=False).model_bytes
    assert inspector.inspect(int8).zero_weight_fraction > 0.5


def test_freeze_callbacks_stop_ranges_and_batchnorm_statistics():
    x, y = _data()
    qat = _fit_logits(quantize_model(_cnn(softmax=False)), x, y, epochs=1)
    quantizer = next(layer for layer in qat.layers if isinstance(layer, FakeQuant))
    wrapper = next(layer for layer in qat.layers
                   if isinstance(layer, QuantizeWrapper) and layer.batchnorm is not None)
    before = (quantizer.min_value.numpy(), quantizer.max_value.numpy(),
              wrapper.batchnorm.moving_mean.numpy().copy())
    _fit_logits(qat, x * 3, y, epochs=1,
                callbacks=[FreezeQuantizerRanges(0), FreezeBatchNormStatistics(0)])
    assert (quantizer.min_value.numpy(), quantizer.max_value.numpy()) == before[:2]
    np.testing.assert_array_equal(wrapper.batchnorm.moving_mean.numpy(), before[2])


def test_first_batch_sets_the_range_of_raw_pixel_inputs():
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(L.Conv2D(2, 2)(inputs))))
    qat = _fit_logits(quantize_model(model), np.full((8, 4, 4, 1), 255.0, "float32"),
                      np.zeros(8), epochs=1)
    first = qat.layers[1]
    assert first.max_value.numpy() == pytest.approx(255.0, rel=0.01)


@pytest.mark.parametrize("estimator", ["minmax", "moving_average", "percentile", "mse"])
def test_estimators_return_ranges_that_contain_zero_and_clip_outliers(estimator):
    rng = np.random.RandomState(0)
    batches = [np.abs(rng.randn(50_000)) for _ in range(4)] + [np.array([50.0])]
    lo, hi = post_training.estimate_range(batches, estimator)
    assert lo == 0.0 and hi > 1.0
    if estimator in ("percentile", "mse"):
        assert hi < 50.0  # the lone outlier is clipped
    if estimator == "minmax":
        assert hi == 50.0


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="estimator='max'"):
        post_training.estimate_range([np.ones(3)], "max")


def test_post_training_quantization_through_the_qat_path_matches_float(resnet8_h5, cifar):
    model = keras.models.load_model(resnet8_h5, compile=False)
    x = cifar["x_test"][:200].astype("float32")
    ptq = post_training.post_training_quantize(model, cifar["x_train"][:200].astype("float32"),
                                              progress=False)
    int8 = tc.convert(ptq, progress=False)
    assert not int8.report.non_integer_tensors() and int8.num_calibration_samples == 0
    out = runtime.predict(runtime.make_interpreter(int8.model_bytes), x)[0]
    agree = np.mean(out.argmax(-1) == model.predict(x, verbose=0).argmax(-1))
    assert agree >= 0.95, agree
    assert runtime.delegation(int8.model_bytes).num_partitions == 1


def test_bias_correction_removes_the_mean_shift_of_weight_rounding():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 3, kernel_initializer=keras.initializers.RandomUniform(0.0, 0.02))(inputs)
    model = keras.Model(inputs, L.Dense(4)(L.Flatten()(x)))
    model.layers[1].kernel.assign(model.layers[1].kernel.numpy() + np.float32(0.0037))
    x = np.random.RandomState(0).rand(64, 8, 8, 4).astype("float32")
    reference = model.predict(x, verbose=0)

    def bias_error(bias_correction):
        ptq = post_training.post_training_quantize(model, x, bias_correction=bias_correction,
                                                  progress=False)
        # Compare with weight rounding only: activations pass through unquantized.
        for layer in ptq.layers:
            if isinstance(layer, FakeQuant):
                layer.calibrating.assign(1.0)
        return np.abs((ptq.predict(x, verbose=0) - reference).mean(axis=0)).mean()

    assert bias_error(True) < 0.5 * bias_error(False)


def test_cross_layer_equalization_keeps_the_function_and_equalizes_ranges():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, use_bias=False, name="a")(inputs)
    x = L.ReLU()(L.BatchNormalization(name="bn")(x))
    x = L.Conv2D(5, 1, name="b")(x)
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(x)))
    bn = model.get_layer("bn")
    bn.gamma.assign(np.array([0.1, 5.0, 1.0, 0.01, 2.0, 1.0], "float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 6).astype("float32"))
    x = np.random.RandomState(0).rand(16, 8, 8, 3).astype("float32")
    qat = quantize_model(model)
    for layer in qat.layers:
        if isinstance(layer, FakeQuant):
            layer.calibrating.assign(1.0)
    wrappers = {w.layer.name: w for w in qat.layers if isinstance(w, QuantizeWrapper)}
    # Compare float functions: weights unquantized too.
    before = model.predict(x, verbose=0)
    pairs = post_training.equalize(qat)
    assert ("a", "b") in pairs
    r_a = post_training._output_channel_ranges(wrappers["a"])
    r_b = post_training._input_channel_ranges(wrappers["b"])
    np.testing.assert_allclose(r_a, r_b, rtol=1e-5)
    float_model = keras.Model(qat.inputs, qat.outputs)
    after = float_model.predict(x, verbose=0)
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()


def test_concatenate_inputs_share_the_output_range_as_in_tflite():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = L.Conv2D(6, 3, padding="same")(inputs)
    x = L.Conv2D(5, 1)(L.Concatenate(name="cat")([a, b]))
    model = keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
    x = np.random.RandomState(0).rand(64, 8, 8, 3).astype("float32") * 3
    qat = post_training.post_training_quantize(model, x, progress=False)
    kinds = [type(layer).__name__ for layer in qat.layers]
    cat = kinds.index("Concatenate")
    assert kinds[cat - 2:cat + 2] == ["QuantizeWrapper", "QuantizeWrapper", "Concatenate",
                                      "FakeQuant"]
    result = tc.convert(qat, progress=False)
    report = result.report
    op = next(op for op in report.ops if op.op == "CONCATENATION")
    scales = {report.tensors[t].quantization.scale for t in op.inputs + op.outputs}
    assert len(scales) == 1
    assert runtime.delegation(result.model_bytes).fully_delegated


def test_strip_quantization_gives_the_folded_float_model():
    x, y = _data()
    qat = post_training.post_training_quantize(_cnn(softmax=False), x, progress=False)
    stripped = quantization.strip_quantization(qat)
    assert not quantization.is_quantized(stripped)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in stripped.layers)
    float_out = _cnn(softmax=False).predict(x, verbose=0)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), float_out, rtol=1e-4, atol=1e-4)


def test_int16x8_scheme_converts_through_the_stripped_model():
    x, y = _data()
    qat = _fit_logits(quantize_model(_cnn(softmax=False), scheme="int16x8"), x, y, epochs=1)
    assert {layer.num_bits for layer in qat.layers if isinstance(layer, FakeQuant)} == {16}
    result = tc.convert(qat, mode="int16x8", representative_data=x, progress=False)
    activations = {t.dtype for t in result.report.tensors if not t.is_constant}
    assert activations == {"int16"}
    out = runtime.predict(runtime.make_interpreter(result.model_bytes, xnnpack=False), x)[0]
    ref = quantization.strip_quantization(qat).predict(x, verbose=0)
    assert np.mean(out.argmax(-1) == ref.argmax(-1)) >= 0.95


def test_recording_runs_in_float_and_hands_back_what_each_quantizer_saw():
    x, _ = _data(8)
    qat = quantize_model(_cnn(softmax=False))
    learned = [layer for layer in qat.layers if isinstance(layer, FakeQuant)]
    with quantization.recording(qat, bias_shifts=True) as seen:
        assert seen.activations == [] and seen.bias_shifts == []  # filled in at the end
        qat(x[:4], training=False)
        qat(x[4:], training=False)
    recorded = {q.name: samples for q, samples in seen.activations}
    assert set(recorded) == {q.name for q in learned}
    assert all(len(s) == 2 for s in recorded.values())
    np.testing.assert_array_equal(recorded[learned[0].name][0], x[:4].ravel())  # the input
    wrappers = [w for w, _ in seen.bias_shifts]
    assert wrappers == [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert all(len(s) == 2 and s[0].shape == (w.layer.kernel.shape[-1] * (
        w.layer.kernel.shape[-2] if "depthwise" in w.name else 1),)
        for w, s in seen.bias_shifts)
    assert all(float(q.calibrating.numpy()) == 0.0 for q in learned)  # set back
    assert learned[0].stop_recording() == []  # recording stopped
    qat(x[:1], training=False)
    assert learned[0].stop_recording() == []


def test_fake_quant_recording_and_set_range_are_public():
    q = FakeQuant(name="q")
    q.build((None, 3))
    q.start_recording()
    q(np.array([[-1.0, 0.5, 2.0]], "float32"), training=False)
    (sample,) = q.stop_recording()
    np.testing.assert_array_equal(sample, [-1.0, 0.5, 2.0])
    q.set_range(-1.0, 2.0)
    assert (float(q.min_value.numpy()), float(q.max_value.numpy()), float(q.initialized.numpy())) == (
        -1.0, 2.0, 1.0)


def test_post_training_quantize_takes_the_inputs_of_a_two_input_model_as_a_dict_or_a_list():
    from tfcompress.post_training import post_training_quantize

    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,), name="zeta"), keras.Input((3,), name="alpha")
    h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], [keras.layers.Dense(2)(h), keras.layers.Dense(4)(h)])
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 3)).astype("float32")]
    by_dict = post_training_quantize(model, {"alpha": x[1], "zeta": x[0]}, progress=False)
    by_list = post_training_quantize(model, x, progress=False)
    np.testing.assert_array_equal(by_dict.predict(x, verbose=0)[1], by_list.predict(x, verbose=0)[1])
    with pytest.raises(ValueError, match=r"names the inputs \['zeta'\]; the model's inputs are "
                                         r"\['zeta', 'alpha'\]"):
        post_training_quantize(model, {"zeta": x[0]}, progress=False)


def test_a_range_learned_from_infinite_values_stays_finite():
    """The RSQRT of a variance fake-quantized to 0 is inf in a QAT model (int8 kernels
    saturate): the range comes from the finite values, and the output is clamped."""
    fq = FakeQuant()
    x = np.array([[1.0, -2.0, np.inf, 3.0]], "float32")
    out = np.asarray(fq(x, training=True))
    assert float(fq.min_value.numpy()) == -2.0 and float(fq.max_value.numpy()) == 3.0
    assert np.all(np.isfinite(out)) and abs(out[0, 2] - 3.0) < 0.02


def test_layernorm_on_feature_maps_trains_and_converts_instead_of_crashing_the_converter():
    """Measured: one QAT step made a quantizer's range inf (a pixel whose channels were
    all 0 after ReLU, so its variance rounded to 0), and TFLite's converter died on the
    resulting scale with SIGSEGV."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((20, 20, 3))
    x = L.LayerNormalization()(L.Conv2D(4, 3, padding="same", activation="relu")(inputs))
    x = L.GlobalAveragePooling2D()(L.Conv2D(8, 5, padding="same")(L.Conv2D(8, 1)(x)))
    model = keras.Model(inputs, L.Dense(5, activation="softmax")(L.Dense(16)(x)))
    x = np.random.default_rng(0).uniform(-1, 1, (32, 20, 20, 3)).astype("float32")
    qat = quantization.quantize_model(model)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x[:16], np.zeros(16), epochs=1, verbose=0)
    assert all(np.all(np.isfinite(v.numpy())) for v in qat.variables)
    result = tc.convert(qat, progress=False)
    want = np.asarray(qat(x[16:], training=False))
    step = result.report.outputs[0].quantization.scale[0]
    for xnnpack in (True, False):
        got = runtime.predict(runtime.make_interpreter(result.model_bytes, xnnpack=xnnpack), x[16:])[0]
        assert np.max(np.abs(got - want)) <= 2 * step + 1e-6


def test_a_model_with_an_infinite_range_is_refused_before_the_converter_sees_it(tiny_dense):
    qat = quantization.quantize_model(tiny_dense)
    x = np.random.default_rng(0).uniform(-1, 1, (16, 6)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((16, 3)), epochs=1, verbose=0)
    quantizer = next(layer for layer in qat.layers if isinstance(layer, FakeQuant))
    quantizer.max_value.assign(np.inf)
    with pytest.raises(tc.ConversionError, match=r"inf or NaN: .*max.*Training diverged"):
        tc.convert(qat, progress=False)
