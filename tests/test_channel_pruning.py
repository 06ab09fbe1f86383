import keras
import numpy as np
import pytest

from tfcompress import channel_pruning, convert
from tfcompress.channel_pruning import ChannelMask, analyze, prune_channels
from tfcompress.pruning import (ConstantSparsity, PolynomialDecay, UpdatePruningStep,
                                prune_low_magnitude, sparsity_report, strip_pruning)

L = keras.layers


def _residual_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU()(x)
    y = L.Conv2D(8, 3, padding="same", name="block_a")(x)
    y = L.BatchNormalization()(y)
    y = L.Activation("relu")(y)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = L.Conv2D(8, 1, name="block_b")(y)
    y = L.BatchNormalization()(y)
    x = L.ReLU()(L.Add()([x, y]))
    z = L.SeparableConv2D(12, 3, padding="same", name="sep")(x)
    x = L.Concatenate()([x, z])
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(5, name="head")(x))


def _train(model, *, steps=4, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.rand(8 * steps, 12, 12, 3).astype("float32")
    y = rng.rand(8 * steps, 5).astype("float32")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x, y, batch_size=8, verbose=0, shuffle=False, callbacks=[UpdatePruningStep()])
    return x


def test_analysis_groups_residual_channels_and_fixes_outputs():
    plan = analyze(_residual_model())
    described = sorted(plan.describe().splitlines())
    assert described == ["12 channels shared by sep", "8 channels shared by block_a",
                         "8 channels shared by block_b, stem"]
    assert all(c not in plan.fixed for g in plan.groups for c in g)
    head = {c for c, who in plan.producers.items() if who[0][0] == "head"}
    assert len(head) == 5 and head <= plan.fixed  # they reach the model output


def test_pruned_and_stripped_model_is_smaller_and_computes_the_same():
    pruned = prune_channels(_residual_model(), pruning_schedule=ConstantSparsity(0.5, frequency=1))
    assert sum(isinstance(layer, ChannelMask) for layer in pruned.layers) == 4
    x = _train(pruned)
    small = strip_pruning(pruned)
    assert not any(isinstance(layer, ChannelMask) for layer in small.layers)
    by_name = {layer.name: layer for layer in small.layers}
    assert by_name["stem"].filters == by_name["block_b"].filters == 4  # one residual group
    assert by_name["block_a"].filters == 4 and by_name["sep"].filters == 6
    assert by_name["dw"].kernel.shape[2] == 4 and by_name["stem_bn"].gamma.shape == (4,)
    assert by_name["head"].kernel.shape == (6 * 6 * 10, 5)
    assert small.count_params() < 0.6 * _residual_model().count_params()
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_channel_sparsity_follows_the_schedule_and_pruned_channels_stay_pruned():
    pruned = prune_channels(
        _residual_model(),
        pruning_schedule=PolynomialDecay(0.0, 0.75, begin_step=0, end_step=4, power=1,
                                         frequency=2))
    mask = [layer for layer in pruned.layers if isinstance(layer, ChannelMask)][0]
    assert mask.mask.shape == (8,)
    history = []
    rng = np.random.RandomState(0)
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    for _ in range(5):
        pruned.fit(rng.rand(8, 12, 12, 3), rng.rand(8, 5), batch_size=8, verbose=0,
                   callbacks=[UpdatePruningStep()])
        history.append(mask.mask.numpy().copy())
    zeros = [int((m == 0).sum()) for m in history]
    # Batch k sees step k, as in tfmot (issue 16): updates at steps 2 and 4, of 8 channels
    # floor(8 * 0.375) and floor(8 * 0.75).
    assert zeros == [0, 3, 3, 6, 6]
    assert np.all(history[4][history[2] == 0] == 0)


def test_mid_channel_pruning_model_saves_and_loads_with_plain_load_model(tmp_path):
    pruned = prune_channels(_residual_model(), pruning_schedule=ConstantSparsity(0.5, frequency=1),
                            criterion="l1")
    x = _train(pruned)
    pruned.save(tmp_path / "channels.keras")
    loaded = keras.models.load_model(tmp_path / "channels.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-6)
    small = strip_pruning(loaded)
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_channel_pruning_combines_with_unstructured_pruning():
    model = prune_channels(_residual_model(), pruning_schedule=ConstantSparsity(0.5, frequency=1))
    both = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, frequency=1))
    _train(both)
    small = strip_pruning(both)
    assert small.get_layer("stem").filters == 4
    assert sparsity_report(small).total_sparsity > 0.3


