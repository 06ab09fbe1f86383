"""Pruning, channel pruning and low-rank on the models people bring (issue 15, item 4).

Keras 3 writes ``x + 3.0``, ``x * y``, ``x[:, :8]`` and ``keras.ops.mean(x, 1)`` into a
Functional graph as Operation nodes that are not layers; MobileNetV3 is full of them
(hard-swish, hard-sigmoid). Every transform passes them through unchanged, channel
analysis reads them soundly (a removed channel was zero wherever it was read, so the
stripped model computes exactly what the masked one did), layers without weights wrap
as tfmot's no-op wrappers, and the weights of attention, embeddings, EinsumDense and
recurrent layers prune. Tiny widths, one training step, a few samples.
"""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tc
from tfcompress import _compat, _graph, lowrank
from tfcompress.channel_pruning import ChannelController, analyze, prune_channels
from tfcompress.pruning import (ConstantSparsity, PruneLowMagnitude, UpdatePruningStep,
                                prune_low_magnitude, sparsity_report, strip_pruning)

L = keras.layers


def _x(model, n=8, seed=0, low=-1.0, high=1.0):
    rng = np.random.default_rng(seed)
    t = model.inputs[0]
    if "int" in str(t.dtype):
        return rng.integers(0, 20, size=(n,) + tuple(t.shape[1:])).astype(str(t.dtype))
    return rng.uniform(low, high, size=(n,) + tuple(t.shape[1:])).astype("float32")


def _one_step(model, x, *, loss="mse"):
    out = model(x[:2], training=False)
    y = np.zeros((len(x),) + tuple(out.shape[1:]), "float32")
    model.compile(keras.optimizers.SGD(1e-3), loss)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=[UpdatePruningStep()])
    return model


def _predict(model, x):
    return np.asarray(model(x, training=False))


def _assert_same(a, b):
    """Equal up to float32 summation order (removed channels add exact zeros)."""
    scale = max(float(np.max(np.abs(a))), 1e-6)
    assert a.shape == b.shape
    assert float(np.max(np.abs(a - b))) <= 1e-5 * scale, float(np.max(np.abs(a - b))) / scale


def _op_types(model):
    return sorted(type(n.operation).__name__ for n in _compat.graph_nodes(model)
                  if _compat.is_operation(n.operation))


def _channels_strip_exactly(model, x, sparsity=0.5):
    """prune_channels, masks set one-shot, strip: the stripped model equals the masked one."""
    pruned = prune_channels(model, pruning_schedule=ConstantSparsity(sparsity, 0, frequency=1))
    ChannelController(pruned).update(sparsity)
    masked = _predict(pruned, x)
    small = strip_pruning(pruned)
    _assert_same(masked, _predict(small, x))
    return pruned, small


# ---------------------------------------------------------------------------
# Operator nodes.
# ---------------------------------------------------------------------------


def _operators_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8), name="x")
    a = L.Dense(16, name="a")(inp)
    b = L.Dense(16, activation="sigmoid", name="b")(inp)
    h = (a * b) * 0.5 + 3.0                           # two tensors tied; scalar constants
    h = keras.ops.relu(h) - keras.ops.mean(h, axis=1, keepdims=True)
    h = L.Dense(12, name="c")(h)
    pooled = keras.ops.concatenate([keras.ops.mean(h, axis=1), keras.ops.max(h, axis=1)],
                                   axis=-1)
    return keras.Model(inp, L.Dense(3, name="head")(pooled[:, :20] + h[:, 0, :1]))


