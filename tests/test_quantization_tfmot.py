"""tfmot's quantization API and documented behaviour, which a user switching by an import
relies on: its quantizers, its QuantizeConfig protocol, its argument names and errors."""

import keras
import numpy as np
import pytest

from tfcompress import default_8bit, quantization, quantizers
from tfcompress.quantization import (QuantizeAnnotate, QuantizeConfig, QuantizeWrapperV2,
                                     fix_input_output_range, quantize_annotate_layer,
                                     quantize_annotate_model, quantize_apply, quantize_model,
                                     quantize_scope, remove_input_range)
from tfcompress.quantizers import (AllValuesQuantizer, FixedQuantizer, LastValueQuantizer,
                                   MovingAverageQuantizer)

L = keras.layers


class KernelAndActivationConfig(QuantizeConfig):
    """A custom config written as tfmot's guide writes one (never registered with Keras)."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, LastValueQuantizer(num_bits=8, symmetric=True,
                                                  narrow_range=False, per_axis=False))]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, MovingAverageQuantizer(num_bits=8, symmetric=False,
                                                          narrow_range=False, per_axis=False))]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


class NothingConfig(QuantizeConfig):
    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        pass

    def get_config(self):
        return {}


class MyDense(L.Dense):
    pass


def _x(n=16, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype("float32")


# ---------------------------------------------------------------------------
# Quantizers.
# ---------------------------------------------------------------------------


def _apply(quantizer, batches, *, training=True):
    holder = L.Layer()
    variables = quantizer.build(batches[0].shape, "t", holder)
    out = None
    for batch in batches:
        out = np.asarray(quantizer(batch, training, variables))
    return out, {k: v.numpy() for k, v in variables.items()}


def test_last_value_quantizer_takes_the_batch_range_per_channel():
    x = np.array([[-2.0, 0.5], [1.0, 3.0]], "float32")
    out, ranges = _apply(LastValueQuantizer(8, per_axis=True, symmetric=True,
                                            narrow_range=True), [x])
    np.testing.assert_allclose(ranges["max_var"], [2.0, 3.0])
    np.testing.assert_allclose(ranges["min_var"], [-2.0, -3.0])
    np.testing.assert_allclose(out, x, atol=3.0 / 127)


def test_moving_average_quantizer_moves_its_range_by_a_thousandth():
    _, ranges = _apply(MovingAverageQuantizer(8, False, False, False),
                       [np.array([[-1.0, 10.0]], "float32")])
    assert ranges["max_var"] == pytest.approx(6.0 + (10.0 - 6.0) * 0.001)
    assert ranges["min_var"] == pytest.approx(-6.0 + (-1.0 + 6.0) * 0.001)


def test_all_values_quantizer_keeps_every_extreme_and_fixed_quantizer_never_moves():
    batches = [np.array([[-1.0, 2.0]], "float32"), np.array([[-0.5, 5.0]], "float32")]
    _, ranges = _apply(AllValuesQuantizer(8, False, False, False), batches)
    assert (float(ranges["min_var"]), float(ranges["max_var"])) == (-1.0, 5.0)
    out, _ = _apply(FixedQuantizer(8, init_min=-1.0, init_max=1.0, narrow_range=False),
                    [np.array([[-3.0, 0.25, 3.0]], "float32")])
    np.testing.assert_allclose(out, [[-1.0, 0.25, 1.0]], atol=2.0 / 255)


def test_quantizers_compare_by_config_as_tfmots_do():
    assert LastValueQuantizer(8, False, True, True) == LastValueQuantizer(8, False, True, True)
    assert LastValueQuantizer(8, False, True, True) != MovingAverageQuantizer(8, False, True, True)
    assert FixedQuantizer(8, -1.0, 1.0, False) != FixedQuantizer(8, -1.0, 2.0, False)


# ---------------------------------------------------------------------------
# A custom tfmot-protocol QuantizeConfig works unchanged.
# ---------------------------------------------------------------------------


def test_custom_tfmot_config_quantizes_kernel_and_activation_and_trains(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        quantize_annotate_layer(L.Dense(4, activation="relu", input_shape=(5,))),
        quantize_annotate_layer(MyDense(3, activation="relu"),
                                quantize_config=KernelAndActivationConfig()),
    ])
    qat = quantize_apply(quantize_annotate_model(model))
    wrapper = qat.layers[-1]
    assert isinstance(wrapper, QuantizeWrapperV2)
    assert isinstance(wrapper.quantize_config, KernelAndActivationConfig)
    x = _x()
    qat.compile("adam", "mse")
    qat.fit(x, np.ones((16, 3)), epochs=2, verbose=0)
    # The layer computed on the quantized kernel: its output matches a Dense on the
    # kernel rounded to the 8-bit grid of its last-batch range.
    kernel = wrapper.layer.kernel.numpy()
    assert wrapper.layer.get_config()["activation"] == "relu"  # restored after each call
    ranges = {w.path.split("/")[-1]: w.numpy() for w in wrapper.non_trainable_weights}
    assert ranges["kernel_max"] > 0 > ranges["kernel_min"]
    assert ranges["activation_0_max"] > 0
    loaded_path = tmp_path / "qat.keras"
    qat.save(loaded_path)
    loaded = keras.models.load_model(loaded_path, custom_objects={
        "KernelAndActivationConfig": KernelAndActivationConfig, "MyDense": MyDense})
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(loaded.layers[-1].layer.kernel.numpy(), kernel)


def test_default_8bit_config_from_the_registry_runs_in_the_v2_wrapper():
    registry = default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    dense = L.Dense(3, activation="relu")
    config = registry.get_quantize_config(dense)
    assert isinstance(config, default_8bit.Default8BitQuantizeConfig)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, quantize_annotate_layer(dense, config)(inputs))
    qat = quantize_apply(model, default_8bit.Default8BitQuantizeScheme())
    out = qat.predict(_x(), verbose=0)
    assert isinstance(qat.layers[-1], QuantizeWrapperV2) and (out >= 0).all()
    with pytest.raises(ValueError, match="LSTM is not supported"):
        registry.get_quantize_config(L.LSTM(2))


# ---------------------------------------------------------------------------
# Arguments and errors as tfmot's.
# ---------------------------------------------------------------------------


def test_annotated_first_layer_keeps_its_input_shape():
    model = keras.Sequential([quantize_annotate_layer(L.Dense(10, input_shape=(5,))),
                              L.Dropout(0.4)])
    assert model.built


def test_quantize_annotate_layer_of_a_model_is_a_value_error():
    with pytest.raises(ValueError, match="Received: Sequential"):
        quantize_annotate_layer(keras.Sequential([keras.Input((3,)), L.Dense(2)]))


def test_quantize_config_that_is_not_a_quantize_config_is_a_value_error():
    with pytest.raises(ValueError, match="must be a QuantizeConfig"):
        quantize_annotate_layer(L.Dense(10), quantize_config=object())


@pytest.mark.parametrize("make", [
    lambda: keras.Sequential([keras.Input((10,)), L.Dense(10), L.Dropout(0.4)]),
    lambda: keras.Model(*(lambda i: (i, L.Dense(5)(L.Dense(32)(i))))(keras.Input((10,)))),
])
def test_quantize_apply_without_annotated_layers_is_a_value_error(make):
    with pytest.raises(ValueError, match="no annotated layer"):
        quantize_apply(make())


def test_a_dense_subclass_needs_a_quantize_config_as_in_tfmot():
    model = keras.Sequential([MyDense(3, input_shape=(2,))])
    annotated = quantize_annotate_model(model)  # annotating passes
    with quantize_scope({"MyDense": MyDense}):
        with pytest.raises(RuntimeError, match="MyDense subclasses a Keras layer"):
            quantize_apply(annotated)
    # A class Keras cannot find fails first, with tfmot's ValueError (clone error), and a
    # note that says what is missing.
    with pytest.raises(ValueError, match="Unable to clone model") as error:
        quantize_apply(annotated)
    assert "MyDense subclasses a Keras layer" in error.value.__notes__[0]
    qat = quantize_apply(keras.Sequential([quantize_annotate_layer(
        MyDense(3, input_shape=(2,)), quantize_config=NothingConfig())]))
    assert isinstance(qat.layers[-1].quantize_config, NothingConfig)


def test_unregistered_quantize_config_survives_annotation_and_apply():
    model = keras.Sequential([
        L.Dense(10, input_shape=(5,)),
        quantize_annotate_layer(L.Dense(5), quantize_config=NothingConfig())])
    annotated = quantize_annotate_model(model)
    assert isinstance(annotated.layers[-1], QuantizeAnnotate)
    assert isinstance(annotated.layers[-1].quantize_config, NothingConfig)
    x = _x(d=5)
    np.testing.assert_array_equal(annotated.predict(x, verbose=0), model.predict(x, verbose=0))
    quantize_apply(annotated)


def test_quantized_layer_name_prefix_and_scheme_objects_are_accepted():
    model = keras.Sequential([keras.Input((5,)), L.Dense(3, name="d")])
    qat = quantize_model(model, "q8_")  # tfmot's second positional argument
    assert "q8_d" in [layer.name for layer in qat.layers]
    qat = quantize_apply(quantize_annotate_model(model),
                         scheme=default_8bit.Default8BitQuantizeScheme(),
                         quantized_layer_name_prefix="int8_")
    assert "int8_d" in [layer.name for layer in qat.layers]
    with pytest.raises(ValueError):
        quantize_model(L.Dense(3))


def test_fix_input_output_range_and_remove_input_range():
    inputs = keras.Input((5,))
    x = L.Dense(4, activation="relu")(inputs)
    qat = quantize_model(keras.Model(inputs, L.Dense(3)(x)))
    fixed = fix_input_output_range(qat, input_min=-2.0, input_max=2.0, output_min=-1.0,
                                   output_max=1.0)
    edges = [layer for layer in fixed.layers if isinstance(layer, quantization.FakeQuant)]
    assert edges[0].fixed_range == (-2.0, 2.0) and edges[-1].fixed_range == (-1.0, 1.0)
    out = fixed.predict(_x(), verbose=0)
    assert out.min() >= -1.0 and out.max() <= 1.0
    removed = remove_input_range(qat)
    assert not isinstance(removed.layers[1], quantization.FakeQuant)
    np.testing.assert_allclose(removed.predict(_x() * 0.1, verbose=0).shape, (16, 3))


def test_quantizing_a_sequential_chain_gives_a_sequential_with_the_wrapper_at_layers_1(tmp_path):
    from tfcompress import convert, post_training

    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(4, 3), L.BatchNormalization(),
                              L.ReLU(), L.Flatten(), L.Dense(3)])
    qat = quantize_model(model)
    assert isinstance(qat, keras.Sequential)
    assert isinstance(qat.layers[0], quantization.FakeQuant)  # the input's quantizer
    assert isinstance(qat.layers[1], quantization.QuantizeWrapper)  # tfmot's layers[1]
    x = np.random.default_rng(0).random((8, 6, 6, 2)).astype("float32")
    post_training.calibrate(qat, x)
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert isinstance(loaded, keras.Sequential)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert quantization.quantize_report(loaded).summary() == qat.quantize_report.summary()
    np.testing.assert_allclose(quantization.strip_quantization(qat).predict(x, verbose=0),
                               qat.predict(x, verbose=0), atol=0.2)
    assert convert(qat, progress=False).report.inputs[0].dtype == "int8"


def test_a_sequential_whose_qat_graph_branches_stays_functional():
    # Swish runs as x * sigmoid(x) (TFLite's LOGISTIC then MUL): two branches, not a chain.
    model = keras.Sequential([keras.Input((5,)), L.Dense(4), L.Activation("swish")])
    qat = quantize_model(model)
    assert not isinstance(qat, keras.Sequential)
    assert isinstance(qat.layers[0], L.InputLayer)


def test_builtin_wrapper_quantize_config_describes_it_in_tfmots_terms():
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = L.DepthwiseConv2D(3, name="depthwise")(x)
    outputs = quantize_annotate_layer(L.Dense(3, name="mine"), quantize_config=NothingConfig())(
        L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(2, name="head")(outputs))
    qat = quantize_apply(quantize_annotate_model(model))
    configs = {layer.layer.name: layer.quantize_config for layer in qat.layers
               if isinstance(layer, (quantization.QuantizeWrapper, QuantizeWrapperV2))}
    conv, depthwise, dense = (configs[n] for n in ("conv", "depthwise", "head"))
    for config in (conv, depthwise, dense):  # Keras 3 names every one of them `kernel`
        assert isinstance(config, default_8bit.Default8BitQuantizeConfig)
        assert (config.weight_attrs, config.activation_attrs, config.quantize_output) == (
            ["kernel"], ["activation"], False)
    assert isinstance(configs["mine"], NothingConfig)  # the user's, as given
    wrapper = next(layer for layer in qat.layers if isinstance(layer, quantization.QuantizeWrapper))
    with pytest.raises(AttributeError):
        wrapper.quantize_config = NothingConfig()


def test_quantize_scope_is_kept_and_plain_loading_needs_no_scope(tmp_path):
    qat = quantize_model(keras.Sequential([keras.Input((5,)), L.Dense(3)]))
    qat.save(tmp_path / "m.keras")
    with quantize_scope():
        keras.models.load_model(tmp_path / "m.keras")
    with quantize_scope({"NothingConfig": NothingConfig}):
        assert keras.saving.get_registered_object("NothingConfig") is NothingConfig
    keras.models.load_model(tmp_path / "m.keras")


def test_public_names_match_tfmots():
    for name in ("quantize_model", "quantize_annotate_layer", "quantize_annotate_model",
                 "quantize_apply", "quantize_scope", "fix_input_output_range",
                 "remove_input_range", "QuantizeConfig", "QuantizeWrapperV2", "QuantizeScheme",
                 "QuantizeLayoutTransform", "QuantizeRegistry"):
        assert name in quantization.__all__ and hasattr(quantization, name)
    for name in ("Quantizer", "LastValueQuantizer", "MovingAverageQuantizer",
                 "AllValuesQuantizer", "FixedQuantizer"):
        assert hasattr(quantizers, name)
    for name in ("Default8BitQuantizeScheme", "Default8BitQuantizeRegistry",
                 "Default8BitQuantizeLayoutTransform"):
        assert hasattr(default_8bit, name)
