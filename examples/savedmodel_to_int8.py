"""Convert a SavedModel (or .keras/.h5) to a verified fully-int8 .tflite.

    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python examples/savedmodel_to_int8.py
"""

import os
import tempfile
from pathlib import Path

import keras

import tfcompress as tc
from tfcompress import data

root = Path(os.environ.get("TFCOMPRESS_DATA_DIR", "../shared/data"))
cifar = data.load_dataset("cifar10", data_dir=root, fallback=False)
model = keras.models.load_model(root / "models" / "mlperf_tiny_resnet8_cifar10.h5", compile=False)

with tempfile.TemporaryDirectory() as tmp:
    model.export(f"{tmp}/saved_model", verbose=False)  # any SavedModel directory works
    result = tc.convert(f"{tmp}/saved_model", representative_data=cifar.x_train[:500])
    print(result.summary())
    report = tc.validate(result.model_bytes, cifar.x_test.astype("float32"), y=cifar.y_test,
                         reference=model, thresholds=tc.Thresholds(require_fully_integer=True))
    print(report.summary())
