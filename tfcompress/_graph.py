"""Graph helpers shared by the transforms that rebuild Functional models."""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from tfcompress import _compat

__all__ = [
    "all_layers",
    "all_operations",
    "called_once",
    "causal_masked",
    "padding_masked",
    "clone_model",
    "functional",
    "inlinable_layer",
    "attention_refusal",
    "recurrent_refusal",
    "split_attention",
    "split_average_pools",
    "split_clamps",
    "split_dot_attention",
    "split_groupnorms",
    "groupnorm_refusal",
    "ATTENTION_LAYERS",
    "dot_attention_refusal",
    "dot_refusal",
    "split_dots",
    "split_activations",
    "split_layernorms",
    "split_masking",
    "split_einsum_dense",
    "einsum_dense_refusal",
    "einsum_matmul",
    "EinsumMatmul",
    "split_masked_means",
    "masked_mean_refusal",
    "split_operator_forms",
    "split_scaled_sums",
    "split_prelus",
    "split_recurrent",
    "split_separable",
    "split_time_distributed",
    "time_distributed_refusal",
    "split_unit_normalizations",
    "unit_normalization_refusal",
    "L2Normalize",
    "splittable_layernorm",
    "averaging_pool",
    "activation_form",
    "SPLIT_ACTIVATIONS",
    "variable_dims",
    "with_input_shapes",
]


def all_layers(model):
    """Every layer of ``model``, those of nested models included (depth first)."""
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


def all_operations(model):
    """Every operation of ``model`` (layers and operator nodes), those of nested models
    included (depth first)."""
    # A Sequential model's `operations` can be empty where its `layers` are not.
    for op in getattr(model, "operations", None) or getattr(model, "layers", []):
        yield op
        if hasattr(op, "operations"):
            yield from all_operations(op)


def functional(model, *, purpose: str, inline: bool = False, inline_layers=None):
    """Returns ``model`` as a Functional model (a Sequential is rewritten as one).

    Args:
        model: a Sequential or Functional Keras model.
        purpose: what the caller does, for the error message ("channel pruning").
        inline: replace nested Sequential / Functional models by their layers, and
            ``Lambda`` layers whose function runs on symbolic tensors (keras.ops calls,
            operators) by the operations it calls, so that a transform sees (and can
            rewrite) every layer and operation of the graph.
        inline_layers: ``inline_layers(layer)`` says which user blocks
            (:func:`inlinable_layer`) to replace by the layer calls and operations of
            their ``call`` (a call that needs real tensors keeps its block whole).

    Raises:
        ValueError: a subclassed model, or a Sequential model that was never built.
    """
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(f"Build the Sequential model (start it with keras.Input) before "
                             f"{purpose}. Received: an unbuilt Sequential {model.name!r}.")
        inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype,
                             name=model.inputs[0].name)
        x = inputs
        for layer in model.layers:
            x = layer(x)
        model = keras.Model(inputs, x, name=model.name)
    elif not _compat.is_graph_model(model):
        raise ValueError(
            f"{purpose[0].upper() + purpose[1:]} needs a Sequential or Functional model. "
            f"Received a subclassed model of class {type(model).__name__}. Rebuild it with the "
            "Functional API: `inputs = keras.Input(shape); outputs = <call the same layers>; "
            "model = keras.Model(inputs, outputs)`, then copy the weights with "
            "`model.set_weights(subclassed.get_weights())`.")
    if inline and any(_compat.is_graph_model(layer) or type(layer) is keras.layers.Lambda
                      for layer in model.layers):
        model = clone_model(model, clone_function=lambda layer: layer,
                                         call_function=_inline_call)
    for _ in range(8):  # a block inside a block: one level per pass
        if not inline_layers or not any(inlinable_layer(layer) and inline_layers(layer)
                                        for layer in model.layers):
            break
        model = clone_model(model, clone_function=lambda layer: layer,
                            call_function=lambda layer, *args, **kwargs: _inline_block(
                                layer, inline_layers, *args, **kwargs))
    return model


def inlinable_layer(layer) -> bool:
    """Whether ``layer`` is a user's block: a Layer subclass (not a Keras or tfcompress
    class, not a model) whose weights all belong to the layers it holds (a residual block
    of Conv2D and BatchNormalization). :func:`functional` can write it as the calls its
    ``call`` makes, so that each transform sees those layers."""
    module = type(layer).__module__
    if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.Model) or \
            module.startswith(("keras.", "keras_", "tfcompress.", "tf_keras.")):
        return False
    inner = _compat.flatten_layers(layer)
    held = {id(w) for sub in inner for w in sub.weights}
    return bool(inner) and all(id(w) in held for w in layer.weights)


def _inline_block(layer, inline_layers, *args, **kwargs):
    if inlinable_layer(layer) and inline_layers(layer):
        try:
            out = layer.call(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a call that needs real tensors stays whole
            return layer(*args, **kwargs)
        if all(isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(out)):
            return out
    return layer(*args, **kwargs)


def _inline_call(layer, *args, **kwargs):
    if _compat.is_graph_model(layer):
        nested = functional(layer, purpose="inlining", inline=True)
        return _compat.run_graph(nested, args[0] if len(args) == 1 else list(args),
                                 operation_fn=lambda op: op)
    if type(layer) is keras.layers.Lambda and len(args) == 1 and \
            all(v is None for v in kwargs.values()):  # Keras passes mask=None
        try:
            out = layer.function(args[0], **(layer.arguments or {}))
        except (TypeError, ValueError, AttributeError):  # TensorFlow calls need real tensors
            return layer(*args, **kwargs)
        if all(isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(out)):
            return out
    return layer(*args, **kwargs)


def clone_model(model, *, keep_operations: bool = False, **kwargs):
    """``keras.models.clone_model`` that returns an uncompiled model.

    Keras copies the compile configuration into a clone, which fails for a custom
    loss that is not registered; our transforms return uncompiled models, as tfmot's
    do, and the user compiles them.

    Args:
        model: a Sequential or Functional model.
        keep_operations: the non-Layer operations of the graph (``x + y``, ``x[:, :8]``,
            ``keras.ops.mean(x, 1)``: see :func:`tfcompress._compat.is_operation`) are
            reused as they are and called on the new tensors; ``clone_function`` and
            ``call_function`` then only ever see layers. Operations are stateless, so
            the clone computes what the model did.
        **kwargs: ``keras.models.clone_model``'s arguments.

    Example:
        >>> import keras
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs) + inputs)
        >>> seen = []
        >>> def clone_function(layer):
        ...     seen.append(type(layer).__name__)
        ...     return _compat.layer_from_config(layer)
        >>> clone = clone_model(model, clone_function=clone_function, keep_operations=True)
        >>> seen, [type(node.operation).__name__ for node in _compat.graph_nodes(clone)][-1]
        (['Dense'], 'Add')
    """
    if kwargs.get("clone_function") is None:  # Keras' own would refuse a Lambda
        kwargs["clone_function"] = _compat.layer_from_config
    if keep_operations:
        kwargs = _keeping_operations(**kwargs)
    if (kwargs.get("input_tensors") is None and _compat.is_graph_model(model)
            and not isinstance(model, keras.Sequential)):
        # Keras names new inputs after the input tensors ("keras_tensor_3"); keep the
        # input layers' names, so that the clone's config matches the model's.
        kwargs["input_tensors"] = keras.tree.map_structure(_input_like, model.input)
    with _compat.uncompiled(model):
        return keras.models.clone_model(model, **kwargs)


def variable_dims(model) -> Dict[str, tuple]:
    """The inputs of a Keras model with an unknown size besides the batch axis.

    Returns:
        ``{input name: per-sample shape}`` (``None`` where unknown); empty when every
        input is fixed.
    """
    out = {}
    for tensor in list(getattr(model, "inputs", None) or []):
        shape = tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            out[_input_name(tensor)] = shape
    return out


def with_input_shapes(model, shapes: Dict[str, tuple]):
    """``model`` on inputs of the given per-sample shapes, sharing its layers and weights.

    Args:
        model: a Sequential or Functional model.
        shapes: ``{input name: per-sample shape}``; inputs not named keep theirs.

    Example:
        >>> import keras
        >>> inputs = keras.Input((None, 8), name="frames")
        >>> pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(4, 3)(inputs))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(pooled))
        >>> variable_dims(model)
        {'frames': (None, 8)}
        >>> fixed = with_input_shapes(model, {"frames": (20, 8)})
        >>> tuple(fixed.inputs[0].shape), variable_dims(fixed), fixed.layers[1] is model.layers[1]
        ((None, 20, 8), {}, True)
    """
    model = functional(model, purpose="fixing input shapes")

    def fixed(tensor):
        name = _input_name(tensor)
        shape = tuple(shapes.get(name, tuple(tensor.shape[1:])))
        return keras.Input(batch_shape=(tensor.shape[0],) + shape, dtype=tensor.dtype,
                           name=name)

    return clone_model(model, input_tensors=keras.tree.map_structure(fixed, model.input),
                       clone_function=lambda layer: layer, keep_operations=True)


def _input_name(tensor) -> str:
    layer = _compat.producer(tensor)
    return layer.name if layer is not None else tensor.name


def _input_like(tensor):
    layer = _compat.producer(tensor)
    return keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, sparse=tensor.sparse,
                       name=layer.name if layer is not None else None)


def _keeping_operations(clone_function=None, call_function=None, **kwargs) -> dict:
    def clone_layer(layer):
        if _compat.is_operation(layer):
            return layer
        if clone_function is None:
            return _compat.layer_from_config(layer)
        return clone_function(layer)

    def call(layer, *args, **call_kwargs):
        if _compat.is_operation(layer) or call_function is None:
            return layer(*args, **call_kwargs)
        return call_function(layer, *args, **call_kwargs)

    return dict(kwargs, clone_function=clone_layer,
                call_function=call if call_function is not None else None)


def _input_shapes(model) -> Dict[int, tuple]:
    """``{id(operation): input shape}`` for the nodes of ``model`` that read one tensor."""
    return {id(node.operation): node.input_tensors[0].shape
            for node in _compat.graph_nodes(model) if len(node.input_tensors) == 1}


def called_once(model) -> set:
    """``{id(operation)}`` of the operations called once in ``model``'s graph (a layer
    shared by two calls is left whole by the splits; calls in other models, such as the
    model a weightless layer was reused from, do not count)."""
    calls: Dict[int, int] = {}
    for node in _compat.graph_nodes(model):
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
    return {key for key, count in calls.items() if count == 1}


def _replace_layers(model, splits, replace) -> Tuple[object, List[str]]:
    """Clones ``model`` with each layer for which ``splits(layer)`` holds replaced.

    ``replace(original, pending, *args, **kwargs)`` builds what stands for ``original`` on
    its call's tensors, appends each new layer with its weights to ``pending`` and returns
    ``(outputs, note)``. Every other layer is copied with its weights; operator nodes
    (``x + y``, ``keras.ops.elu(x)``) are reused, or replaced where ``splits`` says so.

    Returns:
        The clone and the notes, or ``(model, [])`` when no layer splits.
    """
    if not any(splits(layer) for layer in model.operations):
        return model, []
    notes: List[str] = []
    pending: list = []

    def clone_function(layer):
        if _compat.is_operation(layer):  # stateless: called again on the new tensors
            return layer
        new = _compat.layer_from_config(layer)
        if layer.weights and not splits(layer):  # split layers are replaced, never built
            pending.append((new, layer.get_weights()))
        return new

    def call_function(layer, *args, **kwargs):
        original = layer if _compat.is_operation(layer) else model.get_layer(layer.name)
        if not splits(original):
            return layer(*args, **kwargs)
        out, note = replace(original, pending, *args, **kwargs)
        notes.append(note)
        return out

    with warnings.catch_warnings():
        # The layers a rewrite adds (a Reshape of masked values) drop masks they do not
        # use, and Keras warns: the rewrites pass the masks they need explicitly.
        warnings.filterwarnings("ignore", message=".*does not support masking.*")
        clone = clone_model(model, clone_function=clone_function, call_function=call_function)
    for new, weights in pending:
        new.set_weights(weights)
    return clone, notes


