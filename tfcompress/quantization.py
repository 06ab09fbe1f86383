"""Quantization-aware training on Keras 3, with tfmot's names.

The QAT model computes what the fully-int8 `.tflite` will compute:

* weights: Conv / DepthwiseConv per output channel, symmetric, narrow range
  ([-127, 127]); Dense per tensor (per-channel fake-quant on a Dense kernel makes
  the converter fail with "mismatched quantized axes");
* activations: asymmetric, with moving-average ranges (initialised from the first
  batch so that raw 0-255 inputs do not wait for an average to crawl there);
* BatchNorm that follows a Conv / DepthwiseConv / Dense is folded into it, so training
  sees the folded, quantized weights the converter will write; biases are rounded to
  TFLite's int32 grid (input scale x weight scale), read from the input's quantizer;
* no fake-quant between a layer and a ReLU / ReLU6 that TFLite fuses into it; Add
  and GlobalAveragePooling get their own output range; the inputs of a Concatenate
  share its output range (as TFLite requires); pooling, reshape, flatten, padding and
  dropout keep their input's range; softmax and sigmoid outputs have TFLite's fixed
  range (scale 1/256, zero point -128), tanh outputs scale 1/128;
* operator nodes (``x + 3.0``, ``x * y``, ``x[:, :8]``, ``keras.ops.mean(x, 1)``) are
  kept as they are, each quantized as TFLite runs it (see ``layer_kinds.OPERATIONS``);
* a BatchNorm after anything else, and a Rescaling or Normalization (an affine map of
  each channel, usually at the input), become a 1x1 ``DepthwiseConv2D`` (the BatchNorm
  folded into it), which TFLite runs as one int8 DEPTHWISE_CONV_2D;
* an ``AveragePooling2D`` that covers its whole input becomes
  ``GlobalAveragePooling2D(keepdims=True)`` (the same numbers), because XNNPACK runs
  int8 MEAN but not int8 AVERAGE_POOL_2D; the report says so;
* a LayerNormalization over the last axis becomes the ops ``tfcompress.convert`` writes
  for it (MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, each quantized) and a Rescaling by
  gamma and beta (a 1x1 DepthwiseConv2D);
* a plain MultiHeadAttention (3-D inputs, no masks) becomes Dense projections, Reshape,
  Permute, two BATCH_MATMULs and a softmax, each quantized on its own;
* an ELU, SELU, CELU, softplus, mish, log_sigmoid, softsign or tanh_shrink (a layer, an
  activation argument or a ``keras.ops`` call) becomes the ops ``tfcompress.convert``
  writes for it (RELU, SUB, EXP, ADD, LOG...); ``-x`` becomes ``x * -1``,
  ``keras.ops.square(x)`` ``x * x`` and ``keras.ops.split`` one slice per output;
* a UnitNormalization over the last axis becomes one L2_NORMALIZATION (output grid 1/128);
* a GroupNormalization over the channels becomes RESHAPE and TRANSPOSE to one row per
  group, the LayerNorm ops over each row, the way back and a Rescaling by gamma and beta;
* a PReLU becomes RELU, SUB, a Rescaling by alpha (a MUL when alpha is per position) and
  ADD, alpha kept as it is; a plain dot-product ``keras.layers.Attention`` becomes
  TRANSPOSE, BATCH_MATMUL, SOFTMAX, BATCH_MATMUL; an Average becomes ADDs and a MUL;
* a plain LSTM, GRU or SimpleRNN, or a Bidirectional of one (fixed length, no mask or
  state) is unrolled: a Dense input projection, a Dense recurrent projection shared by
  the steps (one range for all), the gates as slices, activations, MUL and ADD
  (``_graph.split_recurrent``).

What TFLite cannot run in int8 from a fake-quant graph (a masked LSTM, masked attention,
SpectralNormalization, RMS-scaled LayerNormalization...) is refused with one line that names
the layer, says why and what to do.

Which layer is which (weighted, BatchNorm, fusable activation, keeps its input's
range...) comes from :mod:`tfcompress.layer_kinds`. :func:`quantize_apply` first makes
a :class:`QuantizePlan` (:func:`plan_quantization`: plain data that says, per layer,
what is wrapped, folded, rewritten or left in float and which quantizer follows it),
then :func:`rebuild` carries it out.

The converter reads the fake-quant ranges, so a QAT model converts to int8 without
representative data: ``tfcompress.convert(qat_model)``. Post-training quantization
through the same graph lives in :mod:`tfcompress.post_training`; it measures ranges
with :func:`recording`.

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

import contextlib
import dataclasses
import warnings
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfcompress import _compat, _graph, default_8bit, layer_kinds, quantizers
# tfmot's protocol objects, under tfmot's names here too (tfcompress.quantizers).
from tfcompress.quantizers import (QuantizeConfig, QuantizeLayoutTransform, QuantizeRegistry,
                                   QuantizeScheme, QuantizeWrapperV2, fix_input_output_range,
                                   quantize_scope, remove_input_range)

__all__ = [
    "FakeQuant",
    "FreezeBatchNormStatistics",
    "FreezeQuantizerRanges",
    "LayerPlan",
    "QuantizeConfig",
    "QuantizeLayoutTransform",
    "QuantizePlan",
    "QuantizeRegistry",
    "QuantizeReport",
    "QuantizeScheme",
    "QuantizeWrapper",
    "QuantizeWrapperV2",
    "Recording",
    "SCHEMES",
    "fake_quant",
    "fake_quant_per_channel",
    "fix_input_output_range",
    "is_quantized",
    "plan_quantization",
    "quantize_annotate_layer",
    "quantize_annotate_model",
    "quantize_apply",
    "quantize_model",
    "quantize_report",
    "quantize_scope",
    "rebuild",
    "recording",
    "remove_input_range",
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

# The narrowest activation range a FakeQuant uses. A tensor that was 0 on every
# calibration or training sample (a dead ReLU) otherwise gets the range [0, 0], which
# the converter writes as a scale of 4e-9; XNNPACK then fails to prepare the next
# FULLY_CONNECTED (its requantization scale over 256) or, measured on a
# squeeze-excite block, frees memory twice and aborts the process. The values of
# such a tensor are exact on any grid that holds zero.
MIN_ACTIVATION_RANGE = 1e-3


@keras.saving.register_keras_serializable(package="tfcompress")
class FakeQuant(keras.layers.Layer):
    """Fake-quantizes activations over a range learned as a moving average.

    Args:
        num_bits: 8 (int8) or 16 (int16 activations; symmetric, as TFLite wants).
        decay: moving-average decay of the range.
        fixed_range: ``(min, max)`` to use instead of a learned range (softmax).
        notes: notes on the graph rewrites whose output this quantizer follows, kept
            in its config for :func:`quantize_report`.
        grid_point: a value that the int8 grid must contain exactly, besides zero
            (the scale is widened to ``|grid_point| / n``). The input quantizer of a
            Rescaling(1 / 127.5, -1) gets 127.5, so that the rescaled grid holds zero.
        follows: ``(scale, offset)``: instead of a range of its own, this quantizer
            uses the image under ``x * scale + offset`` of the range of the quantizer
            before the affine layer it follows (found in the graph), so that the
            affine map is exact in int8.
        **kwargs: Keras layer arguments.
    """

    def __init__(self, num_bits: int = 8, decay: float = 0.999, fixed_range=None,
                 notes=(), grid_point=None, follows=None, **kwargs):
        super().__init__(**kwargs)
        if num_bits not in (8, 16):
            raise ValueError(f"`num_bits` must be 8 or 16. Received: num_bits={num_bits!r}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"`decay` must be in (0, 1). Received: decay={decay!r}")
        self.num_bits = num_bits
        self.decay = decay
        self.fixed_range = tuple(fixed_range) if fixed_range is not None else None
        self.notes = tuple(notes or ())
        self.grid_point = float(grid_point) if grid_point else None
        self.follows = tuple(float(v) for v in follows) if follows is not None else None
        self._observed = None  # a list while recording
        # The quantizer whose range `follows` maps, found when called in a graph.
        object.__setattr__(self, "_source", None)

    def __call__(self, *args, **kwargs):
        if self.follows is not None and args and isinstance(args[0], keras.KerasTensor):
            object.__setattr__(self, "_source", _affine_source(args[0]))
        return super().__call__(*args, **kwargs)

    def _snapped(self, lo, hi):
        """``(lo, hi)`` at least :data:`MIN_ACTIVATION_RANGE` wide, and widened so that
        the grid holds ``grid_point`` (8 bits)."""
        hi = ops.maximum(hi, lo + MIN_ACTIVATION_RANGE)
        if self.grid_point is None or self.num_bits != 8:
            return lo, hi
        c = abs(self.grid_point)
        n = ops.maximum(ops.floor(c / ops.maximum((hi - lo) / 255.0, 1e-12)), 1.0)
        return lo, lo + 255.0 * c / n

    def _followed_range(self):
        """The image of the source's nudged int8 grid under ``follows``."""
        source = self._source
        lo, hi = source._snapped(source.min_value, source.max_value)
        step = ops.maximum((hi - lo) / 255.0, 1e-12)
        low = -ops.round(-lo / step) * step  # the nudged grid: zero on it
        high = low + 255.0 * step
        scale, offset = self.follows
        ends = (low * scale + offset, high * scale + offset)
        return (ends if scale > 0 else ends[::-1])

    def _follows(self) -> bool:
        source = self._source
        return (self.follows is not None and self.num_bits == 8 and source is not None
                and source.num_bits == 8 and source.fixed_range is None)

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
        lo, hi = self._snapped(lo, hi)
        if self.num_bits == 16:  # TFLite's int16 activations are symmetric
            m = ops.maximum(ops.abs(lo), ops.abs(hi))
            return fake_quant(x, -m, m, num_bits=16, narrow_range=True)
        return fake_quant(x, lo, hi, num_bits=8)

    def call(self, inputs, training=None):
        if self.fixed_range is not None:
            return self._quantize(inputs, *self.fixed_range)
        lo, hi = self.min_value, self.max_value
        if self._follows():
            lo, hi = self._followed_range()
            training = False  # nothing to learn
        if not training:
            if self._observed is not None and tf.executing_eagerly():
                self._observed.append(_sample(np.asarray(inputs)))
            # While `calibrate` measures ranges the network runs in float.
            return ops.where(ops.greater(self.calibrating, 0.5), inputs,
                             self._quantize(inputs, lo, hi))
        if training:
            # The range is a statistic, not a function to differentiate: without
            # stop_gradient the backward pass scatters into every argmin/argmax.
            # Over the finite values: int8 kernels saturate where float gives inf (the
            # RSQRT of a variance that rounds to 0), and so does the fake quantization.
            finite = ops.where(ops.isfinite(inputs), inputs, ops.zeros_like(inputs))
            batch_lo = ops.stop_gradient(ops.minimum(ops.min(finite), 0.0))
            batch_hi = ops.stop_gradient(ops.maximum(ops.max(finite), 0.0))
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

    def start_recording(self) -> None:
        """Keeps a sample of the inputs of every eager inference call, until stopped.

        Graph-mode calls (``model.predict``) are not recorded: call the model
        itself, ``model(x, training=False)``. :func:`recording` does this for every
        quantizer of a model.
        """
        self._observed = []

    def stop_recording(self) -> List[np.ndarray]:
        """Stops recording; returns one sample per recorded call (the extremes included)."""
        observed, self._observed = self._observed, None
        return list(observed) if observed is not None else []

    def set_range(self, min_value: float, max_value: float) -> None:
        """Sets the learned range, as calibration does; training continues from it."""
        self.min_value.assign(min_value)
        self.max_value.assign(max_value)
        self.initialized.assign(1.0)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_bits=self.num_bits, decay=self.decay,
                      fixed_range=list(self.fixed_range) if self.fixed_range else None,
                      notes=list(self.notes))
        if self.grid_point is not None:
            config["grid_point"] = self.grid_point
        if self.follows is not None:
            config["follows"] = list(self.follows)
        return config


# ---------------------------------------------------------------------------
# Weighted layers.
# ---------------------------------------------------------------------------

# Weight and activation rules of each layer class are in tfcompress.layer_kinds.
# Activations after which the wrapper needs no quantizer of its own (TFLite fuses them).
_NO_PRE_ACTIVATION = ("linear",) + layer_kinds.FUSABLE_ACTIVATIONS
# Output ranges fixed by TFLite's int8 kernels (scale 1/256, zero point -128; tanh 1/128,
# 0): the quantizer after these activations uses them, so the converter adds no QUANTIZE.
FIXED_RANGES = {"softmax": (0.0, 255.0 / 256.0), "sigmoid": (0.0, 255.0 / 256.0),
                "tanh": (-1.0, 127.0 / 128.0),
                "log_softmax": (-255.0 / 16.0, 0.0),  # scale 16/256, zero point 127
                "l2_normalize": (-1.0, 127.0 / 128.0)}  # L2_NORMALIZATION: 1/128, 0
