"""Helpers shared by the benchmark scripts in tools/ (not part of the package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from absl import flags

ROOT = Path(__file__).resolve().parents[1]

# For the smoke runs of tests/test_tools.py: a tool's code path end to end in seconds.
flags.DEFINE_integer("smoke_train_images", 0,
                     "Smoke runs only: keep the first N training images of the data sets "
                     "loaded by load_images() and cifar_and_resnet8() (0: all of them). "
                     "The numbers then mean nothing.")


def _smoke_limit(x, y):
    n = flags.FLAGS.smoke_train_images
    return (x[:n], y[:n]) if n > 0 else (x, y)


def data_dir() -> Path:
    return Path(os.environ.get("TFCOMPRESS_DATA_DIR", ROOT.parent / "shared" / "data"))


def int8_accuracy(model_bytes: bytes, x, y, *, xnnpack: bool = True) -> float:
    from tfcompress import runtime

    out = runtime.predict(runtime.make_interpreter(model_bytes, xnnpack=xnnpack), x)
    return float(np.mean(runtime.top1(out) == np.asarray(y).ravel()))


def plain_int8(model, calib) -> bytes:
    """The baseline: a plain TFLiteConverter full-integer run, as a user would write it."""
    import contextlib
    import io

    import tensorflow as tf

    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([calib[i:i + 1].astype("float32")]
                                        for i in range(len(calib)))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):
        return c.convert()


def keras_accuracy(model, x, y, batch_size: int = 256) -> float:
    from tfcompress.compression import top1_accuracy

    return top1_accuracy(model, x, y, batch_size=batch_size)


def step_timer():
    """A Keras callback (Keras 3 or tf_keras) that records the wall time of each batch."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t)

        def median_ms(self, skip: int = 10) -> float:
            return 1e3 * float(np.median(self.times[skip:] or self.times))

    return StepTimer()


def run_isolated(script: str, args: dict, *, legacy_keras: bool, timeout: int = 3600) -> dict:
    """Runs ``script`` in a fresh Python with ``args`` as JSON in ``sys.argv[1]``.

    The script's last stdout line must be JSON. ``legacy_keras`` sets
    TF_USE_LEGACY_KERAS=1 for tfmot baselines, which need tf_keras.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if legacy_keras:
        env["TF_USE_LEGACY_KERAS"] = "1"
    out = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True,
                         text=True,
                         timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"isolated run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_results(out: Path, results: dict, table_lines: Iterable[str]) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    out.with_suffix(".md").write_text("\n".join(table_lines) + "\n")
    print("\n".join(table_lines))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def table(header: Sequence[str], rows: Iterable[Sequence]) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# One architecture, executed in both processes (Keras 3 here, tf_keras for tfmot).
ARCH = '''
def build(keras):
    L = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(16, 3, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
        L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10)])

def compile_model(keras, model, lr):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
'''


def arch():
    scope: dict = {}
    exec(ARCH, scope)  # noqa: S102 - our own constant source, shared with the tfmot process
    return scope["build"], scope["compile_model"]


def resnet8_h5() -> Path:
    return data_dir() / "models" / "mlperf_tiny_resnet8_cifar10.h5"


def cifar_and_resnet8():
    """The CIFAR-10 subset and the MLPerf Tiny ResNet-8 (float Keras model)."""
    import keras

    from tfcompress import data

    cifar = data.load_dataset("cifar10", data_dir=data_dir(), fallback=False)
    if flags.FLAGS.smoke_train_images > 0:
        import dataclasses

        x, y = _smoke_limit(cifar.x_train, cifar.y_train)
        cifar = dataclasses.replace(cifar, x_train=x, y_train=y)
    return cifar, keras.models.load_model(resnet8_h5(), compile=False)


def load_images(name: str):
    from tfcompress import data

    ds = data.load_dataset(name, data_dir=data_dir(), fallback=False)
    x, y = _smoke_limit(ds.x_train, ds.y_train)
    return (x.astype("float32") / 255.0, y.astype("int64"),
            ds.x_test.astype("float32") / 255.0, ds.y_test.astype("int64"))




# Pieces of the tfmot baseline scripts, run with run_isolated(legacy_keras=True): the
# imports under tf_keras with the arguments and data, and a step timer.
TFMOT_HEADER = '''
import json, sys, time, contextlib, io
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
keras = tf.keras
assert keras.Model.__module__.startswith("tf_keras"), keras.Model.__module__
a = json.loads(sys.argv[1])
d = np.load(a["data"])
'''

TFMOT_STEP_TIMER = '''
class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__(); self.times = []
    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()
    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)
'''

# The start of every MNIST-architecture tfmot baseline: the shared architecture with
# the starting weights.
TFMOT_PREAMBLE = ARCH + TFMOT_HEADER + '''
keras.utils.set_random_seed(a["seed"])
base = build(keras)
base.set_weights(list(np.load(a["weights"]).values()))
''' + TFMOT_STEP_TIMER


def augment(x, rng):
    """Random horizontal flip and shift of up to 4 pixels (reflect padding), per image.

    ``rng`` is a ``np.random.Generator``; the package's own ``flip_and_shift``.
    """
    from tfcompress.data import flip_and_shift

    return flip_and_shift(x, rng)


def distillation_loss(temperature: float, alpha: float):
    """alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    ``y_true`` packs the one-hot labels and the teacher's softmax; both networks end
    in a softmax, so ``log p / T`` stands in for ``logits / T``.
    """
    from keras import ops

    def loss(y_true, y_pred):
        labels, teacher = y_true[:, :10], y_true[:, 10:]
        log_student = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        hard = -ops.sum(labels * log_student, axis=-1)
        t = ops.softmax(ops.log(ops.clip(teacher, 1e-7, 1.0)) / temperature)
        s = ops.log_softmax(log_student / temperature)
        soft = ops.sum(t * (ops.log(ops.clip(t, 1e-7, 1.0)) - s), axis=-1)
        return alpha * hard + (1 - alpha) * temperature ** 2 * soft

    return loss
