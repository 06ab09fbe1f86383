import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import convert, inspector, pruning
from tfcompress.pruning import (ConstantSparsity, PolynomialDecay, PruneLowMagnitude,
                                UpdatePruningStep, prune_low_magnitude, sparsity_report,
                                strip_pruning)

L = keras.layers


def _fit(model, x, y, *, epochs=1, batch_size=8, callbacks=None):
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False,
              callbacks=[UpdatePruningStep()] if callbacks is None else callbacks)
    return model


def _data(shape, outputs=3, n=16, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, *shape).astype("float32"), rng.rand(n, outputs).astype("float32")


def _head(inputs, x):
    if len(x.shape) > 2:
        x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3)(x))


def _model_with(layer_fn, input_shape, dtype="float32"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape, dtype=dtype)
    return _head(inputs, layer_fn(inputs))


LAYERS = {
    "Dense": (lambda x: L.Dense(16)(x), (8,)),
    "Conv1D": (lambda x: L.Conv1D(8, 3)(x), (10, 4)),
    "Conv2D": (lambda x: L.Conv2D(8, 3)(x), (6, 6, 4)),
    "Conv3D": (lambda x: L.Conv3D(4, 2)(x), (4, 4, 4, 4)),
    "DepthwiseConv2D": (lambda x: L.DepthwiseConv2D(3, depth_multiplier=2)(x), (6, 6, 4)),
    "SeparableConv2D": (lambda x: L.SeparableConv2D(8, 3)(x), (6, 6, 4)),
    "Conv2DTranspose": (lambda x: L.Conv2DTranspose(4, 3)(x), (4, 4, 4)),
    "Embedding": (lambda x: L.Embedding(20, 8)(x), (5,)),
    "LSTM": (lambda x: L.LSTM(8)(x), (5, 4)),
    "GRU": (lambda x: L.GRU(8)(x), (5, 4)),
    "MultiHeadAttention": (lambda x: L.MultiHeadAttention(2, 4)(x, x), (5, 8)),
    "EinsumDense": (lambda x: L.EinsumDense("ab,bc->ac", output_shape=8)(x), (8,)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_supported_layer_reaches_its_target_sparsity(name):
    layer_fn, shape = LAYERS[name]
    model = _model_with(layer_fn, shape, "int32" if name == "Embedding" else "float32")
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    wrapped = [layer for layer in pruned.layers
               if isinstance(layer, PruneLowMagnitude) and layer.prunable_weights]
    assert len(wrapped) == 2  # the layer under test and the Dense head (Flatten: no-op)
    x, y = _data(shape)
    if name == "Embedding":
        x = (x * 20).astype("int32")
    _fit(pruned, x, y)
    rows = sparsity_report(pruned).layers
    assert rows and all(abs(r.sparsity - 0.5) <= 1.0 / r.size + 1e-9 for r in rows), rows
    stripped = strip_pruning(pruned)
    assert not any(isinstance(layer, PruneLowMagnitude)
                   for layer in stripped._flatten_layers(include_self=False))
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-5)


def test_custom_layer_with_get_prunable_weights_is_pruned():
    class Scale(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 4), name="w")

        def call(self, x):
            return x @ self.w

        def get_prunable_weights(self):
            return [self.w]

    layer = prune_low_magnitude(Scale(), pruning_schedule=ConstantSparsity(0.75, 0, frequency=1))
    model = keras.Sequential([keras.Input((8,)), layer])
    _fit(model, *_data((8,), outputs=4))
    assert sparsity_report(model).layers[0].sparsity == pytest.approx(0.75)


def test_unsupported_layer_is_named_with_its_class_and_the_supported_list():
    class Custom(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 2), name="w")

        def call(self, x):
            return x @ self.w

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Custom(name="mystery")(inputs))
    with pytest.raises(ValueError, match=r"'mystery' of class Custom cannot be pruned\. "
                                         r"Supported: Dense, .*Conv2D"):
        prune_low_magnitude(model)
    with pytest.raises(ValueError, match="GroupNormalization cannot be pruned"):
        prune_low_magnitude(L.GroupNormalization(2))


def test_model_level_pruning_wraps_layers_without_prunable_weights_as_no_ops():
    # tfmot wraps every layer its registry knows, those with nothing to prune too.
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(),
                              L.MaxPooling2D(), L.Dropout(0.1), L.Flatten(), L.Dense(2)])
    pruned = prune_low_magnitude(model)
    assert all(isinstance(layer, PruneLowMagnitude) for layer in pruned.layers)
    assert [len(layer.prunable_weights) for layer in pruned.layers] == [1, 0, 0, 0, 0, 1]
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert [type(layer).__name__ for layer in strip_pruning(pruned).layers] == [
        "Conv2D", "BatchNormalization", "MaxPooling2D", "Dropout", "Flatten", "Dense"]


