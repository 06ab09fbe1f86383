"""Post-training quantization through the QAT graph: QAT with zero training steps.

:func:`post_training_quantize` wraps a float model with
:func:`tfcompress.quantization.quantize_model`, optionally equalizes ranges across
consecutive layers (:func:`equalize`, as AIMET does) and corrects the bias shift of
weight rounding (:func:`correct_bias`), then sets every activation range from
representative data with a chosen estimator (:func:`calibrate`). The result converts
with ``tfcompress.convert(model)`` and no further calibration; it is also a good
start for QAT.

Example:
    >>> import numpy as np
    >>> estimate_range([np.array([-1.0, 0.5, 3.0])], "minmax")
    (-1.0, 3.0)
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import keras
import numpy as np

from tfcompress import _compat, _graph, layer_kinds, quantization
from tfcompress.data import CALIBRATION_SAMPLES
from tfcompress.quantization import FakeQuant, QuantizeWrapper, quantize_model

__all__ = [
    "ESTIMATORS",
    "calibrate",
    "correct_bias",
    "equalize",
    "estimate_range",
    "post_training_quantize",
]

ESTIMATORS = ("minmax", "moving_average", "percentile", "mse")


def _quantization_mse(values: np.ndarray, lo: float, hi: float, levels: int) -> float:
    scale = (hi - lo) / (levels - 1)
    zero = np.round(-lo / scale)
    q = (np.clip(np.round(values / scale) + zero, 0, levels - 1) - zero) * scale
    return float(np.mean((q - values) ** 2))


def estimate_range(batches, estimator: str = "minmax", *, percentile: float = 99.99,
                   decay: float = 0.9, num_bits: int = 8) -> Tuple[float, float]:
    """The ``(min, max)`` an activation quantizer should use, from observed batches.

    Args:
        batches: a list of arrays, one per calibration batch.
        estimator: ``"minmax"`` (the extremes seen), ``"moving_average"`` (of each
            batch's extremes), ``"percentile"`` (clip the tails) or ``"mse"`` (the
            clipping that minimizes the quantization error of the observed values).
        percentile: the upper percentile kept by ``"percentile"``.
        decay: the decay of ``"moving_average"``.
        num_bits: bit width the range is for.

    Returns:
        ``(min, max)``, always containing zero.

    >>> v = [np.array([0.0, 1.0, 2.0, 100.0])]
    >>> estimate_range(v, "minmax")
    (0.0, 100.0)
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown range estimator. Received: estimator={estimator!r}. "
                         f"Allowed: {', '.join(repr(e) for e in ESTIMATORS)}.")
    batches = [np.asarray(b, np.float32).ravel() for b in batches if np.size(b)]
    if not batches:
        raise ValueError("`batches` is empty: no activation values were observed.")
    if estimator == "moving_average":
        lo, hi = float(batches[0].min()), float(batches[0].max())
        for b in batches[1:]:
            lo = decay * lo + (1 - decay) * float(b.min())
            hi = decay * hi + (1 - decay) * float(b.max())
    else:
        values = np.concatenate(batches)
        lo, hi = float(values.min()), float(values.max())
        if estimator == "percentile":
            lo = float(np.percentile(values, 100 - percentile)) if lo < 0 else lo
            hi = float(np.percentile(values, percentile))
        elif estimator == "mse":
            if values.size > 200_000:
                values = np.random.RandomState(0).choice(values, 200_000, replace=False)
            levels = 2 ** num_bits
            best = (np.inf, lo, hi)
            for c in np.linspace(0.05, 1.0, 96):
                a, b = min(lo * c, 0.0), max(hi * c, 0.0)
                if b - a <= 0:
                    continue
                err = _quantization_mse(values, a, b, levels)
                if err < best[0]:
                    best = (err, a, b)
            lo, hi = best[1], best[2]
    return min(lo, 0.0), max(hi, 0.0)


