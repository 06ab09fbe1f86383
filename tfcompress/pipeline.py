"""The main job: train a small CNN, then run the whole compression pipeline on it.

``make main`` (``tfcompress demo``) trains a small CNN on real MNIST when it is found
(``$TFCOMPRESS_DATA_DIR`` or the Keras cache), else on scikit-learn's digits, and
then calls :func:`tfcompress.compress` with :data:`DEMO_RECIPE`: channel pruning
with distillation from the trained model, QAT, full-int8 conversion, validation on
XNNPACK and the reference kernels, and a latency measurement. It prints the table
of what each step bought and the path of the report.

Example (slow; trains a model):
    >>> from tfcompress.pipeline import run_demo
    >>> demo = run_demo(dataset="digits", epochs=1, verbose=0)  # doctest: +SKIP
    >>> print(demo.result.table())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras

from tfcompress import data
from tfcompress.compression import CompressionResult, compress
from tfcompress.recipe import Recipe, as_recipe

__all__ = [
    "DEMO_RECIPE",
    "DemoResult",
    "run_demo",
    "small_cnn",
]

DEMO_RECIPE = {
    "name": "demo: channels 25% + distillation + QAT",
    "prune": {"kind": "channels", "sparsity": 0.25, "epochs": 4},
    "distill": {"temperature": 4.0, "alpha": 0.1},
    "quantize": {"method": "qat", "epochs": 2},
    "validate": {"max_accuracy_drop": 0.03, "require_fully_integer": True},
    "benchmark": {"runs": 200, "num_threads": 1},
}


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """The dataset used and the :class:`~tfcompress.compression.CompressionResult`."""

    dataset: str
    source: str
    result: CompressionResult


def small_cnn(input_shape, num_classes: int):
    """A few-thousand-parameter CNN that every int8 kernel path runs."""

    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def run_demo(
    *,
    dataset: str = "auto",
    epochs: int = 20,
    max_train: int = 10000,
    recipe=None,
    output_dir: Optional[str] = None,
    overwrite: bool = False,
    seed: int = 0,
    verbose: int = 1,
) -> DemoResult:
    """Trains a small CNN and compresses it with ``recipe`` (default :data:`DEMO_RECIPE`).

    Args:
        dataset: ``"auto"`` (MNIST when found, else scikit-learn's digits), or a name
            accepted by :func:`tfcompress.data.load_dataset`.
        epochs: training epochs of the float model.
        max_train: at most this many training images (keeps the job short).
        recipe: the compression recipe (Recipe, dict or JSON/YAML path).
        output_dir: where :func:`~tfcompress.compress` writes models and the report.
        overwrite: replace an existing ``output_dir``.
        seed: random seed.
        verbose: Keras verbosity (0 silent, 1 progress bars).
    """

    keras.utils.set_random_seed(seed)
    ds = data.load_dataset("mnist" if dataset == "auto" else dataset, download=False)
    x_train, y_train = ds.x_train[:max_train].astype("float32"), ds.y_train[:max_train]
    if verbose:
        print(f"Dataset: {ds.name} ({len(x_train)} train / {len(ds.x_test)} test) from {ds.source}")
    model = small_cnn(ds.input_shape, ds.num_classes)
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=verbose)
    recipe: Recipe = as_recipe(DEMO_RECIPE if recipe is None else recipe)
    result = compress(model, (x_train, y_train, ds.x_test, ds.y_test), recipe=recipe,
                      output_dir=output_dir, overwrite=overwrite, learning_rate=5e-4,
                      seed=seed, verbose=verbose)
    return DemoResult(ds.name, ds.source, result)
