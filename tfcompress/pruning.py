"""Magnitude pruning on Keras 3 with tfmot's names.

A tfmot user switches by changing the import::

    from tfcompress.pruning import prune_low_magnitude, strip_pruning, UpdatePruningStep

How it works: :class:`PruneLowMagnitude` wraps a layer and keeps, as weights saved
with the model, one mask per prunable weight and the pruning step. At every training
call it asks its schedule ``(should_prune, sparsity) = schedule(step)``; on a pruning
turn it recomputes the masks from the weight magnitudes (unstructured, in blocks, or
N:M), and it multiplies the weights by their masks before the wrapped layer runs.
:class:`UpdatePruningStep` advances the step once per batch. Without that callback the
step stays at -1 and training stops with an error that says so (tfmot's behaviour:
a wrapper that counted its own calls would miscount under ``tf.distribute`` and when
a layer is called twice per step).

As in tfmot, the wrappers hold the original layer objects: a pruned model shares its
weights with the model it was made from, and :func:`strip_pruning` returns a plain Keras
model around the same layers, with the zeros in place. It also performs the surgery of
channel pruning (:mod:`tfcompress.channel_pruning`).

Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
    ...                           keras.layers.Dense(2)])
    >>> pruned = prune_low_magnitude(
    ...     model, pruning_schedule=ConstantSparsity(0.75, begin_step=0, frequency=1))
    >>> pruned.compile("sgd", "mse")
    >>> _ = pruned.fit(np.ones((4, 8)), np.ones((4, 2)), epochs=1, verbose=0,
    ...                callbacks=[UpdatePruningStep()])
    >>> stripped = strip_pruning(pruned)
    >>> [round(r.sparsity, 2) for r in sparsity_report(stripped).layers]
    [0.75, 0.75]
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import difflib
import inspect
import os
import re
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfcompress import _compat, _graph, layer_kinds, schedules
from tfcompress.pruning_policy import PruneForLatencyOnXNNPack, PruningPolicy
from tfcompress.schedules import (AutomatedGradualPruning, ConstantSparsity, PolynomialDecay,
                                  PruningSchedule)

__all__ = [
    "AutomatedGradualPruning",
    "ConstantSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruneLowMagnitude",
    "PruningPolicy",
    "PruningSchedule",
    "PruningSummaries",
    "SparsityReport",
    "UpdatePruningStep",
    "block_mask",
    "check_sparsity_m_by_n",
    "collect_prunable_layers",
    "magnitude_mask",
    "m_by_n_mask",
    "prunable_weights",
    "prune_low_magnitude",
    "prune_scope",
    "sparsity_report",
    "strip_pruning",
    "tflite_sizes",
]

# ---------------------------------------------------------------------------
# Pure mask math.
# ---------------------------------------------------------------------------


def magnitude_mask(weight, sparsity):
    """Mask that zeroes the ``round(size * sparsity)`` smallest-magnitude entries.

    The count is exact even when magnitudes tie (the mask comes from ``top_k``
    indices, not from a threshold).

    >>> w = np.array([[0.1, -3.0], [2.0, 0.0]], np.float32)
    >>> magnitude_mask(w, 0.5).numpy()
    array([[0., 1.],
           [1., 0.]], dtype=float32)
    """
    weight = tf.convert_to_tensor(weight)
    flat = tf.reshape(tf.abs(weight), [-1])
    n = tf.size(flat)
    n_zero = tf.cast(tf.round(tf.cast(n, tf.float32) * tf.cast(sparsity, tf.float32)), tf.int32)
    k = tf.maximum(n - n_zero, 1)
    _, idx = tf.math.top_k(flat, k=k, sorted=False)
    mask = tf.scatter_nd(idx[:, None], tf.ones_like(idx, tf.float32), [n])
    return tf.cast(tf.reshape(mask, tf.shape(weight)), weight.dtype)


def _as_matrix_shape(shape: Sequence[int]) -> Tuple[int, int]:
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows, int(shape[-1])


def block_mask(weight, sparsity, *, block_size: Tuple[int, int], pooling: str = "AVG"):
    """Mask that zeroes whole ``block_size`` blocks with the smallest pooled magnitude.

    A weight of rank > 2 is viewed as a matrix ``(prod(shape[:-1]), shape[-1])``
    (for a Conv2D kernel: ``(kh * kw * in, out)``). Each dimension of ``block_size``
    must divide the matching matrix dimension.

    >>> w = np.array([[1, 1, 0.1, 0.1], [1, 1, 0.1, 0.1]], np.float32)
    >>> block_mask(w, 0.5, block_size=(2, 2)).numpy()
    array([[1., 1., 0., 0.],
           [1., 1., 0., 0.]], dtype=float32)
    """
    weight = tf.convert_to_tensor(weight)
    rows, cols = _as_matrix_shape(weight.shape)
    bh, bw = block_size
    mat = tf.reshape(tf.abs(weight), [rows // bh, bh, cols // bw, bw])
    pooled = (tf.reduce_max if pooling == "MAX" else tf.reduce_mean)(mat, axis=[1, 3])
    small = magnitude_mask(pooled, sparsity)
    full = tf.repeat(tf.repeat(small, bh, axis=0), bw, axis=1)
    return tf.reshape(full, tf.shape(weight))


def m_by_n_mask(weight, *, n: int, m: int):
    """N:M mask: in each group of ``m`` consecutive input channels keep the ``n`` largest.

    The groups run along the input-channel axis of a Keras kernel (axis -2), which
    is the innermost axis of TFLite's weight layout (OHWI for convolutions,
    ``(out, in)`` for fully connected), the layout that 2:4 kernels read. When the
    input channels are not a multiple of ``m``, the last group is padded with zeros,
    as tfmot does, so its padding takes the pruned places first.

    >>> w = np.array([[4.0], [-1.0], [3.0], [0.5]], np.float32)  # Dense(4 -> 1)
    >>> m_by_n_mask(w, n=2, m=4).numpy().ravel().tolist()
    [1.0, 0.0, 1.0, 0.0]
    >>> m_by_n_mask(w[:3], n=2, m=4).numpy().ravel().tolist()  # 3 inputs: one padded zero
    [1.0, 0.0, 1.0]
    """
    weight = tf.convert_to_tensor(weight)
    rank = len(weight.shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    moved = tf.transpose(tf.abs(weight), perm)
    channels = int(moved.shape[-1])
    pad = -channels % m
    if pad:
        moved = tf.pad(moved, [[0, 0]] * (rank - 1) + [[0, pad]])
    groups = tf.reshape(moved, [-1, m])
    _, idx = tf.math.top_k(groups, k=n, sorted=False)
    mask = tf.reduce_sum(tf.one_hot(idx, m, dtype=weight.dtype), axis=1)
    mask = tf.reshape(mask, tf.shape(moved))[..., :channels]
    return tf.transpose(mask, perm)


# ---------------------------------------------------------------------------
# Which weights of which layers are pruned.
# ---------------------------------------------------------------------------

_PRUNABLE_NAMES = ("kernel", "recurrent_kernel", "embeddings", "depthwise_kernel",
                   "pointwise_kernel")
# Keras layers pruned by class, as tfmot's registry does: the exact class, so that a
# subclass (`class MyDense(keras.layers.Dense)`) must say what it prunes with
# `get_prunable_weights()`, since it may hold other weights or use them differently.
_SUPPORTED = (
    keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv1D, keras.layers.Conv2D,
    keras.layers.Conv3D, keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose, keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D, keras.layers.SeparableConv2D, keras.layers.Embedding,
    keras.layers.SimpleRNN, keras.layers.LSTM, keras.layers.GRU,
    keras.layers.MultiHeadAttention, keras.layers.Bidirectional, keras.layers.TimeDistributed,
)
# A generic `keras.layers.RNN` is supported when every cell (stacked cells included) is
# one of these or declares `get_prunable_weights()`.
_RNN_CELLS = (keras.layers.SimpleRNNCell, keras.layers.LSTMCell, keras.layers.GRUCell)
# Layers whose input channels sit on kernel axis -2, so that N:M groups are meaningful.
_M_BY_N_SUPPORTED = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                     keras.layers.Conv3D)
SUPPORTED_LAYERS = tuple(c.__name__ for c in _SUPPORTED) + (
    "RNN (with SimpleRNN, LSTM or GRU cells, stacked or not)",
    "any layer with a `get_prunable_weights()` method (see PrunableLayer)",
    "layers without weights (pooling, Dropout, Flatten, Reshape, Add, activations...) and "
    "BatchNormalization / LayerNormalization: wrapped as no-ops, as in tfmot",)

# Keras layers without weights that the layer-kind table does not list. Wrapped one by
# one (tfmot's `prune_low_magnitude(keras.layers.Dropout(0.2))`), they become no-op
# wrappers, as tfmot's registry makes them, so that a list of wrapped layers works.
_WEIGHTLESS = (
    keras.layers.Permute, keras.layers.RepeatVector, keras.layers.Masking, keras.layers.Lambda,
    keras.layers.Rescaling, keras.layers.Resizing, keras.layers.CenterCrop,
    keras.layers.AlphaDropout, keras.layers.UnitNormalization, keras.layers.Dot,
    keras.layers.ActivityRegularization, keras.layers.GaussianDropout,
    keras.layers.GaussianNoise, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
)
# Layers with weights that tfmot's registry wraps with nothing to prune.
_NO_OP_WITH_WEIGHTS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)


class PrunableLayer(abc.ABC):
    """Mixin that makes a custom Keras layer prunable (tfmot's ``PrunableLayer``).

    A layer says which of its weights pruning masks by implementing
    ``get_prunable_weights()``; any layer with that method is accepted, so inheriting
    this class is optional and only documents the contract.

    Example:
        >>> class MyDense(keras.layers.Dense, PrunableLayer):
        ...     def get_prunable_weights(self):
        ...         return [self.kernel]
        >>> wrapper = prune_low_magnitude(MyDense(4))
        >>> wrapper.build((None, 8)); [w.path.split("/")[-1] for w in wrapper._weights_to_prune]
        ['kernel']
    """

    @abc.abstractmethod
    def get_prunable_weights(self):
        """The weights (variables) of this layer that pruning masks."""
        raise NotImplementedError("PrunableLayer subclasses implement get_prunable_weights().")


def _rnn_supported(layer) -> bool:
    cell = getattr(layer, "cell", None)
    cells = getattr(cell, "cells", None) or [cell]
    return all(hasattr(c, "get_prunable_weights") or type(c) in _RNN_CELLS for c in cells)


def _is_supported(layer) -> bool:
    if hasattr(layer, "get_prunable_weights"):
        return True
    if isinstance(layer, (keras.layers.Bidirectional, keras.layers.TimeDistributed)):
        inner = getattr(layer, "forward_layer", None) or getattr(layer, "layer", None)
        return inner is not None and _is_supported(inner)
    if type(layer) is keras.layers.RNN:
        return _rnn_supported(layer)
    return type(layer) in _SUPPORTED


def _holds_no_weights(layer) -> bool:
    """Whether ``layer``'s class is one of Keras' layers that never hold weights.

    Those the layer-kind table describes without a kernel or normalization parameters
    (pooling, padding, dropout, activations, Flatten, Reshape, merges...), and
    :data:`_WEIGHTLESS`. A built layer that holds weights anyway is not one.
    """
    if isinstance(layer, _LEAVE_ALONE) or (getattr(layer, "built", False) and layer.weights):
        return False
    if isinstance(layer, _WEIGHTLESS):
        return True
    kind = layer_kinds.kind_of(layer)
    return (kind != layer_kinds.UNKNOWN and kind.kernel is None and not kind.normalization
            and not kind.mixes_channels and not kind.quantize_weights
            and type(layer).__module__.startswith("keras."))


def _is_no_op(layer) -> bool:
    """Wrapped with nothing to prune, as tfmot's registry does (Dropout, BatchNormalization...)."""
    return type(layer) in _NO_OP_WITH_WEIGHTS or _holds_no_weights(layer)


def _unsupported_error(layer) -> ValueError:
    if isinstance(layer, _LEAVE_ALONE):
        return ValueError(
            f"Layer {layer.name!r} of class {type(layer).__name__} cannot be pruned: its "
            "weights are normalization, scale or activation parameters, which pruning never "
            "masks. "
            "Leave it unwrapped (a model-level `prune_low_magnitude(model)` leaves it as it "
            f"is). Supported: {', '.join(SUPPORTED_LAYERS)}.")
    subclass = next((c.__name__ for c in _SUPPORTED if isinstance(layer, c)), None)
    hint = (f" It subclasses {subclass}, which is pruned by exact class only (as in tfmot): "
            "say which weights to prune with `get_prunable_weights()`." if subclass else "")
    return ValueError(
        f"Layer {layer.name!r} of class {type(layer).__name__} cannot be pruned.{hint} "
        f"Supported: {', '.join(SUPPORTED_LAYERS)}. To prune a custom layer, give it a "
        "`get_prunable_weights()` method that returns the weights to prune; to keep it "
        "dense in a model, pass `layers=` with the names of the layers to prune."
    )


def prunable_weights(layer) -> List:
    """The weights of a built ``layer`` that pruning masks.

    Kernels, recurrent kernels, embeddings and depthwise/pointwise kernels; never
    biases or normalization parameters; none for a layer without weights. A layer may
    declare its own list with a ``get_prunable_weights()`` method (tfmot's
    ``PrunableLayer`` contract).

    Raises:
        ValueError: the layer is not supported (the message lists what is).
    """
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    if _is_supported(layer):
        return [w for w in layer.trainable_weights if w.path.split("/")[-1] in _PRUNABLE_NAMES]
    if _is_no_op(layer):
        return []
    raise _unsupported_error(layer)


# Built-in layers that hold weights but nothing worth pruning; a model-level
# `prune_low_magnitude` leaves them alone instead of rejecting the model
# (BatchNormalization and LayerNormalization get no-op wrappers, as in tfmot).
_LEAVE_ALONE = (
    keras.layers.BatchNormalization, keras.layers.LayerNormalization,
    keras.layers.GroupNormalization, keras.layers.PReLU, keras.layers.Normalization,
    keras.layers.Attention, keras.layers.AdditiveAttention,  # a learned score scale only
    *[cls for name, cls in _compat.application_layers().items() if name == "LayerScale"],
)


# ---------------------------------------------------------------------------
# The wrapper.
# ---------------------------------------------------------------------------

_BLOCK_POOLING = ("AVG", "MAX")


def _check_options(block_size, block_pooling_type, sparsity_m_by_n):
    if (not isinstance(block_size, (tuple, list)) or len(block_size) != 2
            or not all(isinstance(b, int) and b >= 1 for b in block_size)):
        raise ValueError(
            f"`block_size` must be two positive ints. Received: block_size={block_size!r}")
    if block_pooling_type not in _BLOCK_POOLING:
        raise ValueError(f"`block_pooling_type` must be one of {_BLOCK_POOLING}. "
                         f"Received: block_pooling_type={block_pooling_type!r}")
    if sparsity_m_by_n is not None:
        ok = (isinstance(sparsity_m_by_n, (tuple, list)) and len(sparsity_m_by_n) == 2
              and all(isinstance(v, int) for v in sparsity_m_by_n)
              and 0 < sparsity_m_by_n[0] < sparsity_m_by_n[1])
        if not ok:
            raise ValueError("`sparsity_m_by_n` must be (zeros, group) with 0 < zeros < group, "
                             "e.g. (2, 4). "
                             f"Received: sparsity_m_by_n={sparsity_m_by_n!r}")
        if tuple(block_size) != (1, 1):
            raise ValueError("`sparsity_m_by_n` and `block_size` cannot be combined. "
                             f"Received: block_size={block_size!r}, "
                             f"sparsity_m_by_n={sparsity_m_by_n!r}")


def _first_argument(layer) -> Optional[str]:
    params = [p for p in inspect.signature(layer.call).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[0].name if params else None


class _BoundPrunableWeights:
    """``layer.get_prunable_weights()`` for a built-in Keras layer (no reference cycle)."""

    def __init__(self, layer):
        self._layer = weakref.ref(layer)

    def __call__(self):
        layer = self._layer()
        if _is_supported_builtin(layer):
            return [w for w in layer.trainable_weights
                    if w.path.split("/")[-1] in _PRUNABLE_NAMES]
        return []


def _is_supported_builtin(layer) -> bool:
    if isinstance(layer, (keras.layers.Bidirectional, keras.layers.TimeDistributed)):
        return True
    if type(layer) is keras.layers.RNN:
        return _rnn_supported(layer)
    return type(layer) in _SUPPORTED


@keras.saving.register_keras_serializable(package="tfcompress")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a layer so that its prunable weights are masked by magnitude.

    A layer without weights (pooling, Dropout, Flatten, Add...) gets a wrapper that
    masks nothing but keeps a pruning step, as tfmot's does.

    Args:
        layer: the layer to prune (see :data:`SUPPORTED_LAYERS`).
        pruning_schedule: a schedule; default ``ConstantSparsity(0.5, 0, -1, 100)``.
        block_size: prune whole ``(rows, cols)`` blocks of the weight viewed as a matrix.
        block_pooling_type: ``"AVG"`` or ``"MAX"``: how a block's magnitude is pooled.
        sparsity_m_by_n: ``(zeros, group)``: at least ``zeros`` zeros in every ``group``
            consecutive input channels, tfmot's meaning (2:4 is ``(2, 4)``; ``(1, 4)``
            keeps 3 of 4); a last partial group is padded with zeros, as in tfmot. The
            schedule then only decides when masks update.
        **kwargs: Keras layer arguments (``name``...).

    Masks update only in calls with ``training=True``. Keras passes that flag down
    from ``fit`` through Sequential and Functional models; a subclassed model's
    ``call`` must accept a ``training`` argument for Keras to pass it on.

    Raises:
        ValueError: the layer is not supported, or an option is invalid.
    """

    def __init__(self, layer, pruning_schedule=None, block_size=(1, 1),
                 block_pooling_type="AVG", sparsity_m_by_n=None, **kwargs):
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, keras.layers.Layer):
            # tfmot raises ValueError here, so tfmot code catching it keeps working.
            raise ValueError("PruneLowMagnitude wraps a Keras `Layer` instance. "
                             f"Received: {layer!r}")
        if not (_is_supported(layer) or _is_no_op(layer)):
            raise _unsupported_error(layer)
        _check_options(block_size, block_pooling_type, sparsity_m_by_n)
        if sparsity_m_by_n is not None and not (
                isinstance(layer, _M_BY_N_SUPPORTED) or hasattr(layer, "get_prunable_weights")
                or _is_no_op(layer)):
            raise ValueError(
                f"`sparsity_m_by_n` needs input channels on kernel axis -2; layer "
                f"{layer.name!r} of class {type(layer).__name__} does not have them. "
                f"Supported: {', '.join(c.__name__ for c in _M_BY_N_SUPPORTED)}.")
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        if _compat.input_shape_argument(layer) is not None:  # stays a Sequential's first layer
            kwargs.setdefault("input_shape", _compat.input_shape_argument(layer))
        super().__init__(layer, **kwargs)
        if not hasattr(layer, "get_prunable_weights"):
            # tfmot's registry gives every wrapped Keras layer this method.
            layer.get_prunable_weights = _BoundPrunableWeights(layer)
        self.pruning_schedule = schedules.deserialize(pruning_schedule)
        self.block_size = tuple(block_size)
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = tuple(sparsity_m_by_n) if sparsity_m_by_n else None

    def build(self, input_shape=None):
        if not self.layer.built:
            try:
                self.layer.build(input_shape)
            except TypeError as e:
                raise ValueError(
                    f"Could not build {type(self.layer).__name__} {self.layer.name!r} from "
                    f"one input shape ({input_shape}). Build the layer (for example by "
                    "calling it on its inputs) before wrapping it.") from e
        self._weights_to_prune = prunable_weights(self.layer)
        if self.sparsity_m_by_n:
            # As tfmot: N:M applies to rank-2 and rank-4 kernels (Dense, Conv2D) and to
            # Conv1D's rank-3 one (a CONV_2D in TFLite); a Conv3D kernel stays dense.
            self._weights_to_prune = [w for w in self._weights_to_prune if len(w.shape) <= 4]
        if not self._weights_to_prune and not (_is_no_op(self.layer)
                                               or hasattr(self.layer, "get_prunable_weights")):
            raise _unsupported_error(self.layer)
        self.masks = []
        for w in self._weights_to_prune:
            self._check_weight(w)
            self.masks.append(self.add_weight(
                name=re.sub(r"\W", "_", w.path.split("/", 1)[-1]) + "_mask", shape=w.shape,
                initializer="ones", trainable=False, dtype=w.dtype))
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), dtype="int64", trainable=False,
            initializer=keras.initializers.Constant(-1))
        self.built = True

    def _check_weight(self, w):
        shape = tuple(w.shape)
        rows, cols = _as_matrix_shape(shape)
        if self.block_size != (1, 1) and (rows % self.block_size[0] or cols % self.block_size[1]):
            raise ValueError(
                f"`block_size` {self.block_size} does not divide weight {w.path!r} of layer "
                f"{self.layer.name!r} seen as a {rows}x{cols} matrix (shape {shape}). "
                f"Received: block_size={self.block_size}")
        if self.sparsity_m_by_n and len(shape) < 2:
            raise ValueError(
                f"`sparsity_m_by_n` {self.sparsity_m_by_n} needs input channels on axis -2; "
                f"weight {w.path!r} of layer {self.layer.name!r} has shape {shape}.")

    def _new_mask(self, weight, sparsity):
        if self.sparsity_m_by_n:
            zeros, m = self.sparsity_m_by_n  # tfmot's (m, n): m zeros in every n
            return m_by_n_mask(weight, n=m - zeros, m=m)
        if self.block_size != (1, 1):
            return block_mask(weight, sparsity, block_size=self.block_size,
                              pooling=self.block_pooling_type)
        return magnitude_mask(weight, sparsity)

    def _prune(self):
        step = tf.convert_to_tensor(self.pruning_step)
        # The callback sets -1 to 0 when training begins and adds 1 before each batch,
        # so the schedule sees steps 1..N over N batches, as tfmot's does.
        check = tf.debugging.assert_greater_equal(step, tf.constant(1, tf.int64),
                                                  message=schedules.MISSING_CALLBACK)
        with tf.control_dependencies([check]):
            should, sparsity = self.pruning_schedule(step)
            should = tf.cast(should, tf.bool)
        if _compat.in_multi_replica_context():
            # A merge_call may not sit inside tf.cond: select the masks in the cond,
            # assign them outside it.
            weights = [tf.convert_to_tensor(w) for w in self._weights_to_prune]
            masks = tf.cond(should, lambda: [self._new_mask(w, sparsity) for w in weights],
                            lambda: [tf.identity(m) for m in self.masks])
            masks = list(masks) if isinstance(masks, (list, tuple)) else [masks]
            _compat.assign_variables(self.masks + self._weights_to_prune,
                                     masks + [w * m for w, m in zip(weights, masks)])
            return

        def update():
            for w, m in zip(self._weights_to_prune, self.masks):
                m.assign(self._new_mask(tf.convert_to_tensor(w), sparsity))
            return tf.constant(True)

        # Masks are rewritten only on pruning turns; the weights are masked every step
        # (the optimizer moved the pruned entries away from zero since the last one).
        tf.cond(should, update, lambda: tf.constant(False))
        for w, m in zip(self._weights_to_prune, self.masks):
            w.assign(w * m)

    def __call__(self, *args, **kwargs):
        if not args:
            # A layer called with keywords only (`mha(query=q, value=v)`): its first
            # argument becomes this wrapper's `inputs`.
            first = _first_argument(self.layer)
            if first in kwargs:
                args = (kwargs.pop(first),)
        return super().__call__(*args, **kwargs)

    def call(self, inputs, *args, training=None, **kwargs):
        if training is True:
            self._prune()
        return self.layer(inputs, *args, training=training, **kwargs)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    @property
    def prunable_weights(self) -> List:
        """The wrapped layer's weights that are masked (tfmot's attribute)."""
        return list(getattr(self, "_weights_to_prune", []))

    @property
    def pruning_vars(self) -> List[tuple]:
        """``[(weight, mask, None)]`` (tfmot's attribute; tfmot's third item, a threshold
        variable, does not exist here: masks come from ``top_k``, not a threshold)."""
        return [(w, m, None) for w, m in zip(getattr(self, "_weights_to_prune", []),
                                              getattr(self, "masks", []))]

    def apply_masks(self) -> None:
        """Multiplies the weights by their masks now (eagerly)."""
        for w, m in zip(self._weights_to_prune, self.masks):
            w.assign(w * m)

    @classmethod
    def from_config(cls, config):
        # Keras' Wrapper.from_config pops "layer" from the dict it is given; a copy keeps
        # the caller's config (a model's get_config()) intact.
        return super().from_config(copy.deepcopy(config))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": list(self.sparsity_m_by_n) if self.sparsity_m_by_n else None,
        })
        return config


# ---------------------------------------------------------------------------
# Model-level API.
# ---------------------------------------------------------------------------


def _check_layer_names(model, names: Sequence[str]) -> set:
    if isinstance(names, str):
        raise TypeError(f"`layers` is a list of layer names. Received: layers={names!r}")
    known = {layer.name for layer in _graph.all_layers(model)}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
            raise ValueError(f"Model {model.name!r} has no layer named {name!r}."
                             + (f" Close matches: {close}." if close else ""))
    return set(names)


def _clone_with(model, clone_function):
    """Rebuilds a Sequential/Functional model (nested ones too) from ``clone_function(layer)``.

    The layers ``clone_function`` returns are used as they are: the original layer
    objects or wrappers around them, so the new model shares their weights. Operator
    nodes (``x + y``, ``keras.ops`` calls) are reused too.
    """
    if not _compat.is_graph_model(model):
        raise ValueError(
            f"Expected a Sequential or Functional model. Received a subclassed model of "
            f"class {type(model).__name__}: wrap its layers inside `__init__` instead "
            "(`self.dense = prune_low_magnitude(keras.layers.Dense(10))`).")
    return _graph.clone_model(model, clone_function=clone_function, recursive=True,
                              keep_operations=True)


_NOT_PRUNABLE_TYPE = (
    "`prune_low_magnitude` can only prune an object of the following types: "
    "keras.models.Sequential, keras functional model, keras.layers.Layer, list of "
    "keras.layers.Layer. You passed an object of type: {input}.")


def prune_low_magnitude(target, pruning_schedule=None, block_size=(1, 1),
                        block_pooling_type="AVG", pruning_policy=None, sparsity_m_by_n=None,
                        *, layers: Optional[Sequence[str]] = None, **kwargs):
    """Wraps a layer, a list of layers or a whole model for magnitude pruning.

    Same name and arguments, in the same order, as tfmot's function. A Sequential
    (built or not) or Functional model (nested models included) is rebuilt with every
    layer wrapped, as tfmot does: layers with prunable weights get masks; layers with
    none (pooling, Dropout, Flatten, Add, BatchNormalization...) get no-op wrappers
    that strip back to themselves. Operator nodes (``x + y``, ``x[:, :8]``,
    ``keras.ops`` calls) stay as they are, and so do GroupNormalization, PReLU and
    Normalization layers. A subclassed model cannot be rebuilt: wrap its layers in
    ``__init__``.

    As in tfmot, each wrapper holds the original layer object, and layers left
    unwrapped are the original objects too: the new model shares its weights with
    ``target``. Training it prunes ``target``'s weights in place, and ``target`` then
    computes with the pruned, fine-tuned weights. A layer that is already a pruning
    layer (:class:`PruneLowMagnitude`, a channel mask) is used as it is, not wrapped
    twice. To keep ``target`` unchanged (a teacher for distillation, a dense
    reference), prune a copy::

        own = keras.models.clone_model(target)
        own.set_weights(target.get_weights())
        pruned = prune_low_magnitude(own)

    The model returned is a new Keras model with its own inputs; it saves and loads with
    plain ``keras.models.load_model``.

    Args:
        target: a layer, a list of layers, or a Sequential / Functional model.
        pruning_schedule: a schedule (see :mod:`tfcompress.schedules`).
        block_size, block_pooling_type, sparsity_m_by_n: see :class:`PruneLowMagnitude`.
        pruning_policy: a :class:`PruningPolicy` (models only): it checks the model and
            says which layers to wrap (:class:`PruneForLatencyOnXNNPack`).
        layers: models only: wrap only the layers with these names (tfmot needs a
            ``clone_function`` for this). Small first convolutions and classifier
            heads are often worth keeping dense.
        **kwargs: passed to :class:`PruneLowMagnitude` (single layer only).

    Returns:
        The wrapped layer, list of layers, or a new model around ``target``'s layers.

    Raises:
        ValueError: ``target`` is not a layer, a list of layers or a Sequential /
            Functional model (tfmot's message); a layer with weights is not supported,
            an option is invalid, or ``layers`` names a layer the model does not have.
    """
    _check_options(block_size, block_pooling_type, sparsity_m_by_n)
    if layers is not None and not isinstance(target, keras.Model):
        raise ValueError("`layers` selects layers of a model. Received: layers="
                         f"{list(layers)!r} with a {type(target).__name__}")
    if pruning_policy is not None and not (
            hasattr(pruning_policy, "allow_pruning")
            and hasattr(pruning_policy, "ensure_model_supports_pruning")):
        raise TypeError("`pruning_policy` must be a PruningPolicy (with `allow_pruning` and "
                        f"`ensure_model_supports_pruning`). Received: {pruning_policy!r}")
    options = dict(pruning_schedule=schedules.deserialize(pruning_schedule),
                   block_size=block_size, block_pooling_type=block_pooling_type,
                   sparsity_m_by_n=sparsity_m_by_n)
    if isinstance(target, (list, tuple)):
        return [t if isinstance(t, PruneLowMagnitude)
                else type(t).from_config(t.get_config()) if isinstance(t, keras.layers.InputLayer)
                else prune_low_magnitude(t, **options) for t in target]
    if isinstance(target, keras.Model):
        if not _compat.is_graph_model(target):
            raise ValueError(_NOT_PRUNABLE_TYPE.format(input=type(target).__name__))
        if pruning_policy is not None:
            pruning_policy.ensure_model_supports_pruning(target)
        if layers is None and pruning_policy is None and any(
                _graph.inlinable_layer(layer) and not _is_supported(layer)
                for layer in target.layers):
            # A user's block of Keras layers (a Layer subclass whose weights are its
            # sublayers') is pruned as the layers it calls.
            target = _graph.functional(target, purpose="pruning", inline=True,
                                       inline_layers=lambda layer: not _is_supported(layer))
        chosen = None if layers is None else _check_layer_names(target, layers)

        def wrap(layer):
            # The original objects, as tfmot's clone_function returns them.
            if hasattr(layer, "apply_masks"):  # already a pruning layer: not wrapped twice
                return layer
            if chosen is not None and layer.name not in chosen:
                return layer
            if pruning_policy is not None and not pruning_policy.allow_pruning(layer):
                return layer
            if sparsity_m_by_n and not isinstance(layer, _M_BY_N_SUPPORTED):
                return layer
            if _is_supported(layer) or _is_no_op(layer):
                return PruneLowMagnitude(layer, **options)
            if isinstance(layer, _LEAVE_ALONE) or not _holds_trainable_weights(layer):
                return layer
            raise _unsupported_error(layer)

        return _clone_with(target, wrap)
    if isinstance(target, keras.layers.Layer):
        return PruneLowMagnitude(target, **options, **kwargs)
    raise ValueError(_NOT_PRUNABLE_TYPE.format(input=type(target).__name__))


@contextlib.contextmanager
def prune_scope():
    """A no-op context manager, kept so that tfmot code runs unchanged.

    tfmot needs ``with prune_scope(): load_model(path)`` to find its pruning classes.
    tfcompress registers every pruning object with Keras
    (``keras.saving.register_keras_serializable(package="tfcompress")``), so plain
    ``keras.models.load_model(path)`` loads a pruned model, in or out of this scope.

    >>> with prune_scope():
    ...     pass
    """
    yield


def _holds_trainable_weights(layer) -> bool:
    """Whether ``layer`` has (or, unbuilt, may have) trainable weights pruning would ignore.

    A built layer says so itself. An unbuilt one is judged by its class: Keras layers
    the layer-kind table lists without a kernel are weightless; any other may not be.
    """
    if getattr(layer, "built", False):
        return bool(layer.trainable_weights)
    return not _holds_no_weights(layer)


def strip_pruning(model):
    """Returns a plain Keras model with the pruned zeros in place.

    Every :class:`PruneLowMagnitude` wrapper is replaced by the layer it wraps, as in
    tfmot: the same layer object, whose weights are first multiplied by their masks
    (so they are zero where the masks are, whatever the optimizer did after the last
    pruning step). The stripped model therefore shares its weights with ``model`` (and
    with the model given to :func:`prune_low_magnitude`). If the model was prepared by
    :func:`tfcompress.channel_pruning.prune_channels`, its pruned channels are then
    removed for real: that builds a smaller model with new weights.

    Args:
        model: a model (or a single wrapper layer) returned by the pruning API.

    Returns:
        A new model around the wrapped layers (or, for a wrapper, its layer).

    Raises:
        TypeError: ``model`` is neither a Keras model nor a pruning wrapper.
    """
    if isinstance(model, PruneLowMagnitude):
        return _unwrapped(model)
    if not isinstance(model, keras.Model):
        raise TypeError(f"strip_pruning expects a Keras model. Received: {type(model).__name__}")

    def unwrap(layer):
        return _unwrapped(layer) if isinstance(layer, PruneLowMagnitude) else layer

    stripped = _clone_with(model, unwrap)
    # Pruning layers of other modules strip themselves: ChannelMask removes its channels.
    for kind in _layer_classes(stripped, "strip_model"):
        stripped = kind.strip_model(stripped)
    return stripped


def _unwrapped(wrapper: PruneLowMagnitude):
    """The wrapped layer, its weights masked in place (an unbuilt one has no weights yet)."""
    if wrapper.built:
        wrapper.apply_masks()
    return wrapper.layer


def _layer_classes(model, hook: str) -> list:
    """The classes of ``model``'s layers that define the class-level ``hook``, in order.

    This is how pruning layers defined elsewhere (:mod:`tfcompress.channel_pruning`'s
    ``ChannelMask``) plug into :func:`strip_pruning` and :class:`UpdatePruningStep`
    without this module importing them.
    """
    kinds: list = []
    for layer in _compat.flatten_layers(model):
        if hasattr(type(layer), hook) and type(layer) not in kinds:
            kinds.append(type(layer))
    return kinds


def collect_prunable_layers(model) -> List[PruneLowMagnitude]:
    """Every :class:`PruneLowMagnitude` wrapper of ``model``, nested models included
    (tfmot's function)."""
    return [layer for layer in _compat.flatten_layers(model)
            if isinstance(layer, PruneLowMagnitude)]


def _pruning_layers(model) -> List[keras.layers.Layer]:
    return [layer for layer in _compat.flatten_layers(model)
            if hasattr(layer, "pruning_step") and hasattr(layer, "apply_masks")]


# ---------------------------------------------------------------------------
# Callbacks.
# ---------------------------------------------------------------------------


class UpdatePruningStep(keras.callbacks.Callback):
    """Advances the pruning step of every pruning layer once per training batch.

    As in tfmot, training begins by setting a fresh step (-1) to 0, and the schedule
    then sees steps 1..N over N batches: after three one-batch epochs the step is 3. A
    model loaded mid-pruning keeps its step. Masks are re-applied before validation,
    at the end of each epoch and at the end of training, so that evaluated and saved
    weights hold exact zeros. Channel-pruning masks (:mod:`tfcompress.channel_pruning`)
    are updated here too. On a model without pruning layers it does nothing (tfmot's
    behaviour).

    In a custom training loop, call it as tfmot's guide does::

        step_callback.set_model(model)
        step_callback.on_train_begin()
        for epoch in range(epochs):
            for x, y in batches:
                step_callback.on_train_batch_begin(batch=-1)
                ...  # forward pass with training=True, gradients, apply
            step_callback.on_epoch_end(batch=-1)
    """

    def on_train_begin(self, logs=None):
        unbuilt = [layer.name for layer in _compat.flatten_layers(self.model)
                   if isinstance(layer, PruneLowMagnitude) and not layer.built]
        if unbuilt:
            raise RuntimeError(
                f"Pruning layers {unbuilt} are not built yet, so their pruning step cannot "
                "be advanced. Build the model before `fit` (call it once on a batch, or "
                "`model.build(input_shape)`); subclassed models need this.")
        self._layers = _pruning_layers(self.model)
        steps = [layer.pruning_step for layer in self._layers]
        for step in steps:
            if int(step.numpy()) < 0:  # a fresh layer: the first batch is step 1
                step.assign(0)

        @tf.function
        def advance():  # one call per batch instead of one eager op per layer
            for step in steps:
                step.assign_add(1)

        self._advance = advance
        # Model-wide controllers asked for by layer classes (channel pruning's ranking).
        self._controllers = [kind.pruning_controller(self.model)
                             for kind in _layer_classes(self.model, "pruning_controller")]

    def on_train_batch_begin(self, batch, logs=None):
        if not self._layers and not self._controllers:
            return
        self._advance()
        for controller in self._controllers:
            controller.maybe_update()

    def _apply(self):
        for layer in getattr(self, "_layers", None) or _pruning_layers(self.model):
            layer.apply_masks()

    def on_test_begin(self, logs=None):
        self._apply()

    def on_epoch_end(self, batch, logs=None):  # tfmot's argument name: `batch`
        self._apply()

    def on_train_end(self, logs=None):
        self._apply()


class PruningSummaries(keras.callbacks.Callback):
    """Writes per-layer sparsity and the pruning step as TensorBoard scalars.

    As tfmot's callback does, it writes when each epoch begins, at the optimizer's
    iteration count (the pruning step when the model has no optimizer), so a custom
    loop calls ``on_epoch_begin(epoch=...)``; it also writes when training ends, so
    the final sparsity is logged.

    Args:
        log_dir: folder for the event files: a non-empty string (or a path).
        update_freq: ``"epoch"`` or a number of batches between writes.

    Raises:
        ValueError: ``log_dir`` is empty or not a string, or ``update_freq`` is invalid.
    """

    def __init__(self, log_dir, update_freq="epoch"):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"`log_dir` must be a non-empty string. Received: log_dir={log_dir!r}")
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError("`update_freq` must be 'epoch' or a positive int. "
                             f"Received: update_freq={update_freq!r}")
        self.log_dir = str(log_dir)
        self.update_freq = update_freq
        self._writer = None

    def _write(self, step: int) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        report = sparsity_report(self.model)
        layers = _pruning_layers(self.model)
        # tf.summary.write with the "scalars" plugin tag: what tf.summary.scalar
        # writes, without needing the tensorboard package installed.
        meta = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
        values = {f"sparsity/{r.layer}/{r.weight}": r.sparsity for r in report.layers}
        values["sparsity/total"] = report.total_sparsity
        if layers:
            values["pruning_step"] = float(layers[0].pruning_step.numpy())
        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=meta)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
            layers = _pruning_layers(self.model)
            self._write(int(layers[0].pruning_step.numpy()) if layers else batch)

    def _iteration(self) -> int:
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        if iterations is not None:
            return int(keras.ops.convert_to_numpy(iterations))
        layers = _pruning_layers(self.model)
        return max(int(layers[0].pruning_step.numpy()), 0) if layers else 0

    def on_epoch_begin(self, epoch, logs=None):
        self._write(self._iteration())

    def on_train_end(self, logs=None):
        self._write(self._iteration())
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ---------------------------------------------------------------------------
# Reports.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """Zeros in one prunable weight."""

    layer: str
    weight: str
    shape: Tuple[int, ...]
    zeros: int
    size: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-weight and total sparsity of a model's prunable weights."""

    layers: Tuple[WeightSparsity, ...]

    @property
    def total_sparsity(self) -> float:
        size = sum(r.size for r in self.layers)
        return sum(r.zeros for r in self.layers) / size if size else 0.0

    def to_dict(self) -> dict:
        return {"total_sparsity": self.total_sparsity,
                "layers": [dict(dataclasses.asdict(r), sparsity=r.sparsity) for r in self.layers]}

    def summary(self) -> str:
        lines = ["| layer | weight | shape | sparsity |", "|---|---|---|---|"]
        lines += [f"| {r.layer} | {r.weight} | {'x'.join(map(str, r.shape))} | "
                  f"{100 * r.sparsity:.1f}% |" for r in self.layers]
        lines.append(f"| total | | | {100 * self.total_sparsity:.1f}% |")
        return "\n".join(lines)


