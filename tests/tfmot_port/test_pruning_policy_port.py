"""Port of sparsity/keras/pruning_policy_test.py (Keras 3, tfcompress).

tfmot's ``CompatGlobalAveragePooling2D`` shim for TF <= 2.5 becomes Keras 3's own
``GlobalAveragePooling2D`` (which has ``keepdims``).
"""

import keras
import pytest

from tfcompress import pruning as prune
from tfcompress import pruning as pruning_policy
from tfcompress.pruning import ConstantSparsity, PruneLowMagnitude

L = keras.layers
pytestmark = pytest.mark.quick
GAP = L.GlobalAveragePooling2D
PARAMS = {"pruning_schedule": ConstantSparsity(0.5, 0), "block_size": (1, 1),
          "block_pooling_type": "AVG"}
START_ERROR = ("Could not find `Conv2D 3x3` layer with stride 2x2, `input filters == 3` and "
               "`VALID` padding and preceding `ZeroPadding2D` with `padding == 1` in all input "
               "branches of the model")
STOP_ERROR = ("Could not find a `GlobalAveragePooling2D` layer with `keepdims = True` in all "
              "output branches")
MIDDLE_ERROR = "Layer {} is not supported for the PruneForLatencyOnXNNPack pruning policy"
UNBUILT_ERROR = "Unbuilt models are not supported currently."


def _count(model):
    return sum(isinstance(m, PruneLowMagnitude) for m in model._flatten_layers(include_self=False))


def _prune(model):
    return prune.prune_low_magnitude(model, pruning_policy=pruning_policy.PruneForLatencyOnXNNPack(),
                                     **PARAMS)


def _error(model):
    with pytest.raises(ValueError) as e:
        _prune(model)
    return str(e.value)


def _stem(x, filters=16):
    x = L.ZeroPadding2D(padding=1)(x)
    return L.Conv2D(filters=filters, kernel_size=(3, 3), strides=(2, 2), padding="valid")(x)


def test_testPruneUnsupportedModelForLatencyOnXNNPackPolicyNoStartLayer():
    i = keras.Input(shape=(8, 8, 3))
    x = L.Conv2D(filters=16, kernel_size=(3, 3), strides=(2, 2), padding="same")(i)
    x = L.Conv2D(filters=16, kernel_size=[1, 1])(x)
    model = keras.Model(inputs=[i], outputs=[GAP(keepdims=True)(x)])
    assert _error(model) == START_ERROR


def test_testPruneUnsupportedModelForLatencyOnXNNPackPolicyNoStopLayer():
    i = keras.Input(shape=(8, 8, 3))
    x = L.Conv2D(filters=16, kernel_size=[1, 1])(_stem(i))
    model = keras.Model(inputs=[i], outputs=[GAP()(x)])
    assert _error(model) == STOP_ERROR


def test_testPruneUnsupportedModelForLatencyOnXNNPackPolicyMiddleLayer():
    i = keras.Input(shape=(8, 8, 3))
    x = L.Conv2D(filters=16, kernel_size=[1, 1])(_stem(i))
    x = L.MaxPooling2D(pool_size=(2, 2), strides=(2, 2))(x)
    model = keras.Model(inputs=[i], outputs=[GAP(keepdims=True)(x)])
    assert _error(model) == MIDDLE_ERROR.format("MaxPooling2D")


def test_testPruneSequentialModelForLatencyOnXNNPackPolicy():
    def layers(first):
        return [first, L.Conv2D(filters=4, kernel_size=(3, 3), strides=(2, 2), padding="valid"),
                L.DepthwiseConv2D(kernel_size=(3, 3), padding="same"),
                L.Conv2D(filters=8, kernel_size=[1, 1]), GAP(keepdims=True)]

    assert _error(keras.Sequential(layers(L.ZeroPadding2D(padding=1)))) == UNBUILT_ERROR
    model = keras.Sequential(layers(L.ZeroPadding2D(padding=1, input_shape=(8, 8, 3))))
    assert _count(_prune(model)) == 1


