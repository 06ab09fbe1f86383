"""Least-squares refitting of one layer so that it answers as a layer of another model.

Shared by channel pruning (the layers that read removed channels) and low-rank
factorization (the second layer of each factored pair). Pure NumPy once the
activations are computed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfcompress import _compat

__all__ = [
    "input_of",
    "patches",
    "refit",
    "refittable",
]


def refittable(layer) -> bool:
    """Conv2D (groups 1, channels_last, no dilation) and 2-D Dense layers."""
    if isinstance(layer, keras.layers.Dense):
        return len(layer.kernel.shape) == 2
    return (type(layer) is keras.layers.Conv2D and layer.groups == 1
            and layer.data_format == "channels_last" and tuple(layer.dilation_rate) == (1, 1))


def input_of(graph, name: str):
    """The tensor that the layer called ``name`` reads in the Functional ``graph``."""
    node = {n.operation.name: n for n in _compat.graph_nodes(graph)}[name]
    return node.input_tensors[0] if len(node.input_tensors) == 1 else None


def patches(x: np.ndarray, layer) -> np.ndarray:
    """The rows a Conv2D / Dense multiplies by its flattened kernel: (..., kh*kw*cin)."""
    if isinstance(layer, keras.layers.Dense):
        return x
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    return tf.image.extract_patches(
        x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, 1, 1, 1],
        padding=layer.padding.upper()).numpy()


def as_samples(x):
    """Inputs as Keras takes them: one array, or a list of arrays for several inputs."""
    if isinstance(x, (list, tuple)):
        return [np.asarray(a) for a in x]
    return np.asarray(x)


def _count(x) -> int:
    return len(x[0]) if isinstance(x, list) else len(x)


def _rows(model, layer, x) -> np.ndarray:
    a = patches(keras.Model(model.inputs, input_of(model, layer.name)).predict(x, verbose=0), layer)
    return a.reshape(_count(x), -1, a.shape[-1])


def refit(model, layer, original, twin, x, *, keep: Optional[np.ndarray] = None,
          positions: int = 32, ridge: float = 1e-3, rng=None) -> Tuple[float, float]:
    """Sets ``layer``'s kernel and bias to best reproduce ``twin``'s output (ridge LS).

    ``layer`` reads its input in ``model``; the target is ``twin``'s pre-activation
    output in ``original``, both on the inputs ``x``. The two layers must produce
    outputs of the same spatial size; only the input channels where ``keep`` is True
    are used (the others get zero rows). Returns the relative RMS error of the layer's
    output before and after.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    a_new, a_old = _rows(model, layer, x), _rows(original, twin, x)
    if a_new.shape[1] != a_old.shape[1]:
        raise ValueError(f"{layer.name!r} and {twin.name!r} have outputs of different sizes: "
                         f"{a_new.shape[1]} against {a_old.shape[1]} positions.")
    if a_new.shape[1] > positions:  # the same sampled positions in both models
        idx = rng.integers(0, a_new.shape[1], size=(_count(x), positions))
        a_new = np.take_along_axis(a_new, idx[..., None], 1)
        a_old = np.take_along_axis(a_old, idx[..., None], 1)
    a_new = a_new.reshape(-1, a_new.shape[-1]).astype(np.float64)
    a_old = a_old.reshape(-1, a_old.shape[-1]).astype(np.float64)
    kernel = twin.kernel.numpy()
    cout = kernel.shape[-1]
    bias = twin.bias.numpy() if twin.use_bias else np.zeros(cout)
    target = a_old @ kernel.reshape(-1, cout) + bias
    channels = layer.kernel.shape[-2]
    keep = np.ones(channels, bool) if keep is None else np.asarray(keep, bool)
    # Rows of the flattened kernel are (kh, kw, cin) with cin fastest.
    rows = np.tile(keep, a_new.shape[1] // keep.size)
    design = a_new[:, rows]
    if layer.use_bias:
        design = np.concatenate([design, np.ones((len(design), 1))], axis=1)
    gram = design.T @ design
    n_kept = int(rows.sum())
    diag = np.arange(n_kept)  # each input's own scale; the bias is not penalised
    gram[diag, diag] += ridge * gram[diag, diag] + 1e-12
    solution = np.linalg.solve(gram, design.T @ target)
    current = layer.kernel.numpy().reshape(-1, cout)
    current_bias = layer.bias.numpy() if layer.use_bias else np.zeros(cout)
    scale = np.sqrt(np.mean(target ** 2)) or 1.0
    before = np.sqrt(np.mean((a_new @ current + current_bias - target) ** 2)) / scale
    after = np.sqrt(np.mean((design @ solution - target) ** 2)) / scale
    new_kernel = np.zeros_like(current)
    new_kernel[rows] = solution[:n_kept]
    layer.kernel.assign(new_kernel.reshape(layer.kernel.shape).astype(np.float32))
    if layer.use_bias:
        layer.bias.assign(solution[-1].astype(np.float32))
    return float(before), float(after)
