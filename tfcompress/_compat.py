"""Every difference between TensorFlow / Keras releases, and every Keras private API.

The rest of the package imports these names instead of reaching into private
modules itself, so a release that moves something needs one edit, and
``tests/test_compat.py`` pins each behaviour relied on. LiteRT's differences are in
:mod:`tfcompress._compat_litert`, which imports no TensorFlow, so that the check
layer runs without it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from typing import Optional, Tuple

import keras
import tensorflow as tf

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


# ---------------------------------------------------------------------------
# Keras private APIs (Keras 3.5 - 3.15). Nowhere else in the package.
# ---------------------------------------------------------------------------


def is_graph_model(model) -> bool:
    """A Sequential or Functional model (one with a layer graph), not a subclassed one."""
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")
        and type(model).__name__ in ("Functional", "Model"))


def graph_nodes(model) -> list:
    """The nodes of a Functional model, inputs first (Keras' ``_nodes_by_depth``)."""
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def flatten_layers(model, *, recursive: bool = True) -> list:
    """Every layer inside ``model`` (nested models and wrappers included), not itself."""
    return list(model._flatten_layers(include_self=False, recursive=recursive))


def producer(tensor):
    """The operation (layer) that produced a symbolic Keras tensor, or None."""
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def producer_node(tensor):
    """The graph node that produced a symbolic Keras tensor, or None.

    Its ``operation`` is :func:`producer`'s answer and its ``input_tensors`` are what
    that operation read (Keras' ``_keras_history`` and ``_inbound_nodes``).
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    nodes = history.operation._inbound_nodes
    return nodes[history.node_index] if history.node_index < len(nodes) else None


def is_operation(obj) -> bool:
    """A graph node's operation that is not a Layer.

    Keras 3 records ``x + y``, ``x * 0.5``, ``x[:, :8]`` and ``keras.ops.mean(x, 1)``
    in a Functional graph as ``keras.Operation`` nodes: stateless, with no weights,
    no ``get_weights`` and no place in ``model.layers``.
    """
    return isinstance(obj, keras.Operation) and not isinstance(obj, keras.layers.Layer)


def builtin_operation_name(op) -> Optional[str]:
    """The class name of a built-in ``keras.ops`` operation ("Add", "GetItem", "Mean").

    None for a Layer or for an Operation defined outside Keras: what such an op does
    is unknown, so a transform treats it as opaque.
    """
    cls = type(op)
    if is_operation(op) and cls.__module__.startswith("keras.src.ops."):
        return cls.__name__
    return None


def node_arguments(node) -> Tuple[tuple, dict]:
    """The positional and keyword arguments a graph node was called with.

    Symbolic tensors and constants are given as they were passed: ``x + 3.0`` is
    ``((x, 3.0), {})``, ``x[:, :8]`` is ``((x, (slice(None), slice(None, 8))), {})``.
    """
    return tuple(node.arguments.args), dict(node.arguments.kwargs)


def attention_parts(layer) -> dict:
    """A MultiHeadAttention's options and projection weights (private attributes).

    ``query`` / ``key`` / ``value``: ``(kernel (dim, heads, size), bias (heads, size) or
    None)``; ``output``: ``(kernel (heads, value_size, out), bias (out,) or None)``.
    """
    def weights(dense):
        return (dense.kernel.numpy(), dense.bias.numpy() if dense.bias is not None else None)

    return {
        "heads": layer._num_heads, "key_dim": layer._key_dim, "value_dim": layer._value_dim,
        "scale": layer._inverse_sqrt_key_dim, "dropout": layer._dropout,
        "use_gate": getattr(layer, "_use_gate", False),
        "sliding_window": getattr(layer, "_sliding_window", None),
        "attention_axes": layer._attention_axes, "output_shape": layer._output_shape,
        "query": weights(layer._query_dense), "key": weights(layer._key_dense),
        "value": weights(layer._value_dense), "output": weights(layer._output_dense),
    }


def application_layers() -> dict:
    """The layer classes keras.applications networks define (private modules), by name:
    ``LayerScale`` and ``StochasticDepth`` of ConvNeXt, ``CustomScaleLayer`` of
    InceptionResNetV2; those this Keras lacks are left out.
    """
    found = {}
    for module, names in (("convnext", ("LayerScale", "StochasticDepth")),
                          ("inception_resnet_v2", ("CustomScaleLayer",))):
        try:
            module = importlib.import_module(f"keras.src.applications.{module}")  # private
        except ImportError:  # pragma: no cover - moved in another Keras
            continue
        found.update({name: getattr(module, name) for name in names
                      if isinstance(getattr(module, name, None), type)})
    return found


def keras_layers(names) -> list:
    """The ``keras.layers`` classes of ``names`` that this Keras has (the augmentation
    layers came in several Keras 3 releases)."""
    return [cls for cls in (getattr(keras.layers, name, None) for name in names)
            if isinstance(cls, type)]


def run_graph(model, inputs, operation_fn):
    """Runs a Functional model's graph on ``inputs``, each layer through ``operation_fn``."""
    return model._run_through_graph(inputs, operation_fn=operation_fn)


def built_input_shapes(model) -> dict:
    """The shapes a built subclassed model was first called with (``{"input_shape": ...}``)."""
    return dict(getattr(model, "_build_shapes_dict", None) or {})


def input_shape_argument(layer):
    """The ``input_shape=`` a layer was made with (Keras' ``_input_shape_arg``), or None.

    A Sequential model whose first layer has one starts with an Input of that shape,
    so a wrapper passes it on to stay the first layer of a built model.
    """
    return getattr(layer, "_input_shape_arg", None)


@contextlib.contextmanager
def uncompiled(model):
    """Marks ``model`` and its nested models as not compiled while the block runs.

    ``keras.models.clone_model`` copies the compile configuration into the clone,
    which fails for a custom loss that is not registered.
    """
    models = [m for m in [model] + flatten_layers(model)
              if isinstance(m, keras.Model) and getattr(m, "compiled", False)]
    for m in models:
        m.compiled = False
    try:
        yield
    finally:
        for m in models:
            m.compiled = True


@contextlib.contextmanager
def substituted_variables(substitutes, watched):
    """Reads each variable of ``substitutes`` (``[(variable, tensor)]``) as its tensor.

    Keras' ``StatelessScope``: a layer whose weights sit behind properties runs on
    quantized tensors, and gradients reach the variables through them. Assignments
    made inside the block (BatchNorm statistics, quantizer ranges) are collected by
    the scope; those to the ``watched`` variables are applied when it closes.
    """
    from keras.src.backend.common.stateless_scope import StatelessScope  # private API

    if not substitutes:
        yield
        return
    with StatelessScope(state_mapping=list(substitutes), collect_losses=False) as scope:
        yield
    mapped = {id(v) for v, _ in substitutes}
    for variable in watched:
        if id(variable) in mapped:
            continue
        value = scope.get_current_value(variable)
        if value is not None:
            variable.assign(value)


# ---------------------------------------------------------------------------
# Files written by older Keras releases.
# ---------------------------------------------------------------------------


class _LegacyDepthwiseConv2D:
    """Reads a TF 2.x DepthwiseConv2D config (it carries ``groups``, always 1), which
    Keras 3 refuses, into a plain ``keras.layers.DepthwiseConv2D``."""

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        groups = config.pop("groups", 1)
        if groups != 1:
            raise ValueError(f"A DepthwiseConv2D with groups={groups} cannot be loaded: "
                             "Keras 3 has no grouped depthwise convolution.")
        return keras.layers.DepthwiseConv2D.from_config(config)


LEGACY_H5_OBJECTS = {"DepthwiseConv2D": _LegacyDepthwiseConv2D}


def layer_from_config(layer, config: Optional[dict] = None):
    """A new layer like ``layer``: ``type(layer).from_config(config or layer.get_config())``.

    A ``Lambda`` gets its function object instead: its config holds the function as
    bytecode, which Keras refuses to load in safe mode ("Requested the deserialization
    of a `Lambda` layer whose `function` is a Python lambda") and which would lose the
    function's globals. (``Lambda._output_shape`` is private.)
    """
    config = layer.get_config() if config is None else config
    if type(layer) is keras.layers.Lambda:
        return keras.layers.Lambda(layer.function, output_shape=getattr(layer, "_output_shape", None),
                                   mask=layer.mask, arguments=layer.arguments,
                                   name=config.get("name", layer.name))
    return type(layer).from_config(config)


def mixed_policies(model) -> list:
    """The mixed precision policies (``"mixed_float16"``...) of ``model``'s layers."""
    names = set()
    for layer in [model] + flatten_layers(model):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and policy.compute_dtype != "float32" \
                and policy.variable_dtype == "float32":
            names.add(policy.name)
    return sorted(names)


@contextlib.contextmanager
def float32_policy():
    """Keras' global dtype policy set to ``"float32"`` inside the block (the layers that
    transforms create compute in float32 under a global ``mixed_float16`` policy too)."""
    previous = keras.config.dtype_policy()
    if previous.name == "float32":
        yield
        return
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def float32_copy(model):
    """``model`` rebuilt from its config with every layer's dtype policy ``"float32"``
    (its float32 variables copied), or ``model`` itself when no layer computes in another
    dtype. A mixed precision model (``mixed_float16``) computes in float16 with float32
    variables; TFLite's converter has no kernel for its float16 ops.

    Raises:
        ValueError: the model cannot be rebuilt from its config (a subclassed model).
    """
    def as_float32(config):
        if isinstance(config, dict):
            if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and str(
                    config.get("config", {}).get("name", "")).startswith("mixed_"):
                return {**config, "config": {**config["config"], "name": "float32"}}
            return {k: as_float32(v) for k, v in config.items()}
        if isinstance(config, list):
            return [as_float32(v) for v in config]
        return config

    mixed = mixed_policies(model)
    if not mixed:
        return model
    try:
        copy = keras.saving.deserialize_keras_object(
            as_float32(keras.saving.serialize_keras_object(model)), safe_mode=False)
        copy.set_weights(model.get_weights())
    except Exception as e:  # noqa: BLE001 - any failure of the rebuild is the same refusal
        raise ValueError(
            f"Model {model.name!r} computes in {', '.join(mixed)} (mixed precision), which "
            "TFLite's converter cannot run, and could not be rebuilt in float32 from its "
            f"config ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Build it again "
            "after keras.mixed_precision.set_global_policy('float32') and copy the weights "
            "with set_weights().") from None
    return copy


def load_keras_model(path, *, compile: bool = False):
    """``keras.models.load_model`` that also reads ``.h5`` files written by TF 2.x Keras.

    Only legacy HDF5 files get the readers in ``LEGACY_H5_OBJECTS``; what they build
    are the plain Keras 3 layers, so the model saves and loads as any other.
    """
    custom = LEGACY_H5_OBJECTS if str(path).endswith((".h5", ".hdf5")) else None
    return keras.models.load_model(path, compile=compile, custom_objects=custom)


def is_keras_model(obj) -> bool:
    return isinstance(obj, keras.Model)


def is_concrete_function(obj) -> bool:
    return hasattr(obj, "structured_input_signature") and hasattr(obj, "graph")


def is_tf_function(obj) -> bool:
    return hasattr(obj, "get_concrete_function") and not is_keras_model(obj)


__all__ = [
    "assign_variables",
    "attention_parts",
    "builtin_operation_name",
    "built_input_shapes",
    "in_multi_replica_context",
    "ConverterError",
    "KERAS_VERSION",
    "TF_VERSION",
    "flatten_layers",
    "float32_copy",
    "float32_policy",
    "graph_nodes",
    "is_concrete_function",
    "is_graph_model",
    "is_keras_model",
    "is_operation",
    "is_tf_function",
    "layer_from_config",
    "load_keras_model",
    "mixed_policies",
    "node_arguments",
    "producer",
    "producer_node",
    "quiet_stdout",
    "run_graph",
    "uncompiled",
]
