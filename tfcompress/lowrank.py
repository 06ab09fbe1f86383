"""Low-rank factorization: fewer parameters and fewer MACs, as ordinary Keras layers.

A Dense kernel ``W (m x n)`` becomes two Dense layers ``m -> r -> n`` (``W ~= U V``,
with the singular values split evenly between ``U`` and ``V``). A Conv2D kernel
``(kh, kw, cin, cout)`` is factored in one of two ways:

* ``"channel"``: a ``(kh, kw)`` convolution to ``r`` channels, then a 1x1 to ``cout``;
* ``"spatial"``: a ``(kh, 1)`` convolution to ``r`` channels, then a ``(1, kw)`` one
  (the SVD of the kernel seen as a ``(kh * cin) x (kw * cout)`` matrix).

An ``EinsumDense`` whose equation is a matrix product (``"abc,cde->abde"``: its
input's trailing axes contract with the kernel's leading ones, the kernel's other axes
are the output's trailing ones) is the same matrix reshaped, and becomes two
``EinsumDense`` layers through ``r`` values. The projections inside a
``MultiHeadAttention`` are left as they are (``.factor_notes`` says so).

The first layer of a pair has no bias and no activation; the second keeps the
original bias and activation, so at full rank the pair computes what the layer did.
The result is a plain Functional model: it fine-tunes, saves, loads and converts.

The rank of each layer comes from a retained-energy threshold (the share of the
squared singular values kept) or from a target parameter ratio; :func:`sensitivity`
reports the output error of each layer at several ratios so that the choice can be
made per layer.

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((64,))
    >>> model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(64)(inputs)))
    >>> small = factorize(model, ratio=0.25)
    >>> [l.units for l in small.layers[1:]]
    [8, 64, 2, 10]
"""

from __future__ import annotations

import dataclasses
import string
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from tfcompress import _compat, _graph, _refit, layer_kinds

__all__ = [
    "FactorPlan",
    "count_macs",
    "factor_plans",
    "factorize",
    "rank_for_energy",
    "rank_for_ratio",
    "reconstruct",
    "sensitivity",
    "svd_factors",
]

METHODS = ("auto", "channel", "spatial")