def calibrate(model, data, *, estimator: str = "minmax", num_samples: int = CALIBRATION_SAMPLES,
              batch_size: int = 32, percentile: float = 99.99, progress: bool = True):
    """Sets every learned activation range of a QAT model from representative data.

    The network runs in float (fake-quant layers pass values through) while the
    ranges are measured, as post-training calibration does; folded BatchNorms use
    their moving statistics. Afterwards the model is a calibrated int8 model that
    converts without representative data, or a good start for QAT.

    Args:
        model: a model from :func:`quantize_model` / :func:`quantize_apply`.
        data: an array of inputs (for several inputs: a list of arrays in the
            model's input order, or a dict keyed by input name).
        estimator: see :func:`estimate_range`.
        num_samples: how many samples of ``data`` to use.
        batch_size: samples per forward pass.
        percentile: for ``estimator="percentile"``.
        progress: show a progress bar.

    Returns:
        ``model``, calibrated in place.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown range estimator. Received: estimator={estimator!r}. "
                         f"Allowed: {', '.join(repr(e) for e in ESTIMATORS)}.")
    if not any(isinstance(layer, FakeQuant) and layer.fixed_range is None
               for layer in _compat.flatten_layers(model)):
        raise ValueError("The model has no activation quantizer to calibrate; pass a model "
                         "from quantize_model() or quantize_apply().")
    inputs = _input_arrays(model, data)
    n = min(num_samples, len(inputs[0]))
    bar = keras.utils.Progbar(n, unit_name="sample") if progress else None
    with quantization.recording(model) as seen:
        for start in range(0, n, batch_size):
            _run(model, inputs, start, min(n, start + batch_size))  # eager: layers record
            if bar is not None:
                bar.update(min(n, start + batch_size))
    for q, batches in seen.activations:
        q.set_range(*estimate_range(batches, estimator, percentile=percentile,
                                    num_bits=q.num_bits))
    return model


def _input_arrays(model, data) -> List[np.ndarray]:
    """``data`` as one array per model input, in ``model.inputs`` order: one array, a list
    or tuple in that order, or a dict keyed by input name."""
    if isinstance(data, dict):
        names = [t.name for t in getattr(model, "inputs", None) or []]
        if sorted(names) != sorted(data):
            raise ValueError(f"`data` names the inputs {sorted(data)}; the model's inputs are "
                             f"{names}. Pass a dict with exactly those keys, or a list in that "
                             "order.")
        return [data[name] for name in names]
    return list(data) if isinstance(data, (list, tuple)) else [data]


def _run(model, inputs, start: int, stop: int) -> None:
    """One eager inference call on samples ``start:stop`` of every input."""
    batch = [np.asarray(x[start:stop], np.float32) for x in inputs]
    # A Sequential has no `input` until it is called: it always takes one tensor.
    structured = (not isinstance(model, keras.Sequential)
                  and isinstance(model.input, (list, tuple)))
    model(batch if structured else batch[0], training=False)


def correct_bias(model, data, *, num_samples: int = CALIBRATION_SAMPLES,
                 batch_size: int = 32) -> Dict[str, float]:
    """Removes the mean output shift that weight rounding causes (bias correction).

    For every quantized Dense / Conv / DepthwiseConv the outputs with rounded and with
    exact weights are compared on ``data`` (activations in float, as during
    calibration); the mean difference per output channel is subtracted from the bias
    (from the folded BatchNorm's beta when there is one). Layers with neither a bias
    nor a BatchNorm are left as they are.

    Returns:
        ``{layer name: mean absolute correction}`` for the layers corrected.
    """
    inputs = _input_arrays(model, data)
    n = min(num_samples, len(inputs[0]))
    with quantization.recording(model, activations=False, bias_shifts=True) as seen:
        for start in range(0, n, batch_size):
            _run(model, inputs, start, min(n, start + batch_size))
    corrected = {}
    for layer, shifts in seen.bias_shifts:
        delta = np.mean(shifts, axis=0)
        if layer.batchnorm is not None and layer.batchnorm.center:
            layer.batchnorm.beta.assign(layer.batchnorm.beta - delta)
        elif getattr(layer.layer, "use_bias", False):
            layer.layer.bias.assign(layer.layer.bias - delta)
        else:
            continue
        corrected[layer.layer.name] = float(np.mean(np.abs(delta)))
    return corrected


def _folded_output_scale(wrapper) -> np.ndarray:
    """Per output channel, the factor folding applies (gamma / sqrt(var + eps)), or 1."""
    bn = wrapper.batchnorm
    if bn is None:
        return 1.0
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    return gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)


def _depthwise(layer) -> bool:
    return layer_kinds.kind_of(layer).kernel == "depthwise"


def _output_channel_ranges(wrapper) -> np.ndarray:
    kernel = wrapper.layer.kernel.numpy()
    if _depthwise(wrapper.layer):
        kernel = kernel.reshape(kernel.shape[:-2] + (-1,))
    folded = kernel * _folded_output_scale(wrapper)
    return np.abs(folded).reshape(-1, folded.shape[-1]).max(axis=0)


def _input_channel_ranges(wrapper) -> np.ndarray:
    kernel = np.abs(wrapper.layer.kernel.numpy())
    return np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1).max(axis=1)


def _equalizable(layer) -> bool:
    """A wrapper whose kernel is laid out (..., in, out): not a transposed convolution."""
    return (isinstance(layer, QuantizeWrapper) and layer.user_quantize_config is None
            and layer_kinds.kind_of(layer.layer).kernel in ("dense", "conv", "depthwise"))


def equalize(model) -> List[Tuple[str, str]]:
    """Cross-layer equalization (Nagel et al. 2019) of a QAT model, before calibration.

    For each pair ``A -> ReLU -> B`` of quantized layers where B is A's only reader,
    output channel ``i`` of A is divided by ``s_i`` and input channel ``i`` of B is
    multiplied by it, with ``s_i = sqrt(r_A[i] / r_B[i])``, so that both weights
    have the same per-channel range. ReLU commutes with a positive scale, so the
    float function is unchanged; per-tensor and per-channel quantization lose less.
    (ReLU6 does not commute with scaling; such pairs are left alone.)

    Returns:
        The ``(A, B)`` layer names that were equalized.
    """
    # A Sequential QAT model: the same layers in a Functional graph (edits reach them).
    nodes = _compat.graph_nodes(_graph.functional(model, purpose="equalization"))
    readers: Dict[int, list] = {}
    for node in nodes:
        for t in node.input_tensors:
            readers.setdefault(id(t), []).append(node)
    pairs = []
    for node in nodes:
        a = node.operation
        if not _equalizable(a):
            continue
        activation = layer_kinds.activation_name(a.layer)
        if activation not in ("linear", "relu") or a.pre_activation is not None:
            continue
        relu_seen = activation == "relu"
        tensor, b = node.output_tensors[0], None
        while True:
            after = readers.get(id(tensor), [])
            if len(after) != 1:
                break
            op = after[0].operation
            # ReLU commutes with a positive scale; ReLU6 does not.
            if isinstance(op, FakeQuant) or (layer_kinds.is_fusable_activation(op)
                                             and layer_kinds.activation_name(op) == "relu"):
                relu_seen = relu_seen or not isinstance(op, FakeQuant)
                tensor = after[0].output_tensors[0]
                continue
            if _equalizable(op):
                b = op
            break
        if b is None or (not relu_seen and activation != "linear"):
            continue
        r_a, r_b = _output_channel_ranges(a), _input_channel_ranges(b)
        if r_a.shape != r_b.shape:
            continue
        s = np.where((r_a > 0) & (r_b > 0), np.sqrt(r_a / np.maximum(r_b, 1e-12)), 1.0)
        s = s.astype("float32")
        if a.batchnorm is not None:
            bn = a.batchnorm
            if not bn.scale:
                continue
            bn.gamma.assign(bn.gamma.numpy() / s)
            if bn.center:
                bn.beta.assign(bn.beta.numpy() / s)
        else:
            kernel = a.layer.kernel.numpy()
            shape = kernel.shape
            if _depthwise(a.layer):
                kernel = kernel.reshape(shape[:-2] + (-1,))
            a.layer.kernel.assign((kernel / s).reshape(shape))
            if a.layer.use_bias:
                a.layer.bias.assign(a.layer.bias.numpy() / s)
        kb = b.layer.kernel.numpy()
        b.layer.kernel.assign(np.moveaxis(np.moveaxis(kb, -2, -1) * s, -1, -2))
        pairs.append((a.layer.name, b.layer.name))
    return pairs


def post_training_quantize(model, representative_data, *, estimator: str = "percentile",
                           num_samples: int = CALIBRATION_SAMPLES, scheme: str = "default_8bit",
                           equalization: bool = False, bias_correction: bool = False,
                           progress: bool = True):
    """Post-training quantization through the QAT path: wrap, calibrate, done.

    Returns a calibrated QAT model; ``tfcompress.convert(result)`` writes the int8
    file without further calibration.

    Args:
        model: a Sequential or Functional Keras model.
        representative_data: an array of real inputs (for several inputs: a list
            in the model's input order, or a dict keyed by input name).
        estimator: range estimator (see :func:`estimate_range`).
        num_samples: calibration samples.
        scheme: ``"default_8bit"`` or ``"int16x8"``.
        equalization: run :func:`equalize` first (cross-layer equalization).
        bias_correction: also run :func:`correct_bias` on the same data.
        progress: show a progress bar.
    """
    qat = quantize_model(model, scheme=scheme)
    if equalization:
        equalize(qat)
    if bias_correction:
        correct_bias(qat, representative_data, num_samples=num_samples)
    return calibrate(qat, representative_data, estimator=estimator, num_samples=num_samples,
                     progress=progress)