# Activation functions that TF 2.21's converter writes as int8 ops from a fake-quant
# graph (measured: LOGISTIC, TANH, HARD_SWISH, LOGISTIC + MUL, GELU, LEAKY_RELU, EXP,
# LOG_SOFTMAX...). It keeps ELU in float and writes softplus on one grid for exp(x):
# those are split into other ops first (_SPLIT_ACTIVATIONS).
INT8_ACTIVATIONS = ("linear", "relu", "relu6", "leaky_relu", "hard_tanh", "softmax",
                    "sigmoid", "tanh", "hard_silu", "hard_swish", "silu", "swish", "gelu",
                    "hard_sigmoid", "log_softmax", "exponential", "l2_normalize")
# Written as other int8 ops before planning (_graph.split_activations: RELU, SUB, EXP...).
_SPLIT_ACTIVATIONS = _graph.SPLIT_ACTIVATIONS
# x * sigmoid(x): TFLite runs LOGISTIC, whose int8 output has its fixed range, then MUL.
_SIGMOID_TIMES = ("silu", "swish")
# relu6(x + 3) / 6: the converter keeps Keras' form in float; written as ADD (RELU6
# fused, range [0, 6]) then MUL by 1/6, TFLite runs it in int8 (as MobileNetV3's own).
_HARD_SIGMOID = ("hard_sigmoid",)
_RELU6_RANGE = (0.0, 6.0)


def _tflite_activation(name: str, y, quantize):
    """The activation ``name`` on ``y`` as TFLite runs it in int8, where that differs from
    Keras' float function; ``quantize(t, range, label)`` fake-quantizes an inner tensor.
    None when Keras' function is what TFLite runs."""
    if name in _SIGMOID_TIMES:
        return y * quantize(ops.sigmoid(y), FIXED_RANGES["sigmoid"], "sigmoid")
    if name in _HARD_SIGMOID:
        return quantize(ops.relu6(y + 3.0), _RELU6_RANGE, "relu6") * (1.0 / 6.0)
    return None


def _kernel_layout(layer) -> Optional[str]:
    return layer_kinds.kind_of(layer).kernel


def _deserialize(obj):
    """A Keras object from its config (as ``from_config`` receives it), else ``obj``.

    QuantizeConfig classes seen in this process are found without registration.
    """
    if not isinstance(obj, dict):
        return obj
    return keras.saving.deserialize_keras_object(obj, custom_objects=quantizers.seen_configs())


def _serialize(obj):
    return keras.saving.serialize_keras_object(obj) if obj is not None else None


# A bias far below any int32 bias step (input scale x weight scale, about 1e-6 and more):
# the file's bias is 0, but the converter sees one (see QuantizeWrapper.call).
_NO_BIAS = 1e-12


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
        notes: notes on the graph rewrites that made this layer (a SeparableConv2D
            split), kept in its config for :func:`quantize_report`.
        **kwargs: Keras layer arguments.
    """

    def __init__(self, layer, batchnorm=None, weight_bits: int = 8, activation_bits: int = 8,
                 quantize_config=None, notes=(), **kwargs):
        layer, batchnorm, quantize_config = map(_deserialize, (layer, batchnorm, quantize_config))
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(layer, **kwargs)
        if quantize_config is None and not layer_kinds.kind_of(layer).quantize_weights:
            raise _unsupported(layer, "?")
        self.batchnorm = batchnorm
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        # The user's config, or None for tfcompress's own folded, per-channel quantization
        # (then `quantize_config` describes that in tfmot's terms).
        self.user_quantize_config = quantize_config
        self.notes = tuple(notes or ())
        self.pre_activation = None
        if quantize_config is None and layer_kinds.activation_name(layer) not in _NO_PRE_ACTIVATION:
            self.pre_activation = FakeQuant(activation_bits, name="pre_activation")
        self._bias_shift = None  # a list while recording
        # The FakeQuant that sets the range of this layer's input, found when the layer
        # is called on a symbolic tensor (in a Functional graph, also after loading); a
        # plain attribute, not a tracked sublayer: the graph owns it.
        object.__setattr__(self, "_input_quantizer", None)

    @property
    def quantize_config(self) -> QuantizeConfig:
        """The QuantizeConfig this wrapper follows (tfmot's attribute; read-only).

        The config the layer was annotated with, as given; for a layer quantized by
        tfcompress itself, a :class:`~tfcompress.default_8bit.Default8BitQuantizeConfig`
        that says the same in tfmot's terms (the weight quantized, the activation it
        fuses). It describes the wrapper: changing it changes nothing.
        """
        if self.user_quantize_config is not None:
            return self.user_quantize_config
        return default_8bit.Default8BitQuantizeRegistry().get_quantize_config(self.layer)

    def __call__(self, *args, **kwargs):
        if args and isinstance(args[0], keras.KerasTensor):
            object.__setattr__(self, "_input_quantizer", _range_source(args[0]))
        return super().__call__(*args, **kwargs)

    def _round_bias(self, bias, kernel):
        """The bias on TFLite's int32 grid (scale: input scale x weight scale per channel),
        straight-through; unchanged when the input's quantizer is unknown."""
        source = self._input_quantizer
        if bias is None or source is None or source.num_bits != 8 or \
                source.fixed_range is not None:
            return bias
        input_scale = (source.max_value - source.min_value) / 255.0
        layout = _kernel_layout(self.layer)
        if layout in ("dense", "embedding"):
            weight_scale = symmetric_max(kernel, per_channel=False) / 127.0
        elif layout == "conv_transpose":
            weight_scale = symmetric_max(ops.swapaxes(kernel, -1, -2), per_channel=True) / 127.0
        else:
            k = kernel
            if layout == "depthwise":
                k = ops.reshape(k, tuple(k.shape[:-2]) + (1, k.shape[-2] * k.shape[-1]))
            weight_scale = symmetric_max(k, per_channel=True) / 127.0
        step = ops.stop_gradient(ops.maximum(input_scale * weight_scale, 1e-30))
        rounded = ops.round(bias / step) * step
        calibrating = ops.greater(source.calibrating, 0.5)  # float pass-through: exact bias
        return ops.where(calibrating, bias, bias + ops.stop_gradient(rounded - bias))

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
        if self.user_quantize_config is not None:
            return None
        if _kernel_layout(self.layer) == "embedding":
            return self.layer.embeddings
        return self.layer.kernel

    def preserve_zeros(self) -> None:
        """Keeps the current zeros of the kernel at zero during training (pruned models)."""
        if self.sparsity_mask is not None:
            self.sparsity_mask.assign(ops.cast(ops.not_equal(self._kernel_variable(), 0.0),
                                               "float32"))

    def start_recording_bias_shift(self) -> None:
        """Records, on every eager call, how far weight rounding moves each output channel.

        The shift is the mean over the batch and positions of (output with rounded
        weights) - (output with exact weights); :func:`tfcompress.post_training.correct_bias`
        subtracts it from the bias. :func:`recording` drives this for a whole model.
        """
        self._bias_shift = []

    def stop_recording_bias_shift(self) -> List[np.ndarray]:
        """Stops recording; returns one per-channel shift per recorded call."""
        shifts, self._bias_shift = self._bias_shift, None
        return list(shifts) if shifts is not None else []

    def _one_d(self) -> bool:
        return _kernel_layout(self.layer) in ("conv", "depthwise", "conv_transpose") and \
            self.layer.rank == 1

    def _op(self, x, kernel):
        layer = self.layer
        layout = _kernel_layout(layer)
        if layout == "dense":
            return ops.matmul(x, kernel)
        if layout == "embedding":  # GATHER: the output keeps the table's range
            return ops.take(kernel, ops.cast(x, "int32"), axis=0)
        if self._one_d():
            # A 1-D convolution as the 2-D one TFLite runs (on a (1, k, in, out) kernel):
            # the kernel is reshaped before its fake-quant, never after, because a
            # per-channel int8 RESHAPE has no TFLite kernel.
            if len(kernel.shape) == 3:
                kernel = ops.expand_dims(kernel, 0)
            if layout == "conv_transpose":
                output_padding = (None if layer.output_padding is None
                                  else (0, layer.output_padding[0]))
                y = ops.conv_transpose(ops.expand_dims(x, 1), kernel,
                                       strides=(1, layer.strides[0]), padding=layer.padding,
                                       output_padding=output_padding,
                                       dilation_rate=(1, layer.dilation_rate[0]))
                return ops.squeeze(y, 1)
            padding = layer.padding
            if padding == "causal":
                left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
                x = ops.pad(x, [[0, 0], [left, 0], [0, 0]])
                padding = "valid"
            conv = ops.depthwise_conv if layout == "depthwise" else ops.conv
            y = conv(ops.expand_dims(x, 1), kernel, strides=(1, layer.strides[0]),
                     padding=padding, dilation_rate=(1, layer.dilation_rate[0]))
            return ops.squeeze(y, 1)
        if layout == "depthwise":
            return ops.depthwise_conv(x, kernel, strides=layer.strides, padding=layer.padding,
                                      dilation_rate=layer.dilation_rate,
                                      data_format=layer.data_format)
        if layout == "conv_transpose":
            return ops.conv_transpose(x, kernel, strides=list(layer.strides),
                                      padding=layer.padding, output_padding=layer.output_padding,
                                      dilation_rate=layer.dilation_rate,
                                      data_format=layer.data_format)
        return layer.convolution_op(x, kernel)

    def _quantize_kernel(self, kernel):
        bits = self.weight_bits
        layout = _kernel_layout(self.layer)
        if self._one_d():
            kernel = ops.expand_dims(kernel, 0)  # see _op
        if layout in ("dense", "embedding"):
            m = symmetric_max(kernel, per_channel=False)
            return fake_quant(kernel, -m, m, num_bits=bits, narrow_range=True)
        shape = kernel.shape
        if layout == "conv_transpose":  # (..., out, in): per output channel, axis -2
            # Rounded to the grid the converter quantizes it on (symmetric, per output
            # channel); a fake-quant op would have to run on the swapped axes, and the
            # converter cannot fold a per-channel int8 TRANSPOSE.
            m = ops.reshape(symmetric_max(ops.swapaxes(kernel, -1, -2), per_channel=True),
                            (-1, 1))
            step = m / (2 ** (bits - 1) - 1)
            rounded = ops.round(kernel / ops.stop_gradient(step)) * ops.stop_gradient(step)
            return kernel + ops.stop_gradient(rounded - kernel)  # straight-through
        if layout == "depthwise":  # TFLite's channels are in * multiplier
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
        if _kernel_layout(self.layer) == "depthwise":
            folded = kernel * ops.reshape(scale, tuple(kernel.shape[-2:]))
        elif _kernel_layout(self.layer) == "conv_transpose":
            folded = kernel * ops.reshape(scale, (-1, 1))
        else:
            folded = kernel * scale
        new_bias = beta + ((0.0 if bias is None else bias) - mean) * scale
        return folded, new_bias

    def call(self, inputs, training=None):
        if self.user_quantize_config is not None:
            for w in self.user_quantize_config.get_weights_to_quantize(self.layer):
                m = symmetric_max(w, per_channel=False)
                # Custom layers read their own variables: quantize them in place.
                w.assign(fake_quant(w, -m, m, num_bits=self.weight_bits, narrow_range=True))
            return self.layer(inputs, training=training)
        layer = self.layer
        kernel = self._kernel_variable() * self.sparsity_mask
        bias = layer.bias if getattr(layer, "use_bias", False) else None
        if self.batchnorm is not None:
            kernel, bias = self._fold(inputs, kernel, bias, training)
        y = self._op(inputs, self._quantize_kernel(kernel))
        if bias is not None:
            y = y + self._round_bias(bias, kernel)
        if _kernel_layout(layer) == "conv_transpose":
            # A bias of zeros (or none) makes TFLite's converter leave TRANSPOSE_CONV and
            # its activation in float (measured: a freshly built Conv2DTranspose, PTQ); a
            # bias of _NO_BIAS (0 on the int32 bias grid) keeps the op int8.
            y = y + ops.full((y.shape[-1],), _NO_BIAS, dtype=y.dtype)
        if self._bias_shift is not None and tf.executing_eagerly() and bias is not None:
            # correct_bias(): how far weight rounding moves each output channel.
            exact = self._op(inputs, kernel) + (0.0 if bias is None else bias)
            axes = tuple(range(len(y.shape) - 1))
            self._bias_shift.append(np.asarray(ops.mean(y - exact, axis=axes)))
        if self.pre_activation is not None:
            y = self.pre_activation(y, training=training)
        inner = _tflite_activation(layer_kinds.activation_name(layer), y,
                                   lambda t, fixed, label: fake_quant(t, *fixed))
        if inner is not None:
            return inner
        activation = getattr(layer, "activation", None)
        return activation(y) if activation is not None else y

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, *args, **kwargs):
        if self.user_quantize_config is None:
            return super().compute_output_spec(*args, **kwargs)
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(batchnorm=_serialize(self.batchnorm), weight_bits=self.weight_bits,
                      activation_bits=self.activation_bits,
                      quantize_config=_serialize(self.user_quantize_config), notes=list(self.notes))
        return config