_SEPARABLE = {
    keras.layers.SeparableConv1D: (keras.layers.DepthwiseConv1D, keras.layers.Conv1D),
    keras.layers.SeparableConv2D: (keras.layers.DepthwiseConv2D, keras.layers.Conv2D),
}


def time_distributed_refusal(layer, node=None) -> Optional[str]:
    """Why :func:`split_time_distributed` leaves ``layer`` whole, or None when it splits it
    (a TimeDistributed of a layer, on an input whose dimensions past the batch are known)."""
    if not isinstance(layer, keras.layers.TimeDistributed):
        return "not a TimeDistributed"
    if isinstance(layer.layer, keras.Model):
        return "a TimeDistributed of a model: call the model's layers in TimeDistributed each"
    if node is not None and any(d is None for d in node.input_tensors[0].shape[1:]):
        return (f"a TimeDistributed on an input of shape {tuple(node.input_tensors[0].shape)}: "
                "the time steps and each step's shape must be known")
    return None


def split_time_distributed(model, *, unwrap=lambda layer: layer,
                           rewrap=lambda original, new: new, keep=lambda layer: False):
    """Writes each ``TimeDistributed(layer)`` as RESHAPE of the time steps into the batch,
    ``layer`` itself (its weights copied, wrapped as the TimeDistributed was) and RESHAPE
    back: the ops TFLite runs, with ``layer`` visible to the transforms that rebuild it.

    Args:
        model: a Functional model.
        unwrap: the layer inside a wrapper (e.g. an annotation), or the layer itself.
        rewrap: wraps the inner layer as its TimeDistributed was wrapped.
        keep: layers to leave whole.

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    nodes = {id(node.operation): node for node in _compat.graph_nodes(model)}

    def splits(layer):
        return (not keep(layer) and id(layer) in nodes
                and time_distributed_refusal(unwrap(layer), nodes[id(layer)]) is None)

    def replace(original, pending, *args, **kwargs):
        base, x = unwrap(original), args[0]
        steps, step_shape = int(x.shape[1]), tuple(int(d) for d in x.shape[2:])
        inner = _compat.layer_from_config(base.layer)
        if base.layer.weights:
            pending.append((inner, base.layer.get_weights()))
        y = rewrap(original, inner)(keras.ops.reshape(x, (-1,) + step_shape))
        out = keras.ops.reshape(y, (-1, steps) + tuple(int(d) for d in y.shape[1:]))
        return out, (f"{base.name}: TimeDistributed({type(base.layer).__name__}) -> RESHAPE of "
                     f"the {steps} steps into the batch, {base.layer.name}, RESHAPE back")

    return _replace_layers(model, splits, replace)


def split_separable(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                    keep=lambda layer: False) -> Tuple[object, List[str]]:
    """SeparableConv1D/2D -> DepthwiseConv1D/2D + 1x1 Conv1D/2D, the ops TFLite runs for it.

    Args:
        model: a Functional model.
        unwrap: the layer inside a wrapper (e.g. an annotation), or the layer itself.
        rewrap: wraps each new half as its original was wrapped.
        keep: layers to leave whole.

    Returns:
        The new model (weights copied; the model itself if nothing was split) and one
        note per split layer.
    """
    def splits(layer):
        base = unwrap(layer)
        return (type(base) in _SEPARABLE and not keep(layer)
                and base.data_format == "channels_last")

    def replace(original, pending, *args, **kwargs):
        base = unwrap(original)
        depthwise_class, pointwise_class = _SEPARABLE[type(base)]
        depthwise = depthwise_class(
            base.kernel_size, strides=base.strides, padding=base.padding,
            depth_multiplier=base.depth_multiplier, dilation_rate=base.dilation_rate,
            use_bias=False, name=f"{base.name}_depthwise")
        pointwise = pointwise_class(base.filters, 1, activation=base.activation,
                                    use_bias=base.use_bias, name=f"{base.name}_pointwise")
        halves = [rewrap(original, h) for h in (depthwise, pointwise)]
        out = halves[1](halves[0](*args, **kwargs))
        weights = {w.path.split("/")[-1]: w.numpy() for w in base.weights}
        pending.append((halves[0], [weights["depthwise_kernel"]]))
        pending.append((halves[1], [weights["pointwise_kernel"]]
                        + ([weights["bias"]] if base.use_bias else [])))
        return out, (f"{base.name}: {type(base).__name__} -> {depthwise_class.__name__} + 1x1 "
                     f"{pointwise_class.__name__} (what TFLite runs; each half quantized on "
                     "its own)")

    return _replace_layers(model, splits, replace)


def _pads(size, pool: int, stride: int) -> bool:
    """Whether "same" padding pads an axis of ``size`` for this pool and stride."""
    return size is None or max((-(-size // stride) - 1) * stride + pool - size, 0) > 0


def averaging_pool(layer, input_shape) -> bool:
    """Whether :func:`split_average_pools` writes ``layer`` as a depthwise convolution: an
    AveragePooling2D (channels last) that pads nothing and does not cover its whole
    input (that one is a mean over the positions)."""
    if type(layer) is not keras.layers.AveragePooling2D or layer.data_format != "channels_last":
        return False
    spatial = tuple(input_shape[1:3])
    if None in spatial or tuple(layer.pool_size) == spatial:
        return False
    return layer.padding == "valid" or not any(
        _pads(n, k, st) for n, k, st in zip(spatial, layer.pool_size, layer.strides))


def split_average_pools(model, *, unwrap=lambda layer: layer,
                        rewrap=lambda original, new: new, keep=lambda layer: False
                        ) -> Tuple[object, List[str]]:
    """AveragePooling2D -> a frozen DepthwiseConv2D with weights ``1 / (kh * kw)``.

    TFLite's int8 AVERAGE_POOL_2D keeps its input's scale and rounds each average on it;
    a QAT model cannot round ties as it does, and the rounding of hundreds of averages
    adds up in the layers after (measured: Conv2D -> AveragePooling2D(2) -> Flatten ->
    Dense, QAT model vs file 3 to 4 steps on both kernel paths; with the depthwise form, 0
    to 1). The weights are exact in int8 (every one is the channel's maximum) and
    DEPTHWISE_CONV_2D requantizes to an output range of its own, which QAT simulates.
    Only pools that pad nothing (see :func:`averaging_pool`): a padded average divides by
    the positions inside the input, a convolution by the whole window.

    Returns:
        The new model (weights copied; the model itself if nothing changed) and one note
        per pool.
    """
    shapes = _input_shapes(model)

    def splits(layer):
        return (id(layer) in shapes and not keep(layer)
                and averaging_pool(unwrap(layer), shapes[id(layer)]))

    def replace(original, pending, *args, **kwargs):
        base = unwrap(original)
        (kh, kw), channels = base.pool_size, int(shapes[id(original)][-1])
        depthwise = keras.layers.DepthwiseConv2D(
            base.pool_size, strides=base.strides, padding="valid", use_bias=False,
            trainable=False, name=f"{base.name}_depthwise")
        out = rewrap(original, depthwise)(*args, **kwargs)
        pending.append((depthwise, [np.full((kh, kw, channels, 1), 1.0 / (kh * kw), "float32")]))
        return out, (f"{base.name}: AveragePooling2D -> DepthwiseConv2D with weights "
                     f"1/{kh * kw}, frozen (int8 AVERAGE_POOL_2D rounds its averages on its "
                     "input's scale, which a QAT model cannot follow)")

    return _replace_layers(model, splits, replace)


def _layernorm_axes(layer, rank: int) -> Tuple[int, ...]:
    axes = (layer.axis,) if isinstance(layer.axis, int) else tuple(layer.axis)
    return tuple(sorted(a % rank for a in axes))


def splittable_layernorm(layer, rank: int, *, any_axes: bool = False) -> bool:
    """Whether :func:`split_layernorms` writes ``layer`` as ops: a LayerNormalization
    without RMS scaling, or an RMSNormalization, over the last axis of a 2-D to 4-D input
    (``any_axes``: over any axes but the batch)."""
    if type(layer) is keras.layers.LayerNormalization:
        if getattr(layer, "rms_scaling", False):
            return False
    elif type(layer) is not getattr(keras.layers, "RMSNormalization", None):
        return False
    axes = _layernorm_axes(layer, rank)
    return 0 not in axes if any_axes else (axes == (rank - 1,) and 2 <= rank <= 4)


def split_layernorms(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                     keep=lambda layer: False, any_axes: bool = False, normalize=None
                     ) -> Tuple[object, List[str]]:
    """LayerNormalization -> the ops TFLite runs in int8, and a Rescaling by gamma, beta.

    ``c = x - mean(x)``, ``y = c * rsqrt(mean(c * c) + epsilon)``, then
    ``Rescaling(gamma, beta)``; over the last axis, each mean is a frozen ``Dense(1)``
    with weights 1/C (epsilon the variance's bias), which both kernel paths compute
    alike. Keras 3 computes ``x * inv + (-mean * inv + beta)``, whose NEG TFLite's
    quantizer leaves in float; every op here has an int8 kernel. In a
    QAT model each operator node is quantized on its own and the Rescaling runs as a 1x1
    depthwise convolution, so that the model quantizes the tensors the file does. gamma
    and beta are kept, not trained, by the Rescaling.

    Args:
        model: a Functional model.
        unwrap: the layer inside a wrapper (e.g. an annotation), or the layer itself.
        rewrap: wraps the Rescaling as its LayerNorm was wrapped.
        keep: layers to leave whole.
        any_axes: also split LayerNorms over several or other axes (see
            :func:`splittable_layernorm`).
        normalize: ``normalize(layer)``: for a LayerNorm over the last axis, None or a
            function that divides a symbolic tensor by its L2 norm over the last axis
            (TFLite's L2_NORMALIZATION). Then ``y = sqrt(C) * normalize([c, sqrt(C * eps)])[:C]``,
            the same function: the norm of ``c`` with one more channel of
            ``sqrt(C * eps)`` is ``sqrt(C * (var + eps))``. The int8 kernel sums the
            squares in int32, where the variance form quantizes the variance to 8 bits
            (measured: rows whose scale varies 20-fold, C = 8 / 64 / 256, p99 31 / 25 /
            12 output steps from float with the variance, 10 / 10 / 7 with the norm).

    Returns:
        The new model (weights copied; the model itself if nothing was split) and one
        note per split layer.
    """
    ranks = {key: len(shape) for key, shape in _input_shapes(model).items()}

    def splits(layer):
        return (id(layer) in ranks and not keep(layer) and splittable_layernorm(
            unwrap(layer), ranks[id(layer)], any_axes=any_axes))

    def replace(original, pending, *args, **kwargs):
        base, x, ops = unwrap(original), args[0], keras.ops
        axes = _layernorm_axes(base, len(x.shape))
        rms = type(base) is not keras.layers.LayerNormalization  # x / sqrt(mean(x * x) + eps)
        if axes == (len(x.shape) - 1,):
            # Means over the channels as FULLY_CONNECTED ops with weights 1/C (exact in
            # int8), epsilon as the variance's bias: TFLite's builtin int8 MEAN rounds
            # otherwise than XNNPACK's (measured: the two kernel paths 2 steps apart after
            # one LayerNorm with MEAN, 1 step with these).
            channels = int(x.shape[-1])

            def mean(t, what, bias=None):
                layer = keras.layers.Dense(1, use_bias=bias is not None, trainable=False,
                                           name=f"{base.name}_{what}")
                pending.append((layer, [np.full((channels, 1), 1.0 / channels, "float32")]
                                + ([np.array([bias], "float32")] if bias is not None else [])))
                return rewrap(original, layer)(t)

            centred = x if rms else x - mean(x, "mean")
            l2 = normalize(base) if normalize is not None else None
            if l2 is not None:
                epsilon = ops.ones_like(centred[..., :1]) * float(np.sqrt(channels * base.epsilon))
                y = l2(ops.concatenate([centred, epsilon], axis=-1))[..., :channels]
            else:
                y = centred * ops.rsqrt(mean(centred * centred, "variance", float(base.epsilon)))
        else:
            l2 = None
            centred = x if rms else x - ops.mean(x, axis=axes, keepdims=True)
            y = centred * ops.rsqrt(ops.mean(centred * centred, axis=axes, keepdims=True)
                                    + float(base.epsilon))
        shape = tuple(int(x.shape[a]) if a in axes else 1 for a in range(1, len(x.shape)))
        weights = {w.path.split("/")[-1]: w.numpy() for w in base.weights}
        gamma = weights.get("scale" if rms else "gamma", np.ones(shape, "float32"))
        gamma = np.broadcast_to(gamma, shape).astype("float32")
        if l2 is not None:  # y above is (x - mean) / sqrt(var + eps) / sqrt(C)
            gamma = gamma * np.float32(np.sqrt(channels))
        beta = weights.get("beta", np.zeros(shape, "float32")).reshape(shape)
        if len(axes) == 1:  # one value per channel, as a per-channel affine map wants
            gamma, beta = gamma.reshape(-1), beta.reshape(-1)
        affine = keras.layers.Rescaling(gamma.astype("float32"), beta.astype("float32"),
                                        name=f"{base.name}_affine")
        means = ("a mean over the channels (a Dense layer with weights 1/C, frozen), SUB, "
                 "L2_NORMALIZATION" if l2 is not None else
                 "means over the channels (Dense layers with weights 1/C, frozen), SUB, MUL, "
                 "RSQRT, MUL" if axes == (len(x.shape) - 1,) else "MEAN, SUB, MUL, RSQRT, MUL")
        if rms:
            means = ("L2_NORMALIZATION" if l2 is not None else "MUL, a mean over the channels "
                     "(a Dense layer with weights 1/C, frozen), RSQRT, MUL"
                     if axes == (len(x.shape) - 1,) else "MUL, MEAN, RSQRT, MUL")
        plain = not base.weights  # no gamma or beta (center=False, scale=False)
        return (y if plain else rewrap(original, affine)(y)), (
            f"{base.name}: {type(base).__name__} -> {means}"
            + ("" if plain else " and a Rescaling by gamma and beta")
            + " (Keras' own form " + ("leaves a float SQUARE" if rms else "leaves a NEG float")
            + " in an int8 file)")

    return _replace_layers(model, splits, replace)


def _given(value) -> bool:
    """Whether a call argument was given: not None or False (a mask may be an array,
    whose truth value is ambiguous)."""
    return value is not None and not (isinstance(value, (bool, np.bool_)) and not value)


def _attention_inputs(node=None, args=(), kwargs=None):
    """``(query, value, key)`` tensors of a MultiHeadAttention node, or of a call with
    ``args`` and ``kwargs`` (key None when not given), and the other call arguments."""
    if node is not None:
        args, kwargs = _compat.node_arguments(node)
    kwargs = dict(kwargs or {})
    names = ("query", "value", "key")
    given = dict(zip(names, args))
    given.update({k: kwargs.pop(k) for k in names if k in kwargs})
    rest = dict(kwargs, **{f"#{i}": a for i, a in enumerate(args[3:])})
    return given.get("query"), given.get("value"), given.get("key"), rest


def attention_refusal(layer, node) -> "str | None":
    """Why :func:`split_attention` cannot write this MultiHeadAttention node as ops (a
    short reason), or None when it can."""
    if type(layer) is not keras.layers.MultiHeadAttention:
        return f"a {type(layer).__name__}, not a keras.layers.MultiHeadAttention"
    query, value, key, rest = _attention_inputs(node)
    key = value if key is None else key
    if any(t is None or len(t.shape) != 3 for t in (query, value, key)):
        return "only query, value and key of shape (batch, length, features) are split"
    used = sorted(k for k, v in rest.items() if _given(v)
                  and k not in ("use_causal_mask", "training") + _PADDING_MASKS)
    if used:
        return (f"called with {', '.join(used)} (a causal mask and the padding masks of "
                "Embedding(mask_zero=True) are split; other masks and attention scores are "
                "not)")
    for name, mask in _padding_masks(query, value, _attention_inputs(node)[2], rest).items():
        if not keras.backend.is_keras_tensor(mask) or len(mask.shape) != 2:
            return f"a {name} that is not one flag per step of each sample"
    parts = _compat.attention_parts(layer)
    if parts["use_gate"] or parts["sliding_window"] is not None:
        return "a gated or sliding-window attention"
    if parts["attention_axes"] not in (None, (1,), [1]):
        return f"attention_axes={parts['attention_axes']}"
    return None


# How far below the lowest score of its row a causal mask puts the keys a query may not
# see. Keras fills them with -1e9, which no int8 range holds (the calibrated scale came
# out 9.3e35: every score one value, so the file attended to the future). Below the row's
# lowest score, a hidden key weighs less than exp(-16) = 1.1e-7 of every seen key, whatever
# the scores (a 512-key softmax's last int8 step is 1/256 / 512 = 7.6e-6); the scores'
# range grows by 16 only.
MASK_SHIFT = 16.0
# The masks Keras gives a MultiHeadAttention from its inputs' masks (mask_zero=True).
_PADDING_MASKS = ("query_mask", "value_mask", "key_mask")


def _padding_masks(query, value, key, rest) -> dict:
    """The padding masks Keras applies in a MultiHeadAttention call: those given, else the
    masks its query, value and key tensors carry (Keras fills them in at call time; the
    graph node does not record them)."""
    tensors = {"query_mask": query, "value_mask": value, "key_mask": key}
    masks = {}
    for name in _PADDING_MASKS:
        mask = rest.get(name)
        if not _given(mask) and tensors[name] is not None:
            mask = getattr(tensors[name], "_keras_mask", None)
        if _given(mask):
            masks[name] = mask
    return masks


def _attention_mask(masks, steps, causal: bool):
    """Keras' combined attention mask ``(batch, 1, T, S)`` (bool) from the padding masks
    and the causal one, or None when the call has no padding mask."""
    ops = keras.ops
    if not masks:
        return None
    mask = None
    if "query_mask" in masks:
        mask = ops.expand_dims(masks["query_mask"], -1)                  # (batch, T, 1)
    for name in ("value_mask", "key_mask"):
        if name in masks:
            columns = ops.expand_dims(masks[name], 1)                    # (batch, 1, S)
            mask = columns if mask is None else ops.logical_and(mask, columns)
    if causal:
        seen = np.arange(steps[0])[:, None] >= np.arange(steps[1])[None, :]
        mask = ops.logical_and(mask, seen[None])
    return ops.expand_dims(mask, 1)


def padding_masked(scores, mask):
    """``scores`` where ``mask``, else the lowest score of the row minus ``MASK_SHIFT``
    (SELECT_V2 of a tensor mask; :func:`causal_masked` for a constant one)."""
    low = keras.ops.min(scores, axis=-1, keepdims=True) - MASK_SHIFT
    return keras.ops.where(mask, scores, low)


def causal_masked(scores, seen: np.ndarray):
    """``scores`` where ``seen``, else the lowest score of the row minus ``MASK_SHIFT``:
    MIN over the last axis, SUB, MUL by constant 0 / 1 masks and ADD, all int8 ops.

    >>> s = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    >>> keras.ops.convert_to_numpy(causal_masked(s, np.tril(np.ones((2, 2), bool)))).tolist()
    [[1.0, -15.0], [3.0, 4.0]]
    """
    keep = seen.astype("float32")
    low = keras.ops.min(scores, axis=-1, keepdims=True) - MASK_SHIFT
    return scores * keep + low * (1.0 - keep)


def split_attention(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                    keep=lambda layer: False) -> Tuple[object, List[str]]:
    """MultiHeadAttention -> Dense projections, reshapes, BATCH_MATMULs and a softmax.

    The query, key and value projections become ``Dense(heads * size)`` layers (the
    query's scaled by ``1 / sqrt(key_dim)``, which Keras multiplies after projecting),
    reshaped and permuted to ``(batch, heads, length, size)``; then
    ``softmax(q @ k^T) @ v``, permuted back, and the output projection as a Dense: the
    FULLY_CONNECTED, RESHAPE, TRANSPOSE, BATCH_MATMUL and SOFTMAX ops TFLite runs in int8,
    each quantized on its own in a QAT model. Dropout on the attention weights is left
    out (it only acts in training). Only plain self- or cross-attention splits, with or
    without ``use_causal_mask`` (:func:`causal_masked` scores; see
    :func:`attention_refusal`).

    Args:
        model: a Functional model.
        unwrap: the layer inside a wrapper (e.g. an annotation), or the layer itself.
        rewrap: wraps each new Dense / Softmax as its attention layer was wrapped.
        keep: layers to leave whole.

    Returns:
        The new model (weights copied; the model itself if nothing was split) and one
        note per split layer.
    """
    nodes = {id(node.operation): node for node in _compat.graph_nodes(model)}
    once = called_once(model)

    def splits(layer):
        return (id(layer) in nodes and not keep(layer)
                and type(unwrap(layer)) is keras.layers.MultiHeadAttention
                and id(layer) in once
                and attention_refusal(unwrap(layer), nodes[id(layer)]) is None)

    def dense(original, pending, name, kernel, bias, scale=1.0):
        layer = keras.layers.Dense(kernel.shape[-1], use_bias=bias is not None, name=name)
        pending.append((layer, [kernel * scale] + ([bias * scale] if bias is not None else [])))
        return rewrap(original, layer)

    def replace(original, pending, *args, **kwargs):
        base = unwrap(original)
        query, value, key, _ = _attention_inputs(args=args, kwargs=kwargs)
        key = value if key is None else key
        parts = _compat.attention_parts(base)
        heads, L = parts["heads"], keras.layers

        def project(x, which, scale=1.0):
            kernel, bias = parts[which]
            size = kernel.shape[-1]
            flat = dense(original, pending, f"{base.name}_{which}",
                         kernel.reshape(kernel.shape[0], -1),
                         None if bias is None else bias.reshape(-1), scale)(x)
            split = rewrap(original, L.Reshape((int(x.shape[1]), heads, size),
                                               name=f"{base.name}_{which}_heads"))
            return rewrap(original, L.Permute((2, 1, 3), name=f"{base.name}_{which}_t"))(
                split(flat))

        q = project(query, "query", parts["scale"])          # (batch, heads, T, key_dim)
        k = project(key, "key")                               # (batch, heads, S, key_dim)
        v = project(value, "value")                           # (batch, heads, S, value_dim)
        k_t = rewrap(original, L.Permute((1, 3, 2), name=f"{base.name}_key_tt"))(k)
        scores = keras.ops.matmul(q, k_t)                     # (batch, heads, T, S)
        _, _, given_key, rest = _attention_inputs(args=args, kwargs=kwargs)
        causal = bool(rest.get("use_causal_mask"))
        steps = (int(query.shape[1]), int(key.shape[1]))
        padding = _attention_mask(_padding_masks(query, value, given_key, rest), steps, causal)
        if padding is not None:  # Embedding(mask_zero=True): Keras' mask, as a SELECT_V2
            scores = padding_masked(scores, padding)
        elif causal:  # key j is seen from query i >= j
            seen = np.arange(steps[0])[:, None] >= np.arange(steps[1])[None, :]
            scores = causal_masked(scores, seen[None, None])
        weights = rewrap(original, L.Softmax(axis=-1, name=f"{base.name}_softmax"))(scores)
        context = rewrap(original, L.Permute((2, 1, 3), name=f"{base.name}_context_t"))(
            keras.ops.matmul(weights, v))                      # (batch, T, heads, value_dim)
        context = rewrap(original, L.Reshape((int(query.shape[1]), heads * parts["value_dim"]),
                                             name=f"{base.name}_context"))(context)
        kernel, bias = parts["output"]
        out = dense(original, pending, f"{base.name}_output", kernel.reshape(-1, kernel.shape[-1]),
                    bias)(context)
        return out, (f"{base.name}: MultiHeadAttention -> Dense query/key/value projections, "
                     "RESHAPE, TRANSPOSE, BATCH_MATMUL, "
                     + (f"the padding{' and causal' if causal else ''} mask (MIN, SUB, "
                        f"SELECT_V2: hidden keys {MASK_SHIFT:g} below their row's lowest "
                        "score), " if padding is not None else
                        f"the causal mask (MIN, SUB, MUL, ADD: hidden keys {MASK_SHIFT:g} below "
                        "their row's lowest score), " if causal else "")
                     + "SOFTMAX, BATCH_MATMUL and a Dense output projection, each quantized on "
                     "its own"
                     + (" (attention dropout left out)" if parts["dropout"] else ""))

    return _replace_layers(model, splits, replace)


# SELU's constants (keras.activations.selu).
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def elu_ops(x, alpha: float = 1.0, scale: float = 1.0):
    """``scale * elu(x, alpha)`` as ops with int8 TFLite kernels.

    ``r + alpha * (exp(x - r) - 1)`` with ``r = relu(x)``: RELU, SUB, EXP, SUB and ADD (and
    MUL by constants besides plain ELU). TFLite's converter keeps ELU in float in an int8
    model. The forms with ``min(x, 0)`` are wrong in int8: the converter gives MINIMUM's
    input its output's range (``[min, 0]``), so where that input is read elsewhere (by the
    RELU) its positive values are clipped to 0 (measured: 93 output steps from float after
    a Conv2D).

    >>> import keras, numpy as np
    >>> x = np.linspace(-4.0, 4.0, 9).astype("float32")
    >>> bool(np.allclose(elu_ops(x, 0.5), keras.ops.elu(x, 0.5), atol=1e-6))
    True
    """
    ops = keras.ops
    positive = ops.relu(x)
    negative = ops.exp(x - positive) - 1.0
    if alpha * scale != 1.0:
        negative = negative * (alpha * scale)
    if scale != 1.0:
        positive = positive * scale
    return positive + negative


def softplus_ops(x):
    """``softplus(x)`` as ``r + log(1 + exp(x - 2 r))`` with ``r = relu(x)``: RELU, SUB,
    SUB, EXP, ADD, LOG, ADD, each with an int8 TFLite kernel.

    TFLite's converter writes Keras' ``log(exp(x) + 1)`` as int8 EXP, ADD, LOG too, but
    ``exp(x)`` spans ``[0, e^max]`` on one 8-bit grid, so ``softplus`` of negative inputs
    loses every level: 11 output steps p99 from float after a Dense layer (mish, which uses
    it: 7.5), against 1.3 (mish 1.8) here, where EXP sees ``-|x|`` and writes ``(0, 1]``.

    >>> import keras, numpy as np
    >>> x = np.linspace(-30.0, 30.0, 13).astype("float32")
    >>> bool(np.allclose(softplus_ops(x), keras.ops.softplus(x), atol=1e-5))
    True
    """
    ops = keras.ops
    positive = ops.relu(x)
    return positive + ops.log(ops.exp(x - positive - positive) + 1.0)


def _celu_ops(x, alpha: float = 1.0):
    positive = keras.ops.relu(x)  # r + alpha * (exp((x - r) / alpha) - 1)
    negative = x - positive
    if alpha != 1.0:
        negative = negative * (1.0 / alpha)
    negative = keras.ops.exp(negative) - 1.0
    return positive + (negative * alpha if alpha != 1.0 else negative)


_FORMS = {  # activation -> (the ops that compute it, what the note calls them)
    "elu": (elu_ops, "RELU, SUB, EXP, SUB, ADD"),
    "selu": (lambda x: elu_ops(x, _SELU_ALPHA, _SELU_SCALE), "RELU, SUB, EXP, SUB, MUL, ADD"),
    "celu": (_celu_ops, "RELU, SUB, MUL, EXP, SUB, MUL, ADD"),
    "softplus": (softplus_ops, "RELU, SUB, EXP, ADD, LOG, ADD"),
    "mish": (lambda x: x * keras.ops.tanh(softplus_ops(x)),
             "RELU, SUB, EXP, ADD, LOG, ADD, TANH, MUL"),
    "log_sigmoid": (lambda x: x - softplus_ops(x), "RELU, SUB, EXP, ADD, LOG, ADD, SUB"),
    # These two convert as they are; a QAT model needs each inner tensor as an op.
    "softsign": (lambda x: x / (keras.ops.abs(x) + 1.0), "ABS, ADD, DIV"),
    "tanh_shrink": (lambda x: x - keras.ops.tanh(x), "TANH, SUB"),
}


def _leaky_relu_clipped(x, slope: float, top: Optional[float]):
    """``min(leaky_relu(x, slope), top)``: LEAKY_RELU and MINIMUM."""
    y = keras.ops.leaky_relu(x, negative_slope=slope)
    return y if top is None else keras.ops.minimum(y, top)


_FORMS["leaky_relu_clipped"] = (None, "LEAKY_RELU, MINIMUM by max_value")  # ReLU's arguments
# keras.ops nodes, by class name -> the activation they apply.
_OPERATION_FORMS = {"Elu": "elu", "Selu": "selu", "Celu": "celu", "Softplus": "softplus",
                    "LogSigmoid": "log_sigmoid", "Softsign": "softsign",
                    "TanhShrink": "tanh_shrink"}
# Activations :func:`split_activations` writes as other ops.
SPLIT_ACTIVATIONS = tuple(name for name in _FORMS if _FORMS[name][0] is not None)


def activation_form(layer):
    """``(name, function)``: the activation ``layer`` applies to its output, where
    :func:`split_activations` writes it as other ops (:data:`SPLIT_ACTIVATIONS`), and a
    function of a symbolic tensor that computes it so; else None.

    An ``ELU`` layer, an ``Activation``, a weighted layer's ``activation`` argument (Dense,
    Conv...), or a ``keras.ops`` node (``keras.ops.elu``, ``selu``, ``softplus``...).

    >>> import keras
    >>> [activation_form(layer)[0] for layer in (keras.layers.ELU(alpha=0.5),
    ...  keras.layers.Dense(2, activation="selu"), keras.layers.Activation("mish"))]
    ['elu', 'selu', 'mish']
    >>> activation_form(keras.layers.Dense(2, activation="relu")) is None
    True
    """
    if isinstance(layer, keras.layers.ELU):
        alpha = float(layer.alpha)
        return "elu", lambda x: elu_ops(x, alpha)
    if type(layer) is keras.layers.ReLU and float(layer.negative_slope or 0.0) != 0.0 \
            and float(layer.threshold or 0.0) == 0.0:
        # Keras writes a leaky ReLU(max_value) with a NEG the converter keeps in float.
        slope = float(layer.negative_slope)
        top = None if layer.max_value is None else float(layer.max_value)
        return "leaky_relu_clipped", lambda x: _leaky_relu_clipped(x, slope, top)
    if _compat.is_operation(layer):
        name = _OPERATION_FORMS.get(type(layer).__name__)
        if name in ("elu", "celu"):
            alpha, form = float(layer.alpha), (elu_ops if name == "elu" else _celu_ops)
            return name, lambda x: form(x, alpha)
        return (name, _FORMS[name][0]) if name is not None else None
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return (name, _FORMS[name][0]) if name in _FORMS else None


def split_activations(model, *, unwrap=lambda layer: layer,
                      rewrap=lambda original, new: new, keep=lambda layer: False):
    """Writes every ELU, SELU, CELU, softplus, mish, log_sigmoid, softsign and tanh_shrink
    of ``model`` (see :func:`activation_form`) as ops with int8 TFLite kernels
    (:func:`elu_ops`, :func:`softplus_ops`...).

    A weighted layer with that activation becomes the same layer with a linear one, then
    the ops. Operator nodes are always written (they are quantized when their input is).

    Args:
        model: a Functional model.
        unwrap: the layer a graph layer stands for (a wrapper's inner layer).
        rewrap: ``rewrap(original, new)`` wraps a new layer as the original was.
        keep: layers to leave as they are (for example layers not annotated for QAT).

    Returns:
        ``(model, notes)``: the rewritten model and one note per activation, or
        ``(model, [])``.
    """
    def splits(layer):
        return activation_form(unwrap(layer)) is not None and (
            _compat.is_operation(layer) or not keep(layer))

    def replace(original, pending, *args, **kwargs):
        base = unwrap(original)
        name, form = activation_form(base)
        x, what = args[0], type(base).__name__
        if getattr(base, "weights", None):  # Dense, Conv...: the layer, then the ops
            linear = type(base).from_config(dict(base.get_config(), activation="linear"))
            x = rewrap(original, linear)(*args, **kwargs)
            pending.append((linear, base.get_weights()))
            what = f"{what}(activation={name})"
        return form(x), (f"{base.name}: {what} -> {_FORMS[name][1]} (TFLite's converter "
                         f"keeps {name} in float in an int8 model, or loses its precision)")

    return _replace_layers(model, splits, replace)


# Operations TFLite runs as MINIMUM / MAXIMUM, keeping their input's scale.
CLAMPS = ("Minimum", "Maximum", "Clip")


def split_clamps(model):
    """Writes each ``minimum`` / ``maximum`` that reads a tensor other ops read too as
    ``a - relu(a - b)`` / ``a + relu(b - a)`` (SUB or ADD, RELU, SUB or ADD).

    TFLite's int8 MINIMUM and MAXIMUM keep their input's scale, and its converter gives
    the input the output's range: ``minimum(h, 0.5)`` clips ``h`` to ``[min, 0.5]`` for
    every other reader of ``h`` too. Measured after a Conv2D, ``minimum(h, 0.5) + h * 0.5``:
    22 output steps p99 from float (a silently wrong file); rewritten, within 2. A QAT
    graph is not affected (its fake-quant ops give the converter both ranges, and it
    requantizes).

    Args:
        model: a Functional model.

    Returns:
        ``(model, notes)``: the rewritten model and one note per op, or ``(model, [])``.
    """
    nodes = _compat.graph_nodes(model)
    readers: Dict[int, int] = {}
    calls: Dict[int, list] = {}
    for node in nodes:
        calls.setdefault(id(node.operation), []).append(node)
        for t in node.input_tensors:
            readers[id(t)] = readers.get(id(t), 0) + 1
    for t in keras.tree.flatten(model.outputs):
        readers[id(t)] = readers.get(id(t), 0) + 1

    def splits(op):
        found = calls.get(id(op), [])
        if type(op).__name__ not in CLAMPS or len(found) != 1:
            return False
        tensors = found[0].input_tensors
        args, _ = _compat.node_arguments(found[0])
        operands = list(args[0]) if args and isinstance(args[0], (list, tuple)) else list(args)
        if type(op).__name__ != "Clip" and len(operands) == len(tensors) and \
                len({id(t) for t in tensors}) == 1:
            return False  # min(a, a) is a: nothing is clipped (and a - relu(a - a) is 0 / 0)
        # A tensor read twice by this op alone (min(a, a)) counts once.
        return any(readers.get(id(t), 0) > sum(u is t for u in tensors) for t in tensors)

    def replace(original, pending, *args, **kwargs):
        ops, name = keras.ops, type(original).__name__
        if name == "Clip":  # max(min(x, high), low): the MAXIMUM reads a private tensor
            x = args[0]
            return ops.maximum(x - ops.relu(x - original.x_max), original.x_min), (
                f"{original.name}: Clip -> MAXIMUM(x - relu(x - high), low) (its input is "
                "read elsewhere, and the converter would clip it there to [low, high])")
        operands = list(args[0]) if isinstance(args[0], (list, tuple)) else list(args)
        out = operands[0]
        for other in operands[1:]:
            out = out - ops.relu(out - other) if name == "Minimum" else out + ops.relu(other - out)
        return out, (f"{original.name}: {name} -> "
                     + ("a - relu(a - b)" if name == "Minimum" else "a + relu(b - a)")
                     + " (its input is read elsewhere, and the converter would clip it there "
                     "to this op's output range)")

    return _replace_layers(model, splits, replace)


def _on_int8_grid(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to the per-tensor int8 grid TFLite's converter gives a constant
    operand (asymmetric, over ``[min(values, 0), max(values, 0)]``), so that a QAT model
    computes with the numbers the file holds."""
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if high == low:
        return values
    scale = (high - low) / 255.0
    zero_point = np.round(-128.0 - low / scale)
    q = np.clip(np.round(values / scale) + zero_point, -128, 127)
    return ((q - zero_point) * scale).astype("float32")


def split_prelus(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                 keep=lambda layer: False):
    """Writes each PReLU as ``r + alpha * (x - r)`` with ``r = relu(x)``.

    An ``alpha`` shared over every axis but the channels becomes a ``Rescaling(alpha)``
    (a QAT model runs it as a 1x1 depthwise convolution with per-channel int8 weights);
    any other ``alpha`` a MUL by a constant. RELU, SUB, that and ADD have int8 kernels
    whose every tensor a QAT model can fake-quantize, where TFLite's PRELU takes its alpha
    from a constant the fake-quant graph does not have (the converter then keeps it
    float). ``alpha`` is kept, not trained.

    Args:
        model: a Functional model.
        unwrap: the layer a graph layer stands for (a wrapper's inner layer).
        rewrap: ``rewrap(original, new)`` wraps a new layer as the original was.
        keep: layers to leave as they are.

    Returns:
        ``(model, notes)``: the rewritten model and one note per PReLU, or ``(model, [])``.
    """
    def splits(layer):
        return isinstance(unwrap(layer), keras.layers.PReLU) and not keep(layer)

    def replace(original, pending, *args, **kwargs):
        base, x, ops = unwrap(original), args[0], keras.ops
        alpha = np.asarray(base.get_weights()[0], "float32")
        positive = ops.relu(x)
        negative = x - positive
        if all(d == 1 for d in alpha.shape[:-1]):
            channels = alpha.shape[-1]
            scaled = rewrap(original, keras.layers.Rescaling(
                alpha.reshape(channels), np.zeros(channels, "float32"),
                name=f"{base.name}_alpha"))(negative)
            how = "a Rescaling by alpha"
        else:
            scaled = negative * _on_int8_grid(alpha)
            how = "MUL by alpha"
        return positive + scaled, (
            f"{base.name}: PReLU -> RELU, SUB, {how}, ADD (alpha kept, not trained)")

    return _replace_layers(model, splits, replace)


_RECURRENT = (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)
_MERGES = ("concat", "sum", "ave", "mul")


def recurrent_refusal(layer, node=None) -> "str | None":
    """Why :func:`split_recurrent` cannot write this LSTM / GRU / SimpleRNN, or a
    Bidirectional of one (node), as unrolled ops (a short reason), or None when it can."""
    bidirectional = type(layer) is keras.layers.Bidirectional
    if bidirectional:
        if layer.merge_mode not in _MERGES:
            return f"merge_mode={layer.merge_mode!r} (unrolled: {', '.join(_MERGES)})"
        directions = (layer.forward_layer, layer.backward_layer)
    else:
        directions = (layer,)
    for one in directions:
        if type(one) not in _RECURRENT:
            return (f"a {type(one).__name__}, not a keras.layers.LSTM, GRU or SimpleRNN "
                    "(or a Bidirectional of one)")
        if getattr(one, "stateful", False):
            return "stateful=True: only a layer that starts from its initial state is unrolled"
        if bidirectional and getattr(layer, "return_state", False):
            return "a Bidirectional with return_state=True (unrolled: without states)"
    if node is not None:
        args, kwargs = _compat.node_arguments(node)
        given = sorted(k for k, v in kwargs.items()
                       if v is not None and k not in ("training", "mask", "initial_state"))
        if given or len(args) > 2:
            return f"called with {', '.join(given) or 'more than two inputs'}"
        if bidirectional and (kwargs.get("initial_state") is not None or len(args) > 1):
            return "a Bidirectional called with initial_state (unrolled: from zero states)"
        shape = node.input_tensors[0].shape
        if len(shape) != 3 or shape[1] is None:
            return f"its input {tuple(shape)} has no fixed number of time steps"
        mask = _recurrent_mask(kwargs)
        if mask is not None and tuple(mask.shape[1:]) != (shape[1],):
            return f"a mask of shape {tuple(mask.shape)} (unrolled: one flag per time step)"
    return None


def _recurrent_mask(kwargs):
    """The mask a recurrent layer's call reads: its ``mask`` argument, which Keras fills
    from the input's mask only when the sequence is the one tensor given (with an
    ``initial_state`` too, Keras reads no mask)."""
    return kwargs.get("mask")


def split_recurrent(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                    keep=lambda layer: False) -> Tuple[object, List[str]]:
    """Writes each LSTM / GRU / SimpleRNN, or a Bidirectional of them, as its cell
    unrolled over the time steps, in layers and ops TFLite runs in int8.

    The input projection of every step is one ``Dense`` on the whole sequence, the
    recurrent one a ``Dense`` without bias called once per step after the first (its
    output quantizer, and so its int8 grid, shared by the steps, as TFLite's converter
    shares the weights); the gates are slices of their sum, the state updates MUL and
    ADD ops. An LSTM step is ``c = f * c + i * g``, ``h = o * act(c)``; a GRU step
    (``reset_after=True``) ``hh = act(x_h + r * h_h)``, ``h = hh + z * (h - hh)``, with
    ``reset_after=False`` ``hh = act(x_h + (r * h) U_h)``; a SimpleRNN step
    ``h = act(x_w + h_u)``. Without ``initial_state`` the first step starts from zero
    states: the recurrent terms are skipped, except a GRU's recurrent bias, added by
    frozen Rescaling layers (kept, not trained). ``go_backwards`` walks the steps from the
    end (outputs in that order, as Keras returns them); a Bidirectional unrolls both
    directions, puts the backward outputs back in time order and merges them as its
    ``merge_mode`` says.

    A mask (``Embedding(mask_zero=True)``, ``Masking``, or ``mask=``) is applied as Keras
    applies it: at a masked step the states and the output keep their previous values
    (SELECT_V2), or the output is zero where ``zero_output_for_mask`` (a Bidirectional
    returning sequences). ``return_state=True`` returns the final states after the output.

    Args:
        model: a Functional model.
        unwrap: the layer a graph layer stands for (a wrapper's inner layer).
        rewrap: ``rewrap(original, new)`` wraps a new layer as the original was.
        keep: layers to leave as they are.

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    nodes = {id(node.operation): node for node in _compat.graph_nodes(model)}

    def splits(layer):
        node = nodes.get(id(layer))
        base = unwrap(layer)
        return ((type(base) in _RECURRENT or type(base) is keras.layers.Bidirectional)
                and not keep(layer) and node is not None
                and recurrent_refusal(base, node) is None)

    def replace(original, pending, *args, **kwargs):
        base, x, ops = unwrap(original), args[0], keras.ops
        mask = _recurrent_mask(kwargs)
        initial = kwargs.get("initial_state", args[1] if len(args) > 1 else None)
        masked = " (masked)" if mask is not None else ""
        if type(base) is not keras.layers.Bidirectional:
            outputs, states = _unrolled(base, x, base.name, original, pending, rewrap,
                                        mask=mask, initial=initial)
            out = ops.stack(outputs, axis=1) if base.return_sequences else outputs[-1]
            if base.return_state:
                out = [out] + states
            return out, _recurrent_note(base, len(outputs)) + masked
        forward, _ = _unrolled(base.forward_layer, x, f"{base.name}_forward", original,
                               pending, rewrap, mask=mask)
        backward, _ = _unrolled(base.backward_layer, x, f"{base.name}_backward", original,
                                pending, rewrap, mask=mask)
        if base.return_sequences:
            y, y_rev = ops.stack(forward, axis=1), ops.stack(backward[::-1], axis=1)
        else:
            y, y_rev = forward[-1], backward[-1]
        out = (ops.concatenate([y, y_rev], axis=-1) if base.merge_mode == "concat" else
               y + y_rev if base.merge_mode == "sum" else y * y_rev
               if base.merge_mode == "mul" else (y + y_rev) * 0.5)
        return out, (f"{base.name}: Bidirectional ({base.merge_mode}) of "
                     + _recurrent_note(base.forward_layer, len(forward)) + masked)

    return _replace_layers(model, splits, replace)


def _recurrent_note(layer, steps: int) -> str:
    kind = type(layer).__name__
    ops = {"LSTM": "LOGISTIC, TANH, MUL and ADD", "GRU": "LOGISTIC, TANH, SUB, MUL and ADD",
           "SimpleRNN": "its activation and ADD"}[kind]
    return (f"{layer.name}: {kind} unrolled over {steps} time steps as Dense layers (input "
            f"projection, shared recurrent projection), slices, {ops} (TFLite's converter "
            "writes Keras' recurrent loop in float)")


def _unrolled(base, x, name: str, original, pending, rewrap, *, mask=None,
              initial=None) -> Tuple[list, list]:
    """The outputs of every step of the LSTM / GRU / SimpleRNN ``base`` on ``x``, in the
    order it walks them (backwards for ``go_backwards``), and its final states, as new
    layers and ops; ``mask``: ``(batch, steps)`` flags, ``initial``: its initial states."""
    kind = type(base)
    units = base.units
    gates = {keras.layers.LSTM: 4, keras.layers.GRU: 3, keras.layers.SimpleRNN: 1}[kind]
    weights = base.get_weights()
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if base.use_bias else None
    gru = kind is keras.layers.GRU
    reset_after = gru and base.reset_after
    input_bias = None if bias is None else (bias[0] if reset_after else bias)
    recurrent_bias = bias[1] if reset_after and bias is not None else None
    count = iter(range(1 << 30))
    ops = keras.ops

    def applied(function, what):
        def apply(t):  # an Activation layer per call: QAT quantizes each like any other
            return rewrap(original, keras.layers.Activation(
                function, name=f"{name}_{what}_{next(count)}"))(t)
        return apply

    activation = applied(base.cell.activation, "activation")
    gate = applied(getattr(base.cell, "recurrent_activation", None), "gate")

    def dense(what, w, b):
        layer = keras.layers.Dense(w.shape[-1], use_bias=b is not None, name=f"{name}_{what}")
        pending.append((layer, [w] + ([b] if b is not None else [])))
        return rewrap(original, layer)

    def rescale(what, scale, offset):
        return rewrap(original, keras.layers.Rescaling(
            np.asarray(scale, "float32"), np.asarray(offset, "float32"), name=f"{name}_{what}"))

    def part(z, k):
        return z[:, k * units:(k + 1) * units]

    projected = dense("input", kernel, input_bias)(x)
    if gru and not reset_after:  # (r * h) meets its own third of the recurrent kernel
        step_recurrent = dense("recurrent", recurrent[:, :2 * units], None)
        step_candidate = dense("recurrent_candidate", recurrent[:, 2 * units:], None)
    else:
        step_recurrent = dense("recurrent", recurrent, recurrent_bias)
    if initial is not None:
        initial = list(initial) if isinstance(initial, (list, tuple)) else [initial]
    h, c = (initial[0], initial[1] if kind is keras.layers.LSTM else None) \
        if initial is not None else (None, None)
    flags = None if mask is None else ops.expand_dims(mask, -1)
    zero_output = mask is not None and bool(getattr(base, "zero_output_for_mask", False))
    steps = range(int(x.shape[1]))
    outputs, output = [], None
    for t in (reversed(steps) if base.go_backwards else steps):
        p = projected[:, t, :]
        new_c = None
        if kind is keras.layers.SimpleRNN:
            new_h = activation(p if h is None else p + step_recurrent(h))
        elif kind is keras.layers.LSTM:
            z = p if h is None else p + step_recurrent(h)
            i, f, g, o = gate(part(z, 0)), gate(part(z, 1)), activation(part(z, 2)), gate(part(z, 3))
            new_c = i * g if c is None else f * c + i * g
            new_h = o * activation(new_c)
        elif not reset_after:
            if h is None:
                z, hh = gate(part(p, 0)), activation(part(p, 2))
                new_h = hh - z * hh
            else:
                q = step_recurrent(h)
                z, r = gate(part(p, 0) + part(q, 0)), gate(part(p, 1) + part(q, 1))
                hh = activation(part(p, 2) + step_candidate(r * h))
                new_h = hh + z * (h - hh)
        elif h is None:  # zero state: the recurrent projection is its bias
            if recurrent_bias is None:
                z, hh = gate(part(p, 0)), activation(part(p, 2))
            else:
                zr = rescale("bias0", np.ones(2 * units), recurrent_bias[:2 * units])(
                    p[:, :2 * units])
                z, r = gate(part(zr, 0)), gate(part(zr, 1))
                hh = activation(part(p, 2) + rescale(
                    "reset0", recurrent_bias[2 * units:], np.zeros(units))(r))
            new_h = hh - z * hh
        else:
            q = step_recurrent(h)
            z = gate(part(p, 0) + part(q, 0))
            r = gate(part(p, 1) + part(q, 1))
            hh = activation(part(p, 2) + r * part(q, 2))
            new_h = hh + z * (h - hh)
        if flags is None:
            h, c, output = new_h, new_c, new_h
        else:  # Keras' masked step: a masked sample keeps its states and its last output
            seen = flags[:, t]
            same = initial is None and not zero_output  # the output chain is h's own
            kept = 0.0 if zero_output or output is None else output
            output_t = None if same else ops.where(seen, new_h, kept)
            h = ops.where(seen, new_h, 0.0 if h is None else h)
            if new_c is not None:
                c = ops.where(seen, new_c, 0.0 if c is None else c)
            output = h if same else output_t
        outputs.append(output)
    states = [h, c] if kind is keras.layers.LSTM else [h]
    return outputs, states


def masked_mean_refusal(layer, node) -> Optional[str]:
    """Why :func:`split_masked_means` leaves this GlobalAveragePooling1D called with a mask
    whole (a short reason), or None when it writes it as int8 ops."""
    if type(layer) is not keras.layers.GlobalAveragePooling1D:
        return f"a masked {type(layer).__name__}"
    if layer.data_format != "channels_last":
        return f"a masked mean with data_format={layer.data_format!r}"
    shape = node.input_tensors[0].shape
    if len(shape) != 3 or shape[1] is None:
        return f"a masked mean over an input of shape {tuple(shape)} (steps must be known)"
    return None


def split_masked_means(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                       keep=lambda layer: False) -> Tuple[object, List[str]]:
    """Writes each GlobalAveragePooling1D called with a mask (after an
    ``Embedding(mask_zero=True)`` or a ``Masking`` layer) as int8 ops: the SUM of
    ``where(mask, x, 0)`` over the steps, times the reciprocal of the number of unmasked
    steps, read from a frozen table by that count (an int32 SUM of the mask: GATHER, as an
    ``Embedding`` lookup). Keras divides by the count in float (a CAST). A sample with
    every step masked gives 0 (Keras: 0 / 0, NaN).

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    nodes = {id(node.operation): node for node in _compat.graph_nodes(model)}

    def splits(layer):
        node = nodes.get(id(layer))
        return (not keep(layer) and node is not None
                and _compat.node_arguments(node)[1].get("mask") is not None
                and masked_mean_refusal(unwrap(layer), node) is None)

    def replace(original, pending, *args, **kwargs):
        base, x, ops = unwrap(original), args[0], keras.ops
        mask, steps = kwargs["mask"], int(args[0].shape[1])
        total = ops.sum(ops.where(ops.expand_dims(mask, -1), x, 0.0), axis=1,
                        keepdims=base.keepdims)
        count = ops.sum(ops.where(mask, 1, 0), axis=1)
        table = keras.layers.Embedding(steps + 1, 1, trainable=False,
                                       name=f"{base.name}_reciprocal")
        pending.append((table, [np.array([[0.0]] + [[1.0 / k] for k in range(1, steps + 1)],
                                         "float32")]))
        reciprocal = rewrap(original, table)(count)
        if base.keepdims:
            reciprocal = ops.expand_dims(reciprocal, 1)
        return total * reciprocal, (
            f"{base.name}: masked mean -> SELECT_V2, SUM, an int32 count of the mask, GATHER "
            "of its reciprocal (a frozen table) and MUL")

    return _replace_layers(model, splits, replace)


@dataclasses.dataclass(frozen=True)
class EinsumMatmul:
    """An EinsumDense equation ``X C, C O -> X O``: a matrix product, reshaped."""

    ellipsis: str   # "..." when the equation starts with one, else ""
    free: str       # X: input axes that pass to the output (the batch axis first)
    contracted: str  # C: the input's trailing axes, the kernel's leading ones
    out: str        # O: the kernel's trailing axes, the output's trailing ones

    def equation(self, contracted: str, out: str) -> str:
        e, x = self.ellipsis, self.free
        return f"{e}{x}{contracted},{contracted}{out}->{e}{x}{out}"


def einsum_matmul(layer) -> Optional[EinsumMatmul]:
    """The matrix-product reading of an EinsumDense, or None when it is something else."""
    found = re.fullmatch(r"(\.\.\.)?([a-z]*),([a-z]+)->(\.\.\.)?([a-z]*)",
                         layer.equation.replace(" ", ""))
    if found is None or bool(found.group(1)) != bool(found.group(4)):
        return None
    ellipsis, inputs, kernel, output = (found.group(1) or "", found.group(2), found.group(3),
                                        found.group(5))
    contracted = "".join(c for c in inputs if c in kernel and c not in output)
    free, out = inputs[:len(inputs) - len(contracted)], kernel[len(contracted):]
    if (not contracted or not out or inputs != free + contracted or kernel != contracted + out
            or output != free + out or (not ellipsis and not free)
            or len(set(inputs + kernel)) != len(free + contracted + out)
            or getattr(layer, "lora_enabled", False)
            or getattr(layer, "quantization_mode", None) is not None
            or "input_shape" not in _compat.built_input_shapes(layer)):
        return None
    return EinsumMatmul(ellipsis, free, contracted, out)


def einsum_dense_refusal(layer, node=None) -> Optional[str]:
    """Why :func:`split_einsum_dense` leaves this EinsumDense whole, or None."""
    if type(layer) is not keras.layers.EinsumDense:
        return "not an EinsumDense"
    split = einsum_matmul(layer)
    if split is None:
        return (f"an EinsumDense {layer.equation!r} that is no matrix product (the input's "
                "trailing axes contracted with the kernel's leading ones, e.g. 'abc,cde->abde')")
    if node is not None and any(d is None for d in node.input_tensors[0].shape[1:]):
        return (f"an EinsumDense on an input of shape {tuple(node.input_tensors[0].shape)} "
                "(the axes past the batch must be known)")
    return None


def split_einsum_dense(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                       keep=lambda layer: False) -> Tuple[object, List[str]]:
    """Writes each EinsumDense that is a matrix product (``"abc,cde->abde"``) as the
    Dense layer it computes: RESHAPE of the contracted axes into one, a Dense (the kernel
    reshaped; a bias over some output axes broadcast to all of them) and RESHAPE to the
    output axes, which TFLite runs as FULLY_CONNECTED and QAT quantizes like any Dense.

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    nodes = {id(node.operation): node for node in _compat.graph_nodes(model)}

    def splits(layer):
        node = nodes.get(id(layer))
        return (not keep(layer) and node is not None
                and einsum_dense_refusal(unwrap(layer), node) is None)

    def replace(original, pending, *args, **kwargs):
        base, x = unwrap(original), args[0]
        split = einsum_matmul(base)
        kernel = base.kernel.numpy()
        n_in = len(split.contracted)
        out_shape = kernel.shape[n_in:]
        rows, units = int(np.prod(kernel.shape[:n_in])), int(np.prod(out_shape))
        weights = [kernel.reshape(rows, units)]
        if base.bias is not None:  # broadcast over the output axes it does not name
            axes = [split.out.index(a) for a in base.bias_axes]
            bias = base.bias.numpy().reshape([out_shape[i] if i in axes else 1
                                              for i in range(len(out_shape))])
            weights.append(np.broadcast_to(bias, out_shape).reshape(units).astype("float32"))
        dense = keras.layers.Dense(units, activation=base.activation, use_bias=base.bias is not None,
                                   name=f"{base.name}_dense")
        pending.append((dense, weights))
        kept = tuple(x.shape[1:len(x.shape) - n_in])
        if n_in > 1:
            x = rewrap(original, keras.layers.Reshape(kept + (rows,), name=f"{base.name}_in"))(x)
        y = rewrap(original, dense)(x)
        if len(out_shape) > 1:
            y = rewrap(original, keras.layers.Reshape(kept + tuple(out_shape),
                                                      name=f"{base.name}_out"))(y)
        return y, (f"{base.name}: EinsumDense {base.equation!r} -> RESHAPE, Dense "
                   f"({rows} -> {units}), RESHAPE (a FULLY_CONNECTED)")

    return _replace_layers(model, splits, replace)


def split_masking(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                  keep=lambda layer: False) -> Tuple[object, List[str]]:
    """Writes each ``keras.layers.Masking`` as the SELECT of its input or 0 that TFLite runs
    in int8: ``where(any(x != mask_value), x, 0)`` over the last axis (Keras multiplies by
    the mask cast to float: a float CAST and MUL). The mask it gives the layers after it
    is Keras' own ``any(x != mask_value)`` node, left in the graph (its float comparison is
    written as int8 ops by :func:`split_operator_forms`).

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    def splits(layer):
        return type(unwrap(layer)) is keras.layers.Masking and not keep(layer)

    def replace(original, pending, *args, **kwargs):
        base, x, ops = unwrap(original), args[0], keras.ops
        seen = ops.any(ops.not_equal(x, float(base.mask_value)), axis=-1, keepdims=True)
        return ops.where(seen, x, 0.0), (
            f"{base.name}: Masking (x * cast(mask)) -> SELECT_V2 of x or 0 where any feature "
            f"differs from {base.mask_value}")

    return _replace_layers(model, splits, replace)


@keras.saving.register_keras_serializable(package="tfcompress")
class L2Normalize(keras.layers.Layer):
    """``x * rsqrt(max(sum(x * x), epsilon))`` over the last axis: the form of
    ``tf.math.l2_normalize`` that TFLite's converter writes as one L2_NORMALIZATION op
    (Keras' ``UnitNormalization`` takes the minimum after RSQRT, which it leaves as float
    SQUARE, SUM, RSQRT and MINIMUM ops in an int8 file). Its int8 output has the fixed
    grid of that kernel: scale 1/128, zero point 0.

    Args:
        epsilon: the smallest squared norm divided by.
        **kwargs: base layer arguments (``name``...).

    Example:
        >>> import numpy as np
        >>> y = L2Normalize()(np.array([[3.0, 4.0]], "float32"))
        >>> np.round(keras.ops.convert_to_numpy(y).astype("float64"), 3).tolist()
        [[0.6, 0.8]]
    """

    def __init__(self, *, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, x):
        ops = keras.ops
        return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True),
                                         self.epsilon))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def unit_normalization_refusal(layer, rank: int) -> Optional[str]:
    """Why :func:`split_unit_normalizations` leaves ``layer`` (input of rank ``rank``)
    whole, or None when it writes it as :class:`L2Normalize` (over the last axis only)."""
    if type(layer) is not keras.layers.UnitNormalization:
        return "not a UnitNormalization"
    axes = (layer.axis,) if isinstance(layer.axis, int) else tuple(layer.axis)
    if tuple(a % rank for a in axes) != (rank - 1,):
        return (f"a UnitNormalization over axis {layer.axis} of a {rank}-D input: TFLite's "
                "L2_NORMALIZATION runs over the last axis only")
    return None


