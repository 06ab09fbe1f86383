"""The one layer table: queries, inheritance, and a new layer supported by one entry."""

import keras
import numpy as np
import pytest
from keras import ops

from tfcompress import layer_kinds
from tfcompress.channel_pruning import ChannelMask, analyze, prune_channels
from tfcompress.layer_kinds import (UNKNOWN, LayerKind, activation_name, acts_per_channel,
                                    is_fusable_activation, is_softmax, kind_of, register)
from tfcompress.pruning import ConstantSparsity, UpdatePruningStep, strip_pruning
from tfcompress.quantization import (plan_quantization,
                                     quantize_annotate_model, quantize_model)

L = keras.layers


def test_table_answers_for_keras_layers():
    conv = kind_of(L.Conv2D(4, 3))
    assert (conv.kernel, conv.mixes_channels, conv.quantize_weights, conv.factorable,
            conv.fuses_activation) == ("conv", True, True, True, True)
    assert kind_of(L.Conv3D(4, 3)).quantize_weights is False  # known to pruning only
    assert kind_of(L.Conv2DTranspose(4, 3)).kernel == "conv_transpose"
    assert kind_of(L.SeparableConv2D(4, 3)).kernel == "separable"
    dw = kind_of(L.DepthwiseConv2D(3))
    assert (dw.kernel, dw.channelwise, dw.mixes_channels) == ("depthwise", True, False)
    bn = kind_of(L.BatchNormalization())
    assert bn.normalization and bn.channelwise and bn.fuses_activation
    assert kind_of(L.Add()).merge == "elementwise"
    assert kind_of(L.Concatenate()).merge == "concatenate"
    assert kind_of(L.MaxPooling2D()).output_range == "input"
    assert kind_of(L.GlobalAveragePooling2D()).output_range == "own"
    reshape = kind_of(L.Reshape((4,)))
    assert reshape.output_range == "input" and not reshape.channelwise
    assert kind_of(L.Flatten()).flattens
    assert kind_of(L.LSTM(3)) is UNKNOWN and kind_of(L.LSTM) is UNKNOWN
    assert [c.__name__ for c in layer_kinds.registered(lambda k: k.mixes_channels)][:3] == [
        "Dense", "Conv1D", "Conv2D"]


@pytest.mark.parametrize("layer, name, fusable, softmax", [
    (L.ReLU(), "relu", True, False),
    (L.ReLU(6.0), "relu6", True, False),
    (L.ReLU(max_value=3.0), "relu(negative_slope=0.0, max_value=3.0, threshold=0.0)", False, False),
    (L.ReLU(negative_slope=0.1), "relu(negative_slope=0.1, max_value=None, threshold=0.0)",
     False, False),
    (L.Activation("relu6"), "relu6", True, False),
    (L.Activation("softmax"), "softmax", False, True),
    (L.Softmax(), "softmax", False, True),
    (L.LeakyReLU(), "leaky_relu", False, False),
    (L.Dense(3, activation="relu"), "relu", False, False),  # not an activation layer
    (L.Dense(3, activation="softmax"), "softmax", False, False),
    (L.Flatten(), "linear", False, False),
])
def test_activation_names_and_what_tflite_fuses(layer, name, fusable, softmax):
    assert activation_name(layer) == name
    assert is_fusable_activation(layer) is fusable
    assert is_softmax(layer) is softmax


def test_acts_per_channel_reads_the_layer_arguments():
    assert acts_per_channel(L.DepthwiseConv2D(3))
    assert not acts_per_channel(L.DepthwiseConv2D(3, depth_multiplier=2))
    assert acts_per_channel(L.BatchNormalization(), 4)
    assert not acts_per_channel(L.BatchNormalization(axis=1), 4)
    assert not acts_per_channel(L.Activation("log_softmax"))
    assert acts_per_channel(L.Activation("tanh"))
    assert not acts_per_channel(L.Softmax()) and not acts_per_channel(L.Conv2D(2, 1))
    assert acts_per_channel(ChannelMask())  # channel_pruning registers its mask


def test_subclasses_inherit_their_parents_record_until_registered_themselves():
    class ScaledDense(L.Dense):
        pass

    class WideDense(ScaledDense):
        pass

    assert kind_of(ScaledDense(3)) is kind_of(L.Dense(3))
    inputs = keras.Input((6,))
    # QAT must know how a subclass computes: as tfmot, it refuses one without a
    # QuantizeConfig or a record of its own (issue 16); a class Keras can find (here in
    # a scope; unknown ones fail earlier with tfmot's clone ValueError).
    with keras.saving.custom_object_scope({"ScaledDense": ScaledDense}), \
            pytest.raises(RuntimeError, match="ScaledDense subclasses a Keras layer"):
        quantize_model(keras.Model(inputs, ScaledDense(3, name="scaled")(inputs)))
    own = register(ScaledDense, kernel="dense", mixes_channels=True)
    assert kind_of(WideDense(3)) is own and not own.quantize_weights
    assert kind_of(L.Dense(3)).quantize_weights  # the parent's record is unchanged