# ---------------------------------------------------------------------------
# Annotation.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tfcompress")
class QuantizeAnnotate(keras.layers.Wrapper):
    """Marks a layer for :func:`quantize_apply`; computes exactly what the layer does."""

    def __init__(self, layer, quantize_config=None, **kwargs):
        layer, quantize_config = map(_deserialize, (layer, quantize_config))
        if quantize_config is not None and not isinstance(quantize_config, QuantizeConfig):
            raise ValueError("`quantize_config` must be a QuantizeConfig instance. "
                             f"Received: quantize_config={quantize_config!r}")
        kwargs.setdefault("name", f"annotate_{layer.name}")
        if _compat.input_shape_argument(layer) is not None:  # stays a Sequential's first layer
            kwargs.setdefault("input_shape", _compat.input_shape_argument(layer))
        super().__init__(layer, **kwargs)
        quantizers.remember_config(quantize_config)
        self.quantize_config = quantize_config
        # Masks pass as the layer passes them (an Embedding(mask_zero=True) before an LSTM).
        self.supports_masking = bool(getattr(layer, "supports_masking", False))

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def build(self, input_shape, *args, **kwargs):
        if not self.layer.built and not args and not kwargs and not isinstance(
                self.layer, keras.layers.MultiHeadAttention):
            self.layer.build(input_shape)
        # A layer of several inputs (MultiHeadAttention: query, value, key) builds itself
        # when call() first calls it with all of them.
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        if not self.layer.built and isinstance(self.layer, keras.layers.MultiHeadAttention):
            value = args[1] if len(args) > 1 else kwargs.get("value")
            key = args[2] if len(args) > 2 else kwargs.get("key")
            self.layer.build(args[0].shape, value.shape, None if key is None else key.shape)
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

    Raises:
        ValueError: ``to_annotate`` is not a layer (a model too, as in tfmot), a
            ``quantize_config`` that is not a :class:`QuantizeConfig`, or a layer this
            module cannot quantize (without a QuantizeConfig).
    """
    if not isinstance(to_annotate, keras.layers.Layer) or isinstance(to_annotate, keras.Model):
        raise ValueError("`to_annotate` must be a Keras layer (use quantize_annotate_model for "
                         f"a model). Received: {type(to_annotate).__name__}")
    if quantize_config is None:
        why = _refusal(to_annotate)
        if why is not None:
            raise _unsupported(to_annotate, "?", *why)
    return QuantizeAnnotate(to_annotate, quantize_config)


def quantize_annotate_model(to_annotate):
    """Marks every layer of a Sequential / Functional model (tfmot's name).

    Operator nodes (``x + y``, ``x[:, :8]``, ``keras.ops.mean(x, 1)``) are no layers
    and carry no annotation: they are kept as they are, and :func:`quantize_apply`
    quantizes those that read quantized tensors.

    Raises:
        ValueError: a subclassed model, or a layer this module cannot quantize (named,
            with why and what to do).
    """
    model = _graph.functional(to_annotate, purpose="quantization", inline=True)
    for position, node in enumerate(_compat.graph_nodes(model)):
        layer = node.operation
        if (isinstance(layer, keras.layers.InputLayer) or _compat.is_operation(layer)
                or (_annotated(layer) and layer.quantize_config is not None)):
            continue
        why = _refusal(_inner(layer), node)
        if why is not None:
            raise _unsupported(_inner(layer), position, *why)

    def clone_function(layer):
        if _compat.is_operation(layer):
            return layer  # stateless: the same op, called on the new tensors
        if _annotated(layer):  # the config object itself: no Keras registration needed
            inner = type(layer.layer).from_config(layer.layer.get_config())
            pending.append((inner, layer.layer.get_weights()))
            return QuantizeAnnotate(inner, layer.quantize_config, name=layer.name)
        if isinstance(layer, keras.layers.Lambda):  # tfmot skips these too, with a warning
            warnings.warn(f"Layer {layer.name!r} is a Lambda layer, whose function cannot be "
                          "inspected: it is not annotated and stays in float (as in tfmot).",
                          stacklevel=3)
            return layer  # stateless and not serializable in safe mode: the same layer
        new = _compat.layer_from_config(layer)
        pending.append((new, layer.get_weights()))
        return QuantizeAnnotate(new)

    pending: list = []
    # A flat, built Sequential stays a Sequential of annotated layers, as in tfmot.
    flat = (isinstance(to_annotate, keras.Sequential) and to_annotate.built
            and not any(_compat.is_graph_model(layer) for layer in to_annotate.layers))
    clone = _graph.clone_model(to_annotate if flat else model, clone_function=clone_function)
    for new, weights in pending:
        if weights:
            new.set_weights(weights)
    return clone


# ---------------------------------------------------------------------------
# The transform: a plan (plain data), then a rebuild that carries it out.
# ---------------------------------------------------------------------------


def _supported_layers() -> Tuple[str, ...]:
    """What quantization knows, from the layer table (plus what it rewrites), in short."""
    weighted = layer_kinds.registered(lambda kind: kind.quantize_weights)
    affine = layer_kinds.registered(lambda kind: kind.normalization or kind.affine)
    separable = ("SeparableConv1D", "SeparableConv2D", "LayerNormalization",
                 "RMSNormalization", "MultiHeadAttention", "Attention", "PReLU", "LSTM", "GRU",
                 "SimpleRNN", "Bidirectional")
    return tuple(cls.__name__ for cls in weighted) + separable + tuple(
        cls.__name__ for cls in affine) + (
        "the weightless layers of tfcompress.layer_kinds (activations, pooling, padding, "
        "reshapes, merges)", "operator nodes (x + y, x * 0.5, x[:, :8], keras.ops.mean...)",
        "any layer given a QuantizeConfig")


_FLOAT_INSTEAD = ("convert the float model with tfcompress.convert(model, "
                  "representative_data=...) (post-training int8) instead, or keep it in "
                  "float: annotate the other layers with quantize_annotate_layer, "
                  "quantize_apply, and convert with float_fallback=True")
# Why quantization-aware training cannot model a layer class, and what to do instead.
_CANNOT = {
    **{name: "a Keras 3 recurrent loop has no fake-quant form that TFLite's int8 kernels "
             f"run (a plain LSTM, GRU or SimpleRNN, or a Bidirectional of one, is unrolled "
             f"into them); {_FLOAT_INSTEAD}"
       for name in ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D",
                    "ConvLSTM2D", "ConvLSTM3D")},
    **{name: "the converter writes attention as BATCH_MATMUL, SOFTMAX and FULLY_CONNECTED "
             "ops whose ranges this QAT does not model yet (a plain MultiHeadAttention "
             "is split into them); " + _FLOAT_INSTEAD
       for name in ("GroupQueryAttention",)},
    "EinsumDense": "only an EinsumDense that is a matrix product is written as the Dense it "
                   "computes (FULLY_CONNECTED); " + _FLOAT_INSTEAD,
    **{name: f"only a plain keras.layers.{name} (3-D inputs, no masks) is split into the "
             "int8 ops TFLite runs; " + _FLOAT_INSTEAD
       for name in ("Attention", "AdditiveAttention")},
    "MultiHeadAttention": "only a plain MultiHeadAttention (3-D query, value and key, no "
                          "masks, gate or sliding window) is split into the int8 ops "
                          "TFLite runs; " + _FLOAT_INSTEAD,
    "SpectralNormalization": "a wrapper that divides its layer's kernel by a spectral norm "
                             "it re-estimates at every training call; QAT fake-quantizes the "
                             "kernels of plain layers: after training, give the inner layer "
                             "its normalized kernel and quantize that model, or "
                             + _FLOAT_INSTEAD,
    **{name: "its weights are not fake-quantized by this QAT yet; " + _FLOAT_INSTEAD
       for name in ("Conv3DTranspose", "Conv3D")},
    # Measured with convert(): Hashing -> StringToHashBucketFast, the lookups -> hash
    # tables, a multi-hot CategoryEncoding -> DenseBincount have no TFLite kernel at all;
    # a one-hot CategoryEncoding and Discretization become float CAST, ONE_HOT, BUCKETIZE.
    **{name: "a preprocessing layer that TFLite runs in float or not at all; apply it in the "
             "input pipeline (tf.data) and give the model its output (an Embedding of ids, or "
             "float features, is quantized)"
       for name in ("Hashing", "HashedCrossing", "IntegerLookup", "StringLookup",
                    "TextVectorization", "CategoryEncoding", "Discretization")},
}


def _unsupported(layer, position, why: str = "", todo: str = "") -> ValueError:
    """The one-line refusal: the layer, its class and position, why, and what to do."""
    cannot = _CANNOT.get(type(layer).__name__)
    todo = todo or (f"{type(layer).__name__}: {cannot}." if cannot else "")
    operation = _compat.is_operation(layer)
    tail = ("An operator node is quantized when it reads a quantized tensor: leave the "
            "layers before it unannotated to keep it in float." if operation else
            "Give it a QuantizeConfig with quantize_annotate_layer(layer, quantize_config=...), "
            "or leave it unannotated to keep it in float.")
    return ValueError(
        f"{'Operator node' if operation else 'Layer'} {layer.name!r} (class "
        f"{type(layer).__name__}, position {position}) cannot be quantized{why}. Supported: "
        f"{', '.join(_supported_layers())}. " + (todo + " " if todo else "") + tail)


def _activation_refusal(layer) -> Optional[Tuple[str, str]]:
    """Why an activation TFLite keeps in float is refused (``(why, todo)``), else None."""
    name = layer_kinds.activation_name(layer)
    if name.startswith("relu(") and float(getattr(layer, "threshold", 0.0) or 0.0) != 0.0:
        return (f" (activation {name!r}: with a threshold the TFLite converter writes a "
                "float comparison, SELECT and SUB)",
                "Use threshold=0 (negative_slope and max_value run in int8).")
    if name in INT8_ACTIVATIONS + _SPLIT_ACTIVATIONS or name.startswith("relu("):
        return None  # ReLU variants: MIN / MAX
    why = (f" (activation {name!r}: the TFLite converter keeps it in float in an int8 "
           "model)")
    todo = ("Activations TFLite runs in int8: "
            f"{', '.join(INT8_ACTIVATIONS + _SPLIT_ACTIVATIONS)}; use one of them"
            + (", or write hard_sigmoid as keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0), "
               "which is quantized op by op" if name == "hard_sigmoid" else "")
            + ".")
    return why, todo


def _channels(node) -> Optional[int]:
    shape = node.input_tensors[0].shape if node is not None and node.input_tensors else None
    return shape[-1] if shape else None


def _refusal(layer, node=None) -> Optional[Tuple[str, str]]:
    """``(why, todo)`` when ``layer`` (not annotated with a QuantizeConfig) cannot be
    quantized, else None. ``node`` is its graph node, when known (shapes)."""
    kind = layer_kinds.kind_of(layer)
    if type(layer) is keras.layers.MultiHeadAttention and node is not None:
        why = _graph.attention_refusal(layer, node)
        return None if why is None else (f" ({why})", "")
    if type(layer) in _graph.ATTENTION_LAYERS and node is not None:
        why = _graph.dot_attention_refusal(layer, node)
        return None if why is None else (f" ({why})", "")
    if type(layer) is keras.layers.EinsumDense:  # a Dense (_graph.split_einsum_dense)
        why = _graph.einsum_dense_refusal(layer, node)
        return None if why is None else (f" ({why})", "")
    if type(layer) in (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN,
                       keras.layers.Bidirectional):  # unrolled (_graph.split_recurrent)
        why = _graph.recurrent_refusal(layer, node)
        return None if why is None else (f" ({why})", "")
    if node is not None and _compat.node_arguments(node)[1].get("mask") is not None and \
            _graph.masked_mean_refusal(layer, node) is not None:
        return (" (called with a mask, from an Embedding(mask_zero=True) or a Masking layer "
                f"before it: {_graph.masked_mean_refusal(layer, node)} has no int8 form here; "
                "masks are written as int8 ops for LSTM, GRU, SimpleRNN and "
                "GlobalAveragePooling1D layers only)",
                "Build the Embedding with mask_zero=False (or drop the Masking layer) and "
                "let the model learn the padding, or keep this layer in float.")
    if type(layer).__name__ in _CANNOT and not kind.quantize_weights:
        return "", ""
    if kind.kernel == "separable":  # split into the two halves TFLite runs
        if type(layer) not in (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D) \
                or layer.data_format != "channels_last":
            return (" (only a channels_last SeparableConv1D / SeparableConv2D is split and "
                    "quantized)"), ""
        return _activation_refusal(layer)
    if kind.kernel in ("conv", "depthwise") and getattr(layer, "data_format",
                                                        "channels_last") != "channels_last":
        return (f" (data_format={layer.data_format!r}: TFLite runs channels_last "
                "convolutions)", "")
    if kind.activation is not None or (kind.quantize_weights and hasattr(layer, "activation")):
        why = _activation_refusal(layer)
        if why is not None:
            return why
    if kind.normalization and node is not None:
        rank = len(node.input_tensors[0].shape)
        if layer.axis not in (-1, rank - 1):
            return (f" (a BatchNormalization over axis {layer.axis}, not the channels of its "
                    f"{rank}-D input)", "")
    if isinstance(layer, keras.layers.PReLU):
        return None  # split into RELU, SUB, a Rescaling and ADD (_graph.split_prelus)
    if isinstance(layer, keras.layers.TimeDistributed):
        why = _graph.time_distributed_refusal(layer, node)
        return None if why is None else (f" ({why})", "")
    if type(layer) is keras.layers.UnitNormalization:
        rank = len(node.input_tensors[0].shape) if node is not None else 2
        why = _graph.unit_normalization_refusal(layer, rank)
        return None if why is None else (f" ({why})", "")
    if type(layer) is keras.layers.GroupNormalization:
        rank = len(node.input_tensors[0].shape) if node is not None else 4
        why = _graph.groupnorm_refusal(layer, rank)
        return None if why is None else (f" ({why})", "")
    if type(layer) is keras.layers.LayerNormalization or \
            type(layer).__name__ == "RMSNormalization":
        rank = len(node.input_tensors[0].shape) if node is not None else 3
        if _graph.splittable_layernorm(layer, rank):
            return None
        return (" (only a LayerNormalization over the last axis of a 2-D to 4-D input, "
                "without rms_scaling, is written as int8 ops)", "")
    if isinstance(layer, keras.layers.Resizing) and (
            layer.interpolation not in ("nearest", "bilinear") or layer.crop_to_aspect_ratio
            or layer.pad_to_aspect_ratio):
        return (" (TFLite runs int8 RESIZE_NEAREST_NEIGHBOR and RESIZE_BILINEAR only: "
                f"interpolation={layer.interpolation!r}, no cropping or padding to an aspect "
                "ratio)", "")
    if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation not in (
            "nearest", "bilinear"):
        return (" (TFLite runs int8 RESIZE_NEAREST_NEIGHBOR and RESIZE_BILINEAR only: "
                f"interpolation={layer.interpolation!r})", "")
    if (kind.normalization or kind.affine) and node is not None:
        rank = len(node.input_tensors[0].shape)
        if rank not in (2, 3, 4) or _channels(node) is None:
            return (f" (a per-channel affine map of a {rank}-D input: quantization runs it "
                    "as a 1x1 DepthwiseConv2D, on 2-D to 4-D inputs with known channels)", "")
        if kind.affine:
            params = _affine_parameters(layer, _channels(node))
            if isinstance(params, str):
                return f" ({params})", ""
    if layer.weights and not (kind.quantize_weights or kind.normalization or kind.affine):
        return "", ""
    return None


# Operator nodes refused for a measured reason (the others: not known to run).
_FLOAT_IN_TFLITE = ("the TFLite converter keeps it in float in an int8 file (no int8 kernel "
                    "for it)")
_UNQUANTIZED_OPERATIONS = {
    "Prod": ("TFLite's int8 REDUCE_PROD requantizes after every product: 3 output steps "
             "from the fake-quant model, measured"),
    **{name: _FLOAT_IN_TFLITE for name in ("Erf", "Sign", "Round", "Floor", "Ceil", "Sin", "Cos",
                                            "Cumsum", "Cumprod", "Erfinv")},
    # Split into int8 ops by _graph.split_operator_forms where their arguments allow.
    "Var": "a variance is written as int8 ops over known axes past the batch only",
    "Std": "a standard deviation is written as int8 ops over known axes past the batch only",
    "Logsumexp": "a logsumexp is written as int8 ops over known axes past the batch only",
    "Norm": ("a norm is written as int8 ops for a 2-norm or Frobenius norm over known axes "
             "past the batch only"),
    "Normalize": "keras.ops.normalize runs in int8 as an L2 normalization of the last axis only",
}


def _operation_refusal(node) -> Optional[Tuple[str, str]]:
    """``(why, todo)`` when an operator node cannot be quantized, else None."""
    op = node.operation
    kind = layer_kinds.kind_of(op)
    known = ", ".join(layer_kinds.OPERATIONS)
    name = type(op).__name__
    if name in ("Split", "Unstack"):  # the others are slices by now
        return (f" (a {name.lower()} along axis {op.axis} of a tensor of shape "
                f"{tuple(node.input_tensors[0].shape)}: only a split along a known axis past "
                "the batch is written as slices)", "")
    if kind == layer_kinds.UNKNOWN and name in _UNQUANTIZED_OPERATIONS:
        arguments = {a: getattr(op, a) for a in ("axis", "ord", "order") if hasattr(op, a)}
        received = ", ".join(f"{a}={v!r}" for a, v in arguments.items())
        return (f" ({_UNQUANTIZED_OPERATIONS[name]}"
                + (f"; received {received} on a tensor of shape "
                   f"{tuple(node.input_tensors[0].shape)}" if received else "") + ")", "")
    if kind == layer_kinds.UNKNOWN:
        return (" (an operator node TFLite's int8 kernels are not known to run from a "
                "fake-quant graph)",
                f"Operator nodes quantized: {known}; compute it with those or with layers, "
                "or register its class with tfcompress.layer_kinds.register().")
    if kind.activation is not None:
        why = _activation_refusal(op)
        if why is not None:
            return why
    if len(node.output_tensors) != 1:
        return f" (an operator node with {len(node.output_tensors)} outputs)", ""
    if type(op).__name__ == "Pad":
        args, kwargs = _compat.node_arguments(node)
        fill = kwargs.get("constant_values", args[1] if len(args) > 1 else None)
        if op.mode not in ("constant", "reflect", "symmetric"):
            return (f" (a pad with mode={op.mode!r}: TFLite pads in int8 with constants or "
                    "mirrored values)", "")
        if op.mode == "constant" and fill not in (None, 0, 0.0):
            return (f" (a pad with constant_values={fill!r}: its int8 form pads with the "
                    "input's zero point, 0.0)", "")
    return None


def _affine_parameters(layer, channels: int):
    """``(scale, offset)`` per channel of a Rescaling / Normalization / ConvNeXt LayerScale,
    or why not (a str)."""
    def per_channel(value, what):
        v = np.asarray(value, "float32")
        if v.size == 1:
            return np.full((channels,), float(v.reshape(())), "float32")
        if v.shape[-1] == channels and v.size == channels:
            return v.reshape(channels)
        return (f"its {what} of shape {v.shape} is not one value per channel of the last "
                f"axis ({channels})")

    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = per_channel(layer.scale, "scale"), per_channel(layer.offset, "offset")
    elif isinstance(layer, keras.layers.Normalization):
        if layer.mean is None:
            return "a Normalization that was neither adapted nor given its mean and variance"
        mean = per_channel(keras.ops.convert_to_numpy(layer.mean), "mean")
        variance = per_channel(keras.ops.convert_to_numpy(layer.variance), "variance")
        if isinstance(mean, str) or isinstance(variance, str):
            return mean if isinstance(mean, str) else variance
        std = np.maximum(np.sqrt(variance), keras.backend.epsilon())
        scale, offset = (std, mean) if layer.invert else (1.0 / std, -mean / std)
    elif type(layer) is _compat.application_layers().get("LayerScale"):
        scale = per_channel(keras.ops.convert_to_numpy(layer.gamma), "gamma")
        offset = np.zeros((channels,), "float32")
    else:
        return f"no affine parameters known for class {type(layer).__name__}"
    for value in (scale, offset):
        if isinstance(value, str):
            return value
    return scale.astype("float32"), offset.astype("float32")


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


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What :func:`rebuild` does with one layer of the annotated graph.

    Attributes:
        name: the layer's name in the annotated model (``"annotate_conv2d"``), or a
            model input's name.
        layer: the name of the layer inside the annotation (``"conv2d"``).
        class_name: that layer's class.
        action: ``"input"`` (a model input), ``"wrap"`` (a :class:`QuantizeWrapper`
            runs it on fake-quantized weights), ``"fold"`` (a BatchNorm folded into
            ``folded_into``), ``"global_pool"`` (an AveragePooling2D over its whole
            input, rebuilt as ``GlobalAveragePooling2D(keepdims=True)``), ``"affine"``
            (a BatchNorm that follows no foldable layer, or a Rescaling /
            Normalization: a :class:`QuantizeWrapper` runs it as a 1x1
            ``DepthwiseConv2D``, a BatchNorm folded in), ``"copy"`` (annotated, without
            weights: copied as it is), ``"operation"`` (an operator node such as
            ``x + 3.0`` or ``x[:, :8]`` that reads quantized tensors: the same op) or
            ``"float"`` (not annotated: copied and left in float).
        new_name: its name in the QAT model (None for a folded BatchNorm).
        output: where the quantization range of its output comes from:
            ``"learned"`` (a FakeQuant with a moving-average range follows it),
            ``"softmax"``, ``"sigmoid"``, ``"tanh"`` (a FakeQuant with the fixed range
            TFLite's int8 kernel writes: :data:`FIXED_RANGES`),
            ``"input_range"`` (none follows: it keeps its input's range),
            ``"input_image"`` (a Rescaling / Normalization of a model input with one
            scale and offset for all channels: a FakeQuant whose range is the image of
            the input's range, so that int8 computes it exactly),
            ``"input_grid"`` (it keeps its input's range, and its outputs, averages
            of its inputs, are rounded to that range again, as TFLite's
            AVERAGE_POOL_2D and RESIZE_BILINEAR do: its input's quantizer runs again),
            ``"fused_activation"`` (none: the ReLU / ReLU6 after it, which TFLite fuses
            into it, is quantized instead), ``"concat_output"`` (none: the
            Concatenate it feeds is quantized, and its inputs share that range),
            ``"quantize_config"`` (none: its QuantizeConfig says so), ``"folded"`` (a
            folded BatchNorm: its quantizer, if any, follows the layer it is folded
            into) or ``"float"`` (not quantized).
        quantizer: the name of the FakeQuant that follows it, if any.
        batchnorm: for ``"wrap"``: the BatchNorm folded into it, if any; for
            ``"affine"``: the layer's own name when it is a BatchNorm.
        folded_into: for ``"fold"``: the layer it is folded into.
        has_weights: whether the layer has weights.
        notes: notes on rewrites that its QAT layers record in their configs (its
            wrapper's, else its quantizer's), so that :func:`quantize_report` finds
            them in a reloaded model.
    """

    name: str
    layer: str
    class_name: str
    action: str
    new_name: Optional[str]
    output: str
    quantizer: Optional[str] = None
    batchnorm: Optional[str] = None
    folded_into: Optional[str] = None
    has_weights: bool = False
    notes: Tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: what happens to the layer and what follows it."""
        what = {"input": "input", "float": "left in float", "copy": "copied",
                "operation": "operator node, kept",
                "fold": f"folded into {_short(self.folded_into or '')}",
                "global_pool": f"-> GlobalAveragePooling2D(keepdims=True) {self.new_name}",
                "affine": f"-> QuantizeWrapper {self.new_name} (1x1 DepthwiseConv2D)",
                "wrap": f"-> QuantizeWrapper {self.new_name}"}[self.action]
        if self.batchnorm and self.action == "wrap":
            what += f" (BatchNorm {_short(self.batchnorm)} folded in)"
        after = f"FakeQuant {self.quantizer} ({self.output})" if self.quantizer else {
            "input_range": "no quantizer: keeps its input's range",
            "input_grid": "no quantizer of its own: rounded to its input's range again",
            "fused_activation": "no quantizer: the fused activation after it has it",
            "concat_output": "no quantizer: shares the Concatenate's output range",
            "quantize_config": "no quantizer: its QuantizeConfig says so",
        }.get(self.output, "")
        return f"{self.layer} ({self.class_name}): {what}" + (f"; {after}" if after else "")


@dataclasses.dataclass(frozen=True)
class QuantizePlan:
    """What :func:`quantize_apply` does to an annotated model, as plain data.

    Made by :func:`plan_quantization`, carried out by :func:`rebuild`. Printable
    (:meth:`summary`) and serializable (:meth:`to_dict` / :meth:`from_dict`).

    Attributes:
        scheme: the quantization scheme (a key of :data:`SCHEMES`).
        layers: one :class:`LayerPlan` per layer of the annotated graph (after any
            SeparableConv2D split), inputs first, in graph order.
        rewrites: notes on the graph rewrites (SeparableConv2D splits, then
            whole-input average pools), as :class:`QuantizeReport` lists them.
    """

    scheme: str
    layers: Tuple[LayerPlan, ...]
    rewrites: Tuple[str, ...] = ()

    def layer(self, name: str) -> LayerPlan:
        """The plan of a layer, by its name inside or outside its annotation."""
        for step in self.layers:
            if name in (step.name, step.layer):
                return step
        raise KeyError(f"No layer named {name!r} in the plan. "
                       f"Layers: {[step.layer for step in self.layers]}")

    def report(self) -> QuantizeReport:
        """The :class:`QuantizeReport` the rebuilt model will carry."""
        wraps = [step for step in self.layers if step.action in ("wrap", "affine")]
        return QuantizeReport(
            self.scheme, tuple(step.layer for step in wraps),
            tuple((_short(step.name), _short(step.batchnorm)) for step in wraps
                  if step.batchnorm and step.action == "wrap"),
            tuple(step.name for step in self.layers
                  if step.action == "float" and step.has_weights),
            self.rewrites)

    def summary(self) -> str:
        """A header line, one line per layer (:meth:`LayerPlan.describe`), the rewrites."""
        report = self.report()
        bits = SCHEMES[self.scheme]
        lines = [f"scheme {self.scheme} ({bits.weight_bits}-bit weights, "
                 f"{bits.activation_bits}-bit activations): {len(report.quantized)} layers "
                 f"quantized, {len(report.folded_batchnorms)} BatchNorms folded, "
                 f"{len(report.left_in_float)} weighted layers left in float"]
        lines += ["  " + step.describe() for step in self.layers]
        lines += [f"rewrote {note}" for note in self.rewrites]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain lists, strings and numbers (``json.dumps`` takes it)."""
        return {"scheme": self.scheme,
                "layers": [dict(dataclasses.asdict(step), notes=list(step.notes))
                           for step in self.layers],
                "rewrites": list(self.rewrites)}

    @classmethod
    def from_dict(cls, config: dict) -> "QuantizePlan":
        """The plan :meth:`to_dict` describes."""
        layers = tuple(LayerPlan(**dict(step, notes=tuple(step.get("notes", ()))))
                       for step in config["layers"])
        return cls(config["scheme"], layers, tuple(config.get("rewrites", ())))


def _whole_input_average_pool(layer, input_shape) -> bool:
    if not isinstance(layer, keras.layers.AveragePooling2D) or layer.data_format != "channels_last":
        return False
    spatial = tuple(input_shape[1:3])
    return (None not in spatial and tuple(layer.pool_size) == spatial
            and layer.padding == "valid")


def _affine_source(tensor) -> Optional["FakeQuant"]:
    """The input quantizer of the affine QuantizeWrapper that produced ``tensor`` (through
    the RESHAPE back from 4-D, if any)."""
    source = _compat.producer(tensor)
    if isinstance(source, keras.layers.Reshape):
        node = _compat.producer_node(tensor)
        source = _compat.producer(node.input_tensors[0]) if node is not None else None
    return source._input_quantizer if isinstance(source, QuantizeWrapper) else None


def _range_source(tensor) -> Optional["FakeQuant"]:
    """The FakeQuant whose range a symbolic tensor has: its producer, or the producer's
    input for layers and operator nodes that keep their input's range (pooling, padding,
    reshapes...)."""
    for _ in range(64):
        source = _compat.producer(tensor)
        if isinstance(source, FakeQuant):
            return source
        if source is None or layer_kinds.kind_of(source).output_range != "input" \
                or isinstance(source, keras.layers.InputLayer):
            return None
        node = _compat.producer_node(tensor)
        if node is None or len(node.input_tensors) != 1:
            return None
        tensor = node.input_tensors[0]
    return None


def _averages(layer) -> bool:
    """An op that keeps its input's scale and writes averages of input values, which
    TFLite rounds to that scale: bilinear resizing. (AVERAGE_POOL_2D rounds halves of
    its int8 sums away from zero, not up; measured, its outputs are closer to the
    quantizer's input left unrounded.)"""
    return isinstance(layer, (keras.layers.UpSampling2D, keras.layers.Resizing)) and \
        layer.interpolation == "bilinear"


def _annotated(layer) -> bool:
    return isinstance(layer, QuantizeAnnotate)


def _inner(layer):
    return layer.layer if isinstance(layer, QuantizeAnnotate) else layer


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown quantization scheme. Received: scheme={scheme!r}. "
                         f"Allowed: {', '.join(repr(s) for s in SCHEMES)}.")