def split_unit_normalizations(model, *, normalize=None, unwrap=lambda layer: layer,
                              rewrap=lambda original, new: new, keep=lambda layer: False):
    """Writes each ``UnitNormalization`` over the last axis as :class:`L2Normalize` (or
    ``normalize(x)``): one int8 L2_NORMALIZATION in TFLite.

    Args:
        model: a Functional model.
        normalize: a function of a symbolic tensor that divides it by its L2 norm over the
            last axis; None for an :class:`L2Normalize` layer wrapped by ``rewrap``.
        unwrap: the layer inside a wrapper (e.g. an annotation), or the layer itself.
        rewrap: wraps the new layer as its UnitNormalization was wrapped.
        keep: layers to leave whole.

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    ranks = {key: len(shape) for key, shape in _input_shapes(model).items()}

    def splits(layer):
        return (id(layer) in ranks and not keep(layer)
                and unit_normalization_refusal(unwrap(layer), ranks[id(layer)]) is None)

    def replace(original, pending, *args, **kwargs):
        base = unwrap(original)
        out = (normalize(args[0]) if normalize is not None else
               rewrap(original, L2Normalize(name=f"{base.name}_l2"))(args[0]))
        return out, (f"{base.name}: UnitNormalization -> L2_NORMALIZATION (Keras' form "
                     "leaves a float SQUARE in an int8 file)")

    return _replace_layers(model, splits, replace)


def _dot_axes(layer, ranks) -> Tuple[int, int]:
    axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes, layer.axes)
    return tuple(int(a) % r for a, r in zip(axes, ranks))


def dot_refusal(layer, node) -> Optional[str]:
    """Why :func:`split_dots` leaves this ``keras.layers.Dot`` node whole, or None."""
    if type(layer) is not keras.layers.Dot:
        return "not a Dot layer"
    tensors = node.input_tensors
    if len(tensors) != 2:
        return f"a Dot of {len(tensors)} tensors"
    ranks = tuple(len(t.shape) for t in tensors)
    if ranks not in ((2, 2), (3, 3)):
        return (f"a Dot of tensors of ranks {ranks}: only two 2-D or two 3-D tensors are "
                "written as int8 ops")
    if 0 in _dot_axes(layer, ranks):
        return "a Dot over the batch axis"
    return None


def split_dots(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
               keep=lambda layer: False):
    """Writes each ``keras.layers.Dot`` of two 2-D or two 3-D tensors as int8 ops: MUL and
    SUM (2-D), or TRANSPOSE and BATCH_MATMUL (3-D). With ``normalize=True`` each input is
    first divided by its L2 norm over the dot axis, as :class:`L2Normalize` (one
    L2_NORMALIZATION; Keras' form leaves float SQUARE ops in an int8 file).

    Args:
        model: a Functional model.
        unwrap: the layer inside a wrapper (e.g. an annotation), or the layer itself.
        rewrap: wraps a new layer as its Dot was wrapped.
        keep: layers to leave whole.

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    once = called_once(model)
    plain = {id(node.operation) for node in _compat.graph_nodes(model)
             if type(unwrap(node.operation)) is keras.layers.Dot and id(node.operation) in once
             and dot_refusal(unwrap(node.operation), node) is None}

    def splits(layer):
        return id(layer) in plain and not keep(layer)

    def replace(original, pending, *args, **kwargs):
        base, ops = unwrap(original), keras.ops
        x, y = args[0]
        rank = len(x.shape)
        axes = _dot_axes(base, (rank, rank))
        epsilon = keras.config.epsilon() ** 2  # Keras: min(rsqrt(sum x^2), 1 / epsilon)

        def last(t, axis):  # the dot axis moved last
            return t if axis == rank - 1 else ops.transpose(t, (0, 2, 1))

        def unit(t, i):
            return rewrap(original, L2Normalize(epsilon=epsilon, name=f"{base.name}_l2_{i}"))(t)

        if rank == 2:
            if base.normalize:
                x, y = unit(x, 0), unit(y, 1)
            return ops.sum(x * y, axis=-1, keepdims=True), (
                f"{base.name}: Dot -> " + ("L2_NORMALIZATION, " if base.normalize else "")
                + "MUL, SUM")
        if base.normalize:
            x, y = unit(last(x, axes[0]), 0), unit(last(y, axes[1]), 1)
            axes = (2, 2)
        right = y if axes[1] == 1 else ops.transpose(y, (0, 2, 1))
        return ops.matmul(last(x, axes[0]), right), (
            f"{base.name}: Dot -> " + ("L2_NORMALIZATION, " if base.normalize else "")
            + "TRANSPOSE, BATCH_MATMUL")

    return _replace_layers(model, splits, replace)


# The attention layers split_dot_attention writes as ops (exact classes).
ATTENTION_LAYERS = (keras.layers.Attention, keras.layers.AdditiveAttention)


def dot_attention_refusal(layer, node) -> "str | None":
    """Why :func:`split_dot_attention` cannot write this ``keras.layers.Attention`` node as
    ops, or None."""
    if type(layer) is keras.layers.Attention and layer.score_mode not in ("dot", "concat"):
        return f"score_mode={layer.score_mode!r} (only 'dot' and 'concat' are split into int8 ops)"
    args, kwargs = _compat.node_arguments(node)
    called = [k for k in ("mask", "return_attention_scores") if _given(kwargs.get(k))]
    if called:
        return f"called with {', '.join(called)} (only a plain call is split into int8 ops)"
    if len(args) != 1 or not isinstance(args[0], (list, tuple)) or len(args[0]) not in (2, 3):
        return "called on other than [query, value] or [query, value, key]"
    if any(len(t.shape) != 3 for t in args[0]):
        return "inputs that are not 3-D (batch, steps, features)"
    if any(getattr(t, "_keras_mask", None) is not None for t in args[0]):
        # Keras applies its inputs' masks (Embedding(mask_zero=True)) at call time; the
        # node records none, and the split form would ignore them.
        return "inputs that carry a mask (from Embedding(mask_zero=True) or Masking)"
    return None


def split_dot_attention(model, *, unwrap=lambda layer: layer,
                        rewrap=lambda original, new: new, keep=lambda layer: False):
    """Writes each plain ``keras.layers.Attention`` as ``softmax(q @ k^T * scale) @ v``:
    TRANSPOSE, BATCH_MATMUL, (MUL,) SOFTMAX, BATCH_MATMUL, ops a QAT model quantizes one by
    one. Additive scores (``keras.layers.AdditiveAttention``, ``Attention(score_mode=
    "concat")``) are ``sum(scale * tanh(q + k))`` over the features, broadcast over the
    query and key steps: RESHAPE, ADD, TANH, MUL, SUM.

    Only calls on ``[query, value]`` or ``[query, value, key]`` with no mask or attention
    scores returned (a causal mask as :func:`causal_masked` scores, as in
    :func:`split_attention`); ``use_scale``'s learned scale (and ``concat``'s score
    weight) is kept as a constant; dropout is left out (inference).

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    once = called_once(model)
    plain = {id(node.operation) for node in _compat.graph_nodes(model)
             if type(unwrap(node.operation)) in ATTENTION_LAYERS and id(node.operation) in once
             and dot_attention_refusal(unwrap(node.operation), node) is None}

    def splits(layer):
        return id(layer) in plain and not keep(layer)

    def replace(original, pending, *args, **kwargs):
        base, ops = unwrap(original), keras.ops
        query, value = args[0][0], args[0][1]
        key = args[0][2] if len(args[0]) == 3 else value
        scale = (keras.ops.convert_to_numpy(base.scale).astype("float32")
                 if base.use_scale else None)
        if type(base) is keras.layers.Attention and base.score_mode == "dot":
            scores = ops.matmul(query, ops.transpose(key, (0, 2, 1)))
            if scale is not None:
                scores = scores * float(scale.reshape(()))
            how = ("TRANSPOSE, BATCH_MATMUL, " + ("MUL by its scale, " if base.use_scale else ""))
        else:  # additive: sum(tanh(q + k) * scale) over the features
            summed = ops.expand_dims(query, 2) + ops.expand_dims(key, 1)
            if type(base) is keras.layers.AdditiveAttention and scale is not None:
                # The per-feature scale as a Dense(1) kernel: quantized as the file's
                # FULLY_CONNECTED weights are (a MUL by a float vector is not).
                weighting = keras.layers.Dense(1, use_bias=False, name=f"{base.name}_score")
                scores = ops.squeeze(rewrap(original, weighting)(ops.tanh(summed)), axis=-1)
                pending.append((weighting, [scale.reshape(-1, 1)]))
            elif type(base) is keras.layers.AdditiveAttention:
                scores = ops.sum(ops.tanh(summed), axis=-1)
            else:  # Attention(score_mode="concat"): the scale is inside the tanh
                scores = ops.sum(ops.tanh(summed * float(scale.reshape(())) if scale is not None
                                          else summed), axis=-1)
                weight = float(keras.ops.convert_to_numpy(base.concat_score_weight).reshape(()))
                scores = scores * weight
            how = "RESHAPE, ADD, TANH, SUM or FULLY_CONNECTED, "
        if kwargs.get("use_causal_mask"):  # as in split_attention
            seen = (np.arange(int(query.shape[1]))[:, None]
                    >= np.arange(int(value.shape[1]))[None, :])
            scores = causal_masked(scores, seen[None])
            how += "the causal mask (MIN, SUB, MUL, ADD), "
        weights = ops.softmax(scores, axis=-1)
        return ops.matmul(weights, value), (
            f"{base.name}: {type(base).__name__} -> {how}SOFTMAX, BATCH_MATMUL"
            + (" (dropout left out)" if base.dropout else ""))

    return _replace_layers(model, splits, replace)


# The longest group (positions x channels per group) normalized as one row of
# FULLY_CONNECTED means: 127 * 128 * N must stay inside an int32 sum.
_GROUP_ROW_LIMIT = 2 ** 31 // (128 * 127)


def groupnorm_refusal(layer, rank: int) -> Optional[str]:
    """Why :func:`split_groupnorms` leaves ``layer`` (input of rank ``rank``) whole, or
    None when it splits it (a GroupNormalization over the channels, the last axis, of a
    3-D or larger input)."""
    if type(layer) is not keras.layers.GroupNormalization:
        return "not a GroupNormalization"
    if rank < 3 or layer.axis % rank != rank - 1:
        return (f"a GroupNormalization over axis {layer.axis} of a {rank}-D input: only one "
                "over the channels (the last axis) of a 3-D or larger input is written as "
                "int8 ops")
    return None


def split_groupnorms(model, *, unwrap=lambda layer: layer, rewrap=lambda original, new: new,
                     keep=lambda layer: False):
    """Writes each GroupNormalization over the last axis as RESHAPE to ``(..., groups,
    C / groups)``, a LayerNormalization over every axis but the batch and the groups
    (without its own scale and offset), RESHAPE back and a per-channel
    ``Rescaling(gamma, beta)``: what :func:`split_layernorms` (``any_axes=True``) then
    writes as int8 ops. Keras' own form left float ops in an int8 file. Where a group
    holds at most ``_GROUP_ROW_LIMIT`` values, each group is first moved to a row of its
    own (RESHAPE, TRANSPOSE, RESHAPE) and normalized over that last axis.

    Args:
        model: a Functional model.
        unwrap: the layer inside a wrapper (e.g. an annotation), or the layer itself.
        rewrap: wraps each new layer as its GroupNormalization was wrapped.
        keep: layers to leave whole.

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
        The LayerNormalization of layer ``g`` is named ``g_norm``.
    """
    ranks = {key: len(shape) for key, shape in _input_shapes(model).items()}

    def splits(layer):
        return (id(layer) in ranks and not keep(layer)
                and groupnorm_refusal(unwrap(layer), ranks[id(layer)]) is None)

    def replace(original, pending, *args, **kwargs):
        base, x = unwrap(original), args[0]
        groups = base.groups
        shape = tuple(int(d) for d in x.shape[1:])
        channels = shape[-1]
        size, width = int(np.prod(shape[:-1])), channels // groups
        layer = (lambda new: rewrap(original, new))
        if size * width <= _GROUP_ROW_LIMIT:
            # Each group as one row, normalized over its last axis: the means are then
            # FULLY_CONNECTED ops with weights 1/N, which both kernel paths compute alike
            # (the builtin int8 MEAN over several axes rounds otherwise than XNNPACK's:
            # measured 3 output steps apart after one GroupNorm, 0 and 1 with the rows).
            rows = layer(keras.layers.Reshape((size, groups, width), name=f"{base.name}_groups"))(x)
            rows = layer(keras.layers.Permute((2, 1, 3), name=f"{base.name}_group_major"))(rows)
            rows = layer(keras.layers.Reshape((groups, size * width),
                                              name=f"{base.name}_rows"))(rows)
            normalized = layer(keras.layers.LayerNormalization(
                epsilon=base.epsilon, center=False, scale=False, name=f"{base.name}_norm"))(rows)
            back = layer(keras.layers.Reshape((groups, size, width),
                                              name=f"{base.name}_unrows"))(normalized)
            back = layer(keras.layers.Permute((2, 1, 3), name=f"{base.name}_position_major"))(back)
        else:  # a row this long would overflow the int32 sums of a FULLY_CONNECTED mean
            grouped = layer(keras.layers.Reshape(shape[:-1] + (groups, width),
                                                 name=f"{base.name}_groups"))(x)
            rank = len(grouped.shape)
            back = layer(keras.layers.LayerNormalization(
                axis=[a for a in range(1, rank) if a != rank - 2], epsilon=base.epsilon,
                center=False, scale=False, name=f"{base.name}_norm"))(grouped)
        back = layer(keras.layers.Reshape(shape, name=f"{base.name}_channels"))(back)
        weights = {w.path.split("/")[-1]: w.numpy() for w in base.weights}
        affine = rewrap(original, keras.layers.Rescaling(
            weights.get("gamma", np.ones(channels, "float32")).astype("float32"),
            weights.get("beta", np.zeros(channels, "float32")).astype("float32"),
            name=f"{base.name}_affine"))
        return affine(back), (f"{base.name}: GroupNormalization -> RESHAPE"
                              + (", TRANSPOSE" if size * width <= _GROUP_ROW_LIMIT else "")
                              + ", a LayerNormalization per group, RESHAPE and a Rescaling by "
                              "gamma and beta")

    return _replace_layers(model, splits, replace)


def _split_sections(op, x) -> List[Tuple[int, int]]:
    """``(start, stop)`` along ``op.axis`` of each output of a ``keras.ops.split`` node."""
    size = int(x.shape[op.axis])
    if isinstance(op.indices_or_sections, int):
        step = size // op.indices_or_sections
        cuts = [step * i for i in range(1, op.indices_or_sections)]
    else:
        cuts = [int(i) for i in op.indices_or_sections]
    bounds = [0] + [min(max(c, 0), size) for c in cuts] + [size]
    return list(zip(bounds[:-1], bounds[1:]))


def _as_slices(op, x):
    """The outputs of a split node as SLICE ops."""
    axis = op.axis % len(x.shape)
    outs = []
    for start, stop in _split_sections(op, x):
        begin = [0] * len(x.shape)
        begin[axis] = start
        size = [-1] * len(x.shape)
        size[axis] = stop - start
        outs.append(keras.ops.slice(x, begin, size))
    return outs


def _as_unstacked(op, x):
    """The outputs of an unstack node as SLICE and SQUEEZE ops."""
    axis = op.axis % len(x.shape)
    outs = []
    for i in range(int(x.shape[axis])):
        begin = [0] * len(x.shape)
        begin[axis] = i
        size = [-1] * len(x.shape)
        size[axis] = 1
        outs.append(keras.ops.squeeze(keras.ops.slice(x, begin, size), axis=axis))
    return outs


def _axes(op) -> Tuple[int, ...]:
    return (op.axis,) if isinstance(op.axis, int) else tuple(op.axis)


def _as_variance(op, x):
    """``mean((x - mean(x)) ** 2)`` over ``op.axis``: MEAN, SUB, MUL, MEAN."""
    ops = keras.ops
    centered = x - ops.mean(x, axis=_axes(op), keepdims=True)
    return ops.mean(centered * centered, axis=_axes(op), keepdims=op.keepdims)


def _as_logsumexp(op, x):
    """``log(sum(exp(x - max(x)))) + max(x)`` over ``op.axis`` (EXP of values <= 0)."""
    ops = keras.ops
    top = ops.max(x, axis=_axes(op), keepdims=True)
    out = ops.log(ops.sum(ops.exp(x - top), axis=_axes(op), keepdims=True)) + top
    return out if op.keepdims else ops.squeeze(out, axis=_axes(op))


# Operator nodes written in other int8 ops: name -> (new form from its arguments, note).
_OPERATOR_FORMS = {
    # The converter keeps NEG and SQUARE in float in an int8 file (a DEQUANTIZE, NEG,
    # QUANTIZE island); MUL is int8 (measured after a Dense: NEG as MUL 1.2 output steps
    # p99 from float).
    "Negative": (lambda op, args: args[0] * -1.0, "NEG -> MUL by -1 (int8 has no NEG)"),
    "Square": (lambda op, args: args[0] * args[0], "SQUARE -> MUL of the tensor by itself "
                                                   "(int8 has no SQUARE)"),
    "Power": (lambda op, args: args[0] * args[0], "POW by 2 -> MUL of the tensor by itself "
                                                  "(int8 has no POW)"),
    # One output per node, each a SLICE that keeps the input's range, as SPLIT's do.
    "Split": (lambda op, args: _as_slices(op, args[0]), "SPLIT -> one SLICE per output"),
    "Unstack": (lambda op, args: _as_unstacked(op, args[0]),
                "UNPACK -> one SLICE and SQUEEZE per output"),
    # Reductions the converter writes with float-only ops (or as one op of no fake
    # quant), written as int8 MEAN, SUB, MUL, SUM, SQRT, EXP, LOG ops with a range each.
    "Var": (lambda op, args: _as_variance(op, args[0]), "variance -> MEAN, SUB, MUL, MEAN"),
    "Std": (lambda op, args: keras.ops.sqrt(_as_variance(op, args[0])),
            "standard deviation -> MEAN, SUB, MUL, MEAN, SQRT"),
    "Norm": (lambda op, args: keras.ops.sqrt(keras.ops.sum(
        args[0] * args[0], axis=_axes(op), keepdims=op.keepdims)), "norm -> MUL, SUM, SQRT"),
    "Logsumexp": (lambda op, args: _as_logsumexp(op, args[0]),
                  "logsumexp -> MAX, SUB, EXP, SUM, LOG, ADD"),
    # keras.ops.normalize(order=2) is x * min(rsqrt(sum(x * x)), 1 / eps).
    "Normalize": (lambda op, args: L2Normalize(epsilon=_normalize_epsilon(op) ** 2)(args[0]),
                  "L2 normalize -> L2_NORMALIZATION"),
    # TFLite's int16x8 SUM is wrong (41% and 68% of the output's magnitude measured, over
    # a middle and the last axis); its MEAN is right (0.7%): int16x8 conversion only.
    "Sum": (lambda op, args: _as_mean_times_count(op, args[0]),
            "SUM -> MEAN times the count (TFLite's int16 SUM kernel is wrong)"),
    # A float tensor compared with a constant (Masking's mask): the converter compares in
    # float after a DEQUANTIZE; GREATER of an int8 ABS against 0 is an integer op.
    "NotEqual": (lambda op, args: _as_not_equal(args), "NOT_EQUAL of a float tensor and a "
                 "constant -> ABS of their difference, GREATER than 0 (an int8 comparison)"),
}


def _as_mean_times_count(op, x):
    count = int(np.prod([x.shape[a] for a in _axes(op)]))
    return keras.ops.mean(x, axis=_axes(op), keepdims=op.keepdims) * float(count)


def _as_not_equal(args):
    x, value = (args[0], args[1]) if _is_float_tensor(args[0]) else (args[1], args[0])
    value = float(np.asarray(value))
    return keras.ops.greater(keras.ops.abs(x if value == 0.0 else x - value), 0.0)


def _is_float_tensor(x) -> bool:
    return keras.backend.is_keras_tensor(x) and "float" in str(x.dtype)


def _float_against_constant(args) -> bool:
    """Whether a comparison node compares one float tensor with one scalar constant."""
    if len(args) != 2:
        return False
    tensors = [a for a in args if keras.backend.is_keras_tensor(a)]
    constants = [a for a in args if not keras.backend.is_keras_tensor(a)]
    return (len(tensors) == 1 and _is_float_tensor(tensors[0]) and len(constants) == 1
            and np.ndim(constants[0]) == 0 and np.isfinite(float(np.asarray(constants[0]))))


def _normalize_epsilon(op) -> float:
    return float(op.epsilon if op.epsilon is not None else keras.config.epsilon())


def _reduces_past_batch(op, shape) -> bool:
    """Whether a reduction node reduces known axes past the batch only."""
    if shape is None or op.axis is None:
        return False
    axes = [a % len(shape) for a in _axes(op)]
    return 0 not in axes and all(shape[a] is not None for a in axes)


def split_scaled_sums(model, *, unwrap=lambda layer: layer, keep=lambda layer: False):
    """Writes each InceptionResNetV2 ``CustomScaleLayer`` (``x + y * scale``) as the
    operator nodes ``x + y * scale`` (MUL by a constant, ADD), which QAT quantizes one by
    one; the layer itself is unknown to it.

    Returns:
        ``(model, notes)``: the rewritten model and one note per layer, or ``(model, [])``.
    """
    scaled_sum = _compat.application_layers().get("CustomScaleLayer")

    def splits(layer):
        return scaled_sum is not None and type(unwrap(layer)) is scaled_sum and not keep(layer)

    def replace(original, pending, *args, **kwargs):
        base = unwrap(original)
        x, y = args[0]
        return x + y * float(base.scale), f"{base.name}: CustomScaleLayer -> MUL, ADD"

    return _replace_layers(model, splits, replace)


def split_operator_forms(model, *, names: Sequence[str] = tuple(
        name for name in _OPERATOR_FORMS if name != "Sum")):
    """Writes the ``keras.ops`` nodes named in ``names`` as other int8 ops:
    ``-x`` (``keras.ops.negative``) as ``x * -1``, ``keras.ops.square(x)`` and
    ``keras.ops.power(x, 2)`` as ``x * x``, ``keras.ops.split`` and ``keras.ops.unstack``
    as one ``keras.ops.slice`` per output (an operator node of one output, which QAT
    quantizes like any other); ``var``, ``std``, ``norm`` (2-norm, Frobenius) and
    ``logsumexp`` over axes past the batch as MEAN / SUM / SQRT / EXP / LOG nodes, and
    ``normalize`` (L2, last axis) as :class:`L2Normalize`; a float ``not_equal`` against a
    constant as ``abs(x - c) > 0``; and, when named (int16x8 conversion only), ``sum``
    over known axes past the batch as MEAN times the count.

    Returns:
        ``(model, notes)``: the rewritten model and one note per node, or ``(model, [])``.
    """
    unknown = sorted(set(names) - set(_OPERATOR_FORMS))
    if unknown:
        raise ValueError(f"Unknown operator forms {unknown}. Allowed: {sorted(_OPERATOR_FORMS)}.")

    shapes = _input_shapes(model)
    arguments = {id(node.operation): _compat.node_arguments(node)
                 for node in _compat.graph_nodes(model)}

    def splits(op):
        name = type(op).__name__
        if not _compat.is_operation(op) or name not in names:
            return False
        if name in ("Split", "Unstack"):  # along a known axis past the batch only
            shape = shapes.get(id(op))
            return (shape is not None and op.axis % len(shape) != 0
                    and shape[op.axis] is not None)
        if name == "Power":  # x ** 2 only
            args, kwargs = arguments.get(id(op), ((), {}))
            exponent = args[1] if len(args) > 1 else kwargs.get("x2")
            return isinstance(exponent, (int, float)) and float(exponent) == 2.0
        if name in ("Var", "Std", "Logsumexp"):
            return _reduces_past_batch(op, shapes.get(id(op)))
        if name == "Norm":  # vector 2-norms and Frobenius norms only
            two_norm = op.ord in (None, "fro") or (op.ord == 2 and isinstance(op.axis, int))
            return two_norm and _reduces_past_batch(op, shapes.get(id(op)))
        if name == "Sum":  # over known axes past the batch only
            return _reduces_past_batch(op, shapes.get(id(op)))
        if name == "NotEqual":  # a float tensor against a constant only
            return _float_against_constant(arguments.get(id(op), ((), {}))[0])
        if name == "Normalize":  # L2 over the last axis only (L2_NORMALIZATION's)
            shape = shapes.get(id(op))
            return (op.order == 2 and shape is not None and isinstance(op.axis, int)
                    and op.axis % len(shape) == len(shape) - 1 and len(shape) > 1)
        return True

    def replace(original, pending, *args, **kwargs):
        form, note = _OPERATOR_FORMS[type(original).__name__]
        return form(original, args), f"{original.name}: {note}"

    return _replace_layers(model, splits, replace)
