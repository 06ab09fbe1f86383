"""Port of sparsity/keras/prune_integration_test.py (Keras 3, tfcompress).

Mechanical changes: ``model.input`` / ``model.output`` of a Sequential -> ``inputs[0]`` /
``outputs[0]`` (Keras 3 defines the former only once the model was called);
``model.optimizer`` before compile -> ``getattr(model, "optimizer", None)``; TF-format (``.tf``) and ``.h5`` weight files -> ``.weights.h5``; ``.h5``
/ SavedModel model files -> ``.keras``; ``LocallyConnected1D/2D`` and
``PeepholeLSTMCell`` do not exist in Keras 3 (their cases are left out); the
``sparsity_2x4`` tests exercise an option tfmot itself replaced by ``sparsity_m_by_n``.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import pruning as prune
from tfcompress import pruning as pruning_callbacks
from tfcompress import pruning as pruning_wrapper
from tfcompress.pruning import ConstantSparsity, PolynomialDecay

from _tfmot_utils import (MODEL_TYPES, assert_model_sparsity, build_mnist_model,
                          build_simple_dense_model, is_model_sparsity_not, save_restore_fns)

L = keras.layers


def _params():
    return {"pruning_schedule": ConstantSparsity(0.5, 0, -1, 1), "block_size": (1, 1),
            "block_pooling_type": "AVG"}


LAYER_PARAMS = {
    L.Conv1D: ([4, 2], (3, 6)),
    L.Conv2D: ([4, (2, 2)], (4, 6, 1)),
    L.Conv3D: ([2, (3, 3, 3)], (5, 7, 6, 3)),
    L.SeparableConv1D: ([4, 3], (3, 6)),
    L.SeparableConv2D: ([4, (2, 2)], (4, 6, 1)),
    L.Dense: ([4], (6,)),
    L.Embedding: (None, None),
}


def _batch(dims, batch_size):
    dims = list(dims)
    if dims[0] is None:
        dims[0] = batch_size
    return dims


def _is_pruned(model):
    return any(isinstance(layer, pruning_wrapper.PruneLowMagnitude) for layer in model.layers)


def _train_model(model, epochs=1, x_train=None, y_train=None, callbacks=None):
    if x_train is None:
        x_train = np.random.rand(20, 10)
    if y_train is None:
        y_train = keras.utils.to_categorical(np.random.randint(5, size=(20, 1)), 5)
    if getattr(model, "optimizer", None) is None:  # Keras 3: no attribute before compile
        model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    if callbacks is None:
        callbacks = [pruning_callbacks.UpdatePruningStep()] if _is_pruned(model) else []
    model.fit(x_train, y_train, epochs=epochs, batch_size=20, callbacks=callbacks, verbose=0)


def _check_strip_pruning_matches_original(model, sparsity, input_data=None):
    assert_model_sparsity(sparsity, model)
    stripped = prune.strip_pruning(model)
    if input_data is None:
        input_data = np.random.randn(*_batch(model.inputs[0].shape, 1))
    np.testing.assert_almost_equal(model.predict(input_data, verbose=0),
                                   stripped.predict(input_data, verbose=0))


def _pretrained():
    model = build_simple_dense_model()
    _train_model(model, epochs=1)
    return model


def _weights(model):
    return [w for w in model.weights]


def test_testPrunesZeroSparsity_IsNoOp():
    model = build_simple_dense_model()
    model2 = build_simple_dense_model()
    model2.set_weights(model.get_weights())
    params = _params()
    params["pruning_schedule"] = ConstantSparsity(target_sparsity=0, begin_step=0, frequency=1)
    pruned = prune.prune_low_magnitude(model2, **params)
    x = np.random.rand(20, 10)
    y = keras.utils.to_categorical(np.random.randint(5, size=(20, 1)), 5)
    _train_model(model, epochs=1, x_train=x, y_train=y)
    _train_model(pruned, epochs=1, x_train=x, y_train=y)
    a, b = model.trainable_weights, pruned.trainable_weights
    assert len(a) == len(b) and all(id(x) != id(y) for x, y in zip(a, b))
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-6, atol=1e-6)


def test_testPruneWithHighSparsity():
    params = _params()
    params["pruning_schedule"] = ConstantSparsity(target_sparsity=0.99, begin_step=0,
                                                  frequency=1)
    model = prune.prune_low_magnitude(build_simple_dense_model(), **params)
    _train_model(model, epochs=1)
    for layer in model.layers:
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            for weight in layer.layer.get_prunable_weights():
                assert 1 == np.count_nonzero(weight.numpy())


def test_testPrunePretrainedModel_RemovesOptimizer():
    model = _pretrained()
    assert model.optimizer is not None
    assert getattr(prune.prune_low_magnitude(model, **_params()), "optimizer", None) is None


def test_testPrunePretrainedModel_PreservesWeightObjects():
    model = _pretrained()
    pruned = prune.prune_low_magnitude(model, **_params())
    for w in model.trainable_weights:
        assert any(w is p for p in pruned.trainable_weights)


def test_testPrunePretrainedModel_SameInferenceWithoutTraining():
    model = _pretrained()
    pruned = prune.prune_low_magnitude(model, **_params())
    x = np.random.rand(10, 10)
    assert (model.predict(x, verbose=0) == pruned.predict(x, verbose=0)).all()


def test_testLoadTFWeightsThenPrune_SameInferenceWithoutTraining(tmp_path):
    model = _pretrained()
    model.save_weights(tmp_path / "w.weights.h5")
    same = build_simple_dense_model()
    same.load_weights(tmp_path / "w.weights.h5")
    pruned = prune.prune_low_magnitude(same, **_params())
    x = np.random.rand(10, 10)
    assert (model.predict(x, verbose=0) == pruned.predict(x, verbose=0)).all()


def test_testPruneThenLoadTFWeights_DoesNotPreserveWeights(tmp_path):
    model = _pretrained()
    model.save_weights(tmp_path / "w.weights.h5")
    pruned = prune.prune_low_magnitude(build_simple_dense_model(), **_params())
    pruned.load_weights(tmp_path / "w.weights.h5")
    for a, b in zip(model.trainable_weights, pruned.trainable_weights):
        assert not np.allclose(a.numpy(), b.numpy())


def test_testPruneThenLoadTFWeights_DifferentInferenceWithoutTraining(tmp_path):
    model = _pretrained()
    model.save_weights(tmp_path / "w.weights.h5")
    pruned = prune.prune_low_magnitude(build_simple_dense_model(), **_params())
    pruned.load_weights(tmp_path / "w.weights.h5")
    x = np.random.rand(10, 10)
    assert not (model.predict(x, verbose=0) == pruned.predict(x, verbose=0)).any()


def test_testPruneThenLoadsKerasWeights_Fails(tmp_path):
    model = _pretrained()
    model.save_weights(tmp_path / "w.weights.h5")
    pruned = prune.prune_low_magnitude(build_simple_dense_model(), **_params())
    with pytest.raises(ValueError):
        pruned.load_weights(tmp_path / "w.weights.h5")


@pytest.mark.parametrize("layer_type", list(LAYER_PARAMS), ids=lambda c: c.__name__)
def test_testPrunesSingleLayer_ReachesTargetSparsity(layer_type):
    args, input_shape = LAYER_PARAMS[layer_type]
    if args is None:
        return  # tfmot: Embedding has its own test
    model = keras.Sequential()
    model.add(prune.prune_low_magnitude(layer_type(*args), input_shape=input_shape, **_params()))
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert_model_sparsity(0.0, model)
    model.fit(np.random.randn(*_batch(model.inputs[0].shape, 32)),
              np.random.randn(*_batch(model.outputs[0].shape, 32)),
              callbacks=[pruning_callbacks.UpdatePruningStep()], verbose=0)
    assert_model_sparsity(0.5, model)
    _check_strip_pruning_matches_original(model, 0.5)


@pytest.mark.parametrize("layer_type", [L.GRU, L.LSTM, L.SimpleRNN], ids=lambda c: c.__name__)
def test_testRNNLayersSingleCell_ReachesTargetSparsity(layer_type):
    model = keras.Sequential()
    model.add(prune.prune_low_magnitude(layer_type(10), input_shape=(3, 4), **_params()))
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert_model_sparsity(0.0, model)
    model.fit(np.random.randn(*_batch(model.inputs[0].shape, 32)),
              np.random.randn(*_batch(model.outputs[0].shape, 32)),
              callbacks=[pruning_callbacks.UpdatePruningStep()], verbose=0)
    assert_model_sparsity(0.5, model)
    _check_strip_pruning_matches_original(model, 0.5)


def test_testRNNLayersWithRNNCellParams_ReachesTargetSparsity():
    model = keras.Sequential()
    model.add(prune.prune_low_magnitude(
        L.RNN([L.LSTMCell(10), L.GRUCell(10), L.SimpleRNNCell(10)]),  # no PeepholeLSTMCell
        input_shape=(3, 4), **_params()))
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert_model_sparsity(0.0, model)
    model.fit(np.random.randn(*_batch(model.inputs[0].shape, 32)),
              np.random.randn(*_batch(model.outputs[0].shape, 32)),
              callbacks=[pruning_callbacks.UpdatePruningStep()], verbose=0)
    assert_model_sparsity(0.5, model)
    _check_strip_pruning_matches_original(model, 0.5)


def test_testPrunesEmbedding_ReachesTargetSparsity():
    model = keras.Sequential()
    model.add(prune.prune_low_magnitude(L.Embedding(input_dim=10, output_dim=3),
                                        input_shape=(5,), **_params()))
    model.add(L.Flatten())
    model.add(L.Dense(1, activation="sigmoid"))
    model.compile(loss="binary_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert_model_sparsity(0.0, model)
    model.fit(np.random.randint(10, size=(32, 5)), np.random.randint(2, size=(32, 1)),
              callbacks=[pruning_callbacks.UpdatePruningStep()], verbose=0)
    assert_model_sparsity(0.5, model)
    _check_strip_pruning_matches_original(model, 0.5, np.random.randint(10, size=(32, 5)))


def test_testPruneRecursivelyReachesTargetSparsity():
    internal = keras.Sequential([L.Dense(10, input_shape=(10,))])
    model = keras.Sequential([internal, L.Flatten(), L.Dense(1)])
    model.compile(loss="binary_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert_model_sparsity(0.0, model)
    model.fit(np.random.randint(10, size=(32, 10)), np.random.randint(2, size=(32, 1)),
              callbacks=[pruning_callbacks.UpdatePruningStep()], verbose=0)
    assert_model_sparsity(0.5, model)
    _check_strip_pruning_matches_original(model, 0.5, np.random.randint(10, size=(32, 10)))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_testPrunesMnist_ReachesTargetSparsity(model_type):
    params = _params()
    model = build_mnist_model(model_type, params)
    if model_type == "layer_list":
        model = keras.Sequential(prune.prune_low_magnitude(model, **params))
    elif model_type in ("sequential", "functional"):
        model = prune.prune_low_magnitude(model, **params)
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert_model_sparsity(0.0, model, rtol=1e-4, atol=1e-4)
    model.fit(np.random.rand(32, 28, 28, 1),
              keras.utils.to_categorical(np.random.randint(10, size=(32, 1)), 10),
              callbacks=[pruning_callbacks.UpdatePruningStep()], verbose=0)
    assert_model_sparsity(0.5, model, rtol=1e-4, atol=1e-4)
    _check_strip_pruning_matches_original(model, 0.5)


def test_testPruneCheckpoints_CheckpointsNotSparse(tmp_path):
    not_sparse = []
    for run in range(3):
        pruned = prune.prune_low_magnitude(build_simple_dense_model(), **_params())
        path = tmp_path / f"run{run}.weights.h5"
        callbacks = [pruning_callbacks.UpdatePruningStep(),
                     keras.callbacks.ModelCheckpoint(filepath=str(path), save_weights_only=True,
                                                     save_freq=1)]
        _train_model(pruned, epochs=1, callbacks=callbacks)
        assert_model_sparsity(0.5, pruned)
        pruned = prune.prune_low_magnitude(build_simple_dense_model(), **_params())
        assert_model_sparsity(0, pruned)
        pruned.load_weights(path)
        not_sparse.append(is_model_sparsity_not(0.5, pruned))
    assert any(not_sparse)


@pytest.mark.parametrize("save_restore_fn", save_restore_fns(), ids=lambda f: f.__name__)
def test_testPruneStopAndRestart_PreservesSparsity(save_restore_fn, tmp_path):
    params = _params()
    params["pruning_schedule"] = PolynomialDecay(0.2, 0.6, 1, 4, 3, 1)
    model = prune.prune_low_magnitude(build_simple_dense_model(), **params)
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert_model_sparsity(0.0, model)
    _train_model(model, epochs=1)
    assert_model_sparsity(0.2, model)
    model = save_restore_fn(model, tmp_path)
    _train_model(model, epochs=3)
    assert_model_sparsity(0.6, model)
    _check_strip_pruning_matches_original(model, 0.6)


@pytest.mark.parametrize("save_restore_fn", save_restore_fns(), ids=lambda f: f.__name__)
def test_testPruneWithPolynomialDecayPastEndStep_PreservesSparsity(save_restore_fn, tmp_path):
    params = _params()
    params["pruning_schedule"] = PolynomialDecay(0.2, 0.6, 0, 2, 3, 1)
    model = prune.prune_low_magnitude(build_simple_dense_model(), **params)
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    assert_model_sparsity(0.0, model)
    _train_model(model, epochs=3)
    assert_model_sparsity(0.6, model)
    model = save_restore_fn(model, tmp_path)
    assert_model_sparsity(0.6, model)
    _train_model(model, epochs=1)
    assert_model_sparsity(0.6, model)
    _check_strip_pruning_matches_original(model, 0.6)


def test_testPrunesModel_CustomTrainingLoop_ReachesTargetSparsity():
    pruned = prune.prune_low_magnitude(
        build_simple_dense_model(),
        pruning_schedule=ConstantSparsity(target_sparsity=0.5, begin_step=0, frequency=1))
    x = np.random.rand(20, 10)
    y = keras.utils.to_categorical(np.random.randint(5, size=(20, 1)), 5)
    loss = keras.losses.categorical_crossentropy
    optimizer = keras.optimizers.SGD()
    step_callback = pruning_callbacks.UpdatePruningStep()
    step_callback.set_model(pruned)
    pruned.optimizer = optimizer
    step_callback.on_train_begin()
    for _ in range(2):
        step_callback.on_train_batch_begin(batch=-1)
        with tf.GradientTape() as tape:
            loss_value = loss(y, pruned(np.reshape(x, [20, 10]), training=True))
            grads = tape.gradient(loss_value, pruned.trainable_variables)
            optimizer.apply_gradients(zip(grads, pruned.trainable_variables))
        step_callback.on_epoch_end(batch=-1)
    assert_model_sparsity(0.5, pruned)
