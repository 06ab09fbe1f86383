"""The helpers tfmot's tests share (its ``test_utils`` modules), written for Keras 3."""

import keras
import numpy as np

from tfcompress import pruning

L = keras.layers


def build_simple_dense_model():
    """tfmot's keras test_utils: Dense(8, relu) on 10 inputs, then Dense(5, softmax)."""
    return keras.Sequential([L.Dense(8, activation="relu", input_shape=(10,)),
                             L.Dense(5, activation="softmax")])


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, pruning.PruneLowMagnitude)]


def assert_model_sparsity(sparsity, model, rtol=1e-6, atol=1e-6):
    """Every prunable weight of every top-level wrapper has ``sparsity`` zeros."""
    for layer in _wrappers(model):
        for weight in layer.layer.get_prunable_weights():
            value = np.asarray(weight.numpy())
            np.testing.assert_allclose(1.0 - np.count_nonzero(value) / value.size, sparsity,
                                       rtol=rtol, atol=atol)


def is_model_sparsity_not(sparsity, model):
    for layer in _wrappers(model):
        for weight in layer.layer.get_prunable_weights():
            value = np.asarray(weight.numpy())
            if not np.isclose(1.0 - np.count_nonzero(value) / value.size, sparsity):
                return True
    return False


def assert_model_sparsity_2x4(model):
    for layer in _wrappers(model):
        for weight in layer.layer.get_prunable_weights():
            value = np.asarray(weight.numpy())
            moved = np.moveaxis(value, -2, -1).reshape(-1, 4)
            assert ((moved != 0).sum(axis=1) <= 2).all()


MODEL_TYPES = ("sequential", "functional", "layer_list", "layer_wise")


def _mnist_layers():
    return [L.Conv2D(32, 5, padding="same", activation="relu", input_shape=(28, 28, 1)),
            L.MaxPooling2D((2, 2), (2, 2), padding="same"), L.BatchNormalization(),
            L.Conv2D(64, 5, padding="same", activation="relu"),
            L.MaxPooling2D((2, 2), (2, 2), padding="same"), L.Flatten(),
            L.Dense(1024, activation="relu"), L.Dropout(0.4),
            L.Dense(10, activation="softmax")]


def build_mnist_model(model_type, pruning_params=None):
    if model_type == "layer_wise":
        prune = pruning.prune_low_magnitude
        return keras.Sequential([
            prune(L.Conv2D(32, 5, padding="same", activation="relu"), input_shape=(28, 28, 1),
                  **pruning_params),
            L.MaxPooling2D((2, 2), (2, 2), padding="same"), L.BatchNormalization(),
            prune(L.Conv2D(64, 5, padding="same", activation="relu"), **pruning_params),
            L.MaxPooling2D((2, 2), (2, 2), padding="same"), L.Flatten(),
            prune(L.Dense(1024, activation="relu"), **pruning_params), L.Dropout(0.4),
            prune(L.Dense(10, activation="softmax"), **pruning_params)])
    if model_type == "sequential":
        return keras.Sequential(_mnist_layers())
    if model_type == "layer_list":
        return _mnist_layers()
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for layer in _mnist_layers():
        x = layer(x)
    return keras.Model(inputs, x)


def save_restore_fns():
    """tfmot's save/restore variants, in Keras 3 formats: a `.keras` file and weights."""

    def _save_restore_keras_model(model, tmp_path):
        path = tmp_path / "model.keras"
        model.save(path)
        return keras.models.load_model(path)

    def _save_restore_weights(model, tmp_path):
        path = tmp_path / "m.weights.h5"
        model.save_weights(path)
        clone = keras.models.clone_model(model)
        clone.load_weights(path)
        return clone

    return [_save_restore_keras_model, _save_restore_weights]