def _prepare(model):
    """The annotated model as the plan sees it: Functional, SeparableConv1D/2D split."""
    model = _graph.functional(model, purpose="quantization", inline=True)
    rewrap = (lambda original, new: QuantizeAnnotate(new) if _annotated(original) else new)
    keep = (lambda layer: getattr(layer, "quantize_config", None) is not None)
    unannotated = (lambda layer: keep(layer) or not _annotated(layer))
    # TimeDistributed(layer) as RESHAPE, the layer on steps * batch, RESHAPE (first: the
    # layer is then split and quantized like any other).
    model, steps = _graph.split_time_distributed(model, unwrap=_inner, rewrap=rewrap,
                                                 keep=unannotated)
    # InceptionResNetV2's CustomScaleLayer as the operator nodes x + y * scale.
    model, scaled = _graph.split_scaled_sums(model, unwrap=_inner, keep=unannotated)
    steps = steps + scaled
    # What TFLite runs for a SeparableConv1D/2D, so that each half is quantized on its own;
    # annotations carry over, a user QuantizeConfig keeps the layer whole.
    model, notes = _graph.split_separable(model, unwrap=_inner, rewrap=rewrap, keep=keep)
    # A plain LSTM / GRU unrolled into Dense layers and int8 ops (first: its activations
    # are split below like any other).
    # An EinsumDense matrix product as RESHAPE, Dense, RESHAPE (then quantized as a Dense).
    model, einsums = _graph.split_einsum_dense(model, unwrap=_inner, rewrap=rewrap,
                                               keep=unannotated)
    notes = notes + einsums
    # Masking as SELECT_V2 (Keras' own mask stays for the recurrent layers after it).
    model, masking = _graph.split_masking(model, unwrap=_inner, rewrap=rewrap, keep=unannotated)
    model, recurrent = _graph.split_recurrent(model, unwrap=_inner, rewrap=rewrap,
                                              keep=unannotated)
    model, means = _graph.split_masked_means(model, unwrap=_inner, rewrap=rewrap,
                                             keep=unannotated)
    recurrent = masking + recurrent + means
    # A GroupNorm as RESHAPE, a LayerNorm over the group's axes and a Rescaling, and that
    # LayerNorm as ops (as convert() writes both).
    model, groups = _graph.split_groupnorms(model, unwrap=_inner, rewrap=rewrap,
                                            keep=unannotated)
    grouped = {note.split(":")[0] + "_norm" for note in groups}
    model, _ = _graph.split_layernorms(
        model, unwrap=_inner, rewrap=rewrap, any_axes=True,
        keep=lambda layer: unannotated(layer) or _inner(layer).name not in grouped)
    # A UnitNormalization as one L2_NORMALIZATION (its fixed output grid follows).
    model, units = _graph.split_unit_normalizations(model, unwrap=_inner, rewrap=rewrap,
                                                    keep=unannotated)
    # A Dot as MUL / SUM or BATCH_MATMUL, a normalized one's inputs as L2_NORMALIZATION.
    model, dots = _graph.split_dots(model, unwrap=_inner, rewrap=rewrap, keep=unannotated)
    units = units + dots
    # A LayerNorm as the int8 ops convert() writes for it; only annotated ones (a float
    # LayerNorm stays one layer, converted in float).
    model, more = _graph.split_layernorms(model, unwrap=_inner, rewrap=rewrap, keep=unannotated)
    model, attention = _graph.split_attention(model, unwrap=_inner, rewrap=rewrap,
                                              keep=unannotated)
    model, pools = _graph.split_average_pools(model, unwrap=_inner, rewrap=rewrap,
                                              keep=unannotated)
    # ELU, SELU, softplus, mish as RELU, SUB, EXP... (the converter keeps ELU in float).
    model, elus = _graph.split_activations(model, unwrap=_inner, rewrap=rewrap,
                                           keep=unannotated)
    model, dots = _graph.split_dot_attention(model, unwrap=_inner, rewrap=rewrap,
                                             keep=unannotated)
    # -x as x * -1, square as x * x (no int8 NEG / SQUARE), split as slices.
    model, negations = _graph.split_operator_forms(model)
    # PReLU as RELU, SUB, a per-channel Rescaling and ADD (PRELU's alpha has no fake-quant).
    model, prelus = _graph.split_prelus(model, unwrap=_inner, rewrap=rewrap, keep=unannotated)
    return model, (steps + notes + recurrent + groups + units + more + attention + dots
                   + negations + pools + elus + prelus)