def test_every_tool_passes_operator_nodes_through_unchanged():
    model = _operators_model()
    x = _x(model)
    ops = _op_types(model)
    assert {"Multiply", "Add", "Subtract", "Mean", "Max", "Concatenate", "GetItem"} <= set(ops)
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    assert _op_types(pruned) == ops
    np.testing.assert_allclose(_predict(pruned, x), _predict(model, x), rtol=1e-6)
    _one_step(pruned, x)
    stripped = strip_pruning(pruned)
    assert _op_types(stripped) == ops
    np.testing.assert_allclose(_predict(stripped, x), _predict(pruned, x), rtol=1e-5, atol=1e-6)
    full = {n: min(lowrank._matrix(model.get_layer(n), "channel").shape) for n in ("a", "c")}
    factored = lowrank.factorize(model, ranks=full)
    assert _op_types(factored) == ops and {p.layer for p in factored.factor_plans} == {"a", "c"}
    np.testing.assert_allclose(_predict(factored, x), _predict(model, x), rtol=1e-4, atol=1e-4)


def test_operators_model_channels_strip_exactly():
    model = _operators_model()
    x = _x(model)
    plan = analyze(model)
    # `a * b` ties a and b channel by channel; c is read by mean / max (over the time
    # axis), concatenated and then sliced on the channel axis: fixed.
    assert [plan.group_name(g) for g in plan.groups] == ["a,b"]
    pruned, small = _channels_strip_exactly(model, x)
    assert (small.get_layer("a").units, small.get_layer("b").units) == (8, 8)
    assert small.get_layer("c").kernel.shape == (8, 12)
    assert _op_types(small) == _op_types(model)


def _analysis_case(build):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 8))
    h = L.Dense(8, name="p")(inp)
    return keras.Model(inp, L.Dense(2, name="head")(build(h)))


class _Opaque(keras.Operation):
    """An Operation defined outside Keras: what it does to channels is unknown."""

    def call(self, x):
        return x * 2.0

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, x.dtype)


# (what the graph does after the producer `p`, whether p's channels can be removed)
ANALYSIS_CASES = {
    "scalar_constants": (lambda h: keras.ops.relu6(h + 3.0) * (1.0 / 6.0), True),
    "size_one_constant": (lambda h: h * np.full((1, 1), 0.5, "float32"), True),
    "per_channel_constant": (lambda h: h + np.arange(8, dtype="float32"), False),
    "channel_slice": (lambda h: h[:, :, :4], False),
    "time_index": (lambda h: h[:, 0], True),
    "time_slice_with_ellipsis": (lambda h: h[:, 1:, ...], True),
    "reversed_channels": (lambda h: h[..., ::-1], False),
    "mean_over_time": (lambda h: keras.ops.mean(h, axis=1), True),
    "mean_over_channels": (lambda h: keras.ops.mean(h, axis=-1, keepdims=True), False),
    "sum_of_everything": (lambda h: keras.ops.expand_dims(keras.ops.sum(h), 0) + h, False),
    "reshape": (lambda h: keras.ops.reshape(h, (-1, 5, 2, 4))[:, :, 0], False),
    "softmax_op": (lambda h: keras.ops.softmax(h), False),
    "gate_with_one_channel": (lambda h: h * keras.ops.sigmoid(L.Dense(1)(h)), False),
    "transpose_keeping_channels": (lambda h: keras.ops.transpose(h, (1, 0, 2)), True),
    "transpose_moving_channels": (lambda h: keras.ops.transpose(h, (0, 2, 1)), False),
    "expand_dims": (lambda h: keras.ops.expand_dims(h, 1)[:, 0], True),
    "opaque_operation": (lambda h: _Opaque()(h), False),
}


@pytest.mark.parametrize("case", sorted(ANALYSIS_CASES))
def test_channel_analysis_reads_operator_nodes_soundly(case):
    build, prunable = ANALYSIS_CASES[case]
    model = _analysis_case(build)
    groups = [analyze(model).group_name(g) for g in analyze(model).groups]
    assert ("p" in groups) is prunable, groups
    if not groups:
        with pytest.raises(ValueError, match="has no channel that can be removed"):
            prune_channels(model)
        return
    x = _x(model)
    _, small = _channels_strip_exactly(model, x)
    assert small.get_layer("p").units == (4 if prunable else 8)


