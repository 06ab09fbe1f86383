"""Port of quantization/keras/quantize_test.py (Keras 3, tfcompress).

Mechanical changes: ``tf.keras.utils.custom_object_scope`` -> ``keras.saving.custom_object_scope``;
``model.optimizer`` before compile -> ``getattr(model, "optimizer", None)``; tfmot's
``QuantizeLayer`` (its input quantizer) -> tfcompress's ``FakeQuant``; tfmot's
``QuantizeWrapper`` -> tfcompress's ``QuantizeWrapper`` or ``QuantizeWrapperV2``.
"""

import keras
import numpy as np
import pytest

from tfcompress import default_8bit, quantization as quantize
from tfcompress.quantization import (FakeQuant, QuantizeAnnotate, QuantizeConfig,
                                     QuantizeWrapper, QuantizeWrapperV2, quantize_annotate_layer,
                                     quantize_annotate_model, quantize_apply)
from tfcompress.quantizers import LastValueQuantizer

from _tfmot_utils import build_simple_dense_model

L = keras.layers
WRAPPERS = (QuantizeWrapper, QuantizeWrapperV2)


class _TestQuantizeConfig(QuantizeConfig):
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


class CustomLayer(L.Dense):
    pass


def _assert_wrapped_layer(layer, quantize_config=None):
    assert isinstance(layer, QuantizeAnnotate)
    assert quantize_config == layer.quantize_config


def _assert_wrapped_model(model):
    for layer in model.layers:
        _assert_wrapped_layer(layer)


# QuantizeTest


@pytest.mark.quick
def test_testQuantizeModel_Passes():
    quantize.quantize_model(keras.Sequential([L.Dense(10, input_shape=(5,)), L.Dropout(0.4)]))


@pytest.mark.quick
def test_testQuantizeLayer_Fails():
    with pytest.raises(ValueError):
        quantize.quantize_model(L.Dense(10, input_shape=(5,)))


# QuantizeAnnotateTest


def test_testQuantizeAnnotateLayer():
    layer = L.Dense(10, input_shape=(5,))
    wrapped = quantize_annotate_layer(layer)
    _assert_wrapped_layer(wrapped)
    inputs = np.random.rand(1, 5)
    model, wrapped_model = keras.Sequential([layer]), keras.Sequential([wrapped])
    np.testing.assert_array_equal(model.predict(inputs, verbose=0),
                                  wrapped_model.predict(inputs, verbose=0))


@pytest.mark.quick
def test_testQuantizeAnnotateSequentialFirstLayer_IsBuilt():
    model = keras.Sequential([quantize_annotate_layer(L.Dense(10, input_shape=(5,))),
                              L.Dropout(0.4)])
    assert model.built


@pytest.mark.quick
def test_testQuantizeAnnotateLayer_FailsWithModel():
    with pytest.raises(ValueError):
        quantize.quantize_annotate_layer(build_simple_dense_model())


def test_testQuantizeAnnotateModel():
    model = keras.Sequential([L.Dense(10, input_shape=(5,)), L.Dropout(0.4)])
    annotated = quantize_annotate_model(model)
    _assert_wrapped_model(annotated)
    inputs = np.random.rand(1, 5)
    np.testing.assert_array_equal(model.predict(inputs, verbose=0),
                                  annotated.predict(inputs, verbose=0))


def test_testQuantizeAnnotateModel_HasAnnotatedLayers():
    config = _TestQuantizeConfig()
    model = keras.Sequential([L.Dense(10, input_shape=(5,)),
                              quantize_annotate_layer(L.Dense(5), quantize_config=config)])
    annotated = quantize_annotate_model(model)
    _assert_wrapped_layer(annotated.layers[0])
    _assert_wrapped_layer(annotated.layers[1], config)
    assert isinstance(annotated.layers[1].layer, L.Dense)
    inputs = np.random.rand(1, 5)
    np.testing.assert_array_equal(model.predict(inputs, verbose=0),
                                  annotated.predict(inputs, verbose=0))


@pytest.mark.quick
def test_testQuantizeAnnotateModel_FailsWithLayer():
    with pytest.raises(ValueError):
        quantize.quantize_annotate_model(L.Dense(10))


@pytest.mark.quick
def test_testQuantizeAnnotateModel_PassesWithCustomLayer():
    quantize_annotate_model(keras.Sequential([CustomLayer(3, input_shape=(2,))]))


