"""One table of what each Keras layer class does, for every transform of the toolkit.

Channel pruning needs to know which layers mix channels and which act on each channel
alone; quantization which layers carry weights to fake-quantize, which BatchNorm
folds, after which ops TFLite fuses a ReLU and which ops keep their input's range;
low-rank factorization which kernels it can split. All of them read the same
:class:`LayerKind` record of a layer's class here, so that supporting a new layer
is one :func:`register` call.

A layer's record is the one of the nearest class in its method resolution order
that has one, so subclasses inherit their parent's record. A class that has none
gets :data:`UNKNOWN` (every property off): channel pruning then fixes the channels
around it, and quantization gives its output a learned range when it has no weights
(and refuses it when it has).

Properties that depend on a layer's arguments (a ``BatchNormalization`` over another
axis, a depthwise convolution with a depth multiplier, a softmax ``Activation``) are
answered by the small query functions below from the record and the layer together.

Keras 3 also records operators and ``keras.ops`` calls (``x + 3.0``, ``x * y``,
``x[:, :8]``, ``keras.ops.mean(x, 1)``) in a Functional graph, as ``keras.Operation``
nodes that are not layers. The built-in ones have records too, looked up by their
class name (:data:`OPERATIONS`); an operation class of your own gets one with
:func:`register`, as a layer does.

Example:
    >>> import keras
    >>> kind_of(keras.layers.Conv2D(8, 3))  # doctest: +NORMALIZE_WHITESPACE
    LayerKind(kernel='conv', mixes_channels=True, fuses_activation=True,
              quantize_weights=True, factorable=True)
    >>> kind_of(keras.layers.MaxPooling2D()).output_range
    'input'
    >>> relu6 = keras.layers.ReLU(max_value=6.0)
    >>> activation_name(relu6), is_fusable_activation(relu6)
    ('relu6', True)
    >>> x = keras.Input((4,))
    >>> _, add, mean = keras.Model(x, keras.ops.mean(x + 3.0, 1)).operations
    >>> kind_of(add).merge, kind_of(mean).output_range  # operator nodes, not layers
    ('elementwise', 'own')
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Tuple

import keras

from tfcompress import _compat, _graph

__all__ = [
    "ARGUMENT",
    "FUSABLE_ACTIVATIONS",
    "KERNELS",
    "LayerKind",
    "MERGES",
    "OPERATIONS",
    "OUTPUT_RANGES",
    "UNKNOWN",
    "acts_per_channel",
    "activation_name",
    "is_operation",
    "is_fusable_activation",
    "is_softmax",
    "kind_of",
    "register",
    "registered",
]

KERNELS = ("dense", "conv", "conv_transpose", "depthwise", "separable", "embedding")
MERGES = ("elementwise", "concatenate")
OUTPUT_RANGES = ("input", "own")
# The activation of a layer like keras.layers.Activation is its `activation` argument.
ARGUMENT = "argument"
# TFLite fuses these into the Conv / DepthwiseConv / FullyConnected / Add... before them.
FUSABLE_ACTIVATIONS = ("relu", "relu6")
# Activations that mix the channels of a position (so channel pruning cannot pass them).
_CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What the toolkit knows about one layer class. Every property is off by default.

    Attributes:
        kernel: the layout of the main weights: ``"dense"`` ``(in, out)``, ``"conv"``
            ``(..., in, out)``, ``"conv_transpose"`` ``(..., out, in)``, ``"depthwise"``
            ``(..., in, multiplier)``, ``"separable"`` (``depthwise_kernel`` then
            ``pointwise_kernel``) or ``"embedding"`` (``embeddings``, ``(ids, out)``,
            read by index); None for layers without one.
        mixes_channels: writes fresh output channels, each computed from all input
            channels (Dense, Conv, SeparableConv...). Channel pruning masks what it
            reads and can remove what it writes.
        channelwise: acts on each channel on its own (BatchNorm, activations,
            pooling, padding, depthwise convolution...), so channel pruning passes
            channels through it.
        merge: ``"elementwise"`` (Add, Multiply...: inputs of one shape combined
            channel by channel) or ``"concatenate"``.
        flattens: a Flatten (channels repeat once per position on the flat axis).
        activation: for an activation layer, the function it applies ("relu",
            "softmax"...), or :data:`ARGUMENT` when its ``activation`` argument says
            (``keras.layers.Activation``). See :func:`activation_name`.
        normalization: a BatchNormalization: quantization folds it into the
            Conv / DepthwiseConv / Dense before it (or, after anything else, runs it
            as a 1x1 depthwise convolution), channel pruning slices its entries.
        affine: a fixed per-channel affine map ``x * scale + offset`` given by its
            arguments or statistics (Rescaling, Normalization): quantization runs it
            as a 1x1 depthwise convolution, which TFLite runs in int8.
        fuses_activation: TFLite fuses a following ReLU / ReLU6 into this op, so no
            activation quantizer goes between the two.
        quantize_weights: quantization-aware training runs this layer inside a
            ``QuantizeWrapper`` on fake-quantized (and folded) weights.
        output_range: ``"input"``: the op keeps its input's quantization range
            (pooling, reshape, padding, dropout...), so no quantizer follows it;
            ``"own"``: it gets a range of its own (as any other op does).
        factorable: low-rank factorization can split its kernel in two layers.
    """

    kernel: Optional[str] = None
    mixes_channels: bool = False
    channelwise: bool = False
    merge: Optional[str] = None
    flattens: bool = False
    activation: Optional[str] = None
    normalization: bool = False
    affine: bool = False
    fuses_activation: bool = False
    quantize_weights: bool = False
    output_range: Optional[str] = None
    factorable: bool = False

    def __post_init__(self):
        for field, allowed in (("kernel", KERNELS), ("merge", MERGES),
                               ("output_range", OUTPUT_RANGES)):
            value = getattr(self, field)
            if value is not None and value not in allowed:
                raise ValueError(f"`{field}` must be None or one of {allowed}. "
                                 f"Received: {field}={value!r}")
        if self.activation is not None and not isinstance(self.activation, str):
            raise TypeError("`activation` must be None or a string (a function name, or "
                            f"{ARGUMENT!r}). Received: activation={self.activation!r}")
        for field in dataclasses.fields(self):
            if field.type == "bool" and not isinstance(getattr(self, field.name), bool):
                raise TypeError(f"`{field.name}` must be a bool. "
                                f"Received: {field.name}={getattr(self, field.name)!r}")

    def __repr__(self) -> str:
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return f"LayerKind({', '.join(changed)})"