def test_stripped_model_converts_to_a_smaller_int8_file():
    model = _residual_model()
    pruned = prune_channels(model, pruning_schedule=ConstantSparsity(0.5, frequency=1))
    x = _train(pruned)
    small = strip_pruning(pruned)
    full = convert(model, representative_data=x, progress=False)
    reduced = convert(small, representative_data=x, progress=False)
    assert not reduced.report.non_integer_tensors()
    # Weights halve; the file itself is mostly fixed overhead at this toy size.
    weight_bytes = [sum(r.report.weight_bytes_per_layer.values()) for r in (full, reduced)]
    assert weight_bytes[1] < 0.5 * weight_bytes[0]
    assert reduced.report.op_histogram == full.report.op_histogram


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="criterion='l3'"):
        prune_channels(_residual_model(), criterion="l3")

    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed model of class Net"):
        prune_channels(Net())
    inputs = keras.Input((4,))
    only_output = keras.Model(inputs, L.Dense(3)(inputs))
    with pytest.raises(ValueError, match="no channel that can be removed"):
        prune_channels(only_output)


def test_reshape_and_softmax_barriers_fix_channels():
    inputs = keras.Input((4, 4, 2))
    a = L.Conv2D(4, 1, name="a")(inputs)
    b = L.Reshape((16, 4))(a)
    c = L.Conv2D(6, 1, name="c")(inputs)
    c = L.Activation("softmax")(c)
    d = L.Conv2D(5, 1, name="d")(inputs)
    e = L.Conv2D(3, 1, name="e")(d)
    out = L.Concatenate()([L.Flatten()(b), L.Flatten()(c), L.Flatten()(e)])
    plan = analyze(keras.Model(inputs, L.Dense(2)(out)))
    assert sorted(plan.describe().splitlines()) == ["3 channels shared by e",
                                                    "5 channels shared by d"]


def test_channels_first_layers_are_barriers():
    # Their channels are axis 1: the analysis (which follows the last axis) masked the
    # wrong axis, and the first training step failed with a NumPy IndexError.
    inputs = keras.Input((3, 8, 8))
    x = L.Conv2D(6, 3, data_format="channels_first", name="cf")(inputs)
    x = L.BatchNormalization(axis=1)(x)
    x = L.GlobalAveragePooling2D(data_format="channels_first")(x)
    x = L.Dense(5, activation="relu", name="hidden")(x)
    plan = analyze(keras.Model(inputs, L.Dense(2)(x)))
    assert plan.describe().splitlines() == ["5 channels shared by hidden"]
    only_first = keras.Model(inputs, L.Flatten()(L.Conv2D(4, 3, data_format="channels_first")(
        inputs)))
    with pytest.raises(ValueError, match="channels_first"):
        prune_channels(only_first)


def test_sequential_models_are_accepted():
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(6, 3), L.ReLU(),
                              L.GlobalAveragePooling2D(), L.Dense(2)])
    pruned = prune_channels(model, pruning_schedule=ConstantSparsity(0.5, frequency=1))
    rng = np.random.RandomState(0)
    pruned.compile("sgd", "mse")
    pruned.fit(rng.rand(4, 8, 8, 3), rng.rand(4, 2), verbose=0, callbacks=[UpdatePruningStep()])
    small = strip_pruning(pruned)
    assert small.layers[1].filters == 3


def test_importance_is_measured_on_batchnorm_folded_filters():
    model = _residual_model()
    plan = analyze(model)
    assert plan.batchnorm_after["stem"] == "stem_bn"
    conv, bn = model.get_layer("stem"), model.get_layer("stem_bn")
    bn.gamma.assign(np.linspace(0.1, 2.0, 8).astype("float32"))
    bn.moving_variance.assign(np.full(8, 4.0, "float32"))
    kernel = conv.kernel.numpy().reshape(-1, 8)
    expected = np.sqrt(((kernel * bn.gamma.numpy() / np.sqrt(4.0 + bn.epsilon)) ** 2).sum(0))
    np.testing.assert_allclose(channel_pruning.filter_norms(conv, "l2", bn), expected, rtol=1e-5)
    np.testing.assert_allclose(channel_pruning.filter_norms(conv, "l1"), np.abs(kernel).sum(0),
                               rtol=1e-5)


def test_layers_restricts_pruning_to_the_named_groups():
    pruned = prune_channels(_residual_model(), pruning_schedule=ConstantSparsity(0.5, frequency=1),
                            layers=["block_a", "sep"])
    _train(pruned)
    by_name = {layer.name: layer for layer in strip_pruning(pruned).layers}
    assert by_name["block_a"].filters == 4 and by_name["sep"].filters == 6
    assert by_name["stem"].filters == by_name["block_b"].filters == 8  # not listed: whole
    with pytest.raises(ValueError, match=r"selects no channel group.*block_b,stem"):
        prune_channels(_residual_model(), layers=["stem"])  # block_b shares its channels