def test_pruning_a_copy_leaves_the_original_untouched():
    # Pruning wraps the layers it is given (tfmot's behaviour); the documented way to keep
    # the original is to prune a copy.
    model = _model_with(LAYERS["Dense"][0], (8,))
    before = [w.copy() for w in model.get_weights()]
    own = keras.models.clone_model(model)
    own.set_weights(model.get_weights())
    pruned = prune_low_magnitude(own, pruning_schedule=ConstantSparsity(0.9, 0, frequency=1))
    x, y = _data((8,))
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0))
    _fit(pruned, x, y)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert sparsity_report(own).total_sparsity > 0.5


def test_nested_model_layers_are_wrapped():
    inner = keras.Sequential([keras.Input((8,)), L.Dense(8), L.Dense(8)], name="inner")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, L.Dense(2)(inner(inputs)))
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    _fit(pruned, *_data((8,), outputs=2))
    names = [r.layer for r in sparsity_report(pruned).layers]
    assert len(names) == 3 and all(r.sparsity == 0.5 for r in sparsity_report(pruned).layers)


def test_subclassed_model_is_refused_but_its_wrapped_layers_work():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1 = prune_low_magnitude(L.Dense(8),
                                          pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
            self.d2 = L.Dense(2)

        def call(self, x, training=None):  # Keras propagates `training` to d1 from here
            return self.d2(self.d1(x))

    net = Net()
    with pytest.raises(ValueError, match="You passed an object of type: Net"):
        prune_low_magnitude(net)
    x, y = _data((8,), outputs=2)
    with pytest.raises(RuntimeError, match="not built yet"):
        _fit(net, x, y)
    net(x[:1])
    _fit(net, x, y)
    rows = {r.layer: r.sparsity for r in sparsity_report(net).layers}
    assert rows == {net.d1.layer.name: 0.5, net.d2.name: 0.0}


def test_missing_update_callback_is_a_clear_error():
    pruned = prune_low_magnitude(_model_with(LAYERS["Dense"][0], (8,)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="needs the UpdatePruningStep"):
        _fit(pruned, *_data((8,)), callbacks=[])


def test_polynomial_schedule_is_followed_step_by_step():
    pruned = prune_low_magnitude(
        _model_with(LAYERS["Dense"][0], (8,)),
        pruning_schedule=PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4, power=1,
                                         frequency=2))
    x, y = _data((8,), n=8)
    seen = []
    for _ in range(3):  # one batch per epoch: steps 1, 2, 3 as in tfmot
        _fit(pruned, x, y, batch_size=8)
        seen.append(round(sparsity_report(pruned).layers[0].sparsity, 3))
    first = round(round(0.4 * 128) / 128, 3)
    assert seen == [0.0, first, first]
    assert int(pruned.layers[1].pruning_step.numpy()) == 3


def test_block_sparsity_zeroes_whole_blocks():
    pruned = keras.Sequential([keras.Input((8,)), prune_low_magnitude(
        L.Dense(16), pruning_schedule=ConstantSparsity(0.5, 0, frequency=1),
        block_size=(2, 4), block_pooling_type="MAX")])
    _fit(pruned, *_data((8,), outputs=16))
    kernel = strip_pruning(pruned).layers[0].kernel.numpy()  # (8, 16)
    blocks = kernel.reshape(4, 2, 4, 4).transpose(0, 2, 1, 3).reshape(16, 8)
    zero_blocks = np.all(blocks == 0, axis=1)
    assert zero_blocks.sum() == 8
    assert np.all(np.count_nonzero(blocks[~zero_blocks], axis=1) > 0)


def test_block_size_that_does_not_divide_the_weight_is_named():
    model = _model_with(lambda x: L.Dense(6)(x), (8,))
    with pytest.raises(ValueError, match=r"`block_size` \(3, 4\) does not divide weight .*8x6"):
        prune_low_magnitude(model, block_size=(3, 4))


@pytest.mark.parametrize("kwargs, message", [
    ({"block_size": (0, 1)}, "block_size=(0, 1)"),
    ({"block_pooling_type": "MEAN"}, "block_pooling_type='MEAN'"),
    ({"sparsity_m_by_n": (4, 2)}, "sparsity_m_by_n=(4, 2)"),
    ({"sparsity_m_by_n": (2, 4), "block_size": (2, 2)}, "cannot be combined"),
])
def test_bad_options_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prune_low_magnitude(L.Dense(4), **kwargs)


def test_sparsity_m_by_n_rejects_layers_without_input_channel_axis():
    with pytest.raises(ValueError, match="Embedding"):
        prune_low_magnitude(L.Embedding(10, 4), sparsity_m_by_n=(2, 4))


def test_two_four_sparsity_survives_int8_conversion():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 8))
    x = L.Conv2D(8, 3, activation="relu")(inputs)
    x = L.Flatten()(x)
    model = keras.Model(inputs, L.Dense(4)(L.Dense(16, activation="relu")(x)))
    x, y = _data((8, 8, 8), outputs=4, n=32)
    # Before pruning: the pruned model shares (and prunes) the model's weights.
    baseline = convert(model, representative_data=x, progress=False).model_bytes
    pruned = prune_low_magnitude(model, sparsity_m_by_n=(2, 4),
                                 pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    _fit(pruned, x, y)
    stripped = strip_pruning(pruned)
    int8 = convert(stripped, representative_data=x, progress=False).model_bytes
    check = inspector.check_sparsity_m_by_n(int8, n=2, m=4)
    assert check.ok and len(check.tensors) == 3, check
    assert not inspector.check_sparsity_m_by_n(baseline, n=2, m=4).ok


def test_pruned_int8_file_is_sparse_and_gzips_small(data_dir):
    from tfcompress import data

    ds = data.load_dataset("mnist", data_dir=data_dir)
    x = ds.x_train[:2048].astype("float32") / 255.0
    y = ds.y_train[:2048]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(8, 3, activation="relu"),
                              L.MaxPooling2D(), L.Flatten(), L.Dense(64, activation="relu"),
                              L.Dense(10)])
    # Before pruning: the pruned model shares (and prunes) the model's weights.
    dense = convert(model, representative_data=x[:64], progress=False).model_bytes
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.8, 0, frequency=8))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    pruned.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    stripped = strip_pruning(pruned)
    assert sparsity_report(stripped).total_sparsity == pytest.approx(0.8, abs=0.01)
    sparse = convert(stripped, representative_data=x[:64], progress=False).model_bytes
    assert inspector.inspect(sparse).zero_weight_fraction > 0.75
    assert inspector.gzip_size(sparse) < 0.5 * inspector.gzip_size(dense)
    sizes = inspector.tflite_sizes(sparse)
    assert sizes["bytes"] == len(sparse) and sizes["gzip_bytes"] == inspector.gzip_size(sparse)


