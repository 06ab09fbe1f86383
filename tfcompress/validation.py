"""Checks that a `.tflite` file behaves like the model it came from.

:func:`validate` runs the file twice in the LiteRT interpreter, with XNNPACK
(what users get by default) and with the builtin reference kernels, and
compares both with each other, with the labels and with a float reference.
Disagreement between the two kernel paths is reported, never hidden: int8
XNNPACK and the reference kernels round differently, and on a few percent of
inputs that flips the top-1 class.

Example:
    >>> from tfcompress.validation import Thresholds
    >>> Thresholds(min_accuracy=1.5)
    Traceback (most recent call last):
    ...
    ValueError: `min_accuracy` must be in [0, 1]. Received: min_accuracy=1.5
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from tfcompress import inspector, rewrite, runtime
from tfcompress._io import atomic_write_bytes

__all__ = [
    "LayerError",
    "OpError",
    "PathResult",
    "Thresholds",
    "ValidationReport",
    "default_thresholds",
    "op_errors",
    "per_layer_error",
    "validate",
]

_FRACTIONS = ("min_accuracy", "min_float_agreement", "min_xnnpack_agreement")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits; None switches a check off.

    Attributes:
        min_accuracy: lowest top-1 accuracy on either kernel path (0..1).
        min_float_agreement: lowest top-1 agreement with the float reference.
        min_xnnpack_agreement: lowest top-1 agreement between XNNPACK and the
            reference kernels.
        max_error_steps_p99: highest 99th percentile of the output error
            against the float reference, in output quantization steps.
        require_fully_integer: fail when any tensor is not integer.
        max_size_ratio: highest size of the file over the float `.tflite`.
        max_op_steps: highest distance of any integer op from its float op on the same
            inputs, in steps of the op's output (:func:`op_errors`; computing it runs
            every op alone, so it is off unless set).
    """

    min_accuracy: Optional[float] = None
    min_float_agreement: Optional[float] = None
    min_xnnpack_agreement: Optional[float] = None
    max_error_steps_p99: Optional[float] = None
    require_fully_integer: bool = False
    max_size_ratio: Optional[float] = None
    max_op_steps: Optional[float] = None

    def __post_init__(self):
        for name in _FRACTIONS:
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value}")
        for name in ("max_error_steps_p99", "max_size_ratio", "max_op_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"`{name}` must be non-negative. Received: {name}={value}")


# Applied when validate() is given no threshold at all, so that a file far from its
# float reference, or whose two kernel paths disagree, never reads PASSED. The
# published MLPerf ResNet-8 int8 file has a p99 error of 40 softmax steps against its
# float file; the silently wrong sparse files of issue 15 were 73 to 211 steps away, and
# the issue asks that 60 steps do not pass: 48 lets the published file pass with a fifth
# to spare.
DEFAULT_MAX_ERROR_STEPS_P99 = 48.0
DEFAULT_MIN_XNNPACK_AGREEMENT = 0.95


def default_thresholds(*, with_reference: bool) -> Thresholds:
    """The checks of a validation that was given no thresholds.

    >>> default_thresholds(with_reference=False)
    Thresholds(min_accuracy=None, min_float_agreement=None, min_xnnpack_agreement=0.95, max_error_steps_p99=None, require_fully_integer=False, max_size_ratio=None, max_op_steps=None)
    """
    return Thresholds(min_xnnpack_agreement=DEFAULT_MIN_XNNPACK_AGREEMENT,
                      max_error_steps_p99=DEFAULT_MAX_ERROR_STEPS_P99 if with_reference else None)


def _describe(t: Thresholds) -> str:
    parts = [f"{f.name}={getattr(t, f.name)}" for f in dataclasses.fields(t)
             if getattr(t, f.name) not in (None, False)]
    return ", ".join(parts) or "none"


@dataclasses.dataclass(frozen=True)
class PathResult:
    """Results of one kernel path (XNNPACK or reference)."""

    accuracy: Optional[float]
    top5_accuracy: Optional[float]
    float_agreement: Optional[float]
    error_steps: Optional[Dict[str, float]]


@dataclasses.dataclass(frozen=True)
class LayerError:
    """Quantization error of one op output against the float model."""

    tensor: str
    layer: str
    op: str
    scale: float
    rmse: float
    rmse_over_scale: float


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """Everything :func:`validate` measured, plus the verdict."""

    num_samples: int
    size_bytes: int
    float_size_bytes: Optional[int]
    xnnpack: PathResult
    reference: PathResult
    xnnpack_vs_reference_top1_agreement: float
    xnnpack_vs_reference_within_2_steps: Optional[float]
    delegation: runtime.DelegationReport
    fully_integer: bool
    non_integer_tensors: Tuple[str, ...]
    per_layer: Tuple[LayerError, ...]
    failures: Tuple[str, ...]
    checks: str = ""  # the thresholds applied, as text ("default: ..." when none were given)
    per_op: Tuple["OpError", ...] = ()  # validate(per_op=True) or a max_op_steps threshold

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def size_ratio(self) -> Optional[float]:
        return self.size_bytes / self.float_size_bytes if self.float_size_bytes else None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        d["size_ratio"] = self.size_ratio
        d["delegation"]["description"] = self.delegation.describe()
        return d

    def to_json(self) -> str:
        """The report as indented JSON text (numpy scalars as plain numbers)."""
        return json.dumps(self.to_dict(), indent=2, default=_json_default)

    def save(self, path, *, overwrite: bool = False):
        """Writes the report as JSON, atomically."""
        return atomic_write_bytes(path, self.to_json().encode(), overwrite=overwrite)

    def summary(self) -> str:
        rows = [("samples", str(self.num_samples)), ("size", f"{self.size_bytes} bytes")]
        if self.size_ratio is not None:
            rows.append(("size / float", f"{self.size_ratio:.3f}"))
        for label, r in (("XNNPACK", self.xnnpack), ("reference kernels", self.reference)):
            if r.accuracy is not None:
                rows.append((f"accuracy ({label})", f"{100 * r.accuracy:.2f}%"
                             + (f" (top-5 {100 * r.top5_accuracy:.2f}%)" if r.top5_accuracy is not None else "")))
            if r.float_agreement is not None:
                rows.append((f"top-1 agreement with float ({label})", f"{100 * r.float_agreement:.2f}%"))
            if r.error_steps is not None:
                e = r.error_steps
                rows.append((f"output error vs float, steps ({label})",
                             f"mean {e['mean']:.2f}, p99 {e['p99']:.2f}, max {e['max']:.2f}, "
                             f"<=2 steps {100 * e['within_2']:.1f}%"))
        rows.append(("XNNPACK vs reference top-1 agreement",
                     f"{100 * self.xnnpack_vs_reference_top1_agreement:.2f}%"))
        if self.xnnpack_vs_reference_within_2_steps is not None:
            rows.append(("XNNPACK vs reference outputs within 2 steps",
                         f"{100 * self.xnnpack_vs_reference_within_2_steps:.2f}%"))
        rows.append(("XNNPACK delegation", self.delegation.describe()))
        rows.append(("fully integer", "yes" if self.fully_integer else
                     "no: " + ", ".join(self.non_integer_tensors[:3])))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
        if self.per_layer:
            lines.append("per-layer quantization error (RMSE / scale, worst 5):")
            worst = sorted(self.per_layer, key=lambda e: -e.rmse_over_scale)[:5]
            lines += [f"  {e.op:<18} {e.layer:<40} {e.rmse_over_scale:.3f}" for e in worst]
        if self.per_op:
            worst = sorted(self.per_op, key=lambda e: -e.worst_steps)
            lines.append(f"each integer op vs its float op on the same inputs ({len(self.per_op)} ops; "
                         "steps reference / XNNPACK, worst 5):")
            lines += [f"  #{e.index:<4} {e.op:<18} {e.layer:<36} {e.reference_steps:.0f} / "
                      + ("-" if e.xnnpack_steps is None else f"{e.xnnpack_steps:.0f}")
                      + (f"  ({100 * e.saturated:.1f}% clipped)" if e.saturated >= 0.001 else "")
                      for e in worst[:5]]
        if self.checks:
            lines.append(f"checks: {self.checks}")
        lines.append("PASSED" if self.passed else "FAILED: " + "; ".join(self.failures))
        return "\n".join(lines)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def validate(
    model: inspector.ModelSource,
    x,
    *,
    y: Optional[np.ndarray] = None,
    reference=None,
    thresholds: Optional[Thresholds] = None,
    num_threads: int = 1,
    per_layer: bool = True,
    per_layer_samples: int = 32,
    allow_io: Sequence[str] = ("uint8", "float32"),
    per_op: bool = False,
    per_op_samples: int = 8,
    progress: bool = True,
) -> ValidationReport:
    """Runs a `.tflite` on both kernel paths and compares it with what it should be.

    Args:
        model: the `.tflite` to check (bytes, a path, or an
            :class:`~tfcompress.inspector.VerifiedModel`, which is not read again).
        x: input samples (sample axis first): real values, quantized with the
            model's input parameters, or integer data of the input's own dtype,
            fed as is. A dict keyed by input name for multi-input models.
        y: integer labels, for accuracy.
        reference: the float model: a `.tflite` (bytes, path or
            ``VerifiedModel``), a Keras
            model, a ``.keras``/``.h5`` path or a SavedModel directory (the
            last three are converted to a float32 `.tflite` first).
        thresholds: limits that turn the report into pass/fail. None (or a
            ``Thresholds()`` with every check off) applies :func:`default_thresholds`:
            XNNPACK and the reference kernels agree on 95% of top-1 answers, and with a
            float reference the p99 output error is at most 48 steps.
        num_threads: interpreter threads.
        per_layer: compute per-layer quantization error (needs ``reference``).
        per_layer_samples: samples used for the per-layer error.
        allow_io: dtypes accepted at the model's inputs/outputs when checking
            that the model is fully integer.
        per_op: also run every integer op alone against its float op on the inputs the
            file gave it (:func:`op_errors`); on by itself with ``max_op_steps``.
        per_op_samples: samples used for the per-op check.
        progress: show progress bars.

    Returns:
        A :class:`ValidationReport`.
    """
    buf = inspector.load(model)  # verified once; everything below reuses it
    report = buf.report
    # Both kernel paths tried in a child first (one fork, before a Keras reference loads
    # TensorFlow, after which forking is unsafe): a crashing kernel becomes an error.
    runtime.trial_run(buf, num_threads=num_threads)
    float_buf = _float_reference(reference, x)
    if float_buf is not None:
        _check_reference_matches(report, float_buf.report)
        runtime.trial_run(float_buf, kernels=("xnnpack",), num_threads=num_threads)
    if thresholds is None or thresholds == Thresholds():
        thresholds = default_thresholds(with_reference=float_buf is not None
                                        and runtime.output_step(report) is not None)
        checks = "default: " + _describe(thresholds)
    else:
        checks = _describe(thresholds)

    label = "Running {} ({})".format
    out_x = runtime.predict(runtime.make_interpreter(buf, xnnpack=True, num_threads=num_threads), x,
                            progress=label("XNNPACK", "int8 model") if progress else None)
    out_r = runtime.predict(runtime.make_interpreter(buf, xnnpack=False, num_threads=num_threads), x,
                            progress=label("reference kernels", "int8 model") if progress else None)
    out_f = None
    if float_buf is not None:
        out_f = runtime.predict(runtime.make_interpreter(float_buf, xnnpack=True, num_threads=num_threads),
                                x, progress=label("XNNPACK", "float reference") if progress else None)

    # Every output in its own quantization step (a float output has none and is skipped):
    # a second output far off must not hide behind a first one that is fine.
    steps = [runtime.output_step(report, i) for i in range(len(report.outputs))]
    step = steps[0]
    top_x, top_r = runtime.top1(out_x), runtime.top1(out_r)
    labels = _checked_labels(y, len(top_x), out_x[0])
    top_f = runtime.top1(out_f) if out_f is not None else None

    def path_result(out, top):
        scores, guesses, flat = out[0], top, labels
        if labels is not None and labels.ndim > 1:  # one label per position of a sequence
            scores = out[0].reshape(-1, out[0].shape[-1])
            guesses, flat = np.argmax(scores, axis=1), labels.reshape(-1)
        return PathResult(
            accuracy=None if labels is None else float(np.mean(guesses == flat)),
            top5_accuracy=None if labels is None else _top_k(scores, flat, 5),
            float_agreement=None if top_f is None else float(np.mean(top == top_f)),
            error_steps=None if out_f is None or not step else _error_stats(out, out_f, steps),
        )

    bad = report.non_integer_tensors(allow_io=allow_io)
    layers: Tuple[LayerError, ...] = ()
    if per_layer and float_buf is not None:
        layers = per_layer_error(buf, float_buf, _head(x, per_layer_samples))
    ops: Tuple[OpError, ...] = ()
    if per_op or thresholds.max_op_steps is not None:
        ops = op_errors(buf, x, samples=per_op_samples, num_threads=num_threads)
    result = ValidationReport(
        num_samples=len(top_x),
        size_bytes=len(buf),
        float_size_bytes=len(float_buf) if float_buf is not None else None,
        xnnpack=path_result(out_x, top_x),
        reference=path_result(out_r, top_r),
        xnnpack_vs_reference_top1_agreement=float(np.mean(top_x == top_r)),
        xnnpack_vs_reference_within_2_steps=(
            _error_stats(out_x, out_r, steps)["within_2"] if step else None),
        delegation=runtime.delegation(buf, num_threads=num_threads),
        fully_integer=not bad,
        non_integer_tensors=tuple(f"{t.name} ({t.dtype})" for t in bad),
        per_layer=layers,
        failures=(),
        checks=checks,
        per_op=ops,
    )
    return dataclasses.replace(result, failures=tuple(_failures(result, thresholds)))


def _checked_labels(y, n: int, out: np.ndarray) -> Optional[np.ndarray]:
    """Integer labels that index the first output's classes: one per sample (shape
    ``(n,)``), or one per position of a sequence output (``out.shape[:-1]``: a tagger or
    a language model's next-token logits), returned with that shape."""
    if y is None:
        return None
    labels = np.asarray(y)
    per_position = out.ndim >= 3 and labels.shape == out.shape[:-1]
    if labels.size != n and not per_position:
        raise ValueError(f"Expected one label per sample ({n}), or one per position of the "
                         f"output {out.shape[1:-1]} (labels of shape {out.shape[:-1]}). "
                         f"Received labels of shape {labels.shape}.")
    shape = labels.shape if per_position else (n,)
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.number) or not np.all(np.isfinite(labels)) or not \
            np.all(labels == np.round(labels)):
        raise ValueError("Labels must be integer class indices. Received non-integer labels "
                         f"such as {labels[labels != np.round(labels)][:3].tolist()}.")
    classes = int(out.shape[-1] if per_position else np.prod(out.shape[1:]))
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"Labels must be in [0, {classes}) for a model with {classes} outputs. "
                         f"Received labels from {labels.min():g} to {labels.max():g}"
                         " (a model with a background class may need --label_offset=1).")
    return labels.astype(np.int64).reshape(shape)