UNKNOWN = LayerKind()

_L = keras.layers
_PASS = {"channelwise": True, "output_range": "input"}  # per channel, keeps the input's range
_KEEPS_INPUT = {"output_range": "input"}
_WEIGHTED = {"fuses_activation": True, "quantize_weights": True}

# Keras' random augmentation layers, the identity at inference (RandomCrop is not: it
# crops at inference too).
AUGMENTATION_LAYERS = (
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast", "RandomTranslation",
    "RandomBrightness", "RandomShear", "RandomErasing", "RandomGaussianBlur",
    "RandomPerspective", "RandomPosterization", "RandomSaturation", "RandomHue",
    "RandomSharpness", "RandomColorDegeneration", "RandomColorJitter", "RandomInvert",
    "RandomGrayscale", "RandomElasticTransform", "AugMix", "RandAugment", "MixUp", "CutMix")

_APPLICATION_KINDS = {
    "LayerScale": dict(affine=True),  # ConvNeXt: x * gamma per channel
    "StochasticDepth": _PASS,  # ConvNeXt: the identity at inference
    "CustomScaleLayer": dict(merge="elementwise"),  # InceptionResNetV2: x + y * scale
}

# Order matters only for listings (error messages name the classes in this order).
_TABLE: Dict[type, LayerKind] = {cls: LayerKind(**props) for cls, props in [
    # Layers that mix channels.
    (_L.Dense, dict(kernel="dense", mixes_channels=True, factorable=True, **_WEIGHTED)),
    (_L.Conv1D, dict(kernel="conv", mixes_channels=True, **_WEIGHTED)),
    (_L.Conv2D, dict(kernel="conv", mixes_channels=True, factorable=True, **_WEIGHTED)),
    (_L.Conv3D, dict(kernel="conv", mixes_channels=True)),
    (_L.Conv1DTranspose, dict(kernel="conv_transpose", mixes_channels=True, **_WEIGHTED)),
    (_L.Conv2DTranspose, dict(kernel="conv_transpose", mixes_channels=True, **_WEIGHTED)),
    (_L.Conv3DTranspose, dict(kernel="conv_transpose", mixes_channels=True)),
    (_L.SeparableConv1D, dict(kernel="separable", mixes_channels=True)),
    (_L.SeparableConv2D, dict(kernel="separable", mixes_channels=True)),
    # Layers that act on each channel on its own.
    (_L.DepthwiseConv1D, dict(kernel="depthwise", channelwise=True, **_WEIGHTED)),
    (_L.DepthwiseConv2D, dict(kernel="depthwise", channelwise=True, **_WEIGHTED)),
    (_L.BatchNormalization, dict(channelwise=True, normalization=True, fuses_activation=True)),
    (_L.ReLU, dict(channelwise=True, activation="relu")),
    (_L.LeakyReLU, dict(channelwise=True, activation="leaky_relu")),
    (_L.ELU, dict(channelwise=True, activation="elu")),
    (_L.Activation, dict(channelwise=True, activation=ARGUMENT)),
    (_L.Dropout, _PASS),
    (_L.SpatialDropout1D, _PASS),
    (_L.SpatialDropout2D, _PASS),
    (_L.SpatialDropout3D, _PASS),
    (_L.GaussianNoise, _PASS),
    (_L.GaussianDropout, _PASS),
    (_L.AlphaDropout, _PASS),
    (_L.MaxPooling1D, _PASS),
    (_L.MaxPooling2D, _PASS),
    (_L.MaxPooling3D, dict(channelwise=True)),
    (_L.AveragePooling1D, _PASS),
    (_L.AveragePooling2D, _PASS),
    (_L.AveragePooling3D, dict(channelwise=True)),
    (_L.GlobalAveragePooling1D, dict(channelwise=True, output_range="own")),
    (_L.GlobalAveragePooling2D, dict(channelwise=True, output_range="own")),
    (_L.GlobalAveragePooling3D, dict(channelwise=True)),
    (_L.GlobalMaxPooling1D, _PASS),
    (_L.GlobalMaxPooling2D, _PASS),
    (_L.GlobalMaxPooling3D, dict(channelwise=True)),
    (_L.ZeroPadding1D, _PASS),
    (_L.ZeroPadding2D, _PASS),
    (_L.ZeroPadding3D, dict(channelwise=True)),
    (_L.Cropping1D, _PASS),
    (_L.Cropping2D, _PASS),
    (_L.Cropping3D, dict(channelwise=True)),
    (_L.UpSampling1D, _PASS),
    # TFLite's int8 RESIZE_* kernels keep the input's scale (the converter forces it).
    (_L.UpSampling2D, _PASS),
    (_L.UpSampling3D, dict(channelwise=True)),
    (_L.Identity, _PASS),
    (_L.ActivityRegularization, _PASS),
    # Data augmentation: the identity at inference (the Keras tutorials put it in the model).
    *[(cls, _PASS) for cls in _compat.keras_layers(AUGMENTATION_LAYERS)],
    # Per-channel affine preprocessing (x * scale + offset).
    (_L.Rescaling, dict(affine=True)),
    # A table read by index (GATHER keeps the table's range).
    (_L.Embedding, dict(kernel="embedding", quantize_weights=True, output_range="input")),
    (_L.Normalization, dict(affine=True)),
    # keras.applications' own layers (private classes, where this Keras has them).
    *[(cls, _APPLICATION_KINDS[name]) for name, cls in _compat.application_layers().items()],
    # Layers that mix channels of one position, without weights.
    (_L.Softmax, dict(activation="softmax")),
    # x / ||x|| over the last axis (TFLite's L2_NORMALIZATION, a fixed int8 output grid).
    (_graph.L2Normalize, dict(activation="l2_normalize")),
    # Layers that move values around.
    (_L.Resizing, _KEEPS_INPUT),
    (_L.Flatten, dict(flattens=True, output_range="input")),
    (_L.Reshape, dict(output_range="input")),
    (_L.Permute, dict(output_range="input")),
    # Layers that combine several inputs.
    (_L.Add, dict(merge="elementwise", fuses_activation=True)),
    (_L.Subtract, dict(merge="elementwise", fuses_activation=True)),
    (_L.Multiply, dict(merge="elementwise", fuses_activation=True)),
    (_L.Average, dict(merge="elementwise", fuses_activation=True)),
    (_L.Maximum, dict(merge="elementwise", fuses_activation=True)),
    (_L.Minimum, dict(merge="elementwise", fuses_activation=True)),
    (_L.Concatenate, dict(merge="concatenate", fuses_activation=True)),
]}


