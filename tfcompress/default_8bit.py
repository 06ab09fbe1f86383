"""tfmot's ``default_8bit`` scheme under its names: scheme, registry, configs, quantizers.

``quantize_apply(model, scheme=Default8BitQuantizeScheme())`` is
``quantize_apply(model, scheme="default_8bit")``: tfcompress plans the graph itself
(BatchNorm folding, fused activations, fixed softmax ranges...; see
:mod:`tfcompress.quantization`), so :class:`Default8BitQuantizeLayoutTransform` leaves
the graph as it is. The registry hands out tfmot-protocol configs
(:class:`Default8BitQuantizeConfig`) for code that builds its own annotations from
it; a layer annotated with one runs in a :class:`~tfcompress.quantizers.QuantizeWrapperV2`
with tfmot's quantizers instead of tfcompress's folded wrapper.

Example:
    >>> import keras
    >>> registry = Default8BitQuantizeScheme().get_quantize_registry()
    >>> config = registry.get_quantize_config(keras.layers.Dense(4))
    >>> config.weight_attrs, config.activation_attrs, config.quantize_output
    (['kernel'], ['activation'], False)
"""

from __future__ import annotations

from typing import List

import keras

from tfcompress import layer_kinds
from tfcompress.quantizers import (LastValueQuantizer, MovingAverageQuantizer, QuantizeConfig,
                                   QuantizeLayoutTransform, QuantizeRegistry, QuantizeScheme)

__all__ = [
    "Default8BitConvWeightsQuantizer",
    "Default8BitOutputQuantizeConfig",
    "Default8BitQuantizeConfig",
    "Default8BitQuantizeLayoutTransform",
    "Default8BitQuantizeRegistry",
    "Default8BitQuantizeScheme",
    "NoOpQuantizeConfig",
]


@keras.saving.register_keras_serializable(package="tfcompress")
class Default8BitConvWeightsQuantizer(LastValueQuantizer):
    """Per-channel (last axis), symmetric, narrow-range 8-bit weights (tfmot's conv default)."""

    def __init__(self, num_bits: int = 8, per_axis: bool = True, symmetric: bool = True,
                 narrow_range: bool = True):
        super().__init__(num_bits, per_axis, symmetric, narrow_range)


def _weights_quantizer(layer):
    if layer_kinds.kind_of(layer).kernel in ("conv", "depthwise") or isinstance(
            layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return Default8BitConvWeightsQuantizer()
    return LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True, narrow_range=True)


def _activations_quantizer():
    return MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                  narrow_range=False)


@keras.saving.register_keras_serializable(package="tfcompress")
class Default8BitQuantizeConfig(QuantizeConfig):
    """Quantizes the named weight and activation attributes of a layer (tfmot's class).

    Args:
        weight_attrs: attribute names of the weights (``["kernel"]``).
        activation_attrs: attribute names of the activations (``["activation"]``).
        quantize_output: also quantize the layer's output.
    """

    def __init__(self, weight_attrs, activation_attrs, quantize_output):
        self.weight_attrs = list(weight_attrs)
        self.activation_attrs = list(activation_attrs)
        self.quantize_output = bool(quantize_output)

    def get_weights_and_quantizers(self, layer) -> List:
        return [(getattr(layer, attr), _weights_quantizer(layer)) for attr in self.weight_attrs]

    def get_activations_and_quantizers(self, layer) -> List:
        return [(getattr(layer, attr), _activations_quantizer())
                for attr in self.activation_attrs]

    def set_quantize_weights(self, layer, quantize_weights) -> None:
        if len(quantize_weights) != len(self.weight_attrs):
            raise ValueError(f"{len(self.weight_attrs)} quantized weights expected "
                             f"({self.weight_attrs}). Received: {len(quantize_weights)}")
        for attr, weight in zip(self.weight_attrs, quantize_weights):
            setattr(layer, attr, weight)

    def set_quantize_activations(self, layer, quantize_activations) -> None:
        if len(quantize_activations) != len(self.activation_attrs):
            raise ValueError(f"{len(self.activation_attrs)} quantized activations expected "
                             f"({self.activation_attrs}). Received: {len(quantize_activations)}")
        for attr, activation in zip(self.activation_attrs, quantize_activations):
            setattr(layer, attr, activation)

    def get_output_quantizers(self, layer) -> List:
        return [_activations_quantizer()] if self.quantize_output else []

    def get_config(self) -> dict:
        return {"weight_attrs": self.weight_attrs, "activation_attrs": self.activation_attrs,
                "quantize_output": self.quantize_output}

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()