def _head(x, n):
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [v[:n] for v in x]
    return x[:n]


def _top_k(out: np.ndarray, labels: np.ndarray, k: int) -> Optional[float]:
    scores = out.reshape(len(out), -1)
    if scores.shape[1] <= k:
        return None
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(best == labels[:, None], axis=1)))


def _error_stats(outs: Sequence[np.ndarray], refs: Sequence[np.ndarray],
                 steps: Sequence[Optional[float]]) -> Dict[str, float]:
    """|outs - refs| over every output that has a step, in that output's steps."""
    err = np.concatenate([
        (np.abs(o.astype(np.float64) - r.astype(np.float64)) / s).ravel()
        for o, r, s in zip(outs, refs, steps) if s])
    return {
        "mean": float(err.mean()),
        "p99": float(np.percentile(err, 99)),
        "max": float(err.max()),
        "within_1": float(np.mean(err <= 1.0 + 1e-6)),
        "within_2": float(np.mean(err <= 2.0 + 1e-6)),
    }


def _check_reference_matches(model: inspector.ModelReport, ref: inspector.ModelReport) -> None:
    """The float reference must take and give tensors of the model's shapes."""
    for kind in ("inputs", "outputs"):
        got = [tuple(t.shape[1:]) for t in getattr(ref, kind)]
        want = [tuple(t.shape[1:]) for t in getattr(model, kind)]
        if sorted(got) != sorted(want):
            raise ValueError(
                f"The reference model does not match the model: its {kind} have sample "
                f"shapes {got}, the model's {want}. Pass the float model this file was "
                "converted from.")


