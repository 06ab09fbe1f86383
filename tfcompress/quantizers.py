"""tfmot's quantizer API on Keras 3: quantizers, the QuantizeConfig protocol, its wrapper.

A tfmot user's custom ``QuantizeConfig`` works unchanged after the import changes to
``from tfcompress import quantization, quantizers``: it says which weights and
activations of a layer to quantize and with which :class:`Quantizer`, and
:class:`QuantizeWrapperV2` (what :func:`tfcompress.quantization.quantize_apply` makes
of a layer annotated with such a config) runs that protocol:

* ``build``: each quantizer's ``build(shape, name, layer)`` adds its range variables;
* ``call``: each weight is quantized, and ``set_quantize_weights(layer, quantized)``
  hands the results to the layer; each activation is replaced by
  ``quantizer(activation(x))`` through ``set_quantize_activations``; then the layer
  runs and the output quantizers follow.

Keras 3 layers keep their weights behind properties (``Dense.kernel`` cannot be
assigned a tensor), so ``set_quantize_weights`` receives a stand-in for the layer:
what it assigns is recorded, and the layer runs with those variables read as the
assigned tensors (gradients reach the float weights through the quantizer's
straight-through estimator). Activation attributes are set for the call and
restored after it, so the layer's config keeps its own activation.

The math of each quantizer is tfmot's: ``LastValueQuantizer`` takes the range of
the current batch, ``MovingAverageQuantizer`` an exponential moving average (decay
0.999) of it, ``AllValuesQuantizer`` the range of everything seen, and
``FixedQuantizer`` a constant range; every range contains zero, and ``symmetric``
ranges are centred on it. They run ``tf.quantization.fake_quant_with_min_max_vars``
(per channel over the last axis with ``per_axis=True``), which the TFLite converter
reads as int8 quantization parameters.

Example:
    >>> import keras, numpy as np
    >>> q = LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True, narrow_range=True)
    >>> layer = keras.layers.Layer()
    >>> ranges = q.build((3,), "w", layer)
    >>> out = q(np.array([-1.0, 0.5, 1.0], "float32"), True, ranges)
    >>> [round(float(v), 4) for v in out], float(ranges["max_var"].numpy())
    ([-1.0, 0.5039, 1.0], 1.0)
"""

from __future__ import annotations

import abc
import contextlib
from typing import Dict, List

import keras
import tensorflow as tf

from tfcompress import _compat, _graph

__all__ = [
    "AllValuesQuantizer",
    "FixedQuantizer",
    "LastValueQuantizer",
    "MovingAverageQuantizer",
    "NoQuantizer",
    "QuantizeConfig",
    "QuantizeLayoutTransform",
    "QuantizeRegistry",
    "QuantizeScheme",
    "QuantizeWrapperV2",
    "Quantizer",
    "fix_input_output_range",
    "quantize_scope",
    "quantizes_output",
    "remove_input_range",
    "uses_tfmot_protocol",
]


# ---------------------------------------------------------------------------
# Quantizers.
# ---------------------------------------------------------------------------


def _fake_quant(x, lo, hi, *, num_bits: int, narrow_range: bool, per_axis: bool):
    x = tf.convert_to_tensor(x)
    lo = tf.cast(tf.convert_to_tensor(lo), x.dtype)
    hi = tf.cast(tf.convert_to_tensor(hi), x.dtype)
    if per_axis and len(lo.shape) == 1:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, lo, hi, num_bits=num_bits, narrow_range=narrow_range)
    return tf.quantization.fake_quant_with_min_max_vars(
        x, lo, hi, num_bits=num_bits, narrow_range=narrow_range)


def _batch_range(x, *, per_axis: bool, symmetric: bool, num_bits: int, narrow_range: bool):
    """The batch's (min, max), per last-axis channel with ``per_axis``, holding zero."""
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    axes = list(range(len(x.shape) - 1)) if per_axis and len(x.shape) >= 2 else None
    lo, hi = tf.reduce_min(x, axis=axes), tf.reduce_max(x, axis=axes)
    if symmetric:
        # [-m, m] narrow; [-m * 2^(b-1) / (2^(b-1) - 1), m] with the extra negative step.
        ratio = -1.0 if narrow_range else -((1 << num_bits) - 2) / (1 << num_bits)
        return tf.minimum(lo, hi / ratio), tf.maximum(hi, lo * ratio)
    return tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)


