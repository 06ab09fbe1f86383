"""Prune a small CNN to 80% sparsity inside `fit`, strip it, and convert it to int8.

    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python examples/prune_in_fit.py [--quick]

Without the data folder it runs on scikit-learn's digits.
"""

import sys

import keras

import tfcompress as tc
from tfcompress import data, inspector, pipeline, pruning

quick = "--quick" in sys.argv
ds = data.load_dataset("mnist")  # $TFCOMPRESS_DATA_DIR, else the Keras cache, else digits
x, y = ds.x_train.astype("float32"), ds.y_train  # small_cnn rescales 0-255 itself
x, y = (x[:4096], y[:4096]) if quick else (x, y)
model = pipeline.small_cnn(ds.input_shape, ds.num_classes)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile("adam", loss, metrics=["accuracy"])
model.fit(x, y, epochs=4 if quick else 8, batch_size=32, verbose=0)

steps = len(x) // 64 * (1 if quick else 2)
# Pruning wraps (and prunes) the layers it is given, as tfmot does: prune a copy, so that
# `model` stays the dense reference converted below.
own = keras.models.clone_model(model)
own.set_weights(model.get_weights())
pruned = pruning.prune_low_magnitude(own, pruning_schedule=pruning.PolynomialDecay(
    initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=max(1, steps // 2),
    frequency=max(1, steps // 8)))
pruned.compile("adam", loss, metrics=["accuracy"])
pruned.fit(x, y, epochs=1 if quick else 2, batch_size=64, verbose=0,
           callbacks=[pruning.UpdatePruningStep()])
small = pruning.strip_pruning(pruned)
print(pruning.sparsity_report(small).summary())
dense = tc.convert(model, representative_data=x[:200], progress=False).model_bytes
sparse = tc.convert(small, representative_data=x[:200], progress=False).model_bytes
print(f"int8 gzip: {inspector.gzip_size(dense)} -> {inspector.gzip_size(sparse)} bytes")