_BINARY = {"merge": "elementwise", "fuses_activation": True}  # TFLite fuses a ReLU into it
_KEEPS_RANGE = {"output_range": "input"}

# Built-in keras.ops operations, by class name (the nodes of `x + 3.0`, `x * y`,
# `x[:, :8]`, `keras.ops.mean(x, 1)`). An elementwise op whose other operand is a
# constant has the kind of its two-tensor form; the converter quantizes the constant.
OPERATIONS: Dict[str, LayerKind] = {name: LayerKind(**props) for name, props in [
    ("Add", _BINARY), ("Subtract", _BINARY), ("Multiply", _BINARY),
    ("TrueDivide", dict(merge="elementwise")), ("Divide", dict(merge="elementwise")),
    ("Maximum", dict(merge="elementwise")), ("Minimum", dict(merge="elementwise")),
    ("Concatenate", dict(merge="concatenate", fuses_activation=True)),
    ("Relu", dict(channelwise=True, activation="relu")),
    ("Relu6", dict(channelwise=True, activation="relu6")),
    ("LeakyRelu", dict(channelwise=True, activation="leaky_relu")),
    ("Sigmoid", dict(channelwise=True, activation="sigmoid")),
    ("Tanh", dict(channelwise=True, activation="tanh")),
    ("HardSilu", dict(channelwise=True, activation="hard_silu")),
    ("HardSigmoid", dict(channelwise=True, activation="hard_sigmoid")),
    ("Silu", dict(channelwise=True, activation="silu")),
    ("Gelu", dict(channelwise=True, activation="gelu")),
    ("Softmax", dict(activation="softmax")),
    ("LogSoftmax", dict(activation="log_softmax")),
    ("Mean", dict(output_range="own")),
    ("Sum", dict(output_range="own")),  # int8 SUM
    ("Pad", _KEEPS_RANGE),  # PAD / MIRROR_PAD keep the input's scale (zero pads only)
    ("Rsqrt", dict(channelwise=True)),  # int8 RSQRT (a LayerNorm split for QAT)
    ("Exp", dict(channelwise=True)),  # int8 EXP (an ELU split for QAT)
    ("Log", dict(channelwise=True)),  # int8 LOG (a softplus split for QAT)
    ("Absolute", dict(channelwise=True)),  # int8 ABS
    ("Sqrt", dict(channelwise=True)),  # int8 SQRT
    ("Reciprocal", dict(channelwise=True)),  # int8 DIV of a constant 1
    ("HardTanh", dict(channelwise=True, activation="hard_tanh")),  # RELU_N1_TO_1
    ("Clip", dict(channelwise=True)),  # MINIMUM and MAXIMUM (requantized after a fake quant)
    ("Einsum", dict(output_range="own")),  # BATCH_MATMUL, FULLY_CONNECTED...
    ("Stack", dict(merge="concatenate")),  # PACK: one scale for every input, as CONCATENATION
    ("Tile", _KEEPS_RANGE),
    ("Matmul", dict(output_range="own")),  # int8 BATCH_MATMUL (an attention split for QAT)
    ("Max", _KEEPS_RANGE), ("Min", _KEEPS_RANGE), ("Amax", _KEEPS_RANGE),
    ("Amin", _KEEPS_RANGE),
    ("GetItem", _KEEPS_RANGE), ("Slice", _KEEPS_RANGE), ("Reshape", _KEEPS_RANGE),
    ("ExpandDims", _KEEPS_RANGE), ("Squeeze", _KEEPS_RANGE), ("Transpose", _KEEPS_RANGE),
    # Values moved, not computed: TRANSPOSE, GATHER, and the converter's forms of repeat
    # and roll keep the input's scale. REVERSE_V2 needs a fake quant after it (without
    # one the converter left it float).
    ("Swapaxes", _KEEPS_RANGE), ("Take", _KEEPS_RANGE), ("Repeat", _KEEPS_RANGE),
    ("Roll", _KEEPS_RANGE), ("Flip", dict(output_range="own")),
    # Masks: comparisons of int8 (or integer) tensors and their logic give bool tensors
    # (no range); SELECT_V2 requantizes its two value inputs to its output's range.
    *[(name, dict(output_range="own")) for name in (
        "Equal", "NotEqual", "Greater", "GreaterEqual", "Less", "LessEqual", "Any", "All",
        "LogicalAnd", "LogicalOr", "LogicalNot", "LogicalXor")],
    ("Where", dict(merge="elementwise")),
]}


