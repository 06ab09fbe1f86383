"""Pruning policies: which layers of a model to prune, and whether the model qualifies.

tfmot's ``PruningPolicy`` interface and its one policy, :class:`PruneForLatencyOnXNNPack`,
under the same names: ``prune_low_magnitude(model, pruning_policy=policy)`` first asks
``policy.ensure_model_supports_pruning(model)``, then wraps only the layers for which
``policy.allow_pruning(layer)`` is true.

XNNPACK's sparse inference runs a float NHWC subgraph that starts at a 3x3, stride-2
convolution of a 3-channel image (after a one-pixel ``ZeroPadding2D``) and ends at a
``GlobalAveragePooling2D(keepdims=True)``; inside it only 1x1 convolutions profit from
sparse weights, so only they are pruned.

Example:
    >>> import keras
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.ZeroPadding2D(1)(inputs)
    >>> x = keras.layers.Conv2D(8, 3, strides=2, name="stem")(x)
    >>> x = keras.layers.Conv2D(8, 1, name="pointwise")(x)
    >>> model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(keepdims=True)(x))
    >>> policy = PruneForLatencyOnXNNPack()
    >>> policy.ensure_model_supports_pruning(model)
    >>> [layer.name for layer in model.layers if policy.allow_pruning(layer)]
    ['pointwise']
"""

from __future__ import annotations

import abc
from typing import Callable, Dict, List, Set

import keras

from tfcompress import _compat, _graph

__all__ = ["PruneForLatencyOnXNNPack", "PruningPolicy"]

L = keras.layers


class PruningPolicy(abc.ABC):
    """Says which layers of a model to prune and checks that the model qualifies.

    Subclass it and give :func:`tfcompress.pruning.prune_low_magnitude` an instance as
    ``pruning_policy``.
    """

    @abc.abstractmethod
    def allow_pruning(self, layer) -> bool:
        """Whether ``layer`` gets a pruning wrapper."""

    @abc.abstractmethod
    def ensure_model_supports_pruning(self, model) -> None:
        """Raises ValueError when ``model`` cannot be pruned under this policy."""


