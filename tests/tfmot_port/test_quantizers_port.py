"""Port of quantization/keras/quantizers_test.py (Keras 3, tfcompress)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import quantizers

pytestmark = pytest.mark.quick
QUANT_PARAMS = {"num_bits": 8, "per_axis": False, "symmetric": False, "narrow_range": False}
TYPES = [quantizers.LastValueQuantizer, quantizers.MovingAverageQuantizer]


@pytest.mark.parametrize("quantizer_type", TYPES, ids=lambda c: c.__name__)
def test_testQuantizer(quantizer_type):
    quantizer = quantizer_type(**QUANT_PARAMS)
    inputs = tf.Variable(np.array([[-1.0, 0.5], [0.0, 1.0]]), name="inputs", dtype=tf.float32)
    min_var, max_var = tf.Variable(0.0), tf.Variable(0.0)
    result = quantizer(inputs, training=True, min_var=min_var, max_var=max_var)
    print("Result: ", np.asarray(result), "min_var: ", min_var.numpy(), "max_var: ", max_var.numpy())


@pytest.mark.parametrize("quantizer_type", TYPES, ids=lambda c: c.__name__)
def test_testSerialization(quantizer_type):
    quantizer = quantizer_type(**QUANT_PARAMS)
    expected = {"class_name": quantizer_type.__name__,
                "config": {"num_bits": 8, "per_axis": False, "symmetric": False,
                           "narrow_range": False}}
    serialized = keras.saving.serialize_keras_object(quantizer)
    assert expected == serialized
    revived = keras.saving.deserialize_keras_object(
        serialized, custom_objects={t.__name__: t for t in TYPES})
    assert quantizer == revived