def is_operation(layer) -> bool:
    """Whether ``layer`` (an instance or a class) is a ``keras.Operation`` that is no Layer.

    >>> import keras
    >>> x = keras.Input((2,))
    >>> [is_operation(op) for op in keras.Model(x, keras.layers.Add()([x, x * 2.0])).operations]
    [False, True, False]
    """
    if isinstance(layer, type):
        return issubclass(layer, keras.Operation) and not issubclass(layer, keras.layers.Layer)
    return _compat.is_operation(layer)


def _builtin_operation_name(layer) -> Optional[str]:
    if isinstance(layer, type):
        builtin = is_operation(layer) and layer.__module__.startswith("keras.src.ops.")
        return layer.__name__ if builtin else None
    return _compat.builtin_operation_name(layer)


def register(layer_class: type, **properties) -> LayerKind:
    """Tells every transform what ``layer_class`` (and its subclasses) does.

    The record replaces any earlier one of the same class; properties not given are
    off (see :class:`LayerKind`). One call is all a new layer needs. An operation
    class (a ``keras.Operation`` subclass that is not a layer) registers the same way.

    Args:
        layer_class: a subclass of ``keras.layers.Layer`` (or of ``keras.Operation``).
        **properties: fields of :class:`LayerKind`.

    Returns:
        The new record.

    Raises:
        TypeError: ``layer_class`` is not a Keras layer class, a property is unknown,
            or a value has the wrong type.
        ValueError: a value is not one of those allowed.

    Example:
        >>> import keras
        >>> class Swish(keras.layers.Layer):
        ...     def call(self, x):
        ...         return x * keras.ops.sigmoid(x)
        >>> register(Swish, channelwise=True, activation="swish")
        LayerKind(channelwise=True, activation='swish')
        >>> class BiggerSwish(Swish):
        ...     pass
        >>> kind_of(BiggerSwish()).channelwise, activation_name(BiggerSwish())
        (True, 'swish')
    """
    if not isinstance(layer_class, type) or not issubclass(layer_class, keras.Operation):
        raise TypeError("`layer_class` must be a keras.Operation class, normally a "
                        "subclass of keras.layers.Layer. "
                        f"Received: layer_class={layer_class!r}")
    allowed = [f.name for f in dataclasses.fields(LayerKind)]
    unknown = sorted(set(properties) - set(allowed))
    if unknown:
        raise TypeError(f"Unknown layer properties {unknown}. Allowed: {', '.join(allowed)}.")
    kind = LayerKind(**properties)
    _TABLE[layer_class] = kind
    return kind