class Quantizer(abc.ABC):
    """tfmot's quantizer interface: ``build`` adds its variables, ``__call__`` quantizes.

    Subclass it for a quantizer of your own, as in tfmot.
    """

    def build(self, tensor_shape, name: str, layer) -> Dict:
        """Adds the variables this quantizer needs to ``layer``; returns them by name."""
        return {}

    @abc.abstractmethod
    def __call__(self, inputs, training, weights, **kwargs):
        """Returns ``inputs`` quantized, with the ``weights`` that ``build`` returned."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """The constructor arguments."""

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _range_variables(weights, kwargs) -> Dict:
    """``weights`` from ``build``, or ``min_var`` / ``max_var`` given as keywords (older tfmot)."""
    if weights is None:
        weights = {k: kwargs[k] for k in ("min_var", "max_var") if k in kwargs}
    if not {"min_var", "max_var"} <= set(weights):
        raise ValueError("A quantizer needs its range variables: the dict `build` returned, "
                         f"or min_var= and max_var=. Received: {sorted(weights)}")
    return weights


def _add_range(layer, name: str, shape, value: float) -> Dict:
    def var(suffix, v):
        return layer.add_weight(name=f"{name}_{suffix}", shape=shape, trainable=False,
                                initializer=keras.initializers.Constant(v))

    return {"min_var": var("min", -value), "max_var": var("max", value)}


class _RangeQuantizer(Quantizer):
    """The four arguments tfmot's learned-range quantizers share."""

    def __init__(self, num_bits: int, per_axis: bool, symmetric: bool, narrow_range: bool):
        if not isinstance(num_bits, int) or not 2 <= num_bits <= 16:
            raise ValueError(f"`num_bits` must be an int in [2, 16]. Received: num_bits={num_bits!r}")
        self.num_bits = num_bits
        self.per_axis = bool(per_axis)
        self.symmetric = bool(symmetric)
        self.narrow_range = bool(narrow_range)

    def get_config(self) -> dict:
        return {"num_bits": self.num_bits, "per_axis": self.per_axis,
                "symmetric": self.symmetric, "narrow_range": self.narrow_range}

    def _quantize(self, inputs, lo, hi):
        return _fake_quant(inputs, lo, hi, num_bits=self.num_bits,
                           narrow_range=self.narrow_range, per_axis=self.per_axis)

    def _batch(self, inputs):
        return _batch_range(inputs, per_axis=self.per_axis, symmetric=self.symmetric,
                            num_bits=self.num_bits, narrow_range=self.narrow_range)


@keras.saving.register_keras_serializable(package="tfcompress")
class LastValueQuantizer(_RangeQuantizer):
    """Quantizes over the range of the current batch (tfmot's weight quantizer).

    Args:
        num_bits: bits of the grid.
        per_axis: one range per channel of the last axis.
        symmetric: a range centred on zero.
        narrow_range: drop the most negative step (int8: [-127, 127]).
    """

    def build(self, tensor_shape, name, layer):
        shape = (int(tensor_shape[-1]),) if self.per_axis and tensor_shape else ()
        return _add_range(layer, name, shape, 6.0)

    def __call__(self, inputs, training, weights=None, **kwargs):
        weights = _range_variables(weights, kwargs)
        if not training:
            return self._quantize(inputs, weights["min_var"], weights["max_var"])
        lo, hi = self._batch(inputs)
        weights["min_var"].assign(lo)
        weights["max_var"].assign(hi)
        return self._quantize(inputs, lo, hi)


@keras.saving.register_keras_serializable(package="tfcompress")
class MovingAverageQuantizer(_RangeQuantizer):
    """Quantizes over a moving average (decay 0.999) of batch ranges (tfmot's activations).

    Args: as :class:`LastValueQuantizer`.
    """

    decay = 0.999

    def build(self, tensor_shape, name, layer):
        return _add_range(layer, name, (), 6.0)

    def __call__(self, inputs, training, weights=None, **kwargs):
        weights = _range_variables(weights, kwargs)
        if not training:
            return self._quantize(inputs, weights["min_var"], weights["max_var"])
        lo, hi = self._batch(inputs)
        lo = weights["min_var"] - (weights["min_var"] - lo) * (1.0 - self.decay)
        hi = weights["max_var"] - (weights["max_var"] - hi) * (1.0 - self.decay)
        weights["min_var"].assign(lo)
        weights["max_var"].assign(hi)
        return self._quantize(inputs, lo, hi)