def test_squeeze_excite_gate_ties_its_channels_to_the_gated_tensor():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = L.Conv2D(16, 1, name="expand")(inp)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = x * keras.ops.relu6(x + 3.0) / 6.0                         # hard-swish as operators
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(16, 1, name="excite")(s)
    x = x * keras.ops.hard_sigmoid(s)                               # the per-channel gate
    x = L.Conv2D(8, 1, name="project")(x)
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    groups = {analyze(model).group_name(g) for g in analyze(model).groups}
    assert "excite,expand" in groups
    _, small = _channels_strip_exactly(model, _x(model))
    assert small.get_layer("expand").filters == small.get_layer("excite").filters == 8


def test_nested_models_with_operators_prune_factor_and_split():
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((8, 8, 3))
    h = L.SeparableConv2D(8, 3, padding="same", name="sep")(inner_in)
    inner = keras.Model(inner_in, keras.ops.relu6(h + 3.0) * h / 6.0, name="inner")
    inp = keras.Input((8, 8, 3))
    x = L.GlobalAveragePooling2D()(inner(inp) * 0.5)
    model = keras.Model(inp, L.Dense(2, name="head")(x))
    xs = _x(model)
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    _one_step(pruned, xs)
    np.testing.assert_allclose(_predict(strip_pruning(pruned), xs), _predict(pruned, xs),
                               rtol=1e-5, atol=1e-6)
    _, small = _channels_strip_exactly(model, xs)  # nested models are inlined
    assert small.get_layer("sep").filters == 4
    factored = lowrank.factorize(model, ranks={"head": 2})
    np.testing.assert_allclose(_predict(factored, xs), _predict(model, xs), rtol=1e-4, atol=1e-5)
    split, notes = _graph.split_separable(_graph.functional(model, purpose="test", inline=True))
    assert len(notes) == 1 and "Add" in _op_types(split)
    np.testing.assert_allclose(_predict(split, xs), _predict(model, xs), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# MobileNetV3 (keras.applications, random weights, small width and input).
# ---------------------------------------------------------------------------


def _mobilenet_v3(kind="small", preprocessing=True):
    keras.utils.set_random_seed(0)
    fn = (keras.applications.MobileNetV3Small if kind == "small"
          else keras.applications.MobileNetV3Large)
    return fn(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=4,
              include_preprocessing=preprocessing, include_top=True)


def _mobilenet_x(preprocessing, n=4):
    low, high = (0.0, 255.0) if preprocessing else (-1.0, 1.0)
    return np.random.default_rng(1).uniform(low, high, (n, 32, 32, 3)).astype("float32")


# One variant each (CI budget: 80 s per MobileNetV3 sparse conversion); the zoo tool runs
# every variant (tools/zoo_benchmark.py --ops=prune_sparse,prune_channels,lowrank).
@pytest.mark.parametrize("preprocessing", [True])
def test_mobilenet_v3_small_prunes_strips_and_converts_sparse(preprocessing):
    model = _mobilenet_v3("small", preprocessing)
    x = _mobilenet_x(preprocessing)
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.8, 0, frequency=1))
    assert _op_types(pruned) == _op_types(model) and _op_types(model)
    _one_step(pruned, x)
    stripped = strip_pruning(pruned)
    assert _op_types(stripped) == _op_types(model)
    np.testing.assert_allclose(_predict(stripped, x), _predict(pruned, x), rtol=1e-5, atol=1e-6)
    assert sparsity_report(stripped).total_sparsity == pytest.approx(0.8, abs=0.01)
    if not preprocessing:
        return  # the same graph after the Rescaling; one conversion is enough (~40 s)
    # convert(sparse=True) keeps the sparse file only if it equals the dense one bit for
    # bit on both kernel paths (else it writes dense weights and says so).
    result = tc.convert(stripped, representative_data=_mobilenet_x(preprocessing, 16),
                        sparse=True, progress=False)
    assert result.report.op_histogram["CONV_2D"] > 0