def test_sensitivity_masks_one_group_at_a_time():
    model = _residual_model()
    rng = np.random.RandomState(0)
    x = rng.rand(64, 12, 12, 3).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), -1)  # the model's own answers: accuracy 1.0
    report = channel_pruning.sensitivity(model, x, y, ratios=(0.0, 0.5))
    assert sorted(report) == ["block_a", "block_b,stem", "sep"]
    assert all(acc[0.0] == 1.0 for acc in report.values())  # nothing masked: the same answers
    assert min(acc[0.5] for acc in report.values()) < 1.0  # masking half of a group changes answers
    assert model.predict(x, verbose=0).shape == (64, 5)  # the model itself is not changed


def test_reconstruct_refits_the_readers_of_removed_channels():
    model = _residual_model()
    x = np.random.RandomState(0).rand(64, 12, 12, 3).astype("float32")
    reference = model.predict(x, verbose=0)
    pruned = prune_channels(model, pruning_schedule=ConstantSparsity(0.5, 0))
    channel_pruning.ChannelController(pruned).update(0.5)
    error = lambda m: float(np.sqrt(np.mean((m.predict(x, verbose=0) - reference) ** 2)))  # noqa: E731
    before = error(pruned)
    report = channel_pruning.reconstruct(pruned, model, x[:48])
    assert set(report) == {"block_a", "block_b", "head"}  # Conv2D / Dense reading masked channels
    assert all(after < first for first, after in report.values())
    assert error(pruned) < 0.8 * before  # the whole model answers closer to the original too
    # Only kept input channels are read, so removing the channels is still exact.
    small = strip_pruning(pruned)
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_reconstruct_needs_masks_and_the_original_layers():
    model = _residual_model()
    with pytest.raises(ValueError, match="no ChannelMask layers"):
        channel_pruning.reconstruct(model, model, np.zeros((2, 12, 12, 3), "float32"))
    pruned = prune_channels(model, pruning_schedule=ConstantSparsity(0.5, 0))
    channel_pruning.ChannelController(pruned).update(0.5)
    other = keras.Sequential([keras.Input((12, 12, 3)), L.Conv2D(8, 3, name="unrelated")])
    with pytest.raises(ValueError, match="no layer named 'block_a'"):
        channel_pruning.reconstruct(pruned, other, np.zeros((2, 12, 12, 3), "float32"))


def test_every_layer_keeps_a_channel_when_its_group_spans_two_layers():
    # NASNet concatenates two narrow convolutions and adds them to another: one group,
    # whose weakest half was all of the weak convolution, rebuilt with filters=0
    # (a TypeError in strip_pruning).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    weak = L.Conv2D(2, 1, name="weak")(inputs)
    strong = L.Conv2D(2, 1, name="strong")(inputs)
    other = L.Conv2D(4, 1, name="other")(inputs)  # the sum ties the four channels
    x = L.BatchNormalization(name="bn")(L.Add()([L.Concatenate()([weak, strong]), other]))
    model = keras.Model(inputs, L.Dense(5, name="head")(L.GlobalAveragePooling2D()(
        L.Conv2D(4, 3, name="next")(x))))
    for name, factor in (("weak", 0.01), ("strong", 10.0)):
        layer = model.get_layer(name)
        layer.set_weights([w * factor for w in layer.get_weights()])
    pruned = prune_channels(model, pruning_schedule=ConstantSparsity(0.5, frequency=1))
    x = _train(pruned)
    small = strip_pruning(pruned)
    by_name = {layer.name: layer for layer in small.layers}
    assert by_name["weak"].filters >= 1 and by_name["strong"].filters >= 1
    assert by_name["weak"].filters + by_name["strong"].filters < 4  # some were removed
    np.testing.assert_allclose(small.predict(x[:8], verbose=0), pruned.predict(x[:8], verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_an_output_of_the_batch_axis_alone_is_analyzed():
    # Dense(1) -> Reshape(()) (a regression output of shape (batch,)): a TypeError
    # ("int() argument ... not 'NoneType'") until session 17.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Reshape(())(keras.layers.Dense(1)(hidden)))
    plan = analyze(model)
    hidden = {c for c, who in plan.producers.items() if who[0][0] == "hidden"}
    assert len(hidden) == 16 and not hidden & plan.fixed  # prunable: the output is not