def test_mid_pruning_keras_file_loads_with_plain_load_model_and_continues(tmp_path):
    pruned = prune_low_magnitude(
        _model_with(LAYERS["Conv2D"][0], (6, 6, 4)),
        pruning_schedule=PolynomialDecay(0.0, 0.6, begin_step=0, end_step=6, frequency=2))
    x, y = _data((6, 6, 4), n=32)
    _fit(pruned, x, y)  # 4 steps
    pruned.save(tmp_path / "mid.keras")
    loaded = keras.models.load_model(tmp_path / "mid.keras")
    assert isinstance(loaded.layers[1], PruneLowMagnitude)
    assert int(loaded.layers[1].pruning_step.numpy()) == 4
    assert loaded.layers[1].pruning_schedule == pruned.layers[1].pruning_schedule
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))
    loaded.fit(x, y, batch_size=8, verbose=0, callbacks=[UpdatePruningStep()])
    assert int(loaded.layers[1].pruning_step.numpy()) == 8
    assert sparsity_report(loaded).total_sparsity == pytest.approx(0.6, abs=0.01)


def test_prune_stop_and_restart_ends_with_the_same_masks_and_step(tmp_path):
    def fresh():
        return prune_low_magnitude(
            _model_with(LAYERS["Dense"][0], (8,)),
            pruning_schedule=PolynomialDecay(0.0, 0.7, begin_step=0, end_step=10, frequency=2))

    x, y = _data((8,), n=48)
    straight = _fit(fresh(), x, y, epochs=2)
    first = _fit(fresh(), x, y, epochs=1)
    first.save(tmp_path / "checkpoint.keras")
    resumed = keras.models.load_model(tmp_path / "checkpoint.keras")
    resumed.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False,
                callbacks=[UpdatePruningStep()])
    for a, b in zip(straight.layers[1:], resumed.layers[1:]):
        assert int(a.pruning_step.numpy()) == int(b.pruning_step.numpy()) == 12
        for ma, mb in zip(a.masks, b.masks):
            np.testing.assert_array_equal(ma.numpy(), mb.numpy())
        np.testing.assert_allclose(a.layer.kernel.numpy(), b.layer.kernel.numpy(), atol=1e-6)


