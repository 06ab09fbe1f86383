"""Every difference between LiteRT releases lives here; imports no TensorFlow or Keras.

The check layer (reading, running, validating and timing `.tflite` files) imports
only this module for LiteRT, so it runs where TensorFlow is not installed. The
TensorFlow / Keras differences and private APIs are in :mod:`tfcompress._compat`.
"""

from __future__ import annotations

# The flatbuffer schema ships with the LiteRT runtime (ai-edge-litert >= 1.2), so
# reading and rewriting files needs no TensorFlow.
from ai_edge_litert import schema_py_generated as tflite_schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

__all__ = ["Interpreter", "OpResolverType", "ops_details", "tflite_schema"]


def ops_details(interpreter) -> list:
    """Every node of an allocated interpreter, delegate kernels included (private API)."""
    return interpreter._get_ops_details()  # pylint: disable=protected-access