class _Graph:
    """Read-only facts about an annotated Functional graph, asked by the planner."""

    def __init__(self, model, scheme: str = "default_8bit"):
        self.scheme = scheme
        self.nodes = _compat.graph_nodes(model)
        self.readers: Dict[int, list] = {}
        self.producers: Dict[int, object] = {}
        for node in self.nodes:
            for t in node.input_tensors:
                self.readers.setdefault(id(t), []).append(node.operation)
            for t in node.output_tensors:
                self.producers[id(t)] = node.operation
        self.by_name = {node.operation.name: node for node in self.nodes}
        self.operations = self._quantized_operations()

    def _quantized_operations(self) -> set:
        """Names of the operator nodes to quantize: those that read a quantized tensor,
        and those that read only model inputs when a quantized layer reads them."""
        quantized, undecided = set(), []
        for node in self.nodes:
            if not _compat.is_operation(node.operation):
                continue
            sources = [self.producers.get(id(t)) for t in node.input_tensors]
            if any(self.quantized(source, quantized) for source in sources):
                quantized.add(node.operation.name)
            else:
                undecided.append(node)
        for node in reversed(undecided):
            after = [r for t in node.output_tensors for r in self.readers.get(id(t), [])]
            if any(self.quantized(r, quantized) for r in after):
                quantized.add(node.operation.name)
        return quantized

    def quantized(self, layer, operations=None) -> bool:
        """Whether ``layer`` (an annotated layer or an operator node) is quantized."""
        if _compat.is_operation(layer):
            return layer.name in (self.operations if operations is None else operations)
        return _annotated(layer)

    def reader(self, node):
        """The only reader of the node's output when it is quantized, else None."""
        after = self.readers.get(id(node.output_tensors[0]), [])
        return after[0] if len(after) == 1 and self.quantized(after[0]) else None

    def only_concatenated(self, node) -> bool:
        # TFLite gives a concatenation's inputs the output's scale; quantizing the
        # output alone computes exactly that (quantize(concat(a, b)) with one range).
        # MAXIMUM / MINIMUM want one scale too, and rounding commutes with them.
        # A concatenation (or stack) read by another keeps its own range: the converter
        # gives an unranged PACK the scale of its first input (measured: a Bidirectional
        # LSTM's two stacks concatenated, 19 steps off, the later steps clipped).
        if layer_kinds.kind_of(_inner(node.operation)).merge == "concatenate":
            return False
        if type(node.operation).__name__ == "Where":
            # The converter leaves a SELECT_V2 whose output has no range of its own in
            # float (a masked LSTM's outputs stacked: "no int8 kernel for select_v2").
            return False
        reader = self.reader(node)
        return reader is not None and (
            layer_kinds.kind_of(_inner(reader)).merge == "concatenate"
            or type(_inner(reader)).__name__ in ("Maximum", "Minimum"))

    def concatenates_kept_range(self, node) -> bool:
        """A concatenation with an input from an op that keeps its input's range, other
        than an embedding lookup's: a table's range (its weights' grid) is no activation
        range to give the others (a Dense's ReLU output concatenated with an Embedding
        was clipped to the table's +-0.05 in the file, 15 steps off); the converter
        requantizes the lookup onto the concatenation's own range instead."""
        for t in node.input_tensors:
            source = self.producers.get(id(t))
            if source is not None and self.quantized(source) and \
                    layer_kinds.kind_of(_inner(source)).output_range == "input" and \
                    not isinstance(source, keras.layers.InputLayer) and \
                    not self._from_embedding(t):
                return True
        return False

    def _from_embedding(self, tensor) -> bool:
        """Whether ``tensor`` is an embedding lookup, through ops that keep its range."""
        for _ in range(64):
            source = self.producers.get(id(tensor))
            if source is None or isinstance(source, keras.layers.InputLayer):
                return False
            kind = layer_kinds.kind_of(_inner(source))
            if kind.kernel == "embedding":
                return True
            node = _compat.producer_node(tensor)
            if kind.output_range != "input" or node is None or len(node.input_tensors) != 1:
                return False
            tensor = node.input_tensors[0]
        return False

    def fused_after(self, node) -> bool:
        """Whether TFLite fuses the activation that reads this node's output into it: one
        reader, or several applying the same activation (NASNet applies ReLU to one tensor
        in four branches), which the converter merges into one op first (measured: the
        stem convolution wrote the ReLU's range, and a Keras model that quantized the
        convolution's output first had 25% of its values one step off)."""
        return bool(self.fused_readers(node))

    def fused_readers(self, node) -> list:
        """The readers of this node's output that TFLite fuses into it (see fused_after)."""
        after = self.readers.get(id(node.output_tensors[0]), [])
        if not after or not all(self.quantized(r) and layer_kinds.is_fusable_activation(
                _inner(r)) for r in after):
            return []
        names = {layer_kinds.activation_name(_inner(r)) for r in after}
        return list(after) if len(names) == 1 else []

    def shared_quantizer(self, node) -> Optional[str]:
        """For one of several identical activations of one tensor, the first one's name:
        they are one op in the file, so they share one output quantizer."""
        source = _compat.producer_node(node.input_tensors[0]) if node.input_tensors else None
        if source is None:
            return None
        readers = self.fused_readers(source)
        return readers[0].name if len(readers) > 1 else None


def _folds(graph: _Graph) -> Dict[str, str]:
    """``{BatchNorm: the layer it folds into}`` (annotated names); refuses what cannot be."""
    fold = {}
    for position, node in enumerate(graph.nodes):
        layer = node.operation
        if _compat.is_operation(layer):
            why = _operation_refusal(node) if graph.quantized(layer) else None
            if why is not None:
                raise _unsupported(layer, position, *why)
            continue
        if not _annotated(layer) or isinstance(layer, keras.layers.InputLayer):
            continue
        base = _inner(layer)
        kind = layer_kinds.kind_of(base)
        if layer.quantize_config is None:
            why = _refusal(base, node)
            if why is not None:
                raise _unsupported(base, position, *why)
        reader = graph.reader(node)
        if (kind.quantize_weights and layer_kinds.activation_name(base) == "linear"
                and reader is not None and _annotated(reader)
                and layer_kinds.kind_of(_inner(reader)).normalization
                and reader.quantize_config is None):
            fold[reader.name] = layer.name
    return fold