def test_testPruneModelRecursivelyForLatencyOnXNNPackPolicy():
    original = keras.Sequential([
        L.ZeroPadding2D(padding=1, input_shape=(8, 8, 3)),
        L.Conv2D(filters=4, kernel_size=(3, 3), strides=(2, 2), padding="valid"),
        keras.Sequential([L.Conv2D(filters=8, kernel_size=[1, 1]),
                          L.Conv2D(filters=16, kernel_size=[1, 1])]),
        GAP(keepdims=True)])
    assert _count(_prune(original)) == 2


def test_testPruneFunctionalModelWithLayerReusedForLatencyOnXNNPackPolicy():
    i = keras.Input(shape=(8, 8, 3))
    conv = L.Conv2D(filters=16, kernel_size=[1, 1])
    x = conv(conv(_stem(i)))
    model = keras.Model(inputs=[i], outputs=[GAP(keepdims=True)(x)])
    assert _count(_prune(model)) == 1


def test_testFunctionalModelNoPruningLayersForLatencyOnXNNPackPolicy():
    i = keras.Input(shape=(8, 8, 3))
    x = L.DepthwiseConv2D(kernel_size=(3, 3), padding="same")(_stem(i))
    x = L.Activation("relu")(x)
    model = keras.Model(inputs=[i], outputs=[GAP(keepdims=True)(x)])
    assert _count(_prune(model)) == 0


def test_testFunctionalModelForLatencyOnXNNPackPolicy():
    i1 = keras.Input(shape=(16, 16, 3))
    x1 = _stem(i1)
    x1 = L.Add()([L.DepthwiseConv2D(kernel_size=(3, 3), padding="same")(x1),
                  L.Conv2D(filters=16, kernel_size=[1, 1])(x1)])
    i2 = keras.Input(shape=(16, 16, 3))
    x2 = L.ZeroPadding2D(padding=1)(_stem(i2, filters=8))
    x2 = L.DepthwiseConv2D(kernel_size=(3, 3), strides=(2, 2), padding="valid")(x2)
    x2_1 = L.Activation("sigmoid")(L.Conv2D(filters=32, kernel_size=[1, 1])(
        GAP(keepdims=True)(x2)))
    x2_2 = L.UpSampling2D(interpolation="bilinear")(L.Conv2D(filters=32, kernel_size=[1, 1])(x2))
    x2 = L.Conv2D(filters=16, kernel_size=[1, 1])(L.Multiply()([x2_1, x2_2]))
    x = GAP(keepdims=True)(L.Add()([x1, x2]))
    o1 = L.Conv2D(filters=7, kernel_size=[1, 1])(x)
    o2 = L.Conv2D(filters=3, kernel_size=[1, 1])(x)
    model = keras.Model(inputs=[i1, i2], outputs=[o1, o2])
    assert _count(_prune(model)) == 6


def test_testPruneFunctionalModelAfterCloneForLatencyOnXNNPackPolicy():
    i = keras.Input(shape=(8, 8, 3))
    x = L.Conv2D(filters=16, kernel_size=[1, 1])(_stem(i))
    original = keras.Model(inputs=[i], outputs=[GAP(keepdims=True)(x)])
    cloned = keras.models.clone_model(original, clone_function=lambda layer: layer)
    assert _count(_prune(cloned)) == 1


def test_testFunctionalModelWithTFOpsForLatencyOnXNNPackPolicy():
    i = keras.Input(shape=(8, 8, 3))
    x = _stem(i)
    residual = L.Conv2D(filters=16, kernel_size=[1, 1])(x)
    x = x + residual
    x = x - residual
    x = x * residual
    x = L.Identity()(x)  # tf.identity cannot take a Keras 3 tensor: the Identity layer
    model = keras.Model(inputs=[i], outputs=[GAP(keepdims=True)(x)])
    assert _count(_prune(model)) == 1
