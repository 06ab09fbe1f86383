"""The main job: train, convert to int8, validate on both kernel paths, time.

This is the first slice of the compression pipeline: later stages (pruning,
QAT, distillation, low-rank) slot in between training and conversion.

Example (slow; trains a model):
    >>> from tfcompress.pipeline import run_quickstart
    >>> result = run_quickstart(dataset="digits", epochs=1, verbose=0)  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np

from tfcompress import benchmark, data, validation
from tfcompress.converter import convert


@dataclasses.dataclass(frozen=True)
class QuickstartResult:
    """Rows of the results table and the validation of the int8 model."""

    dataset: str
    source: str
    rows: tuple
    validation: validation.ValidationReport
    output_dir: Optional[str]

    def table(self) -> str:
        header = ("model", "size (bytes)", "accuracy", "XNNPACK p50 (ms)", "latency / float")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self.rows:
            timed = r["p50_ms"] == r["p50_ms"]  # NaN: this path was not timed
            lines.append(
                f"| {r['model']} | {r['size_bytes']} | {100 * r['accuracy']:.2f}% | "
                + (f"{r['p50_ms']:.4f} | {r['latency_ratio']:.2f}x |" if timed else "- | - |")
            )
        return "\n".join(lines)


def small_cnn(input_shape, num_classes: int):
    """A few-thousand-parameter CNN that every int8 kernel path runs."""
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def run_quickstart(
    *,
    dataset: str = "auto",
    epochs: int = 20,
    max_train: int = 10000,
    output_dir: Optional[str] = None,
    overwrite: bool = False,
    seed: int = 0,
    verbose: int = 1,
) -> QuickstartResult:
    """Trains a small CNN, converts it to int8 and checks it.

    Args:
        dataset: ``"auto"`` (MNIST when found through ``TFCOMPRESS_DATA_DIR``
            or the Keras cache, else scikit-learn's digits), or a name accepted
            by :func:`tfcompress.data.load_dataset`.
        epochs: training epochs.
        max_train: at most this many training images (keeps the job short).
        output_dir: where to write ``float.tflite``, ``int8.tflite`` and
            ``report.json``; None writes nothing.
        overwrite: replace files already in ``output_dir``.
        seed: random seed for weights and data order.
        verbose: Keras verbosity (0 silent, 1 progress bars).
    """
    import keras

    keras.utils.set_random_seed(seed)
    ds = data.load_dataset("mnist" if dataset == "auto" else dataset, download=False)
    x_train, y_train = ds.x_train[:max_train].astype("float32"), ds.y_train[:max_train]
    x_test, y_test = ds.x_test.astype("float32"), ds.y_test
    if verbose:
        print(f"Dataset: {ds.name} ({len(x_train)} train / {len(x_test)} test) from {ds.source}")

    model = small_cnn(ds.input_shape, ds.num_classes)
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=verbose)

    progress = bool(verbose)
    float_result = convert(model, mode="float32", progress=progress)
    int8_result = convert(model, representative_data=x_train[:500], progress=progress)
    report = validation.validate(
        int8_result.model_bytes, x_test, y=y_test, reference=float_result.model_bytes,
        per_layer=True, progress=progress,
    )
    float_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    latency = benchmark.measure_latency(
        {"float32": float_result.model_bytes, "int8": int8_result.model_bytes}, runs=200)
    base = latency["float32"].p50_ms
    rows = (
        {"model": "float32 .tflite", "size_bytes": float_result.size_bytes,
         "accuracy": float_acc, "p50_ms": base, "latency_ratio": 1.0},
        {"model": "int8 .tflite (XNNPACK)", "size_bytes": int8_result.size_bytes,
         "accuracy": report.xnnpack.accuracy, "p50_ms": latency["int8"].p50_ms,
         "latency_ratio": latency["int8"].p50_ms / base},
        {"model": "int8 .tflite (reference kernels)", "size_bytes": int8_result.size_bytes,
         "accuracy": report.reference.accuracy, "p50_ms": float("nan"),
         "latency_ratio": float("nan")},
    )
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        float_result.save(out / "float.tflite", overwrite=overwrite)
        int8_result.save(out / "int8.tflite", overwrite=overwrite)
        report.save(out / "validation.json", overwrite=overwrite)
        summary = {"dataset": ds.name, "source": ds.source, "rows": list(rows)}
        (out / "results.json").write_text(json.dumps(summary, indent=2))
    return QuickstartResult(ds.name, ds.source, rows, report,
                            str(output_dir) if output_dir is not None else None)
