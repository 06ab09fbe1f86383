"""Graph helpers shared by the transforms that rebuild Functional models."""

from __future__ import annotations

from typing import Dict, List, Tuple

import keras

from tfcompress import _compat

__all__ = [
    "all_layers",
    "clone_model",
    "functional",
    "split_separable",
    "variable_dims",
    "with_input_shapes",
]


def all_layers(model):
    """Every layer of ``model``, those of nested models included (depth first)."""
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


def functional(model, *, purpose: str, inline: bool = False):
    """Returns ``model`` as a Functional model (a Sequential is rewritten as one).

    Args:
        model: a Sequential or Functional Keras model.
        purpose: what the caller does, for the error message ("channel pruning").
        inline: replace nested Sequential / Functional models by their layers, so that
            a transform sees (and can rewrite) every layer of the graph.

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
    if inline and any(_compat.is_graph_model(layer) for layer in model.layers):
        model = clone_model(model, clone_function=lambda layer: layer,
                                         call_function=_inline_call)
    return model


def _inline_call(layer, *args, **kwargs):
    if _compat.is_graph_model(layer):
        nested = functional(layer, purpose="inlining", inline=True)
        return _compat.run_graph(nested, args[0] if len(args) == 1 else list(args),
                                 operation_fn=lambda op: op)
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
        ...     return type(layer).from_config(layer.get_config())
        >>> clone = clone_model(model, clone_function=clone_function, keep_operations=True)
        >>> seen, [type(node.operation).__name__ for node in _compat.graph_nodes(clone)][-1]
        (['Dense'], 'Add')
    """
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
            return type(layer).from_config(layer.get_config())
        return clone_function(layer)

    def call(layer, *args, **call_kwargs):
        if _compat.is_operation(layer) or call_function is None:
            return layer(*args, **call_kwargs)
        return call_function(layer, *args, **call_kwargs)

    return dict(kwargs, clone_function=clone_layer,
                call_function=call if call_function is not None else None)


_SEPARABLE = {
    keras.layers.SeparableConv1D: (keras.layers.DepthwiseConv1D, keras.layers.Conv1D),
    keras.layers.SeparableConv2D: (keras.layers.DepthwiseConv2D, keras.layers.Conv2D),
}


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

    if not any(splits(layer) for layer in model.layers):
        return model, []
    notes: List[str] = []
    pending: list = []

    def clone_function(layer):
        new = type(layer).from_config(layer.get_config())
        if layer.weights and not splits(layer):  # split layers are replaced, never built
            pending.append((new, layer.get_weights()))
        return new

    def call_function(layer, *args, **kwargs):
        original = model.get_layer(layer.name)
        if not splits(original):
            return layer(*args, **kwargs)
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
        notes.append(f"{base.name}: {type(base).__name__} -> {depthwise_class.__name__} + 1x1 "
                     f"{pointwise_class.__name__} (what TFLite runs; each half quantized on "
                     "its own)")
        return out

    clone = clone_model(model, clone_function=clone_function, call_function=call_function,
                        keep_operations=True)
    for new, weights in pending:
        new.set_weights(weights)
    return clone, notes