def _scalar_affine_of_input(graph: "_Graph", node) -> Optional[Tuple[float, float]]:
    """``(scale, offset)`` of a Rescaling / Normalization that reads a model input and
    has one scale and offset for every channel; None otherwise."""
    layer = node.operation
    if not _annotated(layer) or not layer_kinds.kind_of(_inner(layer)).affine or \
            layer.quantize_config is not None:
        return None
    if not isinstance(graph.producers.get(id(node.input_tensors[0])), keras.layers.InputLayer):
        return None
    params = _affine_parameters(_inner(layer), _channels(node) or 1)
    if isinstance(params, str):
        return None
    scale, offset = params
    if not (np.all(scale == scale[0]) and np.all(offset == offset[0])) or scale[0] == 0:
        return None
    return float(scale[0]), float(offset[0])


def _standalone(layer) -> bool:
    """A layer run as a 1x1 DepthwiseConv2D: an affine map, or a BatchNorm not folded."""
    kind = layer_kinds.kind_of(_inner(layer))
    return (kind.affine or kind.normalization) and getattr(layer, "quantize_config", None) is None


def _output(graph: _Graph, fold: Dict[str, str], node) -> str:
    """Where the range of an annotated layer's output comes from (see LayerPlan.output)."""
    layer = node.operation
    base = _inner(layer)
    if layer.name in fold:
        return "folded"  # the BN's output is quantized after the layer it folds into
    quantize_config = getattr(layer, "quantize_config", None)
    if quantize_config is None and layer_kinds.activation_name(base) in FIXED_RANGES:
        return layer_kinds.activation_name(base)
    kind = layer_kinds.kind_of(base)
    if kind.activation is not None and layer_kinds.activation_name(base) == "linear":
        # Activation("linear") writes no op: a range of its own would be a second one on
        # the same tensor (the converter failed on one before a mean over 1x1).
        kind = dataclasses.replace(kind, output_range="input")
    keeps_range = kind.output_range == "input" and not _whole_input_average_pool(
        base, node.input_tensors[0].shape)
    if graph.only_concatenated(node) and not keeps_range:
        return "concat_output"
    if kind.merge == "concatenate" and graph.concatenates_kept_range(node):
        # An input that keeps its own input's scale (REDUCE_MAX, MAX_POOL_2D...) cannot
        # take the Concatenate's: the converter would force that range back onto the
        # tensor it reads, clipping what its other readers see. So the Concatenate
        # takes that input's range, as TFLite then does.
        return "input_grid"
    if kind.output_range == "input":
        if not keeps_range:
            return "learned"  # an average pool over the whole input becomes MEAN
        return "input_grid" if _averages(base) else "input_range"
    if quantize_config is not None and not quantizers.quantizes_output(quantize_config, base):
        return "quantize_config"
    if graph.scheme == "default_8bit" and _scalar_affine_of_input(graph, node) is not None:
        return "input_image"
    if _standalone(layer) and len(node.input_tensors[0].shape) != 4:
        return "learned"  # a RESHAPE back from 4-D stands between it and any activation
    if (kind.fuses_activation or _standalone(layer)) and graph.fused_after(node):
        return "fused_activation"  # quantized after the activation TFLite fuses into it
    return "learned"  # activations, merges, weighted layers and anything else elementwise


def _layer_plan(graph: _Graph, fold: Dict[str, str], node) -> LayerPlan:
    layer = node.operation
    if isinstance(layer, keras.layers.InputLayer):
        name = node.output_tensors[0].name  # what the rebuilt model's input is called
        read = any(graph.quantized(r) for r in graph.readers.get(id(node.output_tensors[0]), []))
        # Integer inputs (token ids, indices) are not activations: they stay as they are.
        read = read and "float" in str(node.output_tensors[0].dtype)
        return LayerPlan(name, name, "InputLayer", "input", name,
                         "learned" if read else "float", f"quant_{name}" if read else None)
    if _compat.is_operation(layer):
        common = dict(name=layer.name, layer=layer.name, class_name=type(layer).__name__,
                      new_name=layer.name)
        if not graph.quantized(layer):
            return LayerPlan(**common, action="float", output="float")
        output = _output(graph, fold, node)
        if not all("float" in str(t.dtype) for t in node.output_tensors):
            output = "float"  # masks (bool) and integers are not activations
        target = graph.shared_quantizer(node) or layer.name
        quantizer = f"quant_out_{target}" if output in _QUANTIZED_OUTPUTS else None
        return LayerPlan(**common, action="operation", output=output, quantizer=quantizer)
    if not _annotated(layer):
        return LayerPlan(layer.name, layer.name, type(layer).__name__, "float", layer.name,
                         "float", has_weights=bool(layer.weights))
    base = _inner(layer)
    common = dict(name=layer.name, layer=base.name, class_name=type(base).__name__,
                  has_weights=bool(base.weights))
    if layer.name in fold:
        return LayerPlan(**common, action="fold", new_name=None, output="folded",
                         folded_into=fold[layer.name])
    notes = ()
    if _whole_input_average_pool(base, node.input_tensors[0].shape):
        action = "global_pool"
    elif layer_kinds.kind_of(base).quantize_weights or layer.quantize_config is not None:
        action = "wrap"
    elif _standalone(layer):
        action = "affine"
        rank = len(node.input_tensors[0].shape)
        shape = "" if rank == 4 else f", reshaped to 4-D and back from its {rank}-D input"
        if layer_kinds.kind_of(base).normalization:
            before = graph.producers.get(id(node.input_tensors[0]))
            after = type(_inner(before)).__name__ if before is not None else "the input"
            notes = (f"{base.name}: BatchNormalization after {after} (nothing to fold it "
                     f"into) -> 1x1 DepthwiseConv2D with it folded in{shape} (TFLite's int8 "
                     "DEPTHWISE_CONV_2D)",)
        else:
            notes = (f"{base.name}: {type(base).__name__} (x * scale + offset per channel) -> "
                     f"1x1 DepthwiseConv2D{shape} (TFLite's int8 DEPTHWISE_CONV_2D; the raw "
                     "input keeps its own quantizer)",)
    else:
        action = "copy"
    batchnorm = next((bn for bn, into in fold.items() if into == layer.name), None)
    if action == "affine" and layer_kinds.kind_of(base).normalization:
        batchnorm = layer.name  # folded into its own 1x1 depthwise convolution
    if batchnorm is None or action == "affine":
        output, target = _output(graph, fold, node), layer.name
    else:  # the folded BatchNorm's output is this layer's
        bn_node = graph.by_name[batchnorm]
        output = ("fused_activation" if graph.fused_after(bn_node) else
                  "concat_output" if graph.only_concatenated(bn_node) else "learned")
        target = batchnorm
    shared = graph.shared_quantizer(node)
    if shared is not None:
        target = shared
    if not all("float" in str(t.dtype) for t in node.output_tensors):
        output = "float"  # integer outputs (ids, indices) are not activations
    quantizer = f"quant_out_{_short(target)}" if output in _QUANTIZED_OUTPUTS else None
    return LayerPlan(**common, action=action,
                     new_name=f"quant_{base.name}" if action in ("wrap", "affine") else base.name,
                     output=output, quantizer=quantizer, batchnorm=batchnorm, notes=notes)


def _with_notes(graph: _Graph, steps: Dict[str, LayerPlan], split_notes) -> Tuple[str, ...]:
    """Gives each rewrite note to the QAT layer that will record it; returns all notes."""
    def record(step: Optional[LayerPlan], note: str) -> None:
        # Follow the tensor to the layer whose quantizer sets its range.
        while step is not None and step.action not in _WRAPS and step.quantizer is None \
                and step.output in ("concat_output", "fused_activation"):
            reader = graph.reader(graph.by_name[step.name])
            step = steps.get(reader.name) if reader is not None else None
        if step is not None and (step.action in _WRAPS or step.quantizer is not None):
            steps[step.name] = dataclasses.replace(step, notes=step.notes + (note,))

    for note in split_notes:  # "<name>: SeparableConv2D -> ..."; its depthwise half records it
        half = note.split(":", 1)[0] + "_depthwise"
        record(next((s for s in steps.values() if s.layer == half and s.action == "wrap"),
                    None), note)
    pool_notes = []
    for step in list(steps.values()):
        if step.action == "global_pool":
            note = (f"{step.layer}: AveragePooling2D over the whole input -> "
                    "GlobalAveragePooling2D(keepdims=True) (XNNPACK runs int8 MEAN)")
            pool_notes.append(note)
            record(step, note)
    # An affine step's wrapper records its own note (made with the step).
    affine_notes = [note for step in steps.values() if step.action == "affine"
                    for note in step.notes]
    # Wrappers' notes first, then quantizers' (the order quantize_report reads them in).
    return tuple(split_notes) + tuple(affine_notes) + tuple(pool_notes)


_WRAPS = ("wrap", "affine")  # actions whose QuantizeWrapper records the notes
# Outputs followed by a FakeQuant of their own.
_QUANTIZED_OUTPUTS = ("learned", "input_image") + tuple(FIXED_RANGES)


def _make_plan(model, scheme: str, split_notes) -> QuantizePlan:
    graph = _Graph(model, scheme)
    fold = _folds(graph)
    steps: Dict[str, LayerPlan] = {}
    for node in graph.nodes:
        step = _layer_plan(graph, fold, node)
        steps[step.name] = step
    rewrites = _with_notes(graph, steps, split_notes)
    return QuantizePlan(scheme, tuple(steps.values()), rewrites)


def plan_quantization(model, *, scheme: str = "default_8bit") -> QuantizePlan:
    """What :func:`quantize_apply` would do to an annotated model, without doing it.

    Args:
        model: a Sequential or Functional model with annotations.
        scheme: ``"default_8bit"`` or ``"int16x8"``.

    Returns:
        A :class:`QuantizePlan`; :func:`rebuild` carries it out.

    Raises:
        ValueError: an unknown scheme, or an annotated layer this module cannot quantize.

    Example:
        >>> import keras
        >>> inputs = keras.Input((8, 8, 3), name="image")
        >>> x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
        >>> x = keras.layers.BatchNormalization(name="bn")(x)
        >>> x = keras.layers.ReLU(name="relu")(x)
        >>> plan = plan_quantization(quantize_annotate_model(keras.Model(inputs, x)))
        >>> print(plan.summary())  # doctest: +NORMALIZE_WHITESPACE
        scheme default_8bit (8-bit weights, 8-bit activations): 1 layers quantized,
        1 BatchNorms folded, 0 weighted layers left in float
          image (InputLayer): input; FakeQuant quant_image (learned)
          conv (Conv2D): -> QuantizeWrapper quant_conv (BatchNorm bn folded in);
          no quantizer: the fused activation after it has it
          bn (BatchNormalization): folded into conv
          relu (ReLU): copied; FakeQuant quant_out_relu (learned)
        >>> plan.layer("bn").folded_into, plan.layer("relu").quantizer
        ('annotate_conv', 'quant_out_relu')
    """
    _check_scheme(scheme)
    prepared, split_notes = _prepare(model)
    return _make_plan(prepared, scheme, split_notes)


def _new_layer(model, layer, step: LayerPlan, bits: Scheme, pending: list):
    """The layer that stands for ``layer`` in the QAT model (weights go to ``pending``)."""
    if _compat.is_operation(layer):
        return layer  # stateless: the same op, called on the new tensors
    if step.action == "float":
        new = _compat.layer_from_config(layer)
        if layer.weights:
            pending.append((new, layer.get_weights()))
        return new
    base = _inner(layer)
    if step.action == "fold":
        return keras.layers.Identity(name=base.name)  # never called: lives in the wrapper
    if step.action == "global_pool":
        return keras.layers.GlobalAveragePooling2D(keepdims=True, name=step.new_name)
    if step.action == "affine":
        return _affine_wrapper(base, step, bits, pending)
    copy = _compat.layer_from_config(base)
    if base.weights:
        pending.append((copy, base.get_weights()))
    if step.action == "copy":
        return copy
    bn = None
    if step.batchnorm is not None:
        bn_base = _inner(model.get_layer(step.batchnorm))
        bn = type(bn_base).from_config(bn_base.get_config())
        pending.append((bn, bn_base.get_weights()))
    if quantizers.uses_tfmot_protocol(layer.quantize_config):  # the config's own quantizers
        return QuantizeWrapperV2(copy, layer.quantize_config, name=step.new_name)
    return QuantizeWrapper(copy, batchnorm=bn, weight_bits=bits.weight_bits,
                           activation_bits=bits.activation_bits,
                           quantize_config=layer.quantize_config, notes=step.notes,
                           name=step.new_name)


def _affine_wrapper(base, step: LayerPlan, bits: Scheme, pending: list):
    """A QuantizeWrapper running ``base`` (a BatchNorm, Rescaling or Normalization) as a
    1x1 DepthwiseConv2D; the weights are set once its input's channels are known."""
    normalization = layer_kinds.kind_of(base).normalization
    depthwise = keras.layers.DepthwiseConv2D(1, use_bias=not normalization, name=base.name,
                                             trainable=False)
    bn = None
    if normalization:
        bn = _compat.layer_from_config(base)
        pending.append((bn, base.get_weights()))
    return QuantizeWrapper(depthwise, batchnorm=bn, weight_bits=bits.weight_bits,
                           activation_bits=bits.activation_bits, notes=step.notes,
                           name=step.new_name)