def _float_reference(reference, x=None) -> Optional[inspector.VerifiedModel]:
    """The float file of ``reference``; a Keras model's free input axes (``Input((None,
    8))``) take the sizes of ``x``, as the file under validation has them."""
    if reference is None:
        return None
    if isinstance(reference, (bytes, bytearray, memoryview, inspector.VerifiedModel)) or (
            str(reference).endswith(".tflite")
            and isinstance(reference, (str, os.PathLike))):
        return inspector.load(reference)
    # TensorFlow boundary: only a Keras / SavedModel reference loads the converter.
    from tfcompress.converter import convert

    return inspector.load(convert(reference, mode="float32", progress=False,
                                  representative_data=x).model_bytes)


def per_layer_error(model: inspector.ModelSource, float_model: inspector.ModelSource,
                    x) -> Tuple[LayerError, ...]:
    """RMSE of every quantized op output against the float model, in units of its scale.

    Tensors are matched by name between the two files (both from the same
    converter, as ``convert(..., mode="float32")`` and the quantized
    conversion produce). The error accumulates along the graph, so a jump
    from one layer to the next marks the layer that loses accuracy.
    """
    model, float_model = inspector.load(model), inspector.load(float_model)
    q_report = model.report
    q_out = runtime.intermediate_outputs(model, x)
    f_out = runtime.intermediate_outputs(float_model, x)
    errors = []
    for op in q_report.ops:
        for t in op.outputs:
            info = q_report.tensors[t]
            q = info.quantization
            if q is None or q.per_channel or info.name not in f_out or info.name not in q_out:
                continue
            a, b = q_out[info.name], f_out[info.name]
            if a.shape != b.shape:
                continue
            rmse = float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))
            errors.append(LayerError(info.name, op.layer, op.op, q.scale[0], rmse, rmse / q.scale[0]))
    return tuple(errors)