def _relative_path(weight, layer_name: str) -> str:
    parts = weight.path.split("/")
    if layer_name in parts:
        parts = parts[len(parts) - parts[::-1].index(layer_name):]
    return "/".join(parts)


def sparsity_report(model) -> SparsityReport:
    """Counts exact zeros in every prunable weight of ``model`` (wrapped or stripped).

    For a wrapped model the masks are applied to the count, so the report shows the
    sparsity that :func:`strip_pruning` will produce.
    """
    layers = _compat.flatten_layers(model)
    wrapped = {id(layer.layer) for layer in layers if isinstance(layer, PruneLowMagnitude)}
    rows = []
    for layer in layers:
        if isinstance(layer, PruneLowMagnitude):
            pairs = [(w, w.numpy() * m.numpy()) for w, m in zip(layer._weights_to_prune,
                                                                  layer.masks)]
            name = layer.layer.name
        elif (id(layer) not in wrapped and layer.weights and not isinstance(layer, keras.Model)
              and _is_supported(layer)):
            pairs = [(w, w.numpy()) for w in prunable_weights(layer)]
            name = layer.name
        else:
            continue
        rows += [WeightSparsity(name, _relative_path(w, name), tuple(w.shape),
                                int(np.sum(v == 0)), int(v.size)) for w, v in pairs]
    return SparsityReport(tuple(rows))