@pytest.mark.parametrize("kind,preprocessing", [("small", False), ("large", True)])
def test_mobilenet_v3_channel_pruning_strips_exactly_and_factorizes(kind, preprocessing):
    model = _mobilenet_v3(kind, preprocessing)
    x = _mobilenet_x(preprocessing)
    plan = analyze(model)
    # The squeeze-excite blocks' gates share their channels with the expanded stream.
    assert any("squeeze_excite_conv_1" in plan.group_name(g) for g in plan.groups), [
        plan.group_name(g) for g in plan.groups]
    pruned, small = _channels_strip_exactly(model, x)
    assert small.count_params() < model.count_params()
    factored = lowrank.factorize(model, ratio=0.5)
    assert factored.factor_plans and _op_types(factored) == _op_types(model)
    assert _predict(factored, x).shape == _predict(model, x).shape


def test_pruned_mobilenet_v3_trains_one_step_with_channel_masks():
    model = _mobilenet_v3("small", True)
    x = _mobilenet_x(True)
    pruned = prune_channels(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    _one_step(pruned, x)
    masked = _predict(pruned, x)
    small = strip_pruning(pruned)
    _assert_same(masked, _predict(small, x))


# ---------------------------------------------------------------------------
# Layers without weights: tfmot's no-op wrappers.
# ---------------------------------------------------------------------------


def test_layers_without_weights_wrapped_one_by_one_are_no_op_wrappers(tmp_path):
    keras.utils.set_random_seed(0)
    schedule = ConstantSparsity(0.5, 0, frequency=1)
    model = keras.Sequential([keras.Input((8, 8, 3))] + prune_low_magnitude([
        L.Conv2D(8, 3, padding="same"), L.ReLU(), L.MaxPooling2D(), L.Dropout(0.2),
        L.ZeroPadding2D(), L.GlobalAveragePooling2D(), L.Flatten(), L.Dense(4)],
        pruning_schedule=schedule))
    assert all(isinstance(layer, PruneLowMagnitude) for layer in model.layers)
    x = np.random.default_rng(0).random((8, 8, 8, 3)).astype("float32")
    _one_step(model, x)
    rows = sparsity_report(model).layers
    assert [r.weight.split("/")[-1] for r in rows] == ["kernel", "kernel"]
    assert all(r.sparsity == 0.5 for r in rows)
    assert {int(layer.pruning_step.numpy()) for layer in model.layers} == {1}  # one batch
    model.save(tmp_path / "wrapped.keras")
    loaded = keras.models.load_model(tmp_path / "wrapped.keras")
    np.testing.assert_allclose(_predict(loaded, x), _predict(model, x), rtol=1e-6)
    stripped = strip_pruning(loaded)
    assert [type(layer).__name__ for layer in stripped.layers] == [
        "Conv2D", "ReLU", "MaxPooling2D", "Dropout", "ZeroPadding2D", "GlobalAveragePooling2D",
        "Flatten", "Dense"]
    np.testing.assert_allclose(_predict(stripped, x), _predict(model, x), rtol=1e-5, atol=1e-6)
    assert type(strip_pruning(model.layers[3])) is L.Dropout


def test_merge_layer_wrapped_alone_is_a_no_op_and_needs_the_callback():
    inp = keras.Input((4,))
    add = prune_low_magnitude(L.Add())
    model = keras.Model(inp, add([L.Dense(4)(inp), inp]))
    assert add.masks == [] and add._weights_to_prune == []
    model.compile("sgd", "mse")
    with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
        model.fit(np.ones((2, 4)), np.ones((2, 4)), verbose=0)
    assert type(strip_pruning(add)) is L.Add


def test_layers_whose_weights_are_not_prunable_are_no_ops_or_refused_one_by_one():
    for layer in (L.BatchNormalization(), L.LayerNormalization()):  # tfmot: no-op wrappers
        wrapper = prune_low_magnitude(layer)
        wrapper.build((None, 4))
        assert wrapper.prunable_weights == [] and layer.get_prunable_weights() == []
    from keras.src.applications.convnext import LayerScale

    for layer in (L.GroupNormalization(2), L.PReLU(), LayerScale(0.1, 4)):
        with pytest.raises(ValueError, match=f"{type(layer).__name__} cannot be pruned: its "
                                             "weights are normalization"):
            prune_low_magnitude(layer)


# ---------------------------------------------------------------------------
# Attention, embeddings, EinsumDense, recurrent kernels.
# ---------------------------------------------------------------------------


def _transformer():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), dtype="int32")
    x = L.Embedding(20, 16, name="embed")(inp)
    h = L.MultiHeadAttention(2, 8, name="mha")(x, x)
    x = L.LayerNormalization()(x + h)
    h = L.EinsumDense("abc,cd->abd", output_shape=(8, 32), bias_axes="d",
                      activation="gelu", name="ffn")(x)
    x = L.LayerNormalization()(L.Add()([x, L.Dense(16)(h)]))
    x = L.Dropout(0.1)(L.GlobalAveragePooling1D()(x))
    return keras.Model(inp, L.Dense(2)(x))