@dataclasses.dataclass(frozen=True)
class OpError:
    """How far one integer op is from the float op it stands for, on the same inputs.

    Attributes:
        index: the op's position in the file.
        op: its TFLite name.
        layer: the Keras layer it most likely came from.
        reference_steps: largest distance, in steps of the op's output, between the
            builtin kernel's output and the float op's output rounded to that grid.
        xnnpack_steps: the same for the op run alone with XNNPACK applied (None when the
            op could not be run alone); an op XNNPACK does not take runs the builtin kernel.
        saturated: fraction of the float op's values more than two steps outside the
            output grid (the kernel rounds them to its end: clipping at the calibrated
            range counts as the grid's, not the kernel's). Two steps: inputs on different
            grids, such as ``x - relu(x)``, reach a step or so past a grid that ends at 0.
    """

    index: int
    op: str
    layer: str
    reference_steps: float
    xnnpack_steps: Optional[float]
    saturated: float

    @property
    def worst_steps(self) -> float:
        """The larger of the two kernel paths' distances."""
        return max(self.reference_steps, self.xnnpack_steps or 0.0)


def op_errors(model: inspector.ModelSource, x, *, samples: int = 8,
              num_threads: int = 1) -> Tuple[OpError, ...]:
    """Every integer op of a file against its float op, each on the file's own inputs.

    The file runs on the builtin kernels with all tensors kept. Each op with a quantized
    output is then run alone (:func:`tfcompress.rewrite.one_op_model`): in float on the
    real values of the very inputs the file gave it, and as stored, with XNNPACK, on
    those inputs' integers. An int8 kernel that does its job is within a step or so of
    the float op rounded to its output grid. End to end, a deep network amplifies those
    single steps (two kernel paths that each round correctly can end tens of steps apart
    at its outputs); this check says whether any op is wrong rather than how much the
    network amplifies.

    Args:
        model: the `.tflite` file (bytes, path or ``VerifiedModel``).
        x: input samples, as for :func:`validate`.
        samples: how many of them to run (the first ones).
        num_threads: interpreter threads.

    Returns:
        One :class:`OpError` per op checked, in file order. Ops without a quantized
        output (DEQUANTIZE, float ops, index outputs) and ops that cannot run alone
        (control flow, LSTM with intermediate tensors) are left out.
    """
    if samples < 1:
        raise ValueError(f"`samples` must be at least 1. Received: samples={samples}")
    buf = inspector.load(model)
    report = buf.report
    runtime.trial_run(buf, num_threads=num_threads)  # both paths, before one-op copies run
    interpreter = runtime.make_interpreter(buf, xnnpack=False, num_threads=num_threads,
                                           preserve_all_tensors=True, isolate=False)
    details = runtime.input_details(interpreter)
    xs = runtime.match_inputs(details, _head(x, samples))
    runtime.check_shapes(details, xs)
    wanted = {t for op in report.ops for t in op.inputs + op.outputs
              if t >= 0 and not report.tensors[t].is_constant}
    values: Dict[int, list] = {t: [] for t in wanted}
    for group, _ in runtime.sample_groups(details, xs):  # one sample, or the fixed batch
        for detail, data in zip(details, group):
            interpreter.set_tensor(detail["index"], runtime.quantize(data, detail))
        interpreter.invoke()
        for t in wanted:
            values[t].append(interpreter.get_tensor(t).copy())
    errors = []
    for op in report.ops:
        outs = [t for t in op.outputs if t >= 0 and _grid(report.tensors[t]) is not None]
        if not outs or len(outs) != len(op.outputs):
            continue
        ins = list(dict.fromkeys(t for t in op.inputs if t >= 0 and not report.tensors[t].is_constant))
        if op.op == "QUANTIZE":  # a requantization (or the input's): the float op is identity
            expected = [[_real(report.tensors[ins[0]], v) for v in values[ins[0]]]]
        else:
            real = rewrite.one_op_model(buf.bytes, op.index, real=True)
            if real is None:
                continue
            expected = _run_alone(real, [[_real(report.tensors[t], v) for v in values[t]] for t in ins],
                                  xnnpack=False, num_threads=num_threads)
        stored = rewrite.one_op_model(buf.bytes, op.index, real=False)
        alone = None if stored is None else _run_alone(
            stored, [values[t] for t in ins], xnnpack=True, num_threads=num_threads)
        worst_ref, worst_x, saturated, count = 0.0, None, 0, 0
        for k, t in enumerate(outs):
            scale, zero, low, high = _grid(report.tensors[t])
            for s, f in enumerate(expected[k]):
                exact = f.astype(np.float64) / scale + zero
                rounded = np.clip(np.round(exact), low, high)
                saturated += int(np.sum(np.abs(exact - rounded) > _CLIPPED_STEPS))
                count += exact.size
                worst_ref = max(worst_ref, float(np.max(np.abs(values[t][s].astype(np.float64) - rounded), initial=0)))
                if alone is not None:
                    worst_x = max(worst_x or 0.0, float(np.max(
                        np.abs(alone[k][s].astype(np.float64) - rounded), initial=0)))
        errors.append(OpError(op.index, op.op, op.layer, worst_ref, worst_x,
                              saturated / count if count else 0.0))
    return tuple(errors)