@keras.saving.register_keras_serializable(package="tfcompress")
class AllValuesQuantizer(_RangeQuantizer):
    """Quantizes over the range of every value seen in training (per tensor).

    Args: as :class:`LastValueQuantizer`.
    """

    def build(self, tensor_shape, name, layer):
        return _add_range(layer, name, (), 0.0)

    def __call__(self, inputs, training, weights=None, **kwargs):
        weights = _range_variables(weights, kwargs)
        if not training:
            return _fake_quant(inputs, weights["min_var"], weights["max_var"],
                               num_bits=self.num_bits, narrow_range=self.narrow_range,
                               per_axis=False)
        lo, hi = _batch_range(inputs, per_axis=False, symmetric=self.symmetric,
                              num_bits=self.num_bits, narrow_range=self.narrow_range)
        lo = tf.minimum(weights["min_var"], lo)
        hi = tf.maximum(weights["max_var"], hi)
        weights["min_var"].assign(lo)
        weights["max_var"].assign(hi)
        return _fake_quant(inputs, lo, hi, num_bits=self.num_bits,
                           narrow_range=self.narrow_range, per_axis=False)


@keras.saving.register_keras_serializable(package="tfcompress")
class FixedQuantizer(Quantizer):
    """Quantizes over the constant range ``[init_min, init_max]``.

    Args:
        num_bits: bits of the grid.
        init_min, init_max: the range.
        narrow_range: drop the most negative step.
    """

    def __init__(self, num_bits: int, init_min: float, init_max: float,
                 narrow_range: bool = False):
        if not init_min <= 0.0 <= init_max or init_min == init_max:
            raise ValueError("`init_min` <= 0 <= `init_max` (a range holding zero) is needed. "
                             f"Received: init_min={init_min!r}, init_max={init_max!r}")
        self.num_bits = num_bits
        self.init_min = init_min
        self.init_max = init_max
        self.narrow_range = bool(narrow_range)

    def __call__(self, inputs, training, weights=None, **kwargs):
        return _fake_quant(inputs, float(self.init_min), float(self.init_max),
                           num_bits=self.num_bits, narrow_range=self.narrow_range,
                           per_axis=False)

    def get_config(self) -> dict:
        return {"num_bits": self.num_bits, "init_min": self.init_min,
                "init_max": self.init_max, "narrow_range": self.narrow_range}


@keras.saving.register_keras_serializable(package="tfcompress")
class NoQuantizer(Quantizer):
    """Passes its input through (what :func:`remove_input_range` leaves at an input)."""

    def __call__(self, inputs, training, weights=None, **kwargs):
        return inputs

    def get_config(self) -> dict:
        return {}


# ---------------------------------------------------------------------------
# The QuantizeConfig protocol.
# ---------------------------------------------------------------------------

_TFMOT_METHODS = ("get_weights_and_quantizers", "get_activations_and_quantizers",
                  "set_quantize_weights", "set_quantize_activations", "get_output_quantizers")


class QuantizeConfig:
    """How a layer is quantized: tfmot's protocol, and tfcompress's shorter one.

    tfmot's protocol (override these five methods and ``get_config``; the layer then
    runs in a :class:`QuantizeWrapperV2`):

    * ``get_weights_and_quantizers(layer)``: ``[(weight variable, Quantizer)]``;
    * ``get_activations_and_quantizers(layer)``: ``[(activation function, Quantizer)]``;
    * ``set_quantize_weights(layer, quantize_weights)``: assign the quantized tensors
      to the layer's attributes (``layer.kernel = quantize_weights[0]``);
    * ``set_quantize_activations(layer, quantize_activations)``: likewise
      (``layer.activation = quantize_activations[0]``);
    * ``get_output_quantizers(layer)``: ``[Quantizer]`` for the layer's output.

    The shorter protocol (override ``get_weights_to_quantize`` / ``quantize_output``):
    the listed weights are quantized per tensor, symmetric, narrow range, as TFLite
    does for Dense, and the output gets tfcompress's activation quantizer.

    A config is stored in the model's config with ``get_config()``; register its class
    with ``keras.saving.register_keras_serializable`` (or pass it in
    ``custom_objects``) to load a saved model in another process.
    """

    # tfmot's protocol.
    def get_weights_and_quantizers(self, layer) -> List:
        return [(w, LastValueQuantizer(8, per_axis=False, symmetric=True, narrow_range=True))
                for w in self.get_weights_to_quantize(layer)]

    def get_activations_and_quantizers(self, layer) -> List:
        return []

    def set_quantize_weights(self, layer, quantize_weights) -> None:
        pass

    def set_quantize_activations(self, layer, quantize_activations) -> None:
        pass

    def get_output_quantizers(self, layer) -> List:
        return []

    # tfcompress's shorter protocol.
    def get_weights_to_quantize(self, layer) -> List:
        return []

    def quantize_output(self, layer) -> bool:
        # A tfmot-protocol config quantizes its outputs itself.
        return not uses_tfmot_protocol(self)

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# QuantizeConfig classes given to annotations in this process, by name: a model's
# clones (made through configs) find them without Keras registration, as tfmot's
# `quantize_annotate_model` does. Loading a saved model elsewhere still needs them
# registered or passed in `custom_objects`.
_SEEN_CONFIGS: Dict[str, type] = {}


