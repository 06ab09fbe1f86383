"""Port of sparsity/keras/pruning_callbacks_test.py (Keras 3, tfcompress)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import pruning as prune
from tfcompress import pruning as pruning_callbacks

from _tfmot_utils import build_simple_dense_model

BATCH_SIZE = 20


def _setup(custom_training_loop=False):
    model = prune.prune_low_magnitude(build_simple_dense_model())
    x = np.random.rand(BATCH_SIZE, 10)
    y = keras.utils.to_categorical(np.random.randint(5, size=(BATCH_SIZE, 1)), 5)
    loss = keras.losses.categorical_crossentropy
    optimizer = keras.optimizers.SGD()
    if custom_training_loop:
        return model, loss, optimizer, x, y
    model.compile(loss=loss, optimizer=optimizer, metrics=["accuracy"])
    return model, x, y


def test_testUpdatePruningStepsAndLogsSummaries(tmp_path):
    model, x, y = _setup()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, callbacks=[
        pruning_callbacks.UpdatePruningStep(),
        pruning_callbacks.PruningSummaries(log_dir=str(tmp_path))])
    assert 3 == int(model.layers[0].pruning_step.numpy())
    assert 3 == int(model.layers[1].pruning_step.numpy())
    assert os.listdir(tmp_path)


def test_testUpdatePruningStepsAndLogsSummaries_CustomTrainingLoop(tmp_path):
    model, loss, optimizer, x, y = _setup(custom_training_loop=True)
    unused_arg = -1
    step_callback = pruning_callbacks.UpdatePruningStep()
    log_callback = pruning_callbacks.PruningSummaries(log_dir=str(tmp_path))
    step_callback.set_model(model)
    log_callback.set_model(model)
    model.optimizer = optimizer
    step_callback.on_train_begin()
    for _ in range(3):
        log_callback.on_epoch_begin(epoch=unused_arg)
        step_callback.on_train_batch_begin(batch=unused_arg)
        inp = np.reshape(x, [BATCH_SIZE, 10])
        with tf.GradientTape() as tape:
            logits = model(inp, training=True)
            loss_value = loss(y, logits)
            grads = tape.gradient(loss_value, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        step_callback.on_epoch_end(batch=unused_arg)
    assert 3 == int(model.layers[0].pruning_step.numpy())
    assert 3 == int(model.layers[1].pruning_step.numpy())
    assert os.listdir(tmp_path)


def test_testPruneTrainingRaisesError_PruningStepCallbackMissing():
    model, x, y = _setup()
    with pytest.raises(tf.errors.InvalidArgumentError):
        model.fit(x, y)


def test_testPruneTrainingLoopRaisesError_PruningStepCallbackMissing_CustomTrainingLoop():
    model, _, _, x, _ = _setup(custom_training_loop=True)
    with pytest.raises(tf.errors.InvalidArgumentError):
        inp = np.reshape(x, [BATCH_SIZE, 10])
        with tf.GradientTape():
            model(inp, training=True)