def test_wrapper_config_round_trip_and_single_layer_strip():
    wrapper = prune_low_magnitude(L.Dense(4, name="d"), sparsity_m_by_n=(2, 4))
    clone = PruneLowMagnitude.from_config(wrapper.get_config())
    assert clone.sparsity_m_by_n == (2, 4) and clone.layer.units == 4
    assert clone.pruning_schedule == wrapper.pruning_schedule
    wrapper.build((None, 8))
    layer = strip_pruning(wrapper)
    assert isinstance(layer, L.Dense) and layer.kernel.shape == (8, 4)


def test_tfmot_style_schedule_object_is_accepted_without_tfmot():
    class Every(object):  # tfmot's contract: __call__(step) -> (should_prune, sparsity)
        def __call__(self, step):
            return tf.equal(step % 1, 0), tf.constant(0.25)

    pruned = prune_low_magnitude(_model_with(LAYERS["Dense"][0], (8,)), pruning_schedule=Every())
    _fit(pruned, *_data((8,)))
    assert sparsity_report(pruned).layers[0].sparsity == pytest.approx(0.25)


def test_pruning_summaries_writes_sparsity_scalars(tmp_path):
    pruned = prune_low_magnitude(_model_with(LAYERS["Dense"][0], (8,)),
                                 pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    _fit(pruned, *_data((8,)), epochs=2,
         callbacks=[UpdatePruningStep(), pruning.PruningSummaries(tmp_path)])
    tags = set()
    for event_file in tmp_path.iterdir():
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(v.tag for v in event.summary.value)
    assert {"sparsity/total", "pruning_step"} <= tags
    assert any(t.startswith("sparsity/dense") and t.endswith("/kernel") for t in tags), tags


def test_mirrored_strategy_reaches_the_same_sparsity_as_one_device():
    script = textwrap.dedent("""
        import json, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from tfcompress import pruning
        def run(strategy):
            keras.utils.set_random_seed(1)
            with strategy.scope():
                m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                                      keras.layers.Dense(4)])
                p = pruning.prune_low_magnitude(m, pruning_schedule=pruning.PolynomialDecay(
                    0.0, 0.7, begin_step=0, end_step=8, frequency=2))
                p.compile("adam", "mse")
            x = np.random.RandomState(0).rand(128, 8).astype("float32")
            y = np.random.RandomState(1).rand(128, 4).astype("float32")
            p.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0,
                  callbacks=[pruning.UpdatePruningStep()])
            return [r.sparsity for r in pruning.sparsity_report(p).layers]
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert mirrored.num_replicas_in_sync == 2
        print(json.dumps({"mirrored": run(mirrored), "single": run(tf.distribute.get_strategy())}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mirrored"] == result["single"]
    assert all(s == pytest.approx(0.7, abs=0.02) for s in result["single"])


def test_transforms_of_a_compiled_model_with_a_custom_loss_return_uncompiled_models():
    def my_loss(y_true, y_pred):  # not registered: Keras could not rebuild it
        return keras.ops.mean((y_true - y_pred) ** 2)

    model = _model_with(LAYERS["Dense"][0], (8,))
    model.compile("adam", my_loss)
    pruned = prune_low_magnitude(model)
    assert not pruned.compiled and model.compiled
    _fit(pruned, *_data((8,)))
    pruned.compile("adam", my_loss)
    assert not strip_pruning(pruned).compiled


def test_layers_option_wraps_only_the_named_layers():
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="first"),
                              L.Conv2D(4, 3, name="second"), L.Flatten(), L.Dense(2, name="head")])
    pruned = prune_low_magnitude(model, layers=["second"])
    kinds = {layer.name: type(layer).__name__ for layer in pruned.layers}
    assert kinds["first"] == "Conv2D" and kinds["head"] == "Dense"
    assert [type(layer).__name__ for layer in pruned.layers].count("PruneLowMagnitude") == 1
    x = np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match=r"no layer named 'secnd'. Close matches: \['second'\]"):
        prune_low_magnitude(model, layers=["secnd"])
    with pytest.raises(TypeError, match="list of layer names"):
        prune_low_magnitude(model, layers="second")
    with pytest.raises(ValueError, match="selects layers of a model"):
        prune_low_magnitude(L.Dense(2), layers=["second"])