def test_attention_embedding_and_einsum_weights_prune_and_strip():
    model = _transformer()
    x = _x(model)
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.75, 0, frequency=1))
    _one_step(pruned, x)
    rows = {r.weight: r.sparsity for r in sparsity_report(pruned).layers}
    for name in ("query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"):
        assert rows[name] == pytest.approx(0.75), rows
    assert rows["embeddings"] == pytest.approx(0.75) and rows["kernel"] == pytest.approx(0.75)
    stripped = strip_pruning(pruned)
    assert not any(isinstance(layer, PruneLowMagnitude)
                   for layer in _compat.flatten_layers(stripped))
    np.testing.assert_allclose(_predict(stripped, x), _predict(pruned, x), rtol=1e-5, atol=1e-6)
    assert sparsity_report(stripped).total_sparsity == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("cell", [L.LSTM, L.GRU])
def test_recurrent_kernels_and_recurrent_kernels_both_prune(cell):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 5))
    model = keras.Model(inp, L.Dense(3)(cell(8)(inp)))
    x = _x(model)
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0, frequency=1))
    _one_step(pruned, x)
    rows = {r.weight.split("/")[-1]: r.sparsity for r in sparsity_report(pruned).layers
            if r.layer != pruned.layers[-1].layer.name}
    assert rows == {"kernel": 0.5, "recurrent_kernel": 0.5}
    np.testing.assert_allclose(_predict(strip_pruning(pruned), x), _predict(pruned, x),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Low-rank EinsumDense.
# ---------------------------------------------------------------------------

EINSUMS = {
    "dense_like": ("ab,bc->ac", (12,), 10, "c"),
    "ellipsis": ("...b,bc->...c", (4, 12), 10, "c"),
    "to_heads": ("abc,cde->abde", (4, 12), (4, 2, 5), "de"),
    "from_heads": ("abcd,cde->abe", (4, 3, 4), (4, 10), "e"),
}


def _einsum_model(equation, shape, output_shape, bias_axes):
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape)
    h = L.EinsumDense(equation, output_shape=output_shape, bias_axes=bias_axes,
                      activation="relu", name="proj")(inp)
    return keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(h)))


@pytest.mark.parametrize("case", sorted(EINSUMS))
def test_full_rank_einsum_dense_factorization_is_exact_and_reads_back(case, tmp_path):
    model = _einsum_model(*EINSUMS[case])
    x = _x(model)
    full = min(lowrank._matrix(model.get_layer("proj"), "channel").shape)
    small = lowrank.factorize(model, ranks={"proj": full}, layers=["proj"])
    assert [p.method for p in small.factor_plans] == ["einsum"]
    assert [type(layer).__name__ for layer in small.layers[1:3]] == ["EinsumDense"] * 2
    np.testing.assert_allclose(_predict(small, x), _predict(model, x), rtol=1e-4, atol=1e-5)
    small.save(tmp_path / "small.keras")
    loaded = keras.models.load_model(tmp_path / "small.keras")
    assert lowrank.factor_plans(loaded) == small.factor_plans


