"""Quantization-aware training on Keras 3, with tfmot's names.

The QAT model computes what the fully-int8 `.tflite` will compute:

* weights: Conv / DepthwiseConv per output channel, symmetric, narrow range
  ([-127, 127]); Dense per tensor (per-channel fake-quant on a Dense kernel makes
  the converter fail with "mismatched quantized axes");
* activations: asymmetric, with moving-average ranges (initialised from the first
  batch so that raw 0-255 inputs do not wait for an average to crawl there);
* BatchNorm that follows a Conv / DepthwiseConv / Dense is folded into it, so training
  sees the folded, quantized weights the converter will write;
* no fake-quant between a layer and a ReLU / ReLU6 that TFLite fuses into it; Add
  and GlobalAveragePooling get their own output range; the inputs of a Concatenate
  share its output range (as TFLite requires); pooling, reshape, flatten, padding and
  dropout keep their input's range; a softmax output has TFLite's fixed
  range (scale 1/256, zero point -128);
* an ``AveragePooling2D`` that covers its whole input becomes
  ``GlobalAveragePooling2D(keepdims=True)`` (the same numbers), because XNNPACK runs
  int8 MEAN but not int8 AVERAGE_POOL_2D; the report says so.

The converter reads the fake-quant ranges, so a QAT model converts to int8 without
representative data: ``tfcompress.convert(qat_model)``. Post-training quantization
through the same graph lives in :mod:`tfcompress.post_training`.

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    >>> x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    >>> qat = quantize_model(model)
    >>> [type(layer).__name__ for layer in qat.layers][1:]
    ['FakeQuant', 'QuantizeWrapper', 'ReLU', 'FakeQuant', 'Flatten', 'QuantizeWrapper', 'FakeQuant']
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfcompress import _graph

__all__ = [
    "FakeQuant",
    "FreezeBatchNormStatistics",
    "FreezeQuantizerRanges",
    "QuantizeConfig",
    "QuantizeReport",
    "QuantizeWrapper",
    "SCHEMES",
    "fake_quant",
    "fake_quant_per_channel",
    "is_quantized",
    "quantize_annotate_layer",
    "quantize_annotate_model",
    "quantize_apply",
    "quantize_model",
    "strip_quantization",
]


@dataclasses.dataclass(frozen=True)
class Scheme:
    """Bit widths of a quantization scheme."""

    weight_bits: int
    activation_bits: int


SCHEMES = {"default_8bit": Scheme(8, 8), "int16x8": Scheme(8, 16)}

# ---------------------------------------------------------------------------
# Pure quantizer math.
# ---------------------------------------------------------------------------


def fake_quant(x, min_value, max_value, *, num_bits: int = 8, narrow_range: bool = False):
    """Rounds ``x`` to the grid TFLite uses for ``[min_value, max_value]`` (per tensor).

    The range is nudged so that zero is exactly representable, as the converter does.

    >>> float(fake_quant(np.float32(0.3), -1.0, 1.0, num_bits=2))
    0.0
    """
    return tf.quantization.fake_quant_with_min_max_vars(
        tf.convert_to_tensor(x, tf.float32), min_value, max_value, num_bits=num_bits,
        narrow_range=narrow_range)


def fake_quant_per_channel(x, min_value, max_value, *, num_bits: int = 8,
                           narrow_range: bool = True):
    """Per-channel :func:`fake_quant` over the last axis of ``x``."""
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, min_value, max_value, num_bits=num_bits, narrow_range=narrow_range)


def symmetric_max(weight, *, per_channel: bool):
    """``max |w|`` (per last-axis channel or over the tensor), never exactly zero."""
    a = ops.abs(weight)
    m = ops.max(a, axis=tuple(range(len(weight.shape) - 1))) if per_channel else ops.max(a)
    return ops.maximum(m, 1e-8)


# ---------------------------------------------------------------------------
# Activation quantizer.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tfcompress")
class FakeQuant(keras.layers.Layer):
    """Fake-quantizes activations over a range learned as a moving average.

    Args:
        num_bits: 8 (int8) or 16 (int16 activations; symmetric, as TFLite wants).
        decay: moving-average decay of the range.
        fixed_range: ``(min, max)`` to use instead of a learned range (softmax).
        **kwargs: Keras layer arguments.
    """

    def __init__(self, num_bits: int = 8, decay: float = 0.999, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        if num_bits not in (8, 16):
            raise ValueError(f"`num_bits` must be 8 or 16. Received: num_bits={num_bits!r}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"`decay` must be in (0, 1). Received: decay={decay!r}")
        self.num_bits = num_bits
        self.decay = decay
        self.fixed_range = tuple(fixed_range) if fixed_range is not None else None

    def build(self, input_shape):
        def state(name, value=0.0):
            return self.add_weight(name=name, shape=(), trainable=False, aggregation="mean",
                                   initializer=keras.initializers.Constant(value))

        self.min_value = state("min")
        self.max_value = state("max")
        self.initialized = state("initialized")
        self.frozen = state("frozen")
        self.calibrating = state("calibrating")

    def _quantize(self, x, lo, hi):
        if self.num_bits == 16:  # TFLite's int16 activations are symmetric
            m = ops.maximum(ops.abs(lo), ops.abs(hi))
            return fake_quant(x, -m, m, num_bits=16, narrow_range=True)
        return fake_quant(x, lo, hi, num_bits=8)

    def call(self, inputs, training=None):
        if self.fixed_range is not None:
            return self._quantize(inputs, *self.fixed_range)
        lo, hi = self.min_value, self.max_value
        if not training:
            if getattr(self, "_observed", None) is not None and tf.executing_eagerly():
                self._observed.append(_sample(np.asarray(inputs)))
            # While `calibrate` measures ranges the network runs in float.
            return ops.where(ops.greater(self.calibrating, 0.5), inputs,
                             self._quantize(inputs, lo, hi))
        if training:
            # The range is a statistic, not a function to differentiate: without
            # stop_gradient the backward pass scatters into every argmin/argmax.
            batch_lo = ops.stop_gradient(ops.minimum(ops.min(inputs), 0.0))
            batch_hi = ops.stop_gradient(ops.maximum(ops.max(inputs), 0.0))
            first = ops.equal(self.initialized, 0.0)
            new_lo = ops.where(first, batch_lo, lo * self.decay + batch_lo * (1 - self.decay))
            new_hi = ops.where(first, batch_hi, hi * self.decay + batch_hi * (1 - self.decay))
            keep = ops.equal(self.frozen, 1.0)
            lo = ops.where(keep, lo, new_lo)
            hi = ops.where(keep, hi, new_hi)
            self.min_value.assign(lo)
            self.max_value.assign(hi)
            self.initialized.assign(1.0)
        return self._quantize(inputs, lo, hi)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_bits=self.num_bits, decay=self.decay,
                      fixed_range=list(self.fixed_range) if self.fixed_range else None)
        return config


# ---------------------------------------------------------------------------
# Weighted layers.
# ---------------------------------------------------------------------------

_DEPTHWISE = (keras.layers.DepthwiseConv2D, keras.layers.DepthwiseConv1D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D)
_WEIGHTED = (keras.layers.Dense,) + _CONV + _DEPTHWISE
_FUSABLE = ("linear", "relu", "relu6")
SUPPORTED_LAYERS = (
    "Dense", "Conv1D", "Conv2D (groups=1)", "DepthwiseConv1D", "DepthwiseConv2D",
    "SeparableConv2D (split into DepthwiseConv2D + 1x1 Conv2D)",
    "BatchNormalization (folded into the layer before it)", "Add", "Subtract", "Multiply",
    "Average", "Maximum", "Minimum", "Concatenate", "ReLU", "Activation", "Softmax",
    "MaxPooling", "AveragePooling", "GlobalAveragePooling", "GlobalMaxPooling", "Flatten",
    "Reshape", "ZeroPadding", "Cropping", "Dropout", "Identity",
    "any layer given a QuantizeConfig",
)


def _deserialize(obj):
    """A Keras object from its config (as ``from_config`` receives it), else ``obj``."""
    return keras.saving.deserialize_keras_object(obj) if isinstance(obj, dict) else obj


def _serialize(obj):
    return keras.saving.serialize_keras_object(obj) if obj is not None else None


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


class QuantizeConfig:
    """How a custom layer is quantized (tfmot's contract, without tfmot).

    Subclass it for a layer this module does not know: say which weights to
    fake-quantize and whether the output gets an activation quantizer. The weights
    are quantized per tensor, symmetric, narrow range, as TFLite does for Dense.
    """

    def get_weights_to_quantize(self, layer) -> List:
        return []

    def quantize_output(self, layer) -> bool:
        return True

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeWrapper(keras.layers.Wrapper):
    """Runs a Dense / Conv / DepthwiseConv with folded BatchNorm and fake-quant weights.

    Args:
        layer: the layer.
        batchnorm: a BatchNormalization to fold into it (or None).
        weight_bits: bit width of the weights (8).
        activation_bits: bit width of a pre-activation quantizer (only used when the
            layer's activation is not one TFLite fuses, e.g. softmax).
        quantize_config: a :class:`QuantizeConfig` for a custom layer.
        **kwargs: Keras layer arguments.
    """

    def __init__(self, layer, batchnorm=None, weight_bits: int = 8, activation_bits: int = 8,
                 quantize_config=None, **kwargs):
        layer, batchnorm, quantize_config = map(_deserialize, (layer, batchnorm, quantize_config))
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(layer, **kwargs)
        if quantize_config is None and not isinstance(layer, _WEIGHTED):
            raise _unsupported(layer, "?")
        self.batchnorm = batchnorm
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.quantize_config = quantize_config
        self.pre_activation = None
        if quantize_config is None and _activation_name(layer) not in _FUSABLE:
            self.pre_activation = FakeQuant(activation_bits, name="pre_activation")

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.batchnorm is not None and not self.batchnorm.built:
            self.batchnorm.build(self.layer.compute_output_shape(input_shape))
        if self.pre_activation is not None:
            self.pre_activation.build(self.layer.compute_output_shape(input_shape))
        kernel = self._kernel_variable()
        self.sparsity_mask = None
        if kernel is not None:
            self.sparsity_mask = self.add_weight(name="sparsity_mask", shape=kernel.shape,
                                                 initializer="ones", trainable=False)
        self.bn_frozen = self.add_weight(name="bn_frozen", shape=(), trainable=False,
                                         initializer="zeros", aggregation="mean")
        self.built = True

    def _kernel_variable(self):
        if self.quantize_config is not None:
            return None
        return self.layer.kernel

    def preserve_zeros(self) -> None:
        """Keeps the current zeros of the kernel at zero during training (pruned models)."""
        if self.sparsity_mask is not None:
            self.sparsity_mask.assign(ops.cast(ops.not_equal(self._kernel_variable(), 0.0),
                                               "float32"))

    def _op(self, x, kernel):
        layer = self.layer
        if isinstance(layer, keras.layers.Dense):
            return ops.matmul(x, kernel)
        if isinstance(layer, _DEPTHWISE):
            return ops.depthwise_conv(x, kernel, strides=layer.strides, padding=layer.padding,
                                      dilation_rate=layer.dilation_rate,
                                      data_format=layer.data_format)
        return layer.convolution_op(x, kernel)

    def _quantize_kernel(self, kernel):
        bits = self.weight_bits
        if isinstance(self.layer, keras.layers.Dense):
            m = symmetric_max(kernel, per_channel=False)
            return fake_quant(kernel, -m, m, num_bits=bits, narrow_range=True)
        shape = kernel.shape
        if isinstance(self.layer, _DEPTHWISE):  # TFLite's channels are in * multiplier
            kernel = ops.reshape(kernel, tuple(shape[:-2]) + (1, shape[-2] * shape[-1]))
        m = symmetric_max(kernel, per_channel=True)
        q = fake_quant_per_channel(kernel, -m, m, num_bits=bits, narrow_range=True)
        return ops.reshape(q, shape)

    def _fold(self, x, kernel, bias, training):
        bn = self.batchnorm
        gamma = bn.gamma if bn.scale else 1.0
        beta = bn.beta if bn.center else 0.0
        mean, var = bn.moving_mean, bn.moving_variance
        if training:
            def batch_statistics():
                raw = self._op(x, kernel)
                batch_mean, batch_var = ops.moments(raw, axes=list(range(len(raw.shape) - 1)))
                batch_mean = batch_mean + (0.0 if bias is None else bias)
                m = bn.momentum
                bn.moving_mean.assign(bn.moving_mean * m + batch_mean * (1 - m))
                bn.moving_variance.assign(bn.moving_variance * m + batch_var * (1 - m))
                return batch_mean, batch_var

            def moving_statistics():
                return ops.convert_to_tensor(mean), ops.convert_to_tensor(var)

            # A cond, not a where: with frozen statistics the extra convolution that
            # measures the batch statistics is neither run nor differentiated.
            mean, var = ops.cond(ops.equal(self.bn_frozen, 1.0), moving_statistics,
                                 batch_statistics)
        scale = gamma / ops.sqrt(var + bn.epsilon)
        if isinstance(self.layer, _DEPTHWISE):
            folded = kernel * ops.reshape(scale, tuple(kernel.shape[-2:]))
        else:
            folded = kernel * scale
        new_bias = beta + ((0.0 if bias is None else bias) - mean) * scale
        return folded, new_bias

    def call(self, inputs, training=None):
        if self.quantize_config is not None:
            for w in self.quantize_config.get_weights_to_quantize(self.layer):
                m = symmetric_max(w, per_channel=False)
                # Custom layers read their own variables: quantize them in place.
                w.assign(fake_quant(w, -m, m, num_bits=self.weight_bits, narrow_range=True))
            return self.layer(inputs, training=training)
        layer = self.layer
        kernel = layer.kernel * self.sparsity_mask
        bias = layer.bias if layer.use_bias else None
        if self.batchnorm is not None:
            kernel, bias = self._fold(inputs, kernel, bias, training)
        y = self._op(inputs, self._quantize_kernel(kernel))
        if bias is not None:
            y = y + bias
        if getattr(self, "_bias_shift", None) is not None and tf.executing_eagerly():
            # correct_bias(): how far weight rounding moves each output channel.
            exact = self._op(inputs, kernel) + (0.0 if bias is None else bias)
            axes = tuple(range(len(y.shape) - 1))
            self._bias_shift.append(np.asarray(ops.mean(y - exact, axis=axes)))
        if self.pre_activation is not None:
            y = self.pre_activation(y, training=training)
        return layer.activation(y) if layer.activation is not None else y

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, *args, **kwargs):
        if self.quantize_config is None:
            return super().compute_output_spec(*args, **kwargs)
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(batchnorm=_serialize(self.batchnorm), weight_bits=self.weight_bits,
                      activation_bits=self.activation_bits,
                      quantize_config=_serialize(self.quantize_config))
        return config


# ---------------------------------------------------------------------------
# Annotation.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeAnnotate(keras.layers.Wrapper):
    """Marks a layer for :func:`quantize_apply`; computes exactly what the layer does."""

    def __init__(self, layer, quantize_config=None, **kwargs):
        layer, quantize_config = map(_deserialize, (layer, quantize_config))
        kwargs.setdefault("name", f"annotate_{layer.name}")
        super().__init__(layer, **kwargs)
        self.quantize_config = quantize_config

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config["quantize_config"] = _serialize(self.quantize_config)
        return config


def quantize_annotate_layer(to_annotate, quantize_config=None):
    """Marks one layer to be quantized by :func:`quantize_apply` (tfmot's name).

    Args:
        to_annotate: the layer.
        quantize_config: a :class:`QuantizeConfig` for a layer this module does not know.
    """
    if not isinstance(to_annotate, keras.layers.Layer) or isinstance(to_annotate, keras.Model):
        raise TypeError("`to_annotate` must be a Keras layer (use quantize_annotate_model for a "
                        f"model). Received: {type(to_annotate).__name__}")
    return QuantizeAnnotate(to_annotate, quantize_config)


def quantize_annotate_model(to_annotate):
    """Marks every layer of a Sequential / Functional model (tfmot's name)."""
    model = _graph.functional(to_annotate, purpose="quantization", inline=True)

    def clone_function(layer):
        new = type(layer).from_config(layer.get_config())
        pending.append((new, layer.get_weights()))
        return new if isinstance(new, QuantizeAnnotate) else QuantizeAnnotate(new)

    pending: list = []
    clone = _graph.clone_model(model, clone_function=clone_function)
    for new, weights in pending:
        if weights:
            new.set_weights(weights)
    return clone


# ---------------------------------------------------------------------------
# The transform.
# ---------------------------------------------------------------------------

_PASSTHROUGH = (
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D, keras.layers.Flatten, keras.layers.Reshape,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.Cropping1D,
    keras.layers.Cropping2D, keras.layers.Dropout, keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D, keras.layers.Identity, keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
)
_MERGE = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
          keras.layers.Maximum, keras.layers.Minimum, keras.layers.Concatenate)
_OWN_RANGE = (keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
              keras.layers.UpSampling2D)


def _is_fusable_activation(layer) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        return (layer.negative_slope == 0 and layer.threshold == 0
                and layer.max_value in (None, 6, 6.0))
    return isinstance(layer, keras.layers.Activation) and _activation_name(layer) in ("relu", "relu6")


def _is_softmax(layer) -> bool:
    return isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation) and _activation_name(layer) == "softmax")


def _unsupported(layer, position) -> ValueError:
    return ValueError(
        f"Layer {layer.name!r} (class {type(layer).__name__}, position {position}) cannot be "
        f"quantized. Supported: {', '.join(SUPPORTED_LAYERS)}. Give it a QuantizeConfig with "
        "quantize_annotate_layer(layer, quantize_config=...), or leave it unannotated to "
        "keep it in float.")


@dataclasses.dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_apply` did."""

    scheme: str
    quantized: Tuple[str, ...]
    folded_batchnorms: Tuple[Tuple[str, str], ...]
    left_in_float: Tuple[str, ...]
    rewrites: Tuple[str, ...]

    def summary(self) -> str:
        lines = [f"scheme: {self.scheme}; {len(self.quantized)} layers quantized"]
        lines += [f"folded {bn} into {conv}" for conv, bn in self.folded_batchnorms]
        lines += [f"left in float: {name}" for name in self.left_in_float]
        lines += [f"rewrote {r}" for r in self.rewrites]
        return "\n".join(lines)


def _whole_input_average_pool(layer, input_shape) -> bool:
    if not isinstance(layer, keras.layers.AveragePooling2D) or layer.data_format != "channels_last":
        return False
    spatial = tuple(input_shape[1:3])
    return (None not in spatial and tuple(layer.pool_size) == spatial
            and layer.padding == "valid")


def quantize_apply(model, scheme: str = "default_8bit"):
    """Turns an annotated model into a QAT model (tfmot's name).

    Layers wrapped by :func:`quantize_annotate_layer` (or all layers after
    :func:`quantize_annotate_model`) are quantized; others stay in float and are
    listed in ``model.quantize_report.left_in_float``.

    Args:
        model: a Sequential or Functional model with annotations.
        scheme: ``"default_8bit"`` or ``"int16x8"`` (int16 activations, int8 weights).

    Returns:
        A new Functional model; ``.quantize_report`` is a :class:`QuantizeReport`.

    Raises:
        ValueError: an unknown scheme, or an annotated layer this module cannot quantize.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown quantization scheme. Received: scheme={scheme!r}. "
                         f"Allowed: {', '.join(repr(s) for s in SCHEMES)}.")
    bits = SCHEMES[scheme]
    model = _graph.functional(model, purpose="quantization", inline=True)
    # What TFLite runs for a SeparableConv2D, so that each half is quantized on its own;
    # annotations carry over, a user QuantizeConfig keeps the layer whole.
    model, split_notes = _graph.split_separable(
        model, unwrap=lambda layer: layer.layer if isinstance(layer, QuantizeAnnotate) else layer,
        rewrap=lambda original, new: QuantizeAnnotate(new) if isinstance(
            original, QuantizeAnnotate) else new,
        keep=lambda layer: getattr(layer, "quantize_config", None) is not None)
    nodes = [n for d in sorted(model._nodes_by_depth, reverse=True)
             for n in model._nodes_by_depth[d]]
    readers: Dict[int, list] = {}
    for node in nodes:
        for t in node.input_tensors:
            readers.setdefault(id(t), []).append(node.operation)

    def inner(layer):
        return layer.layer if isinstance(layer, QuantizeAnnotate) else layer

    def annotated(layer):
        return isinstance(layer, QuantizeAnnotate)

    fold = {}  # batchnorm name -> producer name
    for position, node in enumerate(nodes):
        layer = node.operation
        if not annotated(layer) or isinstance(layer, keras.layers.InputLayer):
            continue
        base = inner(layer)
        if layer.quantize_config is None and base.weights and not isinstance(
                base, _WEIGHTED + (keras.layers.BatchNormalization,)):
            raise _unsupported(base, position)
        if isinstance(base, keras.layers.Conv2D) and base.groups != 1:
            raise _unsupported(base, position)
        after = readers.get(id(node.output_tensors[0]), [])
        if (isinstance(base, _WEIGHTED) and _activation_name(base) == "linear" and len(after) == 1
                and annotated(after[0]) and isinstance(inner(after[0]), keras.layers.BatchNormalization)):
            fold[after[0].name] = layer.name
    for position, node in enumerate(nodes):
        layer = node.operation
        if annotated(layer) and isinstance(inner(layer), keras.layers.BatchNormalization) \
                and layer.name not in fold:
            raise ValueError(
                f"BatchNormalization {inner(layer).name!r} (position {position}) does not follow "
                "a Conv / DepthwiseConv / Dense with a linear activation, so it cannot be folded. "
                f"Supported: {', '.join(SUPPORTED_LAYERS)}.")

    def only_concatenated(node) -> bool:
        # TFLite gives a concatenation's inputs the output's scale; quantizing the
        # output alone computes exactly that (quantize(concat(a, b)) with one range).
        after = readers.get(id(node.output_tensors[0]), [])
        return len(after) == 1 and annotated(after[0]) and isinstance(
            inner(after[0]), keras.layers.Concatenate)

    # Where activation quantizers go: after each tensor that is an int8 tensor in TFLite.
    def output_kind(layer, node) -> Optional[str]:
        """None (keeps its input's range), "learned" or "softmax"."""
        if not annotated(layer):
            return None
        base = inner(layer)
        if layer.name in fold:
            return None  # the BN's output is quantized instead
        if _is_softmax(base) or _activation_name(base) == "softmax":
            return "softmax"
        if only_concatenated(node):
            return None
        if isinstance(base, _PASSTHROUGH):
            if _whole_input_average_pool(base, node.input_tensors[0].shape):
                return "learned"  # becomes MEAN, which has its own range
            return None
        if isinstance(base, _WEIGHTED) or layer.quantize_config is not None or isinstance(
                base, _MERGE + _OWN_RANGE + (keras.layers.BatchNormalization,)):
            if layer.quantize_config is not None and not layer.quantize_config.quantize_output(base):
                return None
            after = readers.get(id(node.output_tensors[0]), [])
            fusable = isinstance(base, (keras.layers.BatchNormalization,) + _MERGE + _WEIGHTED)
            if (fusable and len(after) == 1 and annotated(after[0])
                    and _is_fusable_activation(inner(after[0]))):
                return None  # quantized after the activation TFLite fuses into it
            return "learned"
        return "learned"  # activations and anything else elementwise

    kinds = {node.operation.name: output_kind(node.operation, node) for node in nodes}
    by_name = {node.operation.name: node for node in nodes}
    quantized, left, pending = [], [], []
    rewrites = list(split_notes)
    origin: Dict[int, str] = {}

    def clone_function(layer):
        new = _clone_layer(layer)
        origin[id(new)] = layer.name
        return new

    def _clone_layer(layer):
        if not annotated(layer):
            if layer.weights:
                left.append(layer.name)
            new = type(layer).from_config(layer.get_config())
            if layer.weights:
                pending.append((new, layer.get_weights()))
            return new
        base = inner(layer)
        if isinstance(base, keras.layers.BatchNormalization):
            return keras.layers.Identity(name=base.name)  # folded; skipped in call_function
        node = by_name[layer.name]
        if isinstance(base, keras.layers.AveragePooling2D) and _whole_input_average_pool(
                base, node.input_tensors[0].shape):
            rewrites.append(f"{base.name}: AveragePooling2D over the whole input -> "
                            "GlobalAveragePooling2D(keepdims=True) (XNNPACK runs int8 MEAN)")
            return keras.layers.GlobalAveragePooling2D(keepdims=True, name=base.name)
        copy = type(base).from_config(base.get_config())
        if base.weights:
            pending.append((copy, base.get_weights()))
        if isinstance(base, _WEIGHTED) or layer.quantize_config is not None:
            bn = None
            bn_name = next((b for b, p in fold.items() if p == layer.name), None)
            if bn_name is not None:
                bn_base = inner(model.get_layer(bn_name))
                bn = type(bn_base).from_config(bn_base.get_config())
                pending.append((bn, bn_base.get_weights()))
            quantized.append(base.name)
            return QuantizeWrapper(copy, batchnorm=bn, weight_bits=bits.weight_bits,
                                   activation_bits=bits.activation_bits,
                                   quantize_config=layer.quantize_config, name=f"quant_{base.name}")
        return copy

    cache: Dict[int, object] = {}

    def fused_after(name) -> bool:
        after = readers.get(id(by_name[name].output_tensors[0]), [])
        return len(after) == 1 and annotated(after[0]) and _is_fusable_activation(inner(after[0]))

    def quantize_input(a):
        history = getattr(a, "_keras_history", None)
        if history is None or not isinstance(history.operation, keras.layers.InputLayer):
            return a
        if id(a) not in cache:
            cache[id(a)] = FakeQuant(bits.activation_bits, name=f"quant_{history.operation.name}")(a)
        return cache[id(a)]

    def call_function(layer, *args, **kwargs):
        name = origin.get(id(layer), layer.name)
        node = by_name[name]
        if name in fold:  # the BatchNorm lives inside the layer before it
            return args[0]
        if annotated(node.operation):
            args = tuple(keras.tree.map_structure(quantize_input, a) for a in args)
        out = layer(*args, **kwargs)
        kind, target = kinds.get(name), name
        bn_name = next((b for b, p in fold.items() if p == name), None)
        if bn_name is not None:
            shared = fused_after(bn_name) or only_concatenated(by_name[bn_name])
            kind, target = (None if shared else "learned"), bn_name
        if kind == "learned":
            out = FakeQuant(bits.activation_bits, name=f"quant_out_{_short(target)}")(out)
        elif kind == "softmax":
            out = FakeQuant(8, fixed_range=(0.0, 255.0 / 256.0),
                            name=f"quant_out_{_short(target)}")(out)
        return out

    clone = _graph.clone_model(model, clone_function=clone_function,
                                     call_function=call_function)
    for new, weights in pending:
        new.set_weights(weights)
    for layer in clone.layers:
        if isinstance(layer, QuantizeWrapper):
            layer.preserve_zeros()
    clone.quantize_report = QuantizeReport(
        scheme, tuple(quantized), tuple((_short(p), _short(b)) for b, p in fold.items()),
        tuple(left), tuple(rewrites))
    return clone


def _short(name: str) -> str:
    return name[len("annotate_"):] if name.startswith("annotate_") else name


def quantize_model(to_quantize, scheme: str = "default_8bit"):
    """Annotates every layer and applies quantization (tfmot's name).

    Args:
        to_quantize: a Sequential or Functional Keras model (nested models are not
            supported; subclassed models must be rebuilt with the Functional API).
        scheme: ``"default_8bit"`` or ``"int16x8"``.

    Returns:
        The QAT model (a new Functional model with the weights copied).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown quantization scheme. Received: scheme={scheme!r}. "
                         f"Allowed: {', '.join(repr(s) for s in SCHEMES)}.")
    return quantize_apply(quantize_annotate_model(to_quantize), scheme=scheme)


def strip_quantization(model):
    """The float model a QAT model stands for: BatchNorm folded, no fake-quant.

    Each :class:`QuantizeWrapper` becomes its layer with the folded (unrounded)
    weights and a bias; :class:`FakeQuant` layers disappear. Useful to convert the
    trained weights in another mode (``convert(..., mode="int16x8")`` calibrates the
    stripped model) or to inspect them in float.
    """
    model = _graph.functional(model, purpose="stripping quantization")
    pending = []

    def clone_function(layer):
        if not isinstance(layer, QuantizeWrapper) or layer.quantize_config is not None:
            base = layer.layer if isinstance(layer, QuantizeWrapper) else layer
            new = type(base).from_config(base.get_config())
            if base.weights and not isinstance(base, FakeQuant):  # FakeQuant is dropped
                pending.append((new, base.get_weights()))
            return new
        config = layer.layer.get_config()
        config["use_bias"] = True
        new = type(layer.layer).from_config(config)
        kernel = layer.layer.kernel * layer.sparsity_mask
        bias = layer.layer.bias if layer.layer.use_bias else None
        if layer.batchnorm is not None:
            kernel, bias = layer._fold(None, kernel, bias, training=False)
        if bias is None:
            shape = tuple(kernel.shape)
            channels = shape[-2] * shape[-1] if isinstance(layer.layer, _DEPTHWISE) else shape[-1]
            bias = np.zeros(channels, "float32")
        pending.append((new, [np.asarray(kernel), np.asarray(bias)]))
        return new

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, FakeQuant):
            return args[0]
        return layer(*args, **kwargs)

    clone = _graph.clone_model(model, clone_function=clone_function, call_function=call_function)
    for new, weights in pending:
        new.set_weights(weights)
    return clone


def is_quantized(model) -> bool:
    """Whether ``model`` holds fake-quant layers (it then converts without calibration)."""
    return any(isinstance(layer, (FakeQuant, QuantizeWrapper))
               for layer in model._flatten_layers(include_self=False, recursive=True))


# ---------------------------------------------------------------------------
# Callbacks.
# ---------------------------------------------------------------------------


class _FreezeAfter(keras.callbacks.Callback):
    def __init__(self, after_steps: int):
        super().__init__()
        if not isinstance(after_steps, int) or after_steps < 0:
            raise ValueError(f"`after_steps` must be an int >= 0. Received: after_steps={after_steps!r}")
        self.after_steps = after_steps
        self._seen = 0

    def _variables(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def on_train_batch_begin(self, batch, logs=None):
        if self._seen == self.after_steps:
            for v in self._variables():
                v.assign(1.0)
        self._seen += 1


class FreezeBatchNormStatistics(_FreezeAfter):
    """After ``after_steps`` training steps, folded BatchNorms use their moving statistics."""

    def _variables(self):
        return [layer.bn_frozen for layer in self.model._flatten_layers(include_self=False)
                if isinstance(layer, QuantizeWrapper) and layer.batchnorm is not None]


class FreezeQuantizerRanges(_FreezeAfter):
    """After ``after_steps`` training steps, activation ranges stop moving."""

    def _variables(self):
        return [layer.frozen for layer in self.model._flatten_layers(include_self=False)
                if isinstance(layer, FakeQuant) and layer.fixed_range is None]


def _sample(values: np.ndarray, limit: int = 50_000) -> np.ndarray:
    """At most ``limit`` values of a batch, always including its extremes."""
    values = values.ravel()
    if values.size <= limit:
        return values.copy()
    keep = np.random.RandomState(values.size % 9973).choice(values.size, limit, replace=False)
    return np.concatenate([values[keep], [values.min(), values.max()]])