def remember_config(config) -> None:
    """Notes ``config``'s class, so that its serialized form deserializes in this process."""
    if config is not None:
        cls = type(config)
        _SEEN_CONFIGS[cls.__name__] = cls
        _SEEN_CONFIGS[keras.saving.get_registered_name(cls)] = cls


def seen_configs() -> Dict[str, type]:
    """``custom_objects`` for the QuantizeConfig classes :func:`remember_config` saw."""
    return dict(_SEEN_CONFIGS)


def quantizes_output(config, layer) -> bool:
    """Whether tfcompress puts its own quantizer after a layer annotated with ``config``.

    Not after a tfmot-protocol config: its wrapper quantizes what the config says
    (tfmot's configs may even keep a ``quantize_output`` attribute of their own).
    """
    if uses_tfmot_protocol(config):
        return False
    return bool(config.quantize_output(layer))


def uses_tfmot_protocol(config) -> bool:
    """Whether ``config`` overrides any of tfmot's five QuantizeConfig methods."""
    if config is None:
        return False
    if not isinstance(config, QuantizeConfig):
        return all(hasattr(config, m) for m in _TFMOT_METHODS)
    return any(getattr(type(config), m) is not getattr(QuantizeConfig, m)
               for m in _TFMOT_METHODS)


# ---------------------------------------------------------------------------
# The wrapper that runs the protocol.
# ---------------------------------------------------------------------------


class _Recorder:
    """Stands for a layer in ``set_quantize_*``: reads go to the layer, writes are kept."""

    def __init__(self, layer):
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_assigned", {})

    def __getattr__(self, name):
        assigned = object.__getattribute__(self, "_assigned")
        if name in assigned:
            return assigned[name]
        return getattr(object.__getattribute__(self, "_layer"), name)

    def __setattr__(self, name, value):
        object.__getattribute__(self, "_assigned")[name] = value


class _AddWeight:
    """What a quantizer's ``build`` sees as ``layer``: tfmot's ``add_weight(name, ...)`` too."""

    def __init__(self, wrapper):
        self._wrapper = wrapper

    def add_weight(self, *args, **kwargs):
        if args and isinstance(args[0], str):
            kwargs.setdefault("name", args[0])
            args = args[1:]
        aggregation = kwargs.pop("aggregation", None)
        if aggregation is not None:  # tf.VariableAggregation in tfmot code
            kwargs["aggregation"] = aggregation if isinstance(aggregation, str) else "mean"
        shape = kwargs.pop("shape", None)
        return self._wrapper.add_weight(*args, shape=() if shape is None else shape, **kwargs)

    def __getattr__(self, name):
        return getattr(self._wrapper, name)


