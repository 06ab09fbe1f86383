"""Every difference between LiteRT releases lives here; imports no TensorFlow or Keras.

The check layer (reading, running, validating and timing `.tflite` files) imports
only this module for LiteRT, so it runs where TensorFlow is not installed. The
TensorFlow / Keras differences and private APIs are in :mod:`tfcompress._compat`.
"""

from __future__ import annotations

# The flatbuffer schema ships with the LiteRT runtime; older TF wheels had it too.
try:
    from ai_edge_litert import schema_py_generated as tflite_schema
except ImportError:  # pragma: no cover - only on old ai-edge-litert releases
    from tensorflow.lite.python import schema_py_generated as tflite_schema

from ai_edge_litert.interpreter import Interpreter, OpResolverType

__all__ = ["Interpreter", "OpResolverType", "tflite_schema"]