_CLIPPED_STEPS = 2.0  # OpError.saturated counts float values further outside the grid


def _grid(info: inspector.TensorInfo):
    """``(scale, zero point, lowest, highest)`` of a per-tensor integer grid, or None."""
    q = info.quantization
    if q is None or q.per_channel or not q.scale or info.dtype not in ("int8", "uint8", "int16"):
        return None
    limits = np.iinfo(np.dtype(info.dtype))
    return float(q.scale[0]), int(q.zero_point[0]), int(limits.min), int(limits.max)


def _real(info: inspector.TensorInfo, value: np.ndarray) -> np.ndarray:
    grid = _grid(info)
    if grid is None:
        return value
    return ((value.astype(np.float64) - grid[1]) * grid[0]).astype(np.float32)


def _run_alone(model_bytes: bytes, inputs: Sequence[Sequence[np.ndarray]], *, xnnpack: bool,
               num_threads: int) -> list:
    """Outputs ``[output][sample]`` of a one-op file fed ``inputs[input][sample]``."""
    # Tried in a child first where a fork is safe (a file from outside: an op alone may
    # meet a kernel otherwise than inside its file).
    interpreter = runtime.make_interpreter(model_bytes, xnnpack=xnnpack, num_threads=num_threads)
    ins = interpreter.get_input_details()
    outs = [d["index"] for d in interpreter.get_output_details()]
    results = [[] for _ in outs]
    for s in range(len(inputs[0]) if inputs else 1):
        for detail, data in zip(ins, inputs):
            interpreter.set_tensor(detail["index"], np.asarray(data[s], detail["dtype"]).reshape(detail["shape"]))
        interpreter.invoke()
        for k, t in enumerate(outs):
            results[k].append(interpreter.get_tensor(t).copy())
    return results