def _deserialize(obj):
    if not isinstance(obj, dict):
        return obj
    return keras.saving.deserialize_keras_object(obj, custom_objects=seen_configs())


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeWrapperV2(keras.layers.Wrapper):
    """Runs a layer under a tfmot-protocol :class:`QuantizeConfig` (tfmot's name).

    Args:
        layer: the layer.
        quantize_config: the config (tfmot's five methods).
        **kwargs: Keras layer arguments.

    Raises:
        ValueError: ``quantize_config`` has no tfmot protocol methods.
    """

    # What tfcompress's report reads from a QuantizeWrapper.
    batchnorm = None
    notes = ()
    weight_bits = 8
    activation_bits = 8

    def __init__(self, layer, quantize_config, **kwargs):
        layer, quantize_config = _deserialize(layer), _deserialize(quantize_config)
        if not all(hasattr(quantize_config, m) for m in _TFMOT_METHODS):
            raise ValueError("`quantize_config` must be a QuantizeConfig (with tfmot's "
                             f"methods {', '.join(_TFMOT_METHODS)}). "
                             f"Received: quantize_config={quantize_config!r}")
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(layer, **kwargs)
        remember_config(quantize_config)
        self.quantize_config = quantize_config

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        adder = _AddWeight(self)
        config = self.quantize_config
        self._weight_quantizers = []
        for weight, quantizer in config.get_weights_and_quantizers(self.layer) or []:
            name = weight.path.split("/")[-1] if hasattr(weight, "path") else "weight"
            self._weight_quantizers.append(
                (weight, quantizer, quantizer.build(weight.shape, name, adder) or {}))
        self._activation_quantizers = []
        for i, (activation, quantizer) in enumerate(
                config.get_activations_and_quantizers(self.layer) or []):
            self._activation_quantizers.append(
                (activation, quantizer, quantizer.build(None, f"activation_{i}", adder) or {}))
        self._output_quantizers = []
        for i, quantizer in enumerate(config.get_output_quantizers(self.layer) or []):
            self._output_quantizers.append(
                (quantizer, quantizer.build(None, f"output_{i}", adder) or {}))
        self.built = True

    def call(self, inputs, training=None):
        training = bool(training)
        config = self.quantize_config
        quantized = [q(w, training, v) for w, q, v in self._weight_quantizers]
        stand_in = _Recorder(self.layer)
        if quantized:
            config.set_quantize_weights(stand_in, quantized)

        def aware(activation, quantizer, variables):
            return lambda x: quantizer(activation(x), training, variables)

        if self._activation_quantizers:
            config.set_quantize_activations(
                stand_in, [aware(*t) for t in self._activation_quantizers])
        substitutes, restore = [], {}
        for name, value in object.__getattribute__(stand_in, "_assigned").items():
            current = getattr(self.layer, name, None)
            if isinstance(current, keras.Variable):
                substitutes.append((current, value))
            else:
                restore[name] = current
                object.__setattr__(self.layer, name, value)
        try:
            with _compat.substituted_variables(substitutes, self.weights):
                outputs = self.layer(inputs, training=training)
        finally:
            for name, value in restore.items():
                object.__setattr__(self.layer, name, value)
        for quantizer, variables in self._output_quantizers:
            outputs = quantizer(outputs, training, variables)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config["quantize_config"] = keras.saving.serialize_keras_object(self.quantize_config)
        return config


# ---------------------------------------------------------------------------
# Schemes, registries, layout transforms: tfmot's interfaces.
# ---------------------------------------------------------------------------


class QuantizeRegistry(abc.ABC):
    """Which layers a scheme quantizes, and with which :class:`QuantizeConfig`."""

    @abc.abstractmethod
    def get_quantize_config(self, layer) -> QuantizeConfig:
        """The config for ``layer``; raises ValueError for a layer it does not support."""

    def supports(self, layer) -> bool:
        """Whether ``layer`` is quantized by this registry."""
        try:
            self.get_quantize_config(layer)
        except ValueError:
            return False
        return True


class QuantizeLayoutTransform(abc.ABC):
    """Rewrites the float graph before quantization (tfmot: folds BatchNorm, ...)."""

    @abc.abstractmethod
    def apply(self, model, layer_quantize_map):
        """Returns ``(model, layer_quantize_map)`` rewritten."""


class QuantizeScheme(abc.ABC):
    """A layout transform and a registry: what ``quantize_apply(scheme=...)`` takes."""

    @abc.abstractmethod
    def get_layout_transformer(self) -> QuantizeLayoutTransform:
        """The graph rewrite of this scheme."""

    @abc.abstractmethod
    def get_quantize_registry(self) -> QuantizeRegistry:
        """The registry of this scheme."""


@contextlib.contextmanager
def quantize_scope(*args):
    """tfmot's scope for loading quantized models; ``args`` are custom-object dicts.

    tfcompress registers its own quantization objects with Keras, so plain
    ``keras.models.load_model`` loads them without this scope. It is kept so that
    tfmot code runs unchanged, and it still makes the dictionaries given (your own
    QuantizeConfigs and layers) known to Keras while the block runs.

    >>> with quantize_scope({"MyConfig": QuantizeConfig}):
    ...     pass
    """
    objects: Dict = {}
    for extra in args:
        if not isinstance(extra, dict):
            raise TypeError("quantize_scope takes dictionaries of custom objects. "
                            f"Received: {extra!r}")
        objects.update(extra)
    with keras.saving.custom_object_scope(objects):
        yield


