"""Port of sparsity/keras/pruning_wrapper_test.py (Keras 3, tfcompress)."""

import keras
import pytest
import tensorflow as tf

from tfcompress import pruning as pruning_wrapper
from tfcompress.pruning import ConstantSparsity, PruneLowMagnitude as Prune

L = keras.layers
pytestmark = pytest.mark.quick
PARAMS = {"pruning_schedule": ConstantSparsity(0.5, 0), "block_size": (1, 1),
          "block_pooling_type": "AVG"}


class CustomLayer(L.Layer):
    def __init__(self, input_dim=16, output_dim=32):
        super().__init__()
        self.weight = self.add_weight(shape=(input_dim, output_dim), initializer="random_normal",
                                      trainable=True)
        self.bias = self.add_weight(shape=(output_dim,), initializer="zeros", trainable=True)

    def call(self, inputs):
        return tf.matmul(inputs, self.weight) + self.bias


class CustomLayerPrunable(CustomLayer):
    def get_prunable_weights(self):
        return [self.weight, self.bias]


def _mask_count(model):
    return sum(len(layer.pruning_vars) for layer in model.layers)


def test_testPruneWrapperAllowsOnlyValidPoolingType():
    layer = L.Dense(10)
    with pytest.raises(ValueError):
        Prune(layer, block_pooling_type="MIN")
    Prune(layer, block_pooling_type="AVG")
    Prune(layer, block_pooling_type="MAX")


def test_testDense():
    model = keras.Sequential()
    model.add(Prune(L.Dense(10), **PARAMS))
    model.build(input_shape=(10, 1))
    assert _mask_count(model) == 1


def test_testEmbedding():
    model = keras.Sequential()
    model.add(Prune(L.Embedding(10, 10), input_shape=(10,), **PARAMS))
    model.build(input_shape=(10, 1))
    assert _mask_count(model) == 1


def test_testConv2D():
    model = keras.Sequential()
    model.add(Prune(L.Conv2D(4, (3, 3)), **PARAMS))
    model.build(input_shape=(1, 16, 16, 4))
    assert _mask_count(model) == 1


def test_testPruneModel():
    model = keras.Sequential()
    for layer in (L.Conv2D(32, 5), L.MaxPooling2D((2, 2), (2, 2)), L.Conv2D(64, 5),
                  L.MaxPooling2D((2, 2), (2, 2)), L.Flatten(), L.Dense(1024), L.Dropout(0.4),
                  L.Dense(10)):
        model.add(Prune(layer))
    model.build(input_shape=(1, 28, 28, 1))
    assert _mask_count(model) == 4
    config = model.get_config()
    revived = model.__class__.from_config(config, custom_objects={"PruneLowMagnitude": Prune})
    revived_config = revived.get_config()
    for c in (config, revived_config):
        for layer in c["layers"]:
            layer.pop("build_config", None)
    assert config == revived_config


def test_testCustomLayerNonPrunable():
    layer = CustomLayer(input_dim=16, output_dim=32)
    layer(keras.Input(shape=(16,)))
    with pytest.raises(ValueError):
        Prune(layer, block_pooling_type="MAX")


def test_testCustomLayerPrunable():
    layer = CustomLayerPrunable(input_dim=16, output_dim=32)
    layer(keras.Input(shape=(16,)))
    pruned = Prune(layer, block_pooling_type="MAX")
    assert pruned.name == "prune_low_magnitude_custom_layer_prunable"


def test_testCollectPrunableLayers():
    model = keras.Sequential()
    model.add(Prune(L.RNN(L.LSTMCell(4, dropout=0.5, recurrent_dropout=0.5),
                          input_shape=(None, 4))))
    model.add(Prune(L.BatchNormalization()))
    model.add(Prune(L.Flatten()))
    model.add(Prune(L.Dense(10)))
    model.add(Prune(L.Dropout(0.5)))
    model.build(input_shape=(1, 4))
    assert len(pruning_wrapper.collect_prunable_layers(model)) == 5


def test_testConv3DWeightNotPrunedWithSparsityMbyN():
    layer = L.Conv3D(2, 3)
    layer(keras.Input(shape=(4, 28, 28, 28, 1)))
    model = keras.Sequential()
    model.add(Prune(layer, sparsity_m_by_n=(2, 4)))
    pruned = pruning_wrapper.collect_prunable_layers(model)
    assert len(pruned) == 1
    assert len(pruned[0].pruning_vars) == 0