def test_einsum_dense_at_low_rank_saves_parameters_and_macs():
    model = _einsum_model(*EINSUMS["to_heads"])
    small = lowrank.factorize(model, ratio=0.3, layers=["proj"])
    (plan,) = small.factor_plans
    assert plan.params_after <= 0.3 * plan.params_before
    assert lowrank.count_macs(small) < lowrank.count_macs(model)
    # 4 positions x (12 x 10) for the original projection, then 2 x 10 for the head
    assert lowrank.count_macs(model) == 4 * 12 * 10 + 40 * 2


def test_attention_projections_and_other_einsums_are_left_whole_with_a_note():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 6))
    h = L.MultiHeadAttention(2, 4, name="mha")(inp, inp)
    h = L.EinsumDense("abc,bd->acd", output_shape=(6, 5), name="mix_time")(h)
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(h)))
    small = lowrank.factorize(model, ratio=0.5)
    notes = " ".join(small.factor_notes)
    assert "mha (MultiHeadAttention)" in notes and "mix_time (EinsumDense 'abc,bd->acd')" in notes
    with pytest.raises(ValueError, match=r"mix_time \(EinsumDense\).*Supported: Dense"):
        lowrank.factorize(model, ratio=0.5, layers=["mix_time"])


def test_an_operation_class_registered_as_channelwise_passes_channels():
    from tfcompress import layer_kinds

    class Twice(keras.Operation):
        def call(self, x):
            return x * 2.0

        def compute_output_spec(self, x):
            return keras.KerasTensor(x.shape, x.dtype)

    model = _analysis_case(lambda h: Twice()(h))
    assert not analyze(model).groups
    layer_kinds.register(Twice, channelwise=True)
    assert [analyze(model).group_name(g) for g in analyze(model).groups] == ["p"]
    _, small = _channels_strip_exactly(model, _x(model))
    assert small.get_layer("p").units == 4


def test_keras_convnext_prunes_around_its_layer_scales():
    # Its LayerScale layers refused the whole model ("cannot be pruned").
    sys.path.insert(0, str(Path(__file__).parent))
    import zoo

    model = zoo.ZOO["convnext"].build("small")
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0))
    scales = [layer for layer in _graph.all_layers(pruned) if "layer_scale" in layer.name]
    assert scales and not any(isinstance(layer, PruneLowMagnitude) for layer in scales)


def test_attention_score_scales_are_left_alone_by_a_model_level_prune():
    # AdditiveAttention's learned scale refused the whole model ("cannot be pruned").
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 8))
    q = L.Dense(8, name="q")(inputs)
    h = L.AdditiveAttention(name="att")([q, inputs])
    h = L.Attention(use_scale=True, score_mode="concat", name="att2")([h, inputs])
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(h)))
    pruned = prune_low_magnitude(model, pruning_schedule=ConstantSparsity(0.5, 0))
    kept = {layer.name: layer for layer in pruned.layers}
    assert not isinstance(kept["att"], PruneLowMagnitude)
    assert not isinstance(kept["att2"], PruneLowMagnitude)
    assert isinstance(kept["prune_low_magnitude_q"], PruneLowMagnitude)


@keras.saving.register_keras_serializable(package="test_pruning_coverage")
class _Block(keras.layers.Layer):
    """A user's block: its weights are its sublayers'."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = keras.layers.Dense(units, activation="relu")
        self.outer = keras.layers.Dense(units)

    def call(self, x):
        return x + self.outer(self.inner(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_a_block_written_as_a_custom_layer_is_pruned_as_its_layers():
    # "Layer 'block' of class _Block cannot be pruned" until session 17.
    from tfcompress import channel_pruning
    from tfcompress.pruning import prune_low_magnitude, strip_pruning

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3)(_Block(8, name="block")(inputs)))
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    pruned = prune_low_magnitude(model)
    assert sum(hasattr(layer, "apply_masks") for layer in pruned.layers) == 3
    np.testing.assert_allclose(strip_pruning(pruned).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)
    plan = channel_pruning.analyze(model)
    inner = {c for c, who in plan.producers.items() if who[0][0] == model.get_layer(
        "block").inner.name}
    assert len(inner) == 8 and not inner & plan.fixed  # the block's hidden channels
