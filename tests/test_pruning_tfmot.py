"""tfmot's documented pruning behaviour, which a user switching by an import relies on."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import pruning
from tfcompress.pruning import (ConstantSparsity, PolynomialDecay, PrunableLayer,
                                PruneForLatencyOnXNNPack, PruneLowMagnitude, PruningPolicy,
                                PruningSummaries, UpdatePruningStep, prune_low_magnitude,
                                prune_scope, sparsity_report, strip_pruning)

L = keras.layers


def _wrappers(model):
    return [m for m in model._flatten_layers(include_self=False)
            if isinstance(m, PruneLowMagnitude)]


def _fit(model, x, y, *, epochs=1, batch_size=None):
    model.compile("sgd", "mse")
    model.fit(x, y, epochs=epochs, batch_size=batch_size or len(x), verbose=0, shuffle=False,
              callbacks=[UpdatePruningStep()])


# ---------------------------------------------------------------------------
# The pruning step: steps 1..N over N batches.
# ---------------------------------------------------------------------------


def test_three_one_batch_epochs_leave_the_pruning_step_at_three():
    model = prune_low_magnitude(keras.Sequential([keras.Input((10,)), L.Dense(5), L.Dense(5)]))
    _fit(model, np.ones((20, 10)), np.ones((20, 5)), epochs=3)
    assert [int(w.pruning_step.numpy()) for w in model.layers] == [3, 3]


def test_polynomial_decay_over_188_batches_ends_at_tfmots_sparsity():
    keras.utils.set_random_seed(0)
    schedule = PolynomialDecay(0.5, 0.8, begin_step=0, end_step=188, frequency=47)
    model = prune_low_magnitude(keras.Sequential([keras.Input((32,)), L.Dense(16)]),
                                pruning_schedule=schedule)
    x = np.random.default_rng(0).random((188, 32)).astype("float32")
    _fit(model, x, np.zeros((188, 16), "float32"), batch_size=1)
    # The last pruning turn is step 188 (final sparsity), not 141 (79.5%).
    assert sparsity_report(model).total_sparsity == pytest.approx(410 / 512)
    assert round(100 * 410 / 512, 1) == 80.1


def test_begin_step_one_prunes_at_the_first_batch():
    model = prune_low_magnitude(keras.Sequential([keras.Input((8,)), L.Dense(8)]),
                                pruning_schedule=ConstantSparsity(0.5, begin_step=1, frequency=1))
    _fit(model, np.ones((4, 8)), np.ones((4, 8)))
    assert sparsity_report(model).total_sparsity == 0.5


def test_custom_training_loop_with_tfmots_argument_names():
    model = prune_low_magnitude(keras.Sequential([keras.Input((10,)), L.Dense(5), L.Dense(5)]),
                                pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    step_callback = UpdatePruningStep()
    step_callback.set_model(model)
    optimizer = keras.optimizers.SGD()
    x, y = np.random.default_rng(0).random((20, 10)).astype("float32"), np.ones((20, 5))
    step_callback.on_train_begin()
    for _ in range(3):
        step_callback.on_train_batch_begin(batch=-1)
        with tf.GradientTape() as tape:
            loss = keras.losses.mean_squared_error(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        step_callback.on_epoch_end(batch=-1)
    assert [int(w.pruning_step.numpy()) for w in model.layers] == [3, 3]
    assert [r.zeros for r in sparsity_report(model).layers] == [25, 12]  # round(25 * 0.5)


def test_update_pruning_step_on_a_model_without_pruning_layers_does_nothing():
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    _fit(model, np.ones((4, 4)), np.ones((4, 2)))  # tfmot: no error


# ---------------------------------------------------------------------------
# Models: unbuilt Sequential, input names, keyword calls, no-op wrappers.
# ---------------------------------------------------------------------------


def test_unbuilt_sequential_is_wrapped_and_builds_later():
    model = keras.Sequential([L.Dense(10), L.Dropout(0.1), L.Dense(10)])
    pruned = prune_low_magnitude(model)
    assert not model.built and not pruned.built
    assert len(_wrappers(pruned)) == 3
    loaded = keras.models.model_from_json(pruned.to_json())
    assert not loaded.built
    pruned.build((None, 4))
    _fit(pruned, np.ones((4, 4)), np.ones((4, 10)))
    assert [type(layer).__name__ for layer in strip_pruning(pruned).layers] == [
        "Dense", "Dropout", "Dense"]


def test_unbuilt_sequential_layers_are_checked():
    with pytest.raises(ValueError, match="ConvLSTM2D cannot be pruned"):
        prune_low_magnitude(keras.Sequential([L.Dense(10), L.ConvLSTM2D(2, 5)]))


def test_stripped_functional_model_has_the_original_config():
    i1, i2 = keras.Input((10,)), keras.Input((10,))
    model = keras.Model([i1, i2], L.Add()([L.Dense(10)(i1), L.Dense(10)(i2)]))
    pruned = prune_low_magnitude(model)
    assert len(_wrappers(pruned)) == 3
    assert [layer.name for layer in pruned.layers[:2]] == [layer.name for layer in model.layers[:2]]
    assert strip_pruning(pruned).get_config() == model.get_config()


def test_attention_called_with_keywords_is_pruned_and_stripped():
    q, v = keras.Input((5, 8)), keras.Input((5, 8))
    model = keras.Model([q, v], L.MultiHeadAttention(2, 4)(query=q, value=v))
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    x = [np.random.default_rng(i).random((4, 5, 8)).astype("float32") for i in range(2)]
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    _fit(pruned, x, np.zeros((4, 5, 8)))
    stripped = strip_pruning(pruned)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_layers_without_prunable_weights_get_no_op_wrappers():
    cells = [keras.layers.LSTMCell(4), keras.layers.GRUCell(4)]
    inputs = keras.Input((6, 3))
    x = L.RNN(cells)(inputs)  # generic RNN, stacked cells
    x = L.BatchNormalization()(x)
    x = L.Add()([x, L.Dense(4)(x)])
    model = keras.Model(inputs, L.Dense(2)(L.Dropout(0.1)(x)))
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    wrapped = {type(w.layer).__name__: len(w.prunable_weights) for w in _wrappers(pruned)}
    assert wrapped == {"RNN": 4, "BatchNormalization": 0, "Add": 0, "Dense": 1,
                       "Dropout": 0}
    x = np.random.default_rng(0).random((8, 6, 3)).astype("float32")
    _fit(pruned, x, np.zeros((8, 2)))
    assert all(r.sparsity == 0.5 for r in sparsity_report(pruned).layers)


def test_dense_subclass_needs_get_prunable_weights():
    class NotDeclared(L.Dense):
        pass

    class Declared(L.Dense, PrunableLayer):
        def get_prunable_weights(self):
            return [self.kernel]

    with pytest.raises(ValueError, match="subclasses Dense.*get_prunable_weights"):
        prune_low_magnitude(NotDeclared(10))
    with pytest.raises(ValueError, match="NotDeclared cannot be pruned"):
        prune_low_magnitude(keras.Sequential([keras.Input((4,)), NotDeclared(10)]))
    wrapper = prune_low_magnitude(Declared(10))
    wrapper.build((None, 4))
    assert wrapper.prunable_weights == [wrapper.layer.kernel]


def test_custom_layer_without_get_config_is_wrapped_as_it_is():
    # Nothing is rebuilt from a config (as in tfmot): the layer object itself is wrapped.
    class NoConfig(L.Layer):
        def __init__(self, units):
            super().__init__()
            self.units = units

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], self.units))

        def call(self, x):
            return x @ self.w

        def get_prunable_weights(self):
            return [self.w]

    inputs = keras.Input((4,))
    layer = NoConfig(3)
    pruned = prune_low_magnitude(keras.Model(inputs, layer(inputs)))
    assert pruned.layers[1].layer is layer
    assert pruned.layers[1].prunable_weights == [layer.w]


# ---------------------------------------------------------------------------
# The original layer objects are wrapped, as tfmot's clone_function does.
# ---------------------------------------------------------------------------


def test_pruning_a_model_wraps_its_layer_objects_and_prunes_its_weights_in_place():
    dense, head = L.Dense(8), L.Dense(2)
    model = keras.Sequential([keras.Input((8,)), dense, L.Dropout(0.1), head])
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    assert [w.layer for w in pruned.layers] == model.layers
    assert all(any(w is p for p in pruned.trainable_weights) for w in model.trainable_weights)
    x = np.random.default_rng(0).random((8, 8)).astype("float32")
    _fit(pruned, x, np.zeros((8, 2)))
    assert np.mean(dense.kernel.numpy() == 0) == 0.5  # the original model is pruned too
    np.testing.assert_array_equal(model.predict(x, verbose=0), pruned.predict(x, verbose=0))


def test_layers_left_unwrapped_are_the_original_objects():
    model = keras.Sequential([keras.Input((4,)), L.Dense(4, name="a"), L.Dense(2, name="b"),
                              L.GroupNormalization(1, name="g")])
    pruned = prune_low_magnitude(model, layers=["a"])
    assert isinstance(pruned.layers[0], PruneLowMagnitude) and pruned.layers[0].layer is model.layers[0]
    assert pruned.layers[1:] == model.layers[1:]


def test_a_pruning_layer_is_not_wrapped_twice():
    wrapped = prune_low_magnitude(L.Dense(10))
    model = keras.Sequential([L.Dense(10), wrapped])
    pruned = prune_low_magnitude(model)
    pruned.build((None, 4))
    assert pruned.layers[1] is wrapped and pruned.layers[0].layer is model.layers[0]
    assert prune_low_magnitude(pruned).layers == pruned.layers


def test_strip_pruning_returns_the_wrapped_layers_with_their_masks_applied():
    inputs = keras.Input((6,))
    dense = L.Dense(6)
    h = dense(inputs)
    model = keras.Model(inputs, L.Dense(2)(keras.ops.relu(h) + h))  # operator nodes kept
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    x = np.random.default_rng(1).random((8, 6)).astype("float32")
    _fit(pruned, x, np.ones((8, 2)))
    dense.kernel.assign(dense.kernel + 1.0)  # as an update after the last pruning step would
    stripped = strip_pruning(pruned)
    assert stripped.layers[1] is dense and np.mean(dense.kernel.numpy() == 0) == 0.5
    assert strip_pruning(pruned.layers[1]) is dense
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0))
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_model_sharing_layers_with_its_original_saves_and_loads_alone(tmp_path):
    model = keras.Sequential([keras.Input((4,)), L.Dense(4), L.Dense(2)])
    pruned = prune_low_magnitude(model)
    pruned.save(tmp_path / "pruned.keras")
    strip_pruning(pruned).save(tmp_path / "stripped.keras")
    x = np.ones((2, 4), "float32")
    for name in ("pruned", "stripped"):
        loaded = keras.models.load_model(tmp_path / f"{name}.keras")
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_wrapped_keras_layers_answer_get_prunable_weights():
    dropout, dense = prune_low_magnitude([L.Dropout(0.4), L.Dense(3)])
    keras.Sequential([keras.Input((4,)), dense, dropout])
    assert dropout.layer.get_prunable_weights() == []
    assert dense.layer.get_prunable_weights() == [dense.layer.kernel]


@pytest.mark.parametrize("target, name", [(object(), "object"), ("dense", "str")])
def test_prune_low_magnitude_of_anything_else_is_tfmots_value_error(target, name):
    with pytest.raises(ValueError) as e:
        prune_low_magnitude(target)
    assert str(e.value) == (
        "`prune_low_magnitude` can only prune an object of the following types: "
        "keras.models.Sequential, keras functional model, keras.layers.Layer, list of "
        f"keras.layers.Layer. You passed an object of type: {name}.")


def test_n_by_m_pads_input_channels_that_are_not_a_multiple_of_m():
    model = prune_low_magnitude(keras.Sequential([keras.Input((6,)), L.Dense(4)]),
                                pruning_schedule=ConstantSparsity(0.5, 0, frequency=1),
                                sparsity_m_by_n=(2, 4))
    _fit(model, np.ones((4, 6)), np.ones((4, 4)))
    mask = model.layers[0].masks[0].numpy()  # (6 inputs, 4 outputs)
    assert (mask[:4].sum(axis=0) == 2).all()  # a full group: 2 of 4 kept
    assert (mask[4:].sum(axis=0) == 2).all()  # 2 inputs + 2 padded zeros: both kept


# ---------------------------------------------------------------------------
# Callbacks, scopes, policies.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("log_dir", ["", None, 3])
def test_pruning_summaries_needs_a_non_empty_log_dir(log_dir):
    with pytest.raises(ValueError, match="`log_dir` must be a non-empty string"):
        PruningSummaries(log_dir=log_dir)


def test_pruning_summaries_log_when_each_epoch_begins(tmp_path):
    model = prune_low_magnitude(keras.Sequential([keras.Input((4,)), L.Dense(2)]))
    model.compile("sgd", "mse")
    summaries = PruningSummaries(log_dir=str(tmp_path))
    summaries.set_model(model)
    summaries.on_epoch_begin(epoch=-1)  # tfmot's custom-loop recipe
    assert os.listdir(tmp_path)


def test_prune_scope_is_a_no_op_and_not_needed_to_load(tmp_path):
    model = prune_low_magnitude(keras.Sequential([keras.Input((4,)), L.Dense(2)]))
    model.save(tmp_path / "m.keras")
    with prune_scope():
        assert isinstance(keras.models.load_model(tmp_path / "m.keras").layers[0],
                          PruneLowMagnitude)
    assert isinstance(keras.models.load_model(tmp_path / "m.keras").layers[0],
                      PruneLowMagnitude)


def _xnnpack_model(*, keepdims=True, middle=None):
    inputs = keras.Input((8, 8, 3))
    x = L.ZeroPadding2D(1)(inputs)
    x = L.Conv2D(16, 3, strides=2)(x)
    x = L.Conv2D(16, 1)(x)
    if middle is not None:
        x = middle(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    return keras.Model(inputs, L.GlobalAveragePooling2D(keepdims=keepdims)(x))


def test_prune_for_latency_on_xnnpack_wraps_only_1x1_convolutions():
    model = _xnnpack_model()
    pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0), (1, 1), "AVG",
                                 PruneForLatencyOnXNNPack())  # tfmot's positional order
    assert [type(w.layer).__name__ for w in _wrappers(pruned)] == ["Conv2D"]
    assert _wrappers(pruned)[0].layer.kernel_size == (1, 1)


@pytest.mark.parametrize("model, message", [
    (lambda: _xnnpack_model(keepdims=False), "Could not find a `GlobalAveragePooling2D` layer"),
    (lambda: _xnnpack_model(middle=L.MaxPooling2D()),
     "Layer MaxPooling2D is not supported for the PruneForLatencyOnXNNPack pruning policy"),
    (lambda: keras.Sequential([L.Conv2D(4, 1)]), "Unbuilt models are not supported"),
])
def test_prune_for_latency_on_xnnpack_refuses_models_it_cannot_speed_up(model, message):
    with pytest.raises(ValueError, match=message):
        prune_low_magnitude(model(), pruning_policy=PruneForLatencyOnXNNPack())


def test_a_custom_pruning_policy_selects_layers():
    class OnlyNamed(PruningPolicy):
        def allow_pruning(self, layer):
            return layer.name == "keep_me"

        def ensure_model_supports_pruning(self, model):
            pass

    model = keras.Sequential([keras.Input((4,)), L.Dense(4, name="keep_me"), L.Dense(2)])
    pruned = prune_low_magnitude(model, pruning_policy=OnlyNamed())
    assert [w.layer.name for w in _wrappers(pruned)] == ["keep_me"]
    with pytest.raises(TypeError, match="pruning_policy"):
        prune_low_magnitude(model, pruning_policy=object())


def test_public_names_match_tfmots():
    for name in ("prune_low_magnitude", "prune_scope", "strip_pruning", "UpdatePruningStep",
                 "PruningSummaries", "PruningSchedule", "ConstantSparsity", "PolynomialDecay",
                 "PrunableLayer", "PruningPolicy", "PruneForLatencyOnXNNPack"):
        assert name in pruning.__all__ and hasattr(pruning, name)