def _call_affine(wrapper, base, x, pending: list):
    """Calls an affine wrapper on ``x`` (2-D to 4-D): reshaped to 4-D and back if needed."""
    shape = tuple(x.shape)
    channels = shape[-1]
    if wrapper.batchnorm is not None:
        weights = [np.ones((1, 1, channels, 1), "float32")]  # identity; the BN is folded in
    else:
        scale, offset = _affine_parameters(base, channels)
        weights = [scale.reshape(1, 1, channels, 1), offset]
    pending.append((wrapper.layer, weights))
    if len(shape) == 4:
        return wrapper(x)
    to_4d = (1, 1, channels) if len(shape) == 2 else (-1, 1, channels)
    y = keras.layers.Reshape(to_4d, name=f"{base.name}_to_4d")(x)
    back = (channels,) if len(shape) == 2 else (-1, channels)
    return keras.layers.Reshape(back, name=f"{base.name}_from_4d")(wrapper(y))


def _output_quantizer(step: LayerPlan, bits: Scheme) -> Optional[FakeQuant]:
    if step.quantizer is None:
        return None
    notes = () if step.action in _WRAPS else step.notes  # a wrapper records its own
    if step.output in FIXED_RANGES:
        return FakeQuant(8, fixed_range=FIXED_RANGES[step.output], notes=notes,
                         name=step.quantizer)
    return FakeQuant(bits.activation_bits, notes=notes, name=step.quantizer)


def _rebuild(model, plan: QuantizePlan):
    """Carries out ``plan`` on the prepared annotated ``model``."""
    steps = {step.name: step for step in plan.layers}
    bits = SCHEMES[plan.scheme]
    pending: list = []
    origin: Dict[int, str] = {}  # new layer -> the name of the layer it stands for
    quantized_inputs: Dict[int, object] = {}
    ranges: Dict[int, FakeQuant] = {}  # tensor -> the quantizer that set its range
    graph = _Graph(model, plan.scheme)
    follows: Dict[str, Tuple[float, float]] = {}  # affine layer -> (scale, offset)
    grid_points: Dict[str, float] = {}  # model input -> the value its grid must hold
    outputs: Dict[str, Optional[FakeQuant]] = {}  # plan step -> its output quantizer
    for node in graph.nodes:
        step = steps.get(node.operation.name)
        if step is not None and step.output == "input_image":
            params = _scalar_affine_of_input(graph, node)
            if params is not None:
                follows[step.name] = params
                source = graph.producers[id(node.input_tensors[0])]
                if params[1] != 0.0:  # the raw value the affine maps to zero
                    grid_points[source.name] = -params[1] / params[0]

    def clone_function(layer):
        new = _new_layer(model, layer, steps[layer.name], bits, pending)
        origin[id(new)] = layer.name
        return new

    def quantize_input(tensor):
        source = _compat.producer(tensor)
        if source is None or "float" not in str(tensor.dtype):
            return tensor  # integer inputs (token ids) are not activations
        step = steps.get(origin.get(id(source), source.name))
        # A model input, or the output of a layer left in float (the file quantizes it
        # there, with this range, before the quantized layer reads it).
        left_in_float = step is not None and step.action == "float" and \
            not isinstance(source, keras.layers.InputLayer)
        if not (isinstance(source, keras.layers.InputLayer) or left_in_float):
            return tensor
        if id(tensor) not in quantized_inputs:
            name = step.quantizer if step is not None and step.quantizer else f"quant_{source.name}"
            if left_in_float:
                name = f"quant_{origin.get(id(source), source.name)}_out"
                # A float layer called twice, or with several outputs: one name each.
                taken = {q.name for q in ranges.values()}
                name = next(f"{name}_{k}" if k else name for k in range(len(taken) + 1)
                            if (f"{name}_{k}" if k else name) not in taken)
            quantizer = FakeQuant(bits.activation_bits, grid_point=grid_points.get(source.name),
                                  name=name)
            quantized_inputs[id(tensor)] = quantizer(tensor)
            ranges[id(quantized_inputs[id(tensor)])] = quantizer
        return quantized_inputs[id(tensor)]

    def call_function(layer, *args, **kwargs):
        step = steps[origin.get(id(layer), layer.name)]
        if step.action == "fold":  # the BatchNorm lives inside the layer before it
            return args[0]
        if step.action != "float":
            args = tuple(keras.tree.map_structure(quantize_input, a) for a in args)
        if step.action == "affine":
            base = _inner(model.get_layer(step.name))
            out = _call_affine(layer, base, args[0], pending)
        elif step.action in ("copy", "operation") and not kwargs and \
                layer_kinds.activation_name(layer) in _SIGMOID_TIMES + _HARD_SIGMOID:
            out = _tflite_activation(
                layer_kinds.activation_name(layer), args[0],
                lambda t, fixed, label: FakeQuant(8, fixed_range=fixed,
                                                  name=f"quant_{step.layer}_{label}")(t))
        elif step.action != "float" and isinstance(layer, _PAIRWISE_MERGES) and args and \
                isinstance(args[0], (list, tuple)) and len(args[0]) > 2:
            out = layer(_pairwise(layer, list(args[0]), bits), **kwargs)
        elif step.action != "float" and isinstance(layer, keras.layers.Average) and args and \
                isinstance(args[0], (list, tuple)):
            out = _average(layer, list(args[0]), bits)
        else:
            out = layer(*args, **kwargs)
        source = None
        if args and not isinstance(out, (list, tuple)):
            source = next((ranges[id(t)] for t in keras.tree.flatten(args[0])
                           if id(t) in ranges), None)
        if step.output == "input_grid" and source is not None:
            # The same quantizer again, without updating its range from these values.
            out = source(out, training=False)
        # A layer called several times (an unrolled recurrent projection) has one output
        # quantizer: one range for every call, as its outputs share TFLite's weights.
        key = step.quantizer or step.name  # identical activations share one quantizer
        if key not in outputs:
            quantizer = _output_quantizer(step, bits)
            if quantizer is not None and step.name in follows:
                quantizer = FakeQuant(bits.activation_bits, follows=follows[step.name],
                                      notes=quantizer.notes, name=quantizer.name)
            outputs[key] = quantizer
        quantizer = outputs[key]
        if quantizer is None:
            if step.output in ("input_range", "input_grid") and source is not None:
                ranges[id(out)] = source
            return out
        out = quantizer(out)
        ranges[id(out)] = quantizer
        return out

    clone = _graph.clone_model(model, clone_function=clone_function,
                               call_function=call_function)
    for new, weights in pending:
        new.set_weights(weights)
    for layer in clone.layers:
        if isinstance(layer, QuantizeWrapper):
            layer.preserve_zeros()
    clone.quantize_report = plan.report()
    return clone


# Merges TFLite runs in int8 on two inputs only: an Add of more is converted to float
# ADDs (measured: 8 inputs gave 15 float tensors), so QAT chains them, one range each.
_PAIRWISE_MERGES = (keras.layers.Add, keras.layers.Multiply, keras.layers.Maximum,
                    keras.layers.Minimum)


def _pairwise(layer, tensors: list, bits: Scheme) -> list:
    """All but the last two of ``tensors`` merged pairwise (a fresh layer of ``layer``'s
    class and a quantizer each), so that ``layer`` itself merges two."""
    acc = tensors[0]
    for i, tensor in enumerate(tensors[1:-1]):
        acc = type(layer)(name=f"{layer.name}_part{i}")([acc, tensor])
        acc = FakeQuant(bits.activation_bits, name=f"quant_{layer.name}_part{i}")(acc)
    return [acc, tensors[-1]]


def _average(layer, tensors: list, bits: Scheme):
    """An Average as TFLite runs it: ADDs (a quantizer each), then a MUL by 1/n.

    Keras' Average converts to ADD and MUL; quantized as one layer, the ADD's output had no
    range and the converter left it and the MUL in float."""
    acc = tensors[0]
    for i, tensor in enumerate(tensors[1:]):
        acc = keras.layers.Add(name=f"{layer.name}_sum{i}")([acc, tensor])
        acc = FakeQuant(bits.activation_bits, name=f"quant_{layer.name}_sum{i}")(acc)
    return acc * (1.0 / len(tensors))


def _straight_chain(model) -> Optional[list]:
    """The layers of a Functional ``model``, input to output, when each reads only the one
    before it (what a Sequential can hold); None otherwise."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    chain: list = []
    tensor = model.outputs[0]
    while True:
        node = _compat.producer_node(tensor)
        if node is None:
            return None
        layer = node.operation
        if isinstance(layer, keras.layers.InputLayer):
            break
        args, kwargs = _compat.node_arguments(node)
        if (_compat.is_operation(layer) or len(node.input_tensors) != 1 or len(args) != 1
                or any(v is not None for v in kwargs.values())
                or any(layer is seen for seen in chain)):
            return None
        chain.append(layer)
        tensor = node.input_tensors[0]
    if tensor is not model.inputs[0] or len(chain) != len(model.layers) - 1:
        return None
    return chain[::-1]


def _like_original(qat, model):
    """``qat`` as a Sequential when ``model`` was one and the QAT graph is a straight chain,
    so that ``qat.layers`` reads as tfmot's (``layers[0]`` quantizes the input,
    ``layers[1]`` wraps the first layer); the Functional ``qat`` otherwise."""
    chain = _straight_chain(qat) if isinstance(model, keras.Sequential) else None
    if chain is None:
        return qat
    source = qat.inputs[0]
    inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype,
                         name=_compat.producer(source).name)
    sequential = keras.Sequential([inputs] + chain, name=qat.name)
    sequential.quantize_report = qat.quantize_report
    return sequential


def rebuild(model, plan: QuantizePlan):
    """Builds the QAT model that ``plan`` describes.

    Args:
        model: the annotated model the plan was made from (by :func:`plan_quantization`).
        plan: a :class:`QuantizePlan`, possibly edited (``dataclasses.replace``).

    Returns:
        A new model with the weights copied (a Sequential when ``model`` is one and the
        QAT graph is a straight chain, else Functional); ``.quantize_report`` is
        ``plan.report()``.

    Raises:
        ValueError: the plan does not describe this model's layers.
    """
    prepared, _ = _prepare(model)
    graph = {node.output_tensors[0].name if isinstance(node.operation, keras.layers.InputLayer)
             else node.operation.name for node in _compat.graph_nodes(prepared)}
    planned = {step.name for step in plan.layers}
    if graph != planned:
        raise ValueError(
            "The plan does not describe this model: layers only in the model: "
            f"{sorted(graph - planned)}; only in the plan: {sorted(planned - graph)}. "
            "Make the plan with plan_quantization(model).")
    _check_scheme(plan.scheme)
    return _like_original(_rebuild(prepared, plan), model)


def _scheme_name(scheme) -> str:
    """A scheme name from a name or a QuantizeScheme object (tfmot passes objects)."""
    if isinstance(scheme, str):
        _check_scheme(scheme)
        return scheme
    if not isinstance(scheme, QuantizeScheme):
        raise TypeError(f"`scheme` must be one of {', '.join(repr(s) for s in SCHEMES)} or a "
                        f"QuantizeScheme. Received: scheme={scheme!r}")
    name = getattr(scheme, "scheme_name", None)
    if name not in SCHEMES:
        raise ValueError(
            f"QuantizeScheme {type(scheme).__name__} is not one tfcompress runs: its graph is "
            "planned by tfcompress, not by the scheme's transforms. Give its registry's "
            "QuantizeConfigs to quantize_annotate_layer, or pass one of "
            f"{', '.join(repr(s) for s in SCHEMES)}.")
    return name


def _check_annotations(model) -> None:
    """tfmot's refusals: nothing annotated; a custom subclass of a Keras layer with no config."""
    annotated = [layer for layer in _compat.flatten_layers(model) if _annotated(layer)]
    if not annotated:
        raise ValueError(
            f"Model {model.name!r} has no annotated layer, so quantize_apply has nothing to "
            "quantize. Annotate layers with quantize_annotate_layer(), the whole model with "
            "quantize_annotate_model(), or call quantize_model(model).")
    for layer in annotated:
        base = _inner(layer)
        cls = type(base)
        if (layer.quantize_config is None and not cls.__module__.startswith("keras.")
                and cls not in layer_kinds.registered()
                and layer_kinds.kind_of(cls) is not layer_kinds.UNKNOWN):
            why = (f"Layer {base.name!r} of class {cls.__name__} subclasses a Keras layer and "
                   "has no QuantizeConfig, so how it computes is unknown (tfmot refuses it "
                   "too). Give it one: quantize_annotate_layer(layer, quantize_config=...), or "
                   "layer_kinds.register() its class.")
            if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is not cls:
                # tfmot fails earlier for a class Keras cannot find (its clone), with this
                # ValueError: kept, so that tfmot code catching it behaves the same.
                error = ValueError(_UNKNOWN_CLASS)
                error.add_note(why)
                raise error
            raise RuntimeError(why)


# tfmot's words when its clone meets a custom class Keras cannot deserialize.
_UNKNOWN_CLASS = (
    "Unable to clone model. This generally happens if you used custom Keras layers or objects "
    "in your model. Please specify them via `quantize_scope` for your calls to "
    "`quantize_model` and `quantize_apply`.")


