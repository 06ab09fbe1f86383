"""Graph helpers shared by the transforms that rebuild Functional models."""

from __future__ import annotations

import keras


def _is_graph_model(model) -> bool:
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")
        and type(model).__name__ in ("Functional", "Model"))


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
    elif not _is_graph_model(model):
        raise ValueError(
            f"{purpose[0].upper() + purpose[1:]} needs a Sequential or Functional model. "
            f"Received a subclassed model of class {type(model).__name__}. Rebuild it with the "
            "Functional API: `inputs = keras.Input(shape); outputs = <call the same layers>; "
            "model = keras.Model(inputs, outputs)`, then copy the weights with "
            "`model.set_weights(subclassed.get_weights())`.")
    if inline and any(_is_graph_model(layer) for layer in model.layers):
        model = clone_model(model, clone_function=lambda layer: layer,
                                         call_function=_inline_call)
    return model


def _inline_call(layer, *args, **kwargs):
    if _is_graph_model(layer):
        nested = functional(layer, purpose="inlining", inline=True)
        outputs = nested._run_through_graph(args[0] if len(args) == 1 else list(args),
                                            operation_fn=lambda op: op)
        return outputs
    return layer(*args, **kwargs)


def clone_model(model, **kwargs):
    """``keras.models.clone_model`` that returns an uncompiled model.

    Keras copies the compile configuration into a clone, which fails for a custom
    loss that is not registered; our transforms return uncompiled models, as tfmot's
    do, and the user compiles them.
    """
    models = [m for m in [model] + list(model._flatten_layers(include_self=False))
              if isinstance(m, keras.Model) and getattr(m, "compiled", False)]
    for m in models:
        m.compiled = False
    try:
        return keras.models.clone_model(model, **kwargs)
    finally:
        for m in models:
            m.compiled = True