def _failures(r: ValidationReport, t: Thresholds):
    paths = (("XNNPACK", r.xnnpack), ("reference kernels", r.reference))
    if t.min_accuracy is not None:
        for name, p in paths:
            if p.accuracy is None:
                yield "min_accuracy set but no labels given"
                break
            if p.accuracy < t.min_accuracy:
                yield f"accuracy on {name} {p.accuracy:.4f} < {t.min_accuracy}"
    if t.min_float_agreement is not None:
        for name, p in paths:
            if p.float_agreement is None:
                yield "min_float_agreement set but no reference given"
                break
            if p.float_agreement < t.min_float_agreement:
                yield f"agreement with float on {name} {p.float_agreement:.4f} < {t.min_float_agreement}"
    if t.min_xnnpack_agreement is not None and r.xnnpack_vs_reference_top1_agreement < t.min_xnnpack_agreement:
        yield (f"XNNPACK vs reference agreement {r.xnnpack_vs_reference_top1_agreement:.4f} "
               f"< {t.min_xnnpack_agreement}")
    if t.max_error_steps_p99 is not None:
        for name, p in paths:
            if p.error_steps is None:
                yield "max_error_steps_p99 set but no reference (or no quantized output) given"
                break
            if p.error_steps["p99"] > t.max_error_steps_p99:
                yield f"p99 output error on {name} {p.error_steps['p99']:.2f} steps > {t.max_error_steps_p99}"
    if t.require_fully_integer and not r.fully_integer:
        yield f"not fully integer: {', '.join(r.non_integer_tensors[:3])}"
    if t.max_size_ratio is not None:
        if r.size_ratio is None:
            yield "max_size_ratio set but no reference given"
        elif r.size_ratio > t.max_size_ratio:
            yield f"size ratio {r.size_ratio:.3f} > {t.max_size_ratio}"
    if t.max_op_steps is not None:
        far = [e for e in r.per_op if e.worst_steps > t.max_op_steps]
        if far:
            e = max(far, key=lambda e: e.worst_steps)
            yield (f"{len(far)} op(s) further than {t.max_op_steps} steps from their float op, "
                   f"worst #{e.index} {e.op} ({e.layer}): {e.worst_steps:.0f} steps")