def _unwrap(layer):
    # A pruning wrapper (anything with `apply_masks` around a `layer`) counts as its layer.
    return layer.layer if hasattr(layer, "apply_masks") and hasattr(layer, "layer") else layer


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prunes only the 1x1 Conv2D layers that XNNPACK's sparse inference speeds up.

    The model must have, on every input branch, a ``ZeroPadding2D(1)`` followed by a
    3x3 ``Conv2D`` with stride 2, ``padding="valid"`` and 3 input channels, and on every
    output branch a ``GlobalAveragePooling2D(keepdims=True)``; every layer between
    them must be one XNNPACK runs sparse (1x1 stride-1 convolutions, 3x3 / 5x5
    depthwise convolutions, Add, Multiply, ZeroPadding2D, ReLU / LeakyReLU / ELU /
    sigmoid activations, Dropout, channels-last BatchNormalization, bilinear
    UpSampling2D, Identity, and the operators ``+``, ``-``, ``*``).
    """

    def allow_pruning(self, layer) -> bool:
        """True for a Conv2D with a 1x1 kernel."""
        return isinstance(layer, L.Conv2D) and _pair(layer.kernel_size) == (1, 1)

    # -- the graph ---------------------------------------------------------------

    @staticmethod
    def _links(model):
        producers: Dict[int, Set] = {}
        consumers: Dict[int, List] = {}
        ops = {}
        for node in _compat.graph_nodes(model):
            op = node.operation
            ops[id(op)] = op
            producers.setdefault(id(op), set())
            consumers.setdefault(id(op), [])
            for tensor in node.input_tensors:
                source = _compat.producer(tensor)
                if source is None:
                    continue
                ops[id(source)] = source
                producers[id(op)].add(id(source))
                consumers.setdefault(id(source), [])
                if op not in consumers[id(source)]:
                    consumers[id(source)].append(op)
        return ops, producers, consumers

    @staticmethod
    def _search(sources, stop: Callable, following: Callable) -> list:
        """The layers where ``stop`` holds, reached from ``sources``; [] if a path ends first."""
        to_visit = list(sources)
        seen = {id(layer) for layer in sources}
        found = []
        while to_visit:
            layer = to_visit.pop()
            if stop(layer):
                if all(f is not layer for f in found):
                    found.append(layer)
                continue
            after = following(layer)
            if not after:
                return []
            for nxt in after:
                if id(nxt) not in seen:
                    seen.add(id(nxt))
                    to_visit.append(nxt)
        return found

    # -- layer rules -------------------------------------------------------------

    def _is_start(self, layer, producers_of) -> bool:
        layer = _unwrap(layer)
        if not isinstance(layer, L.Conv2D) or type(layer) is not L.Conv2D:
            return False
        before = [_unwrap(p) for p in producers_of(layer)]
        kernel = getattr(layer, "kernel", None)
        return (kernel is not None and tuple(kernel.shape[:3]) == (3, 3, 3)
                and _pair(layer.strides) == (2, 2) and layer.padding.lower() == "valid"
                and len(before) == 1 and isinstance(before[0], L.ZeroPadding2D)
                and tuple(map(tuple, before[0].padding)) == ((1, 1), (1, 1)))

    @staticmethod
    def _is_end(layer) -> bool:
        layer = _unwrap(layer)
        return isinstance(layer, L.GlobalAveragePooling2D) and bool(layer.keepdims)

    def _runs_sparse(self, layer, producers_of) -> bool:
        layer = _unwrap(layer)
        if _compat.is_operation(layer):
            return _compat.builtin_operation_name(layer) in ("Add", "Subtract", "Multiply",
                                                            "Identity")
        if isinstance(layer, (L.Add, L.Multiply, L.ZeroPadding2D, L.ReLU, L.LeakyReLU,
                              L.ELU, L.Dropout, L.Identity)):
            return True
        if isinstance(layer, L.DepthwiseConv2D):
            kernel, strides = _pair(layer.kernel_size), _pair(layer.strides)
            padding = layer.padding.lower()
            before = [_unwrap(p) for p in producers_of(layer)]
            pad = (tuple(map(tuple, before[0].padding)) if len(before) == 1
                   and isinstance(before[0], L.ZeroPadding2D) else None)
            size = {(3, 3): 1, (5, 5): 2}.get(kernel)
            same = size is not None and strides == (1, 1) and padding == "same"
            padded = (size is not None and strides in ((1, 1), (2, 2)) and padding == "valid"
                      and pad == ((size, size), (size, size)))
            return (layer.depth_multiplier == 1 and _pair(layer.dilation_rate) == (1, 1)
                    and (same or padded))
        if isinstance(layer, L.Conv2D):
            return (getattr(layer, "groups", 1) == 1 and _pair(layer.dilation_rate) == (1, 1)
                    and _pair(layer.kernel_size) == (1, 1) and _pair(layer.strides) == (1, 1))
        if isinstance(layer, L.GlobalAveragePooling2D):
            return bool(layer.keepdims)
        if isinstance(layer, L.BatchNormalization):
            axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
            return [a % 4 for a in axis] == [3]
        if isinstance(layer, L.UpSampling2D):
            return layer.interpolation == "bilinear"
        if isinstance(layer, L.Activation):
            name = getattr(layer.activation, "__name__", "")
            return name in ("relu", "relu6", "leaky_relu", "elu", "sigmoid")
        return False

    def ensure_model_supports_pruning(self, model) -> None:
        """Checks the start, end and middle of every branch (tfmot's messages).

        Raises:
            ValueError: a subclassed or unbuilt model, no start convolution on some
                input branch, no keepdims global pooling on some output branch, or a
                layer between them that XNNPACK does not run sparse.
        """
        if not _compat.is_graph_model(model):
            raise ValueError("Subclassed models are not supported currently.")
        if not model.built or (isinstance(model, keras.Sequential) and not model.inputs):
            raise ValueError("Unbuilt models are not supported currently.")
        flat = _graph.functional(model, purpose="checking the pruning policy", inline=True)
        ops, producers, consumers = self._links(flat)

        def producers_of(layer):
            return [ops[i] for i in producers.get(id(layer), ())]

        def consumers_of(layer):
            return consumers.get(id(layer), [])

        inputs = [_compat.producer(t) for t in flat.inputs]
        starts = self._search(inputs, lambda layer: self._is_start(layer, producers_of),
                              consumers_of)
        if not starts:
            raise ValueError(
                "Could not find `Conv2D 3x3` layer with stride 2x2, `input filters == 3` and "
                "`VALID` padding and preceding `ZeroPadding2D` with `padding == 1` in all "
                "input branches of the model")
        outputs = [_compat.producer(t) for t in flat.outputs]
        ends = self._search(outputs, self._is_end, producers_of)
        if not ends:
            raise ValueError("Could not find a `GlobalAveragePooling2D` layer with "
                             "`keepdims = True` in all output branches")
        end_ids = {id(layer) for layer in ends}

        def visit(layer):
            if id(layer) not in end_ids and not self._runs_sparse(layer, producers_of):
                raise ValueError(f"Layer {type(_unwrap(layer)).__name__} is not supported "
                                 f"for the {type(self).__name__} pruning policy")
            return id(layer) in end_ids

        self._search([c for s in starts for c in consumers_of(s)], visit, consumers_of)
