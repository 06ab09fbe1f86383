"""tfcompress: from a Keras 3 model to a small, fast, verified fully-integer `.tflite`.

Modules follow the pipeline: ``data`` -> training-time compression (``schedules``,
``distillation``, ``lowrank``, ``pruning``, ``channel_pruning``, ``quantization``, ``post_training``) -> ``calibration`` -> ``converter`` -> ``inspector``
-> ``runtime`` -> ``validation`` -> ``benchmark`` -> ``pipeline``.
"""

from importlib import metadata as _metadata

from tfcompress import (
    benchmark,
    calibration,
    channel_pruning,
    converter,
    data,
    distillation,
    inspector,
    lowrank,
    pipeline,
    post_training,
    pruning,
    quantization,
    runtime,
    schedules,
    validation,
)
from tfcompress.converter import ConversionError, ConversionResult, convert
from tfcompress.inspector import InvalidModelError, inspect
from tfcompress.validation import Thresholds, ValidationReport, validate

try:
    __version__ = _metadata.version("tfcompress")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = [
    "ConversionError",
    "ConversionResult",
    "InvalidModelError",
    "Thresholds",
    "ValidationReport",
    "benchmark",
    "calibration",
    "channel_pruning",
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
    "runtime",
    "schedules",
    "validate",
    "validation",
]