def svd_factors(matrix: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` with ``A @ B`` the best rank-``rank`` approximation of ``matrix``.

    >>> m = np.arange(6, dtype="float32").reshape(2, 3)
    >>> a, b = svd_factors(m, 2)
    >>> bool(np.allclose(a @ b, m, atol=1e-5))
    True
    """
    u, s, vt = np.linalg.svd(np.asarray(matrix, np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return (u[:, :rank] * root).astype(np.float32), (root[:, None] * vt[:rank]).astype(np.float32)


def rank_for_energy(singular_values: np.ndarray, energy: float) -> int:
    """The smallest rank that keeps ``energy`` of the sum of squared singular values.

    >>> rank_for_energy(np.array([3.0, 1.0, 0.1]), 0.85)
    1
    >>> rank_for_energy(np.array([3.0, 1.0, 0.1]), 0.9)
    2
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"`energy` must be in (0, 1]. Received: energy={energy!r}")
    power = np.cumsum(np.asarray(singular_values, np.float64) ** 2)
    return int(np.searchsorted(power / power[-1], energy - 1e-12) + 1)


def rank_for_ratio(rows: int, cols: int, ratio: float) -> int:
    """The largest rank whose two factors hold at most ``ratio`` of ``rows * cols``.

    >>> rank_for_ratio(784, 512, 1 / 3)
    103
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"`ratio` must be in (0, 1). Received: ratio={ratio!r}")
    return max(1, int(np.floor(ratio * rows * cols / (rows + cols))))


@dataclasses.dataclass(frozen=True)
class FactorPlan:
    """How one layer is factored.

    Attributes:
        layer: the name of the original layer (the pair is ``<layer>_u``, ``<layer>_v``).
        method: ``"dense"``, ``"einsum"``, ``"channel"`` or ``"spatial"``.
        rank: the number of units / filters of the first layer of the pair.
        params_before: the original kernel's size.
        params_after: the two kernels' sizes together.
    """

    layer: str
    method: str
    rank: int
    params_before: int
    params_after: int


def _is_einsum(layer) -> bool:
    return isinstance(layer, keras.layers.EinsumDense)


def _is_dense(layer) -> bool:
    return not _is_einsum(layer) and layer_kinds.kind_of(layer).kernel == "dense"


def _matrix(layer, method: str) -> np.ndarray:
    k = layer.kernel.numpy()
    if _is_einsum(layer):
        split = _graph.einsum_matmul(layer)
        rows = int(np.prod(k.shape[:len(split.contracted)]))
        return k.reshape(rows, -1)
    if _is_dense(layer):
        return k
    kh, kw, cin, cout = k.shape
    if method == "channel":
        return k.reshape(kh * kw * cin, cout)
    return k.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)  # rows (h, c), cols (w, o)


# What each kernel layout needs to be factored.
_CONDITIONS = {"dense": "2-D kernel", "conv": "2-D kernel window, groups=1, channels_last"}
_EINSUM_CONDITION = ("EinsumDense (a matrix product: the input's trailing axes contract with "
                     "the kernel's leading ones, e.g. 'abc,cde->abde')")


def _factorable(layer) -> bool:
    if _is_einsum(layer):
        return _graph.einsum_matmul(layer) is not None and len(layer.kernel.shape) >= 2
    kind = layer_kinds.kind_of(layer)
    if not kind.factorable:
        return False
    if kind.kernel == "dense":
        return len(layer.kernel.shape) == 2
    return (kind.kernel == "conv" and len(layer.kernel_size) == 2 and layer.groups == 1
            and layer.data_format == "channels_last")


def _supported() -> str:
    listed = [f"{cls.__name__} ({_CONDITIONS.get(layer_kinds.kind_of(cls).kernel, '?')})"
              for cls in layer_kinds.registered(lambda kind: kind.factorable)
              if not issubclass(cls, keras.layers.EinsumDense)]
    return ", ".join(listed + [_EINSUM_CONDITION])


def _choose_method(layer, method: str) -> str:
    if _is_einsum(layer):
        return "einsum"
    if _is_dense(layer):
        return "dense"
    if method != "auto":
        return method
    kh, kw = layer.kernel_size
    return "spatial" if kh > 1 and kw > 1 else "channel"


def _matrix_for(layer, kind: str) -> np.ndarray:
    return _matrix(layer, "channel" if kind in ("dense", "einsum") else kind)


def _plan(layer, *, method, energy, ratio) -> Optional[FactorPlan]:
    kind = _choose_method(layer, method)
    if kind == "spatial" and (layer.kernel_size[0] == 1 or layer.kernel_size[1] == 1):
        return None
    m = _matrix_for(layer, kind)
    rows, cols = m.shape
    if energy is not None:
        rank = rank_for_energy(np.linalg.svd(m, compute_uv=False), energy)
    else:
        rank = rank_for_ratio(rows, cols, ratio)
    before = int(layer.kernel.numpy().size)
    after = rank * (rows + cols)
    if after >= before:
        return None  # factoring would not save anything
    return FactorPlan(layer.name, kind, rank, before, after)


def _einsum_pair(layer, plan: FactorPlan):
    split = _graph.einsum_matmul(layer)
    kernel = layer.kernel.numpy()
    a, b = svd_factors(_matrix(layer, "einsum"), plan.rank)
    used = set(layer.equation)
    r = next(c for c in string.ascii_lowercase if c not in used)
    # output_shape leaves out the batch axis (or the axes of the ellipsis); the free
    # axes are the original output's, before the kernel's own.
    full = list(layer.compute_output_shape(_compat.built_input_shapes(layer)["input_shape"]))
    free = full[len(full) - len(split.out) - len(split.free):len(full) - len(split.out)]
    first_shape = free[0 if split.ellipsis else 1:] + [plan.rank]
    first = keras.layers.EinsumDense(split.equation(split.contracted, r), output_shape=first_shape,
                                     name=f"{layer.name}_u")
    config = layer.get_config()
    second = keras.layers.EinsumDense.from_config(dict(
        config, name=f"{layer.name}_v", equation=split.equation(r, split.out)))
    n_contracted = len(split.contracted)
    bias = [layer.bias.numpy()] if layer.bias is not None else []
    return (first, [a.reshape(kernel.shape[:n_contracted] + (plan.rank,))], second,
            [b.reshape((plan.rank,) + kernel.shape[n_contracted:])] + bias)


def _make_pair(layer, plan: FactorPlan):
    """Two new layers (unbuilt) and their weights."""
    if plan.method == "einsum":
        return _einsum_pair(layer, plan)
    config = layer.get_config()
    bias = [layer.bias.numpy()] if layer.use_bias else []
    m = _matrix(layer, "channel" if plan.method == "dense" else plan.method)
    a, b = svd_factors(m, plan.rank)
    name = layer.name
    if plan.method == "dense":
        first = keras.layers.Dense(plan.rank, use_bias=False, name=f"{name}_u")
        second = keras.layers.Dense.from_config(dict(config, name=f"{name}_v"))
        return first, [a], second, [b] + bias
    kh, kw, cin, cout = layer.kernel.shape
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    if plan.method == "channel":
        first = keras.layers.Conv2D(plan.rank, (kh, kw), strides=layer.strides,
                                    padding=layer.padding, dilation_rate=layer.dilation_rate,
                                    use_bias=False, name=f"{name}_u")
        second = keras.layers.Conv2D.from_config(dict(
            config, name=f"{name}_v", kernel_size=(1, 1), strides=(1, 1), padding="valid",
            dilation_rate=(1, 1)))
        return first, [a.reshape(kh, kw, cin, plan.rank)], second, [
            b.reshape(1, 1, plan.rank, cout)] + bias
    first = keras.layers.Conv2D(plan.rank, (kh, 1), strides=(sh, 1), padding=layer.padding,
                                dilation_rate=(dh, 1), use_bias=False, name=f"{name}_u")
    second = keras.layers.Conv2D.from_config(dict(
        config, name=f"{name}_v", kernel_size=(1, kw), strides=(1, sw), dilation_rate=(1, dw)))
    k1 = a.reshape(kh, cin, plan.rank)[:, None]              # (kh, 1, cin, r)
    k2 = b.reshape(plan.rank, kw, cout).transpose(1, 0, 2)[None]  # (1, kw, r, cout)
    return first, [k1], second, [k2] + bias


def _skipped(model) -> List[str]:
    """Notes on the layers with matrices inside that factorization leaves whole."""
    notes = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.MultiHeadAttention):
            notes.append(
                f"{layer.name} (MultiHeadAttention): its query/key/value/output projections are "
                "EinsumDense layers inside it, which factorization does not rewrite; left whole "
                "(write the attention with EinsumDense layers to factor them)")
        elif _is_einsum(layer) and not _factorable(layer):
            notes.append(f"{layer.name} (EinsumDense {layer.equation!r}): not a matrix product "
                         "of its input's trailing axes; left whole")
    return notes


def factorize(model, *, energy: Optional[float] = None, ratio: Optional[float] = None,
              layers: Optional[Sequence[str]] = None, method: str = "auto",
              ranks: Optional[Dict[str, int]] = None):
    """Replaces Dense / Conv2D layers by low-rank pairs.

    Args:
        model: a Sequential or Functional model.
        energy: keep this share of each kernel's squared singular values.
        ratio: keep at most this share of each kernel's parameters.
        layers: names of the layers to factor (default: every Dense and Conv2D where
            factoring saves parameters).
        method: for Conv2D: ``"channel"``, ``"spatial"`` or ``"auto"`` (spatial for
            k x k kernels, channel otherwise).
        ranks: explicit ``{layer name: rank}``, overriding ``energy`` / ``ratio``.

    Returns:
        A new Functional model; ``.factor_plans`` lists what was done (an attribute
        that a `.keras` file does not keep; :func:`factor_plans` reads the same
        plans back from the layers of any factored model), and ``.factor_notes`` the
        layers with a matrix inside that were left whole (the projections of a
        ``MultiHeadAttention``, an ``EinsumDense`` that is not a matrix product).

    Raises:
        ValueError: neither or both of ``energy`` and ``ratio``; an unknown method or
            layer name; a named layer that cannot be factored.
    """
    if (energy is None) == (ratio is None) and not ranks:
        raise ValueError("Pass exactly one of `energy` and `ratio` (or `ranks`). "
                         f"Received: energy={energy!r}, ratio={ratio!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    model = _graph.functional(model, purpose="low-rank factorization", inline=True)
    by_name = {layer.name: layer for layer in model.layers}
    if layers is not None:
        unknown = [n for n in layers if n not in by_name]
        if unknown:
            raise ValueError(f"No layer named {unknown} in the model. Received: layers={list(layers)}")
        bad = [f"{n} ({type(by_name[n]).__name__})" for n in layers if not _factorable(by_name[n])]
        if bad:
            raise ValueError(f"Layers {bad} cannot be factored. Supported: {_supported()}.")
    candidates = layers if layers is not None else [
        layer.name for layer in model.layers if _factorable(layer)]
    plans: Dict[str, FactorPlan] = {}
    for name in candidates:
        layer = by_name[name]
        if ranks and name in ranks:
            kind = _choose_method(layer, method)
            rows, cols = _matrix_for(layer, kind).shape
            rank = ranks[name]
            if not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(rows, cols):
                raise ValueError(
                    f"Layer {name!r} ({type(layer).__name__}, {kind} factorization) has a "
                    f"{rows}x{cols} matrix, so its rank must be an integer in [1, "
                    f"{min(rows, cols)}]. Received: ranks[{name!r}]={rank!r}")
            plans[name] = FactorPlan(name, kind, rank, int(layer.kernel.numpy().size),
                                     rank * (rows + cols))
            continue
        if energy is None and ratio is None:
            continue
        plan = _plan(layer, method=method, energy=energy, ratio=ratio)
        if plan is not None:
            plans[name] = plan
    pending = []

    def clone_function(layer):
        new = _compat.layer_from_config(layer)
        if layer.weights and layer.name not in plans:
            pending.append((new, layer.get_weights()))
        return new

    pairs: Dict[str, tuple] = {}  # a layer called several times (shared) keeps one pair

    def call_function(layer, *args, **kwargs):
        plan = plans.get(layer.name)
        if plan is None:
            return layer(*args, **kwargs)
        if layer.name not in pairs:
            first, w1, second, w2 = _make_pair(by_name[layer.name], plan)
            pairs[layer.name] = (first, second)
            pending.extend([(first, w1), (second, w2)])
        first, second = pairs[layer.name]
        return second(first(*args, **kwargs))

    clone = _graph.clone_model(model, clone_function=clone_function, call_function=call_function,
                               keep_operations=True)
    for new, weights in pending:
        new.set_weights(weights)
    clone.factor_plans = tuple(plans.values())
    clone.factor_notes = tuple(_skipped(model))
    return clone


def _pair_plan(first, second) -> Optional[FactorPlan]:
    """The plan that made ``first -> second``, read from their configs and kernels."""
    if _is_einsum(first) or _is_einsum(second):
        return _einsum_pair_plan(first, second)
    if layer_kinds.kind_of(first).kernel != layer_kinds.kind_of(second).kernel or not (
            _factorable(first) and _factorable(second)) or first.use_bias or \
            layer_kinds.activation_name(first) != "linear":
        return None
    u, v = tuple(first.kernel.shape), tuple(second.kernel.shape)
    after = int(np.prod(u) + np.prod(v))
    if _is_dense(first):
        return FactorPlan(first.name[:-2], "dense", u[1], u[0] * v[1], after)
    # The second layer of a channel pair is a plain 1x1 convolution; a spatial pair's
    # is (1, kw) with the original's padding and horizontal stride and dilation (a
    # spatial pair of a (kh, 1) kernel is the same two layers, and reads as channel).
    pointwise = (tuple(second.kernel_size) == (1, 1) and tuple(second.strides) == (1, 1)
                 and tuple(second.dilation_rate) == (1, 1) and second.padding == "valid")
    if pointwise:
        return FactorPlan(first.name[:-2], "channel", u[3], u[0] * u[1] * u[2] * v[3], after)
    return FactorPlan(first.name[:-2], "spatial", u[3], u[0] * v[1] * u[2] * v[3], after)


def _einsum_pair_plan(first, second) -> Optional[FactorPlan]:
    if not (_is_einsum(first) and _is_einsum(second) and _factorable(first)
            and _factorable(second)) or first.bias is not None or \
            layer_kinds.activation_name(first) != "linear":
        return None
    a, b = _graph.einsum_matmul(first), _graph.einsum_matmul(second)
    if len(a.out) != 1 or len(b.contracted) != 1 or a.free != b.free:
        return None
    u, v = tuple(first.kernel.shape), tuple(second.kernel.shape)
    rank = u[-1]
    before = int(np.prod(u[:-1]) * np.prod(v[1:]))
    return FactorPlan(first.name[:-2], "einsum", rank, before, int(np.prod(u) + np.prod(v)))


def factor_plans(model) -> Tuple[FactorPlan, ...]:
    """The plans of the factored pairs in ``model``, read from its layers, in graph order.

    What ``factorize(...).factor_plans`` says, also for a model loaded from a `.keras`
    file (the attribute does not survive saving): a pair is a layer ``<name>_u``
    without bias or activation whose output only ``<name>_v`` reads, both Dense, both
    Conv2D or both EinsumDense.

    Args:
        model: a Sequential or Functional model.

    Returns:
        One :class:`FactorPlan` per pair; empty when nothing is factored.

    Example:
        >>> import keras
        >>> inputs = keras.Input((32,))
        >>> small = factorize(keras.Model(inputs, keras.layers.Dense(16)(inputs)), ratio=0.25)
        >>> factor_plans(small) == small.factor_plans
        True
    """
    model = _graph.functional(model, purpose="reading factor plans", inline=True)
    by_name = {layer.name: layer for layer in model.layers}
    readers: Dict[str, int] = {}
    for node in _compat.graph_nodes(model):
        for t in node.input_tensors:
            source = _compat.producer(t)
            if source is not None:
                readers[source.name] = readers.get(source.name, 0) + 1
    plans = []
    for node in _compat.graph_nodes(model):
        second = node.operation
        first = by_name.get(second.name[:-2] + "_u") if second.name.endswith("_v") else None
        if first is None or readers.get(first.name) != 1 or len(node.input_tensors) != 1 \
                or _compat.producer(node.input_tensors[0]) is not first:
            continue
        plan = _pair_plan(first, second)
        if plan is not None:
            plans.append(plan)
    return tuple(plans)


def reconstruct(model, original, x, *, positions: int = 32, ridge: float = 1e-3,
                seed: int = 0) -> Dict[str, Tuple[float, float]]:
    """Refits the second layer of every factored pair on data, in graph order.

    The SVD keeps the largest part of each kernel, but the errors of several factored
    layers add up. Here each pair's second layer (``<name>_v``) is solved by ridge
    least squares so that, reading what the factored model really feeds it, it
    reproduces the original layer's pre-activation output on ``x``. Later layers see
    the refitted earlier ones. ``model`` is changed in place.

    Args:
        model: a model from :func:`factorize`.
        original: the model it was factored from.
        x: input samples (a NumPy array, or a list with one per model input), e.g.
            500 training images.
        positions: output positions sampled per image for each convolution.
        ridge: L2 penalty of each kernel row, relative to its input's energy.
        seed: seed of the position sampling.

    Returns:
        ``{layer name: (relative RMS error before, after)}`` of each refitted layer.

    Raises:
        ValueError: ``model`` has no factored pair from ``original``.
    """
    model = _graph.functional(model, purpose="low-rank reconstruction", inline=True)
    original = _graph.functional(original, purpose="low-rank reconstruction", inline=True)
    by_name = {layer.name: layer for layer in original.layers}
    names = {layer.name for layer in model.layers}
    pairs = [layer for layer in model.layers if layer.name.endswith("_v")
             and layer.name[:-2] in by_name and layer.name[:-2] + "_u" in names
             and _refit.refittable(layer)]
    if not pairs:
        raise ValueError(f"Model {model.name!r} has no factored pair (<name>_u, <name>_v) of "
                         f"a layer of {original.name!r}: call factorize() on it first.")
    x = _refit.as_samples(x)
    rng = np.random.default_rng(seed)
    return {layer.name[:-2]: _refit.refit(model, layer, original, by_name[layer.name[:-2]], x,
                                          positions=positions, ridge=ridge, rng=rng)
            for layer in pairs}


def count_macs(model) -> int:
    """Multiply-accumulates of one inference of the Dense, EinsumDense and convolution layers."""
    total = 0
    for layer in _compat.flatten_layers(model):
        if not getattr(layer, "built", False) or not hasattr(layer, "kernel"):
            continue
        try:
            out_shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        kernel = layer.kernel.shape
        positions = int(np.prod([d for d in out_shape[1:-1]])) if len(out_shape) > 2 else 1
        split = _graph.einsum_matmul(layer) if _is_einsum(layer) else None
        if split is not None:  # the output's trailing axes are the kernel's
            positions = int(np.prod(out_shape[1:len(out_shape) - len(split.out)]))
        total += positions * int(np.prod(kernel))  # depthwise kernels too: (kh, kw, in, mult)
    return total


def sensitivity(model, x, *, ratios: Sequence[float] = (0.1, 0.25, 0.5),
                method: str = "auto") -> Dict[str, Dict[float, float]]:
    """Output error when one layer at a time is factored at each ratio.

    Args:
        model: a Sequential or Functional model.
        x: a batch of inputs.
        ratios: parameter ratios to try.
        method: as in :func:`factorize`.

    Returns:
        ``{layer: {ratio: relative RMS error of the model output}}`` (NaN where
        factoring at that ratio would not save parameters).
    """
    reference = np.asarray(model.predict(x, verbose=0))
    scale = float(np.sqrt(np.mean(reference ** 2))) or 1.0
    report: Dict[str, Dict[float, float]] = {}
    functional = _graph.functional(model, purpose="low-rank sensitivity", inline=True)
    for layer in functional.layers:
        if not _factorable(layer):
            continue
        report[layer.name] = {}
        for r in ratios:
            small = factorize(functional, ratio=r, layers=[layer.name], method=method)
            if not small.factor_plans:
                report[layer.name][r] = float("nan")
                continue
            out = np.asarray(small.predict(x, verbose=0))
            report[layer.name][r] = float(np.sqrt(np.mean((out - reference) ** 2)) / scale)
    return report
