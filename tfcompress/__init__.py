"""tfcompress: from a Keras 3 model to a small, fast, verified fully-integer `.tflite`.

Modules follow the pipeline: ``data`` -> training-time compression (``schedules``,
``distillation``, ``lowrank``, ``pruning``, ``channel_pruning``, ``quantization``, ``post_training``) -> ``calibration`` -> ``converter`` -> ``inspector``
-> ``runtime`` -> ``validation`` -> ``benchmark`` (``android`` on phones) -> ``report``.
``compress()`` runs a ``recipe`` of those steps in one call (``compression``), and
``search()`` finds the best recipe within an accuracy budget (``recipe_search``);
``pipeline`` is the main job.
"""

from importlib import metadata as _metadata

from tfcompress import (
    android,
    benchmark,
    calibration,
    channel_pruning,
    compression,
    converter,
    data,
    distillation,
    inspector,
    lowrank,
    pipeline,
    post_training,
    pruning,
    quantization,
    recipe,
    recipe_search,
    report,
    runtime,
    schedules,
    validation,
)
from tfcompress.compression import CompressionResult, compress
from tfcompress.converter import ConversionError, ConversionResult, convert
from tfcompress.inspector import InvalidModelError, inspect
from tfcompress.recipe import Recipe
from tfcompress.recipe_search import SearchResult, search
from tfcompress.validation import Thresholds, ValidationReport, validate

try:
    __version__ = _metadata.version("tfcompress")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = [
    "CompressionResult",
    "ConversionError",
    "ConversionResult",
    "InvalidModelError",
    "Recipe",
    "SearchResult",
    "Thresholds",
    "ValidationReport",
    "android",
    "benchmark",
    "calibration",
    "channel_pruning",
    "compress",
    "compression",
    "convert",
    "converter",
    "data",
    "distillation",
    "inspect",
    "inspector",
    "lowrank",
    "pipeline",
    "post_training",
    "pruning",
    "quantization",
    "recipe",
    "recipe_search",
    "report",
    "runtime",
    "schedules",
    "search",
    "validate",
    "validation",
]
