"""Factor the Dense layers of an MLP to a third of their parameters and fine-tune.

    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python examples/lowrank.py [--quick]
"""

import sys

import keras
import numpy as np

from tfcompress import data, lowrank

quick = "--quick" in sys.argv
ds = data.load_dataset("mnist")
features = int(np.prod(ds.input_shape))
x, y = ds.x_train.reshape(-1, features).astype("float32") / 255, ds.y_train
xt, yt = ds.x_test.reshape(-1, features).astype("float32") / 255, ds.y_test
x, y = (x[:2048], y[:2048]) if quick else (x, y)
inputs = keras.Input((features,))
h = keras.layers.Dense(256, activation="relu", name="hidden_1")(inputs)
h = keras.layers.Dense(256, activation="relu", name="hidden_2")(h)
model = keras.Model(inputs, keras.layers.Dense(ds.num_classes)(h))
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile("adam", loss, metrics=["accuracy"])
model.fit(x, y, epochs=1 if quick else 3, batch_size=64, verbose=0)

print(lowrank.sensitivity(model, xt[:256], ratios=(0.1, 0.33)))
small = lowrank.factorize(model, ratio=1 / 3, layers=["hidden_1", "hidden_2"])
small.compile("adam", loss, metrics=["accuracy"])
small.fit(x, y, epochs=1, batch_size=64, verbose=0)
print(f"params {model.count_params()} -> {small.count_params()}, "
      f"MACs {lowrank.count_macs(model)} -> {lowrank.count_macs(small)}, accuracy "
      f"{model.evaluate(xt, yt, verbose=0)[1]:.4f} -> {small.evaluate(xt, yt, verbose=0)[1]:.4f}")