# ---------------------------------------------------------------------------
# Input and output ranges of a QAT model.
# ---------------------------------------------------------------------------


def _is_range_quantizer(layer) -> bool:
    # tfcompress.quantization.FakeQuant, recognised by its config (no import cycle).
    return type(layer).__name__ == "FakeQuant" and hasattr(layer, "fixed_range")


def _edge_quantizers(model):
    """The FakeQuant layers that read a model input, and those that give an output."""
    model = _graph.functional(model, purpose="finding the input and output quantizers")
    inputs = {id(t) for t in model.inputs}
    outputs = {id(_compat.producer(t)) for t in model.outputs}
    first, last = [], []
    for node in _compat.graph_nodes(model):
        op = node.operation
        if not _is_range_quantizer(op):
            continue
        if any(id(t) in inputs for t in node.input_tensors) and op not in first:
            first.append(op)
        if id(op) in outputs and op not in last:
            last.append(op)
    return first, last


def _replace_quantizers(model, replacements, *, purpose: str):
    model = _graph.functional(model, purpose=purpose)
    pending = []

    def clone_function(layer):
        if id(layer) in replacements:
            return replacements[id(layer)](layer)
        new = _compat.layer_from_config(layer)
        if layer.weights:
            pending.append((new, layer.get_weights()))
        return new

    # The model's own classes (custom layers, configs) deserialize without registration.
    known = {type(layer).__name__: type(layer) for layer in _compat.flatten_layers(model)}
    known.update(seen_configs())
    with keras.saving.custom_object_scope(known):
        clone = _graph.clone_model(model, clone_function=clone_function, keep_operations=True)
    for new, weights in pending:
        new.set_weights(weights)
    return clone


def fix_input_output_range(model, num_bits: int = 8, input_min: float = 0.0,
                           input_max: float = 1.0, output_min: float = 0.0,
                           output_max: float = 1.0, narrow_range: bool = False):
    """A copy of a QAT model whose input and output quantizers have fixed ranges (tfmot's).

    Args:
        model: a model from ``quantize_model`` / ``quantize_apply``.
        num_bits: 8 (tfcompress's quantizers run 8-bit or 16-bit activations).
        input_min, input_max: the range of every model input.
        output_min, output_max: the range of every model output.
        narrow_range: must be False (int8 activations use the full grid).

    Returns:
        A new model, weights copied.

    Raises:
        ValueError: ``model`` has no quantizer at its inputs or outputs, or an option
            tfcompress cannot honour (``num_bits`` other than 8, ``narrow_range``).
    """
    if num_bits != 8 or narrow_range:
        raise ValueError("fix_input_output_range sets int8 ranges: num_bits=8 and "
                         f"narrow_range=False. Received: num_bits={num_bits!r}, "
                         f"narrow_range={narrow_range!r}")
    for name, (lo, hi) in (("input", (input_min, input_max)), ("output", (output_min, output_max))):
        if not lo <= 0.0 <= hi or lo == hi:
            raise ValueError(f"The {name} range must hold zero and be non-empty. "
                             f"Received: {name}_min={lo!r}, {name}_max={hi!r}")
    first, last = _edge_quantizers(model)
    if not first and not last:
        raise ValueError(f"Model {model.name!r} has no quantizer at its inputs or outputs: "
                         "pass a model from quantize_model() or quantize_apply().")

    def fixed(lo, hi):
        def make(layer):
            config = dict(layer.get_config(), fixed_range=[float(lo), float(hi)], num_bits=8)
            return type(layer).from_config(config)
        return make

    replacements = {id(q): fixed(input_min, input_max) for q in first}
    replacements.update({id(q): fixed(output_min, output_max) for q in last})
    return _replace_quantizers(model, replacements, purpose="fixing input and output ranges")


def remove_input_range(model):
    """A copy of a QAT model without the quantizers at its inputs (tfmot's name).

    The converted file then takes the inputs' range from the first layer's input
    quantizer instead; use it for a model that another model feeds.

    Raises:
        ValueError: ``model`` has no quantizer at its inputs.
    """
    first, _ = _edge_quantizers(model)
    if not first:
        raise ValueError(f"Model {model.name!r} has no quantizer at its inputs: pass a model "
                         "from quantize_model() or quantize_apply().")
    identity = {id(q): (lambda layer: keras.layers.Identity(name=layer.name)) for q in first}
    return _replace_quantizers(model, identity, purpose="removing the input range")