def test_testQuantizeAnnotateModel_RemovesOptimizer():
    model = build_simple_dense_model()
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert model.optimizer is not None
    assert getattr(quantize_annotate_model(model), "optimizer", None) is None


@pytest.mark.quick
def test_testQuantizeAnnotateModel_FailsWithSubclassedModel():
    class MyModel(keras.Model):
        def call(self, inputs, training=None, mask=None):
            return inputs

    with pytest.raises(ValueError):
        quantize_annotate_model(MyModel())


@pytest.mark.quick
def test_testQuantizeAnnotateModel_FailsWithNestedModels():
    with pytest.raises(ValueError):
        quantize_annotate_model(keras.Sequential([keras.Sequential([L.Dense(10, input_shape=(2,))])]))


def test_testQuantizeAnnotateModel_SkipsLambda():
    model = keras.Sequential([L.Dense(10, input_shape=(5,)), L.Dropout(0.4),
                              L.Lambda(lambda x: x + 1.0)])
    with pytest.warns(Warning):
        annotated = quantize_annotate_model(model)
    _assert_wrapped_layer(annotated.layers[0])
    _assert_wrapped_layer(annotated.layers[1])
    assert isinstance(annotated.layers[2], L.Lambda)
    inputs = np.random.rand(1, 5)
    np.testing.assert_array_equal(model.predict(inputs, verbose=0),
                                  annotated.predict(inputs, verbose=0))


# QuantizeApplyTest: validation


@pytest.mark.quick
def test_testRaisesErrorIfNotKerasModel():
    with pytest.raises(ValueError):
        quantize_apply(L.Dense(32))


@pytest.mark.quick
def test_testRaisesErrorIfKerasSubclassedModel():
    class MyModel(keras.Model):
        def call(self, inputs, training=None, mask=None):
            return inputs

    with pytest.raises(ValueError):
        quantize_apply(MyModel())


@pytest.mark.quick
def test_testRaisesErrorNoAnnotatedLayers_Sequential():
    with pytest.raises(ValueError):
        quantize_apply(keras.Sequential([L.Dense(10), L.Dropout(0.4)]))


@pytest.mark.quick
def test_testRaisesErrorNoAnnotatedLayers_Functional():
    inputs = keras.Input(shape=(10,))
    x = L.Dense(32, activation="relu")(inputs)
    model = keras.Model(inputs=inputs, outputs=L.Dense(5, activation="softmax")(x))
    with pytest.raises(ValueError):
        quantize_apply(model)


@pytest.mark.quick
def test_testRaisesErrorModelNotBuilt():
    model = keras.Sequential([quantize_annotate_layer(L.Dense(10))])
    assert not model.built
    with pytest.raises(ValueError):
        quantize_apply(model)


@pytest.mark.quick
def test_testRaisesErrorNotInstanceOfQuantizeConfig():
    with pytest.raises(ValueError):
        keras.Sequential([quantize_annotate_layer(L.Dense(10), quantize_config=object())])


# QuantizeApplyTest: applying


def test_testQuantizeCustomLayerWithoutQuantizeScope_RaisesError():
    annotated = keras.Sequential([quantize_annotate_layer(CustomLayer(3, input_shape=(2,)))])
    with pytest.raises(ValueError) as err:
        quantize_apply(annotated)
    assert str(err.value) == (
        "Unable to clone model. This generally happens if you used custom Keras layers or "
        "objects in your model. Please specify them via `quantize_scope` for your calls to "
        "`quantize_model` and `quantize_apply`.")


def test_testQuantize_RaisesErrorIfNoQuantizeConfig():
    annotated = keras.Sequential([QuantizeAnnotate(CustomLayer(3), input_shape=(2,))])
    with keras.saving.custom_object_scope({"CustomLayer": CustomLayer}):
        with pytest.raises(RuntimeError):
            quantize_apply(annotated)


def test_testQuantize_UsesBuiltinQuantizeConfig():
    annotated = keras.Sequential([quantize_annotate_layer(L.Dense(3, input_shape=(2,)))])
    quantized = quantize_apply(annotated)
    layer = quantized.layers[1]
    assert isinstance(layer, WRAPPERS)
    assert isinstance(layer.quantize_config, default_8bit.Default8BitQuantizeConfig)