def kind_of(layer) -> LayerKind:
    """The record of a layer (or layer class): its nearest registered class's, or UNKNOWN.

    A built-in ``keras.ops`` operation without a registered class gets the record of
    its class name in :data:`OPERATIONS`.

    >>> import keras
    >>> kind_of(keras.layers.LSTM) is UNKNOWN
    True
    """
    cls = layer if isinstance(layer, type) else type(layer)
    for base in cls.__mro__:
        kind = _TABLE.get(base)
        if kind is not None:
            return kind
    name = _builtin_operation_name(layer)
    return OPERATIONS.get(name, UNKNOWN) if name is not None else UNKNOWN


def registered(where: Optional[Callable[[LayerKind], bool]] = None) -> Tuple[type, ...]:
    """The registered classes, in table order, whose record satisfies ``where``.

    >>> import keras
    >>> [cls.__name__ for cls in registered(lambda kind: kind.factorable)]
    ['Dense', 'Conv2D']
    """
    return tuple(cls for cls, kind in _TABLE.items() if where is None or where(kind))


def _relu_name(layer) -> str:
    slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
    threshold = float(getattr(layer, "threshold", 0.0) or 0.0)
    max_value = getattr(layer, "max_value", None)
    if slope == 0.0 and threshold == 0.0 and max_value is None:
        return "relu"
    if slope == 0.0 and threshold == 0.0 and float(max_value) == 6.0:
        return "relu6"
    return f"relu(negative_slope={slope}, max_value={max_value}, threshold={threshold})"


