"""Every difference between TensorFlow / Keras / LiteRT releases lives here.

The rest of the package imports these names instead of reaching into private
modules itself, so a release that moves something needs one edit.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import keras
import tensorflow as tf

# The flatbuffer schema ships with the LiteRT runtime; older TF wheels had it too.
try:
    from ai_edge_litert import schema_py_generated as tflite_schema
except ImportError:  # pragma: no cover - only on old ai-edge-litert releases
    from tensorflow.lite.python import schema_py_generated as tflite_schema

from ai_edge_litert.interpreter import Interpreter, OpResolverType

try:
    from tensorflow.lite.python.convert_phase import ConverterError
except ImportError:  # pragma: no cover - moved in some releases
    ConverterError = RuntimeError

TF_VERSION = tuple(int(p) for p in tf.__version__.split(".")[:2])
KERAS_VERSION = tuple(int(p) for p in keras.__version__.split(".")[:2])

if KERAS_VERSION < (3, 0):  # pragma: no cover - guarded by setup.cfg
    raise ImportError(
        "tfcompress needs Keras 3 (the default since TensorFlow 2.16). "
        f"Received: keras=={keras.__version__}. If TF_USE_LEGACY_KERAS=1 is set in "
        "this process, unset it: tfcompress never uses tf_keras."
    )


@contextlib.contextmanager
def quiet_stdout():
    """Silences the converter's Python-level chatter.

    Keras 3's export prints every signature, and TF's calibrator warns about its
    own use of the deprecated TF interpreter; neither helps our users.
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Interpreter is deprecated.*")
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        yield


def in_multi_replica_context() -> bool:
    """True inside the replica function of a strategy with more than one replica."""
    ctx = tf.distribute.get_replica_context()
    return ctx is not None and ctx.num_replicas_in_sync > 1


def assign_variables(variables, values) -> None:
    """Assigns ``values`` to Keras ``variables`` from any tf.distribute context.

    Inside a replica function of a multi-device strategy a mirrored variable cannot
    be assigned directly; the assignment goes through ``merge_call`` so that every
    replica's copy receives the value computed on that replica (all replicas compute
    the same masks from the same mirrored weights).
    """
    variables, values = list(variables), list(values)
    ctx = tf.distribute.get_replica_context()
    if not in_multi_replica_context():
        for var, value in zip(variables, values):
            var.assign(value)
        return

    def merge_fn(strategy, *per_replica):
        for var, value in zip(variables, per_replica):
            # Keras 3 keeps the backend's tf.Variable in `_value`; the strategy
            # must update that (mirrored) object, not the Keras shell.
            target = getattr(var, "_value", var)
            strategy.extended.update(target, lambda v, x: v.assign(x), args=(value,))

    ctx.merge_call(merge_fn, args=tuple(values))


def is_keras_model(obj) -> bool:
    return isinstance(obj, keras.Model)


def is_concrete_function(obj) -> bool:
    return hasattr(obj, "structured_input_signature") and hasattr(obj, "graph")


def is_tf_function(obj) -> bool:
    return hasattr(obj, "get_concrete_function") and not is_keras_model(obj)


__all__ = [
    "assign_variables",
    "in_multi_replica_context",
    "ConverterError",
    "Interpreter",
    "KERAS_VERSION",
    "OpResolverType",
    "TF_VERSION",
    "is_concrete_function",
    "is_keras_model",
    "is_tf_function",
    "quiet_stdout",
    "tflite_schema",
]
