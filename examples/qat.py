"""Quantization-aware training, and post-training quantization through the same path.

    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python examples/qat.py [--quick]
"""

import sys

import keras
import numpy as np

import tfcompress as tc
from tfcompress import data, pipeline, post_training, quantization, runtime

quick = "--quick" in sys.argv
ds = data.load_dataset("mnist")
x, y = ds.x_train.astype("float32"), ds.y_train  # small_cnn rescales 0-255 itself
xt, yt = ds.x_test.astype("float32"), ds.y_test
x, y = (x[:4096], y[:4096]) if quick else (x, y)
model = pipeline.small_cnn(ds.input_shape, ds.num_classes)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile("adam", loss)
model.fit(x, y, epochs=4 if quick else 8, batch_size=32, verbose=0)

model.compile(metrics=["accuracy"], loss=loss)
print(f"float accuracy {model.evaluate(xt[:1000], yt[:1000], verbose=0)[1]:.4f}")
ptq = post_training.post_training_quantize(model, x[:500], estimator="percentile", progress=False)
qat = quantization.quantize_model(model)
qat.compile(keras.optimizers.Adam(1e-4), loss)
qat.fit(x, y, epochs=1, batch_size=64, verbose=0,
        callbacks=[quantization.FreezeBatchNormStatistics(0)])
print(qat.quantize_report.summary())
for name, m in (("PTQ", ptq), ("QAT", qat)):
    int8 = tc.convert(m, progress=False)  # no representative data: the ranges are in the model
    out = runtime.predict(runtime.make_interpreter(int8.model_bytes), xt[:1000])
    print(f"{name}: int8 accuracy {np.mean(runtime.top1(out) == yt[:1000]):.4f}, "
          f"{int8.size_bytes} bytes, {runtime.delegation(int8.model_bytes).describe()}")