def activation_name(layer) -> str:
    """The name of the activation function ``layer`` applies to its output.

    For an activation layer, the one its record names (a ReLU layer says
    ``"relu"``, ``"relu6"`` for ``max_value=6``, or spells out its other arguments);
    for any other layer its ``activation`` argument (Dense, Conv, Activation), or
    ``"linear"`` when it has none.

    >>> import keras
    >>> activation_name(keras.layers.Dense(2, activation="relu"))
    'relu'
    >>> activation_name(keras.layers.Flatten())
    'linear'
    >>> activation_name(keras.layers.Softmax())
    'softmax'
    """
    name = kind_of(layer).activation
    if name == "relu":
        return _relu_name(layer)
    if name is not None and name != ARGUMENT:
        return name
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def is_fusable_activation(layer) -> bool:
    """Whether ``layer`` is an activation layer that TFLite fuses into the op before it."""
    return kind_of(layer).activation is not None and activation_name(layer) in FUSABLE_ACTIVATIONS


def is_softmax(layer) -> bool:
    """Whether ``layer`` is an activation layer that applies a softmax."""
    return kind_of(layer).activation is not None and activation_name(layer) == "softmax"


def acts_per_channel(layer, rank: Optional[int] = None) -> bool:
    """Whether ``layer``, as configured, acts on each channel of its last axis on its own.

    Its record must say ``channelwise``; a depthwise convolution must have a depth
    multiplier of 1, a normalization must normalize the last axis of its ``rank``-D
    input, and an activation layer must not apply a softmax.

    >>> import keras
    >>> acts_per_channel(keras.layers.DepthwiseConv2D(3)), acts_per_channel(
    ...     keras.layers.DepthwiseConv2D(3, depth_multiplier=2))
    (True, False)
    >>> acts_per_channel(keras.layers.Activation("softmax"))
    False
    """
    kind = kind_of(layer)
    if not kind.channelwise:
        return False
    if kind.kernel == "depthwise" and getattr(layer, "depth_multiplier", 1) != 1:
        return False
    if kind.normalization and rank is not None and layer.axis not in (-1, rank - 1):
        return False
    if kind.activation is not None and activation_name(layer) in _CHANNEL_MIXING_ACTIVATIONS:
        return False
    return True