def test_testQuantize_UsesQuantizeConfigFromUser_NoBuiltIn():
    annotated = keras.Sequential([quantize_annotate_layer(
        CustomLayer(3, input_shape=(2,)), quantize_config=_TestQuantizeConfig())])
    with keras.saving.custom_object_scope({"CustomLayer": CustomLayer,
                                           "_TestQuantizeConfig": _TestQuantizeConfig}):
        quantized = quantize_apply(annotated)
    layer = quantized.layers[1]
    assert isinstance(layer, WRAPPERS)
    assert isinstance(layer.quantize_config, _TestQuantizeConfig)


def test_testQuantize_PreferenceToUserSpecifiedQuantizeConfig():
    annotated = keras.Sequential([quantize_annotate_layer(
        L.Dense(3, input_shape=(2,)), quantize_config=_TestQuantizeConfig())])
    with keras.saving.custom_object_scope({"_TestQuantizeConfig": _TestQuantizeConfig}):
        quantized = quantize_apply(annotated)
    layer = quantized.layers[1]
    assert isinstance(layer, WRAPPERS)
    assert isinstance(layer.quantize_config, _TestQuantizeConfig)


def test_testAppliesQuantizationToAnnotatedModel_PreservesBuiltState():
    annotated = quantize_annotate_model(build_simple_dense_model())
    assert annotated.built
    assert quantize_apply(annotated).built


def _simple_functional_model():
    inputs = keras.Input(shape=(28, 28, 1))
    x = L.Conv2D(32, 5, activation="relu")(inputs)
    x = quantize_annotate_layer(L.Dense(10, activation="relu"))(x)
    return keras.Model(inputs=inputs,
                       outputs=quantize_annotate_layer(L.Dense(5, activation="softmax"))(x))


def _next_after_input(model):
    # Keras 3: `_input_layers` -> the InputLayer at layers[0]; `outbound_layer` -> `operation`.
    return model.layers[0]._outbound_nodes[0].operation


def test_testDoesNotQuantizeInputLayer_OutboundLayerNotQuantized():
    quantized = quantize_apply(_simple_functional_model())
    assert not isinstance(_next_after_input(quantized), FakeQuant)


def test_testQuantizesInputLayer_OutboundLayerIsQuantized():
    inputs = keras.Input(shape=(28, 28, 1))
    x = quantize_annotate_layer(L.Conv2D(32, 5, activation="relu"))(inputs)
    x = quantize_annotate_layer(L.Dense(10, activation="relu"))(x)
    quantized = quantize_apply(keras.Model(inputs=inputs, outputs=x))
    assert isinstance(_next_after_input(quantized), FakeQuant)


def test_testQuantizeApply_RemovesOptimizer():
    annotated = quantize_annotate_model(build_simple_dense_model())
    annotated.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert annotated.optimizer is not None
    assert getattr(quantize_apply(annotated), "optimizer", None) is None


def test_testQuantizeApply_RunsWhenNestedModelNotAnnotated():
    quantize_apply(keras.Sequential([keras.Sequential([L.Dense(10, input_shape=(2,))]),
                                     quantize_annotate_layer(L.Dense(10))]))


class CustomConvLayer(L.Layer):
    def __init__(self, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.conv1 = L.Conv2D(2, 2)

    def build(self, input_shape):
        self.conv1.build(input_shape)

    def call(self, inputs):
        return self.conv1(inputs)

    def get_config(self):
        return {"name": self.name}


class CustomConvQuantizeConfig(QuantizeConfig):
    def get_weights_and_quantizers(self, layer):
        return [(layer.conv1.kernel, LastValueQuantizer(num_bits=8, symmetric=True,
                                                        narrow_range=False, per_axis=False))]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.conv1.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def test_testQuantizeApply_KeepTrainableWeightOrder():
    model = keras.Sequential([CustomConvLayer(input_shape=(28, 28, 3))])

    def annotate(layer):
        if isinstance(layer, CustomConvLayer):
            return quantize_annotate_layer(layer, quantize_config=CustomConvQuantizeConfig())
        return layer

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with quantize.quantize_scope({"CustomConvQuantizeConfig": CustomConvQuantizeConfig,
                                  "CustomConvLayer": CustomConvLayer}):
        qat = quantize_apply(annotated)
    a, b = model.trainable_weights, qat.trainable_weights
    assert len(a) == len(b) and all(id(x) != id(y) for x, y in zip(a, b))
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy())