@keras.saving.register_keras_serializable(package="tfcompress")
class Default8BitOutputQuantizeConfig(QuantizeConfig):
    """Quantizes only a layer's output (tfmot's config for Add, Concatenate, pooling...)."""

    def get_output_quantizers(self, layer) -> List:
        return [_activations_quantizer()]

    def get_config(self) -> dict:
        return {}


@keras.saving.register_keras_serializable(package="tfcompress")
class NoOpQuantizeConfig(QuantizeConfig):
    """Quantizes nothing (tfmot's config for Reshape, Dropout...)."""

    def get_output_quantizers(self, layer) -> List:
        return []

    def set_quantize_weights(self, layer, quantize_weights) -> None:
        pass

    def get_config(self) -> dict:
        return {}


class Default8BitQuantizeRegistry(QuantizeRegistry):
    """tfmot-protocol configs for the layers tfcompress quantizes.

    Weighted layers (Dense, convolutions) get :class:`Default8BitQuantizeConfig` on
    ``kernel`` / ``depthwise_kernel`` and ``activation``; merges and pooling get
    :class:`Default8BitOutputQuantizeConfig`; layers that keep their input's range
    get :class:`NoOpQuantizeConfig`.
    """

    def get_quantize_config(self, layer) -> QuantizeConfig:
        """The config for ``layer``.

        Raises:
            ValueError: a layer tfcompress does not know (its class is named).
        """
        kind = layer_kinds.kind_of(layer)
        if kind is layer_kinds.UNKNOWN:
            raise ValueError(f"Layer {layer.name!r} of class {type(layer).__name__} is not "
                             "supported by the default 8-bit registry. Give it a "
                             "QuantizeConfig of your own.")
        if kind.quantize_weights:
            attr = next((a for a in ("depthwise_kernel", "embeddings") if hasattr(layer, a)),
                        "kernel")
            activation = ["activation"] if hasattr(layer, "activation") else []
            return Default8BitQuantizeConfig([attr], activation, not activation)
        if kind.output_range == "input":
            return NoOpQuantizeConfig()
        return Default8BitOutputQuantizeConfig()


class Default8BitQuantizeLayoutTransform(QuantizeLayoutTransform):
    """Leaves the graph as it is: tfcompress's planner does the rewrites (BatchNorm folds)."""

    def apply(self, model, layer_quantize_map):
        """Returns ``(model, layer_quantize_map)`` unchanged."""
        return model, layer_quantize_map


class Default8BitQuantizeScheme(QuantizeScheme):
    """tfmot's default scheme: int8 weights (per channel for convolutions) and activations.

    Args:
        disable_per_axis: tfmot's option for per-tensor convolution weights; tfcompress
            always quantizes convolutions per channel (what TFLite's int8 kernels and
            XNNPACK expect), so only False is accepted.

    Raises:
        ValueError: ``disable_per_axis=True``.
    """

    scheme_name = "default_8bit"

    def __init__(self, disable_per_axis: bool = False):
        if disable_per_axis:
            raise ValueError("tfcompress quantizes convolution weights per channel; "
                             "`disable_per_axis=True` is not supported. Received: "
                             f"disable_per_axis={disable_per_axis!r}")
        self.disable_per_axis = False

    def get_layout_transformer(self) -> QuantizeLayoutTransform:
        return Default8BitQuantizeLayoutTransform()

    def get_quantize_registry(self) -> QuantizeRegistry:
        return Default8BitQuantizeRegistry()
