"""Port of sparsity/keras/prune_test.py (Keras 3, tfcompress)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import pruning as prune
from tfcompress.pruning import (ConstantSparsity, PrunableLayer, PruneLowMagnitude,
                                UpdatePruningStep)

from _tfmot_utils import build_simple_dense_model

L = keras.layers
INVALID_TO_PRUNE_PARAM_ERROR = (
    "`prune_low_magnitude` can only prune an object of the following types: "
    "keras.models.Sequential, keras functional model, keras.layers.Layer, list of "
    "keras.layers.Layer. You passed an object of type: {input}.")


class TestSubclassedModel(keras.Model):
    def __init__(self):
        super().__init__(name="test_model")
        self.layer1 = L.Dense(10, activation="relu")

    def call(self, inputs):
        return self.layer1(inputs)


class CustomPrunableLayer(L.Dense, PrunableLayer):
    def get_prunable_weights(self):
        return [self.kernel]


class CustomNonPrunableLayer(L.Dense):
    pass


@pytest.fixture
def setup():
    return {
        "keras_prunable_layer": L.Dense(10),
        "keras_non_prunable_layer": L.Dropout(0.4),
        "keras_unsupported_layer": L.ConvLSTM2D(2, (5, 5)),
        "custom_prunable_layer": CustomPrunableLayer(10),
        "custom_non_prunable_layer": CustomNonPrunableLayer(10),
        "model": keras.Sequential(),
        "params": {"pruning_schedule": ConstantSparsity(0.5, 0), "block_size": (1, 1),
                   "block_pooling_type": "AVG"},
    }


def _build_pruned_layer_model(s, layer):
    wrapped = prune.prune_low_magnitude(layer, **s["params"])
    s["model"].add(wrapped)
    s["model"].build(input_shape=(10, 1))
    return wrapped


def _validate_pruned_layer(s, original, wrapped):
    assert isinstance(wrapped, PruneLowMagnitude)
    assert original == wrapped.layer
    assert s["params"]["pruning_schedule"] == wrapped.pruning_schedule
    assert s["params"]["block_size"] == wrapped.block_size
    assert s["params"]["block_pooling_type"] == wrapped.block_pooling_type


def _count_pruned_layers(model):
    return sum(isinstance(m, PruneLowMagnitude) for m in model._flatten_layers(include_self=False))


@pytest.mark.quick
def test_testPruneKerasPrunableLayer(setup):
    wrapped = _build_pruned_layer_model(setup, setup["keras_prunable_layer"])
    _validate_pruned_layer(setup, setup["keras_prunable_layer"], wrapped)


@pytest.mark.quick
def test_testPruneKerasNonPrunableLayer(setup):
    wrapped = _build_pruned_layer_model(setup, setup["keras_non_prunable_layer"])
    _validate_pruned_layer(setup, setup["keras_non_prunable_layer"], wrapped)
    assert [] == wrapped.layer.get_prunable_weights()


@pytest.mark.quick
def test_testPruneKerasUnsupportedLayer(setup):
    with pytest.raises(ValueError):
        prune.prune_low_magnitude(setup["keras_unsupported_layer"], **setup["params"])


@pytest.mark.quick
def test_testPruneCustomPrunableLayer(setup):
    wrapped = _build_pruned_layer_model(setup, setup["custom_prunable_layer"])
    _validate_pruned_layer(setup, setup["custom_prunable_layer"], wrapped)
    assert [wrapped.layer.kernel] == wrapped.layer.get_prunable_weights()


@pytest.mark.quick
def test_testPruneCustomNonPrunableLayer(setup):
    with pytest.raises(ValueError):
        prune.prune_low_magnitude(setup["custom_non_prunable_layer"], **setup["params"])


@pytest.mark.quick
def test_testPruneModelValidLayersSuccessful(setup):
    model = keras.Sequential([setup["keras_prunable_layer"], setup["keras_non_prunable_layer"],
                              setup["custom_prunable_layer"]])
    pruned = prune.prune_low_magnitude(model, **setup["params"])
    pruned.build(input_shape=(1, 28, 28, 1))
    assert len(model.layers) == len(pruned.layers)
    for layer, pruned_layer in zip(model.layers, pruned.layers):
        _validate_pruned_layer(setup, layer, pruned_layer)


@pytest.mark.quick
def test_testPruneModelUnsupportedKerasLayerRaisesError(setup):
    with pytest.raises(ValueError):
        prune.prune_low_magnitude(keras.Sequential([
            setup["keras_prunable_layer"], setup["keras_non_prunable_layer"],
            setup["custom_prunable_layer"], setup["keras_unsupported_layer"]]), **setup["params"])


@pytest.mark.quick
def test_testPruneModelCustomNonPrunableLayerRaisesError(setup):
    with pytest.raises(ValueError):
        prune.prune_low_magnitude(keras.Sequential([
            setup["keras_prunable_layer"], setup["keras_non_prunable_layer"],
            setup["custom_prunable_layer"], setup["custom_non_prunable_layer"]]),
            **setup["params"])


@pytest.mark.quick
def test_testPruneModelDoesNotWrapAlreadyWrappedLayer(setup):
    model = keras.Sequential([L.Dense(10),
                              prune.prune_low_magnitude(L.Dense(10), **setup["params"])])
    pruned = prune.prune_low_magnitude(model, **setup["params"])
    pruned.build(input_shape=(10, 1))
    assert len(model.layers) == len(pruned.layers)
    _validate_pruned_layer(setup, model.layers[0], pruned.layers[0])
    assert model.layers[1] == pruned.layers[1]


@pytest.mark.quick
def test_testPruneValidLayersListSuccessful(setup):
    layers = [setup["keras_prunable_layer"], setup["keras_non_prunable_layer"],
              setup["custom_prunable_layer"]]
    pruned = prune.prune_low_magnitude(layers, **setup["params"])
    assert len(layers) == len(pruned)
    for layer, pruned_layer in zip(layers, pruned):
        _validate_pruned_layer(setup, layer, pruned_layer)


def test_testPruneInferenceWorks_PruningStepCallbackNotRequired(setup):
    model = prune.prune_low_magnitude(keras.Sequential([
        L.Dense(10, activation="relu", input_shape=(100,)),
        L.Dense(2, activation="sigmoid")]), **setup["params"])
    model.compile(loss=keras.losses.categorical_crossentropy, optimizer=keras.optimizers.SGD(),
                  metrics=["accuracy"])
    model.predict(np.random.rand(1000, 100))
    model.evaluate(np.random.rand(1000, 100),
                   keras.utils.to_categorical(np.random.randint(2, size=(1000, 1))))


def test_testPruneTrainingRaisesError_PruningStepCallbackMissing(setup):
    model = prune.prune_low_magnitude(keras.Sequential([
        L.Dense(10, activation="relu", input_shape=(100,)),
        L.Dense(2, activation="sigmoid")]), **setup["params"])
    model.compile(loss=keras.losses.categorical_crossentropy, optimizer=keras.optimizers.SGD(),
                  metrics=["accuracy"])
    x = np.random.rand(1000, 100)
    y = keras.utils.to_categorical(np.random.randint(2, size=(1000, 1)))
    with pytest.raises(tf.errors.InvalidArgumentError):
        model.fit(x, y)
    model.fit(x, y, callbacks=[UpdatePruningStep()])


@pytest.mark.quick
def test_testPruneSequentialModel(setup):
    model = keras.Sequential([L.Dense(10), L.Dense(10)])
    assert _count_pruned_layers(prune.prune_low_magnitude(model, **setup["params"])) == 2
    model = keras.Sequential([L.Dense(10, input_shape=(10,)), L.Dense(10)])
    assert _count_pruned_layers(prune.prune_low_magnitude(model, **setup["params"])) == 2


@pytest.mark.quick
def test_testPruneSequentialModelPreservesBuiltState(setup):
    model = keras.Sequential([L.Dense(10), L.Dense(10)])
    assert model.built is False
    pruned = prune.prune_low_magnitude(model, **setup["params"])
    assert model.built is False
    with prune.prune_scope():
        loaded = keras.models.model_from_json(json.dumps(json.loads(pruned.to_json())))
        assert loaded.built is False
    model = keras.Sequential([L.Dense(10, input_shape=(10,)), L.Dense(10)])
    assert model.built is True
    pruned = prune.prune_low_magnitude(model, **setup["params"])
    assert model.built is True
    with prune.prune_scope():
        loaded = keras.models.model_from_json(json.dumps(json.loads(pruned.to_json())))
    assert loaded.built is True


def _two_input_model():
    i1, i2 = keras.Input(shape=(10,)), keras.Input(shape=(10,))
    return keras.Model(inputs=[i1, i2], outputs=L.Add()([L.Dense(10)(i1), L.Dense(10)(i2)]))


@pytest.mark.quick
def test_testPruneFunctionalModel(setup):
    pruned = prune.prune_low_magnitude(_two_input_model(), **setup["params"])
    assert _count_pruned_layers(pruned) == 3


@pytest.mark.quick
def test_testPruneFunctionalModelWithLayerReused(setup):
    inp = keras.Input(shape=(10,))
    dense = L.Dense(10)
    model = keras.Model(inputs=[inp], outputs=[dense(dense(inp))])
    assert _count_pruned_layers(prune.prune_low_magnitude(model, **setup["params"])) == 1


@pytest.mark.quick
def test_testPruneFunctionalModelPreservesBuiltState(setup):
    model = _two_input_model()
    assert model.built is True
    pruned = prune.prune_low_magnitude(model, **setup["params"])
    assert model.built is True
    with prune.prune_scope():
        loaded = keras.models.model_from_json(json.dumps(json.loads(pruned.to_json())))
    assert loaded.built is True


@pytest.mark.quick
def test_testPruneModelRecursively(setup):
    internal = keras.Sequential([L.Dense(10, input_shape=(10,))])
    original = keras.Sequential([internal, L.Dense(10)])
    pruned = prune.prune_low_magnitude(original, **setup["params"])
    assert _count_pruned_layers(pruned) == 2


@pytest.mark.quick
def test_testPruneSubclassModel(setup):
    with pytest.raises(ValueError) as e:
        prune.prune_low_magnitude(TestSubclassedModel(), **setup["params"])
    assert str(e.value) == INVALID_TO_PRUNE_PARAM_ERROR.format(input="TestSubclassedModel")


@pytest.mark.quick
def test_testPruneMiscObject(setup):
    with pytest.raises(ValueError) as e:
        prune.prune_low_magnitude(object(), **setup["params"])
    assert str(e.value) == INVALID_TO_PRUNE_PARAM_ERROR.format(input="object")


@pytest.mark.quick
def test_testStripPruningSequentialModel(setup):
    model = keras.Sequential([L.Dense(10), L.Dense(10)])
    stripped = prune.strip_pruning(prune.prune_low_magnitude(model, **setup["params"]))
    assert _count_pruned_layers(stripped) == 0
    assert model.get_config() == stripped.get_config()


@pytest.mark.quick
def test_testStripPruningFunctionalModel(setup):
    model = _two_input_model()
    stripped = prune.strip_pruning(prune.prune_low_magnitude(model, **setup["params"]))
    assert _count_pruned_layers(stripped) == 0
    assert model.get_config() == stripped.get_config()


def test_testPruneScope_NeededForKerasModel(tmp_path):
    pruned = prune.prune_low_magnitude(build_simple_dense_model())
    pruned.save(tmp_path / "m.keras")
    with pytest.raises(ValueError):
        keras.models.load_model(tmp_path / "m.keras")
    with prune.prune_scope():
        keras.models.load_model(tmp_path / "m.keras")


def test_testPruneScope_NotNeededForKerasCheckpoint(tmp_path):
    pruned = prune.prune_low_magnitude(build_simple_dense_model())
    pruned.save_weights(tmp_path / "w.weights.h5")
    same = prune.prune_low_magnitude(build_simple_dense_model())
    same.load_weights(tmp_path / "w.weights.h5")


def test_testPruneScope_NotNeededForTF2SavedModel(tmp_path):
    pruned = prune.prune_low_magnitude(build_simple_dense_model())
    tf.saved_model.save(pruned, str(tmp_path / "saved"))
    tf.saved_model.load(str(tmp_path / "saved"))
