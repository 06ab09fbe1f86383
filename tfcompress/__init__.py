"""tfcompress: from a Keras 3 model to a small, fast, verified fully-integer `.tflite`.

The modules are layered along the pipeline (WORKSPACE.md has the diagram and
``tests/test_layers.py`` enforces it): base (``data``, ``schedules``, ``recipe``,
``layer_kinds``) -> train-time (``pruning``, ``channel_pruning``, ``quantization``,
``post_training``, ``distillation``, ``lowrank``) -> export (``calibration``,
``converter``) -> flow (``compression``: ``compress()``; ``recipe_search``:
``search()``) -> face (the CLI; ``pipeline``, the main job's demo). Beside the
training layers, the check layer (``inspector``, ``runtime``, ``validation``,
``benchmark``, ``android``, ``report``) reads, runs, validates and times `.tflite`
files without TensorFlow or Keras.

``import tfcompress`` loads nothing heavy: each submodule (and each name below) is
imported on first use, so checking a `.tflite` file never loads TensorFlow. When Keras
is already imported, the Keras-side modules are imported at once, so that
``keras.models.load_model`` finds every tfcompress layer, loss and schedule.
"""

import importlib as _importlib
import sys as _sys
from importlib import metadata as _metadata

# Submodules, imported on first attribute access (PEP 562).
_SUBMODULES = (
    "android", "benchmark", "calibration", "channel_pruning", "compression", "converter",
    "data", "default_8bit", "distillation", "inspector", "layer_kinds", "lowrank",
    "pipeline", "post_training", "pruning", "pruning_policy", "quantization", "quantizers",
    "recipe", "recipe_search", "report", "runtime", "schedules", "validation",
)
# Names re-exported at the top level, and the submodule that defines each.
_NAMES = {
    "CompressionResult": "compression", "compress": "compression",
    "ConversionError": "converter", "ConversionResult": "converter", "convert": "converter",
    "InvalidModelError": "inspector", "inspect": "inspector",
    "Recipe": "recipe",
    "SearchResult": "recipe_search", "search": "recipe_search",
    "Thresholds": "validation", "ValidationReport": "validation", "validate": "validation",
}
# The modules that register Keras objects (layers, losses, schedules).
_KERAS_MODULES = ("schedules", "pruning", "channel_pruning", "quantizers", "quantization",
                  "default_8bit", "distillation")

try:
    __version__ = _metadata.version("tfcompress")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+local"


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(_importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "keras" in _sys.modules:  # Keras is loaded already: registering our objects is cheap
    for _module in _KERAS_MODULES:
        _importlib.import_module(f"{__name__}.{_module}")

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
    "default_8bit",
    "distillation",
    "inspect",
    "inspector",
    "lowrank",
    "pipeline",
    "post_training",
    "pruning",
    "pruning_policy",
    "quantization",
    "quantizers",
    "recipe",
    "recipe_search",
    "report",
    "runtime",
    "schedules",
    "search",
    "validate",
    "validation",
]