def _check_integer_inputs(model) -> None:
    """Refuses integer inputs that a layer computes on in float (uint8 pixels into a
    Rescaling): QAT quantizes float activations, and the file would start with a CAST."""
    try:
        inputs = list(model.inputs) if _compat.is_graph_model(model) else []
    except (AttributeError, ValueError):  # an unbuilt Sequential: refused further on
        inputs = []
    if not any("int" in str(t.dtype) for t in inputs):
        return
    model = _graph.functional(model, purpose="quantization")  # a Sequential's graph
    readers: Dict[int, list] = {}
    for node in _compat.graph_nodes(model):
        for t in node.input_tensors:
            readers.setdefault(id(t), []).append(node.operation)
    for tensor in model.inputs:
        if "int" not in str(tensor.dtype):
            continue
        for reader in readers.get(id(tensor), []):
            base = _inner(reader)
            kind = layer_kinds.kind_of(base)
            if kind.affine or kind.kernel in ("dense", "conv", "depthwise", "separable",
                                              "conv_transpose") or kind.normalization:
                raise ValueError(
                    f"Input {tensor.name!r} is {tensor.dtype} and layer {base.name!r} (class "
                    f"{type(base).__name__}) computes on it in float: an int8 model cannot "
                    "start with a float CAST. Give the model a float32 input "
                    "(keras.Input(shape, dtype='float32'), same values) and convert with "
                    "input_type='uint8' to have the file take uint8 pixels.")


def quantize_apply(model, scheme="default_8bit", quantized_layer_name_prefix: str = "quant_"):
    """Turns an annotated model into a QAT model (tfmot's name and arguments).

    Layers wrapped by :func:`quantize_annotate_layer` (or all layers after
    :func:`quantize_annotate_model`) are quantized; others stay in float and are
    listed in ``model.quantize_report.left_in_float``. This is
    ``rebuild(model, plan_quantization(model, scheme=scheme))``.

    Args:
        model: a Sequential or Functional model with annotations.
        scheme: ``"default_8bit"`` or ``"int16x8"`` (int16 activations, int8 weights),
            or a QuantizeScheme that names one of them
            (``default_8bit.Default8BitQuantizeScheme()``).
        quantized_layer_name_prefix: the prefix of the quantized layers' names.

    Returns:
        A new model: a Sequential when ``model`` is one and the QAT graph is a straight
        chain (as in tfmot, ``layers[0]`` then quantizes the input and ``layers[1]``
        wraps the first layer), else a Functional model. ``.quantize_report`` is a
        :class:`QuantizeReport`
        (an attribute that a `.keras` file does not keep: :func:`quantize_report`
        reads the same report from the model's layers).

    Raises:
        ValueError: an unknown scheme, a model without annotated layers, or an annotated
            layer this module cannot quantize.
        RuntimeError: an annotated subclass of a Keras layer without a QuantizeConfig
            (a ValueError, as in tfmot, when its class is neither registered with Keras
            nor given through ``quantize_scope`` / ``keras.saving.custom_object_scope``).
    """
    scheme = _scheme_name(scheme)
    if not isinstance(quantized_layer_name_prefix, str):
        raise TypeError("`quantized_layer_name_prefix` must be a string. Received: "
                        f"quantized_layer_name_prefix={quantized_layer_name_prefix!r}")
    if not isinstance(model, keras.Model):
        raise ValueError("`model` must be a Sequential or Functional Keras model with "
                         f"annotated layers. Received: {type(model).__name__}")
    # Fake quantization runs in float32 (a mixed_float16 model computes in float16).
    with _compat.float32_policy():
        model = _compat.float32_copy(model)
        _check_integer_inputs(model)
        prepared, split_notes = _prepare(model)
        _check_annotations(prepared)
        qat = _like_original(_rebuild(prepared, _make_plan(prepared, scheme, split_notes)),
                             model)
    if quantized_layer_name_prefix != "quant_":
        for layer in qat.layers:
            if isinstance(layer, (QuantizeWrapper, QuantizeWrapperV2)) and \
                    layer.name.startswith("quant_"):
                layer.name = quantized_layer_name_prefix + layer.name[len("quant_"):]
    return qat


def quantize_report(model) -> QuantizeReport:
    """The :class:`QuantizeReport` of a QAT model, read from its layers.

    What ``quantize_apply(...).quantize_report`` says, also for a model loaded from
    a `.keras` file: each :class:`QuantizeWrapper` knows its layer and folded
    BatchNorm, and the wrappers and :class:`FakeQuant` layers keep the rewrite notes
    in their configs. (The split of a SeparableConv2D that was left in float leaves
    no quantization layer to record it.)

    Args:
        model: a model from :func:`quantize_apply` / :func:`quantize_model`, or loaded.

    Returns:
        A :class:`QuantizeReport`.

    Raises:
        ValueError: ``model`` has no quantization layers.
    """
    model = _graph.functional(model, purpose="reading the quantization report")
    layers = model.layers
    wrappers = [layer for layer in layers
                if isinstance(layer, (QuantizeWrapper, QuantizeWrapperV2))]
    quantizers = [layer for layer in layers if isinstance(layer, FakeQuant)]
    if not wrappers and not quantizers:
        raise ValueError(f"Model {model.name!r} has no QuantizeWrapper or FakeQuant layer: "
                         "pass a model from quantize_model() or quantize_apply().")
    learned = [q.num_bits for q in quantizers if q.fixed_range is None]
    weight_bits = wrappers[0].weight_bits if wrappers else 8
    activation_bits = learned[0] if learned else (wrappers[0].activation_bits if wrappers else 8)
    scheme = next((name for name, s in SCHEMES.items()
                   if (s.weight_bits, s.activation_bits) == (weight_bits, activation_bits)),
                  f"{weight_bits}-bit weights, {activation_bits}-bit activations")
    return QuantizeReport(
        scheme, tuple(w.layer.name for w in wrappers),
        # A BatchNorm in its own 1x1 depthwise convolution (same name) is not folded.
        tuple((w.layer.name, w.batchnorm.name) for w in wrappers
              if w.batchnorm is not None and w.batchnorm.name != w.layer.name),
        tuple(layer.name for layer in layers
              if not isinstance(layer, (QuantizeWrapper, QuantizeWrapperV2, FakeQuant))
              and layer.weights),
        tuple(note for w in wrappers for note in w.notes)
        + tuple(note for q in quantizers for note in q.notes))


def _short(name: str) -> str:
    return name[len("annotate_"):] if name.startswith("annotate_") else name


def quantize_model(to_quantize, quantized_layer_name_prefix: str = "quant_", *,
                   scheme="default_8bit"):
    """Annotates every layer and applies quantization (tfmot's name and arguments).

    Args:
        to_quantize: a Sequential or Functional Keras model (nested models are
            inlined; subclassed models must be rebuilt with the Functional API).
        quantized_layer_name_prefix: the prefix of the quantized layers' names.
        scheme: ``"default_8bit"`` or ``"int16x8"`` (or a QuantizeScheme naming one).

    Returns:
        The QAT model, with the weights copied: a Sequential when ``to_quantize`` is
        one and the QAT graph is a straight chain, else Functional (see
        :func:`quantize_apply`).

    Raises:
        ValueError: ``to_quantize`` is not a Sequential or Functional model (a layer, as
            in tfmot), or a layer this module cannot quantize.
    """
    scheme = _scheme_name(scheme)
    if not isinstance(to_quantize, keras.Model):
        raise ValueError("`to_quantize` must be a Sequential or Functional Keras model. "
                         f"Received: {type(to_quantize).__name__}")
    # A user's block of Keras layers (a Layer subclass whose weights are its sublayers')
    # is quantized as the layers it calls, unless its class is registered or configured.
    if _compat.is_graph_model(to_quantize) and any(
            _graph.inlinable_layer(layer) and _inlines(layer)
            for layer in _compat.flatten_layers(to_quantize)):
        to_quantize = _graph.functional(to_quantize, purpose="quantization", inline=True,
                                        inline_layers=_inlines)
    return quantize_apply(quantize_annotate_model(to_quantize), scheme=scheme,
                          quantized_layer_name_prefix=quantized_layer_name_prefix)


def _inlines(layer) -> bool:
    return (layer_kinds.kind_of(layer) == layer_kinds.UNKNOWN
            and getattr(layer, "quantize_config", None) is None)


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
        if _compat.is_operation(layer):
            return layer  # stateless: the same op, called on the new tensors
        if not isinstance(layer, QuantizeWrapper) or layer.user_quantize_config is not None:
            base = layer.layer if isinstance(layer, (QuantizeWrapper, QuantizeWrapperV2)) else layer
            new = _compat.layer_from_config(base)
            if base.weights and not isinstance(base, FakeQuant):  # FakeQuant is dropped
                pending.append((new, base.get_weights()))
            return new
        config = layer.layer.get_config()
        if _kernel_layout(layer.layer) == "embedding":
            new = type(layer.layer).from_config(config)
            pending.append((new, [np.asarray(layer.layer.embeddings * layer.sparsity_mask)]))
            return new
        config["use_bias"] = True
        new = type(layer.layer).from_config(config)
        kernel = layer.layer.kernel * layer.sparsity_mask
        bias = layer.layer.bias if layer.layer.use_bias else None
        if layer.batchnorm is not None:
            kernel, bias = layer._fold(None, kernel, bias, training=False)
        if bias is None:
            shape = tuple(kernel.shape)
            layout = _kernel_layout(layer.layer)
            channels = (shape[-2] * shape[-1] if layout == "depthwise" else
                        shape[-2] if layout == "conv_transpose" else shape[-1])
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
               for layer in _compat.flatten_layers(model))


# ---------------------------------------------------------------------------
# Recording what the quantization layers see (post-training quantization).
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Recording:
    """What :func:`recording` saw; filled in when its block ends.

    Attributes:
        activations: ``(quantizer, samples)`` for every learned :class:`FakeQuant`:
            one sample of its inputs per call (see :meth:`FakeQuant.stop_recording`).
        bias_shifts: ``(wrapper, shifts)`` for every :class:`QuantizeWrapper` without a
            QuantizeConfig: one per-channel shift of weight rounding per call (see
            :meth:`QuantizeWrapper.start_recording_bias_shift`).
    """

    activations: List[Tuple[FakeQuant, List[np.ndarray]]] = dataclasses.field(default_factory=list)
    bias_shifts: List[Tuple[QuantizeWrapper, List[np.ndarray]]] = dataclasses.field(
        default_factory=list)


@contextlib.contextmanager
def recording(model, *, activations: bool = True, bias_shifts: bool = False):
    """Runs a QAT model in float while its quantization layers record what they see.

    Inside the block every :class:`FakeQuant` passes its input through unchanged
    (weights stay fake-quantized), and eager inference calls of the model,
    ``model(x, training=False)``, are recorded. When the block ends, each layer's
    float pass-through is set back and the yielded :class:`Recording` is filled in.

    Args:
        model: a QAT model (nested layers included).
        activations: record the inputs of every learned activation quantizer.
        bias_shifts: record the output shift that weight rounding causes in every
            wrapper (without a QuantizeConfig).

    Yields:
        A :class:`Recording`, empty until the block ends.

    Example:
        >>> import keras, numpy as np
        >>> inputs = keras.Input((4,), name="x")
        >>> qat = quantize_model(keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs)))
        >>> with recording(qat) as seen:
        ...     _ = qat(np.ones((3, 4), "float32"), training=False)
        >>> [(q.name, len(samples)) for q, samples in seen.activations]
        [('quant_x', 1), ('quant_out_fc', 1)]
    """
    layers = _compat.flatten_layers(model)
    quantizers = [layer for layer in layers if isinstance(layer, FakeQuant)]
    learned = [q for q in quantizers if q.fixed_range is None] if activations else []
    wrappers = [layer for layer in layers if isinstance(layer, QuantizeWrapper)
                and layer.user_quantize_config is None] if bias_shifts else []
    previous = [float(q.calibrating.numpy()) for q in quantizers]
    seen = Recording()
    for q in quantizers:
        q.calibrating.assign(1.0)
    for q in learned:
        q.start_recording()
    for w in wrappers:
        w.start_recording_bias_shift()
    try:
        yield seen
    finally:
        seen.activations = [(q, q.stop_recording()) for q in learned]
        seen.bias_shifts = [(w, w.stop_recording_bias_shift()) for w in wrappers]
        for q, value in zip(quantizers, previous):
            q.calibrating.assign(value)


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
        return [layer.bn_frozen for layer in _compat.flatten_layers(self.model)
                if isinstance(layer, QuantizeWrapper) and layer.batchnorm is not None]


class FreezeQuantizerRanges(_FreezeAfter):
    """After ``after_steps`` training steps, activation ranges stop moving."""

    def _variables(self):
        return [layer.frozen for layer in _compat.flatten_layers(self.model)
                if isinstance(layer, FakeQuant) and layer.fixed_range is None]


def _sample(values: np.ndarray, limit: int = 50_000) -> np.ndarray:
    """At most ``limit`` values of a batch, always including its extremes."""
    values = values.ravel()
    if values.size <= limit:
        return values.copy()
    keep = np.random.RandomState(values.size % 9973).choice(values.size, limit, replace=False)
    return np.concatenate([values[keep], [values.min(), values.max()]])