@pytest.mark.parametrize("args, kwargs, error, message", [
    (("Dense",), {}, TypeError, "subclass of keras.layers.Layer. Received: layer_class='Dense'"),
    ((int,), {}, TypeError, "subclass of keras.layers.Layer"),
    ((L.Dense,), {"mixes": True}, TypeError,
     r"Unknown layer properties \['mixes'\]\. Allowed: kernel"),
    ((L.Dense,), {"kernel": "matrix"}, ValueError, "Received: kernel='matrix'"),
    ((L.Dense,), {"merge": "sum"}, ValueError, "Received: merge='sum'"),
    ((L.Dense,), {"output_range": "fixed"}, ValueError, "Received: output_range='fixed'"),
    ((L.Dense,), {"channelwise": 1}, TypeError,
     "`channelwise` must be a bool. Received: channelwise=1"),
    ((L.Dense,), {"activation": len}, TypeError, "`activation` must be None or a string"),
])
def test_register_refuses_bad_entries(args, kwargs, error, message):
    before = kind_of(L.Dense(2))
    with pytest.raises(error, match=message):
        register(*args, **kwargs)
    assert kind_of(L.Dense(2)) is before


def test_a_record_prints_only_what_it_says():
    assert repr(LayerKind(channelwise=True, output_range="input")) == (
        "LayerKind(channelwise=True, output_range='input')")
    assert repr(UNKNOWN) == "LayerKind()"


def _zero_border_class():
    class ZeroBorder(L.Layer):
        """Zeroes the outer ring of every feature map: per channel, no weights."""

        def call(self, x):
            return ops.pad(x[:, 1:-1, 1:-1, :], [[0, 0], [1, 1], [1, 1], [0, 0]])

    return ZeroBorder


def _model_with(layer):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layer(x)
    x = L.Conv2D(8, 3, padding="same", name="body")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(2, name="head")(x))


def test_one_entry_makes_channel_pruning_pass_channels_through_a_new_layer():
    ZeroBorder = _zero_border_class()
    unknown = analyze(_model_with(ZeroBorder(name="border")))
    assert unknown.describe() == "8 channels shared by body"  # stem's channels are fixed
    register(ZeroBorder, channelwise=True, output_range="input")
    model = _model_with(ZeroBorder(name="border"))
    assert sorted(analyze(model).describe().splitlines()) == [
        "8 channels shared by body", "8 channels shared by stem"]
    pruned = prune_channels(model, pruning_schedule=ConstantSparsity(0.5, frequency=1))
    x = np.random.RandomState(0).rand(8, 8, 8, 3).astype("float32")
    pruned.compile("sgd", "mse")
    pruned.fit(x, np.zeros((8, 2)), verbose=0, callbacks=[UpdatePruningStep()])
    small = strip_pruning(pruned)
    assert small.get_layer("stem").filters == 4 and small.get_layer("body").kernel.shape[2] == 4
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_one_entry_makes_quantization_keep_the_range_through_a_new_layer():
    ZeroBorder = _zero_border_class()
    before = plan_quantization(quantize_annotate_model(_model_with(ZeroBorder(name="border"))))
    assert (before.layer("border").output, before.layer("border").quantizer) == (
        "learned", "quant_out_border")
    register(ZeroBorder, channelwise=True, output_range="input")
    model = _model_with(ZeroBorder(name="border"))
    after = plan_quantization(quantize_annotate_model(model))
    assert (after.layer("border").output, after.layer("border").quantizer) == (
        "input_range", None)
    assert "quant_out_border" not in [layer.name for layer in quantize_model(model).layers]


def test_a_registered_activation_is_fused_like_relu():
    class Clamp(L.Layer):
        def call(self, x):
            return ops.relu(x)

    register(Clamp, channelwise=True, activation="relu")
    model = _model_with(Clamp(name="clamp"))
    plan = plan_quantization(quantize_annotate_model(model))
    assert plan.layer("stem").output == "fused_activation"
    assert plan.layer("clamp").quantizer == "quant_out_clamp"
    names = [layer.name for layer in quantize_model(model).layers]
    assert names.index("clamp") == names.index("quant_stem") + 1  # nothing in between


def test_operator_nodes_have_records_by_their_class_name():
    x = keras.Input((4, 6))
    model = keras.Model(x, [x + 3.0, x[:, :2], ops.mean(x, 1), ops.sin(x),
                            ops.concatenate([x, x], -1)])
    kinds = {type(op).__name__: kind_of(op) for op in model.operations[1:]}
    assert kinds["Add"].merge == "elementwise" and kinds["Add"].fuses_activation
    assert kinds["GetItem"].output_range == "input"
    assert kinds["Mean"].output_range == "own"
    assert kinds["Concatenate"].merge == "concatenate"
    assert kinds["Sin"] is UNKNOWN  # TFLite has no int8 SIN
    assert layer_kinds.is_operation(model.operations[1]) and not layer_kinds.is_operation(L.Add)
    assert kind_of(L.Add()).merge == "elementwise"  # the layer's own record, not the op's


def test_an_operation_class_of_ones_own_registers_like_a_layer():
    class Halve(keras.Operation):
        def call(self, x):
            return x[:, ::2]

        def compute_output_spec(self, x):
            return keras.KerasTensor((x.shape[0], (x.shape[1] + 1) // 2) + x.shape[2:], x.dtype)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 4), name="x")
    model = keras.Model(inputs, L.Dense(2)(Halve(name="halve")(L.Dense(4)(inputs))))
    with pytest.raises(ValueError, match="Operator node 'halve' \\(class Halve"):
        plan_quantization(quantize_annotate_model(model))
    register(Halve, output_range="input")
    step = plan_quantization(quantize_annotate_model(model)).layer("halve")
    assert (step.action, step.output, step.quantizer) == ("operation", "input_range", None)
