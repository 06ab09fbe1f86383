"""Keras 3 / SavedModel / tf.function to `.tflite`, fully-integer by default.

:func:`convert` wraps ``tf.lite.TFLiteConverter`` with what it lacks: one
entry point for every model source, representative data checked against the
input signature before calibration, a progress bar, errors that name the op
and the layer that could not be quantized, a post-conversion check that the
file really is fully integer, and a frozen result that saves atomically.

Example:
    >>> import numpy as np, keras
    >>> from tfcompress import convert
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> result = convert(model, representative_data=np.random.rand(8, 4), progress=False)
    >>> result.report.inputs[0].dtype, result.report.op_histogram
    ('int8', {'FULLY_CONNECTED': 1})
    >>> convert(model, mode="int4")
    Traceback (most recent call last):
    ...
    ValueError: Unknown conversion mode. Received: mode='int4'. Allowed: 'int8', 'int16x8', 'float16', 'dynamic', 'float32'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfcompress import (_compat, _graph, calibration, inspector, post_training, quantization,
                        runtime)
from tfcompress._io import atomic_write_bytes
from tfcompress.data import CALIBRATION_SAMPLES
from tfcompress.rewrite import SPARSE_MODES, integer_moves, tidy_sparse_weights

__all__ = [
    "ConversionError",
    "ConversionResult",
    "MODES",
    "convert",
]

MODES = ("int8", "int16x8", "float16", "dynamic", "float32")
_CALIBRATED = ("int8", "int16x8")
_IO_TYPES = {
    "int8": ("int8", "uint8", "float32"),
    "int16x8": ("int16", "float32"),
}
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class ConversionError(ValueError):
    """The model could not be converted in the requested mode."""


class _BatchOneFailure(ConversionError):
    """The converter's rank mismatch of a transpose, which a free batch axis avoids."""


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """A converted model and what is known about it.

    Attributes:
        verified: the `.tflite`, verified once
            (:class:`tfcompress.inspector.VerifiedModel`); pass it to ``validate``,
            ``benchmark`` or ``inspect`` so that they do not parse it again.
        mode: the conversion mode used.
        num_calibration_samples: samples used to calibrate (0 if none).
        seconds: wall time of the conversion, calibration included.
        notes: what the converter decided for you (e.g. sparse weights stored dense).
    """

    verified: inspector.VerifiedModel
    mode: str
    num_calibration_samples: int
    seconds: float
    notes: Tuple[str, ...] = ()

    @property
    def model_bytes(self) -> bytes:
        """The `.tflite` flatbuffer."""
        return self.verified.bytes

    @property
    def report(self) -> inspector.ModelReport:
        """:class:`tfcompress.inspector.ModelReport` of the file (size, op histogram,
        input/output quantization parameters, ...)."""
        return self.verified.report

    @property
    def size_bytes(self) -> int:
        return len(self.model_bytes)

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Writes the `.tflite` atomically; refuses to replace a file unless asked."""
        return atomic_write_bytes(path, self.model_bytes, overwrite=overwrite)

    def summary(self) -> str:
        notes = "".join(f"note: {n}\n" for n in self.notes)
        return (f"mode: {self.mode}, calibration samples: {self.num_calibration_samples}, "
                f"conversion: {self.seconds:.1f} s\n" + notes + self.report.summary())


@dataclasses.dataclass
class _Source:
    """A model resolved to something TFLiteConverter can take."""

    make_converter: Callable[[], object]
    specs: List[calibration.InputSpec]
    keras_model: Optional[object] = None
    by_name: bool = False
    notes: Tuple[str, ...] = ()


def convert(
    model,
    *,
    representative_data=None,
    mode: str = "int8",
    input_type: Optional[str] = None,
    output_type: Optional[str] = None,
    num_calibration_samples: int = CALIBRATION_SAMPLES,
    preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    image_size: Optional[Tuple[int, int]] = None,
    batch_size: Optional[int] = 1,
    signature_key: Optional[str] = None,
    progress: bool = True,
    sparse: bool = False,
    float_fallback: bool = False,
) -> ConversionResult:
    """Converts a model to TFLite.

    Args:
        model: an in-memory Keras 3 model; a path to a ``.keras`` or ``.h5``
            file; a SavedModel directory (from ``tf.saved_model.save``,
            ``model.export`` or tf_keras); a ``tf.function`` with an
            ``input_signature``; or a concrete function.
        representative_data: calibration data, required by ``int8`` and
            ``int16x8`` (see :mod:`tfcompress.calibration` for the forms), except
            for a quantization-aware model from :mod:`tfcompress.quantization`,
            whose fake-quant ranges are used instead. A Keras model with free input
            axes (``keras.Input((None, 8))``) takes their sizes from it, in every
            mode (a quantization-aware one keeps its own ranges).
        mode: ``"int8"`` (full integer, every op from the int8 builtin set),
            ``"int16x8"`` (int16 activations, int8 weights), ``"float16"``,
            ``"dynamic"`` (int8 weights, float activations) or ``"float32"``.
        input_type: dtype of the model's inputs: ``"int8"`` (default),
            ``"uint8"`` or ``"float32"`` in int8 mode; ``"int16"`` (default) or
            ``"float32"`` in int16x8 mode. Float modes keep float32.
        output_type: same choices as ``input_type``, for the outputs.
        num_calibration_samples: how many samples of ``representative_data``
            to calibrate on.
        preprocess: applied to each calibration sample (e.g. ``lambda x: x /
            255``), after image decoding.
        image_size: ``(height, width)`` to resize images to, when calibrating
            from an image directory on a model without a fixed input size.
        batch_size: fixes the batch axis of Keras models (default 1, which lets
            the converter fold shape computations away and keeps XNNPACK
            partitions whole); None keeps it dynamic.
        signature_key: the SavedModel signature to convert (default
            ``serving_default``).
        progress: show a progress bar during calibration.
        sparse: store pruned weights (e.g. after
            :func:`tfcompress.prune_low_magnitude`) in TFLite's sparse format, so the
            file itself is smaller (modes ``int8`` and ``float32``;
            ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``, then
            :func:`tidy_sparse_weights`): each CONV_2D kernel whose sparse form takes
            fewer bytes (above about half zeros in int8). The runtime expands them
            once, at initialisation (DENSIFY ops, which XNNPACK runs ahead of time):
            inference is as fast as the dense file, not faster, gives the same
            outputs, and takes the dense weights' memory. Other ops' weights stay
            dense, because XNNPACK cannot prepare them (an int8 FULLY_CONNECTED fed
            by DENSIFY fails at ``invoke``). Where the sparse file would change which
            ops XNNPACK takes, or its outputs differ from the dense file's on either
            kernel path, the dense file is returned and ``result.notes`` says why.
        float_fallback: in int8 mode, let the ops that TFLite has no int8 kernel for
            (or that a QAT model left in float, e.g. an unannotated
            LayerNormalization or MultiHeadAttention) run in float32, between
            QUANTIZE / DEQUANTIZE ops, instead of refusing the file. An explicit
            opt-in: the file is then not fully integer (XNNPACK runs the float ops in
            their own partitions), and ``result.notes`` lists the float ops and the
            Keras layers they come from.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        ValueError: unknown mode or I/O type; calibration data missing, empty
            or of the wrong shape; a path that is not a model; ``sparse`` in a mode
            other than int8 and float32.
        TypeError: calibration data of a dtype the model cannot take; a model
            object of an unsupported type.
        FileNotFoundError: a model or data path that does not exist.
        ConversionError: the converter failed; the message names the op and
            the layer it came from when it can.
    """
    options = dict(representative_data=representative_data, mode=mode, input_type=input_type,
                   output_type=output_type, num_calibration_samples=num_calibration_samples,
                   preprocess=preprocess, image_size=image_size, signature_key=signature_key,
                   progress=progress, sparse=sparse, float_fallback=float_fallback)
    try:
        with _compat.float32_policy():
            return _convert(model, batch_size=batch_size, **options)
    except _BatchOneFailure:
        if batch_size != 1:
            raise
    # Measured: Conv1D(filters=1) -> ADD -> a mean over its one channel (the Keras
    # time-series Transformer example) fails the converter at batch 1 ("'tf.Transpose' op
    # x should be of the same rank with y") and converts with a free batch axis.
    with _compat.float32_policy():
        result = _convert(model, batch_size=None, **options)
    return dataclasses.replace(result, notes=result.notes + (
        "converted with a free batch axis: TFLite's converter failed on this graph at batch "
        "1 (a 'tf.Transpose' of mismatched ranks); the file runs at batch 1 all the same",))


def _convert(model, *, representative_data, mode, input_type, output_type,
             num_calibration_samples, preprocess, image_size, batch_size, signature_key,
             progress, sparse, float_fallback) -> ConversionResult:
    """:func:`convert`, at one ``batch_size``."""
    if mode not in MODES:
        raise ValueError(
            f"Unknown conversion mode. Received: mode={mode!r}. Allowed: "
            + ", ".join(repr(m) for m in MODES) + "."
        )
    if sparse and mode not in SPARSE_MODES:
        # Measured: dynamic-range files with DENSIFY fail XNNPACK's CONV_2D prepare,
        # int16x8 files fail the reference CONV_2D's bias check, float16 gets no sparsity.
        raise ValueError(f"sparse=True works in modes {SPARSE_MODES}. Received: mode={mode!r}")
    input_type = _io_type("input_type", input_type, mode)
    output_type = _io_type("output_type", output_type, mode)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive integer or None. Received: batch_size={batch_size!r}")

    source = _resolve(model, batch_size=batch_size, signature_key=signature_key)
    free = source
    source = _fixed_input_sizes(source, representative_data, batch_size=batch_size,
                                num_samples=num_calibration_samples, preprocess=preprocess,
                                image_size=image_size)
    samples: list = []
    # A QAT model carries its own ranges (fake-quant ops): no calibration needed. Data
    # given for one with free input axes only fixes their sizes.
    qat = (representative_data is None or source is not free) and \
        source.keras_model is not None and _is_qat(source.keras_model)
    if mode == "int16x8" and source.keras_model is not None and _is_qat(source.keras_model):
        # TFLite cannot take int16 ranges from fake-quant ops (it writes int32 biases that
        # its int16 kernels reject): calibrate the float model the QAT model stands for.
        source = _resolve(quantization.strip_quantization(source.keras_model),
                          batch_size=batch_size, signature_key=signature_key)
        qat = False
    if qat and mode == "int8":
        _check_ranges_set(source.keras_model)
    if mode in _CALIBRATED and not qat:
        samples = calibration.prepare_samples(
            representative_data, source.specs, num_samples=num_calibration_samples,
            preprocess=preprocess, image_size=image_size,
        )
    if mode in _CALIBRATED and not qat and source.keras_model is not None:
        rewritten, bn_notes = _batchnorms_as_depthwise(source.keras_model)
        rewritten, ln_notes = _layernorms_decomposed(
            rewritten, l2_samples=samples if mode == "int8" else None)
        rewritten, elu_notes = _int8_forms(rewritten, l2_normalization=mode == "int8")
        bn_notes += ln_notes + elu_notes
        if bn_notes:
            source = dataclasses.replace(
                _resolve(rewritten, batch_size=batch_size, signature_key=signature_key),
                keras_model=source.keras_model)
            source = dataclasses.replace(source, notes=source.notes + bn_notes)

    start = time.perf_counter()
    if float_fallback and mode != "int8":
        raise ValueError("`float_fallback=True` applies to mode='int8' (the other modes are "
                         f"not fully integer anyway). Received: mode={mode!r}")
    options = dict(mode=mode, qat=qat, samples=samples, input_type=input_type,
                   output_type=output_type, float_fallback=float_fallback)
    model_bytes, moved = _integer_moves(
        _run_converter(source, sparse=False, progress=progress, **options), mode)
    notes: Tuple[str, ...] = source.notes + moved
    if sparse and _runs(model_bytes):  # else the checks below refuse the dense file
        sparse_bytes, _ = _integer_moves(
            _run_converter(source, sparse=True, progress=False, **options), mode)
        try:
            tidied = tidy_sparse_weights(sparse_bytes, dense=model_bytes)
        except ValueError as e:  # the two conversions' graphs differ beyond DENSIFY ops
            model_bytes, sparse_notes = model_bytes, (
                f"sparse weights: {e} The file has dense weights.",)
        else:
            model_bytes, sparse_notes = _sparse_or_dense(tidied, model_bytes, samples,
                                                         source.specs)
        notes += sparse_notes
    seconds = time.perf_counter() - start
    try:
        verified = inspector.load(model_bytes)
    except inspector.InvalidModelError as e:
        # Measured: a QAT model with a float keras.layers.Attention, converted with
        # float_fallback=True, came out with BATCH_MATMULs missing an input (XNNPACK
        # segfaults on that file; the check stops it first).
        detail = str(e).split(": ", 1)[-1].split(" Received:")[0]
        raise ConversionError(
            f"The TFLite converter wrote an invalid {mode!r} file for this model: {detail} "
            + ("Try float_fallback=False with the layer quantized or removed, or "
               "mode='dynamic'." if float_fallback else
               "Try another mode, or report the model.")) from None
    _check_ranges(verified.report)
    _check_int16_sums(verified.report)
    try:
        _check_runs(verified, mode)
    except ConversionError as e:
        if not (mode == "int8" and not qat and not float_fallback and samples
                and source.keras_model is not None and _degenerate_note(verified.report)):
            raise
        return _through_post_training(source.keras_model, samples, e, input_type=input_type,
                                      output_type=output_type, sparse=sparse)
    if mode == "int8" and float_fallback:
        notes += _float_ops_note(verified.report, allow_io=(input_type, output_type))
    elif mode == "int8":
        _check_fully_integer(verified.report, allow_io=(input_type, output_type),
                             keras_model=source.keras_model)
    return ConversionResult(verified, mode, len(samples), seconds, notes)


def _fixed_input_sizes(source: "_Source", data, *, batch_size, num_samples, preprocess,
                       image_size) -> "_Source":
    """The source with a Keras model's unknown input sizes fixed from the representative
    data (measured: a Conv1D model on ``Input((None, 8))`` converted, and XNNPACK then
    failed to prepare the file; the reference kernels need the sizes too)."""
    model = source.keras_model
    if model is None or not _compat.is_graph_model(model) or not _graph.variable_dims(model):
        return source
    open_dims = {spec.name: spec.shape[1:] for spec in source.specs
                 if any(d is None for d in spec.shape[1:])}
    listing = ", ".join(f"{name!r} {(None,) + tuple(shape)}" for name, shape in open_dims.items())
    if data is None:
        raise ValueError(
            f"Model {model.name!r} has inputs of unknown size besides the batch: {listing}. "
            "A TFLite file needs them fixed: build the model with fixed sizes (for example "
            "keras.Input((20, 8))), or pass representative_data, whose shape then fixes them.")
    samples = calibration.prepare_samples(data, source.specs, num_samples=num_samples,
                                          preprocess=preprocess, image_size=image_size)
    shapes = {}
    for i, spec in enumerate(source.specs):
        seen = sorted({tuple(sample[i].shape[1:]) for sample in samples})
        if spec.name in open_dims and len(seen) > 1:
            raise ValueError(
                f"Input {spec.name!r} of model {model.name!r} has an unknown size, and the "
                f"representative samples have several: {seen[:3]}. A TFLite file takes one "
                "size: give samples of the size the file should have.")
        shapes[spec.name] = seen[0]
    fixed = _graph.with_input_shapes(
        model, {_graph_name(model, name): shapes[name] for name in open_dims})
    resolved = _resolve(fixed, batch_size=batch_size, signature_key=None)
    note = (f"input sizes: {listing} fixed to "
            + ", ".join(f"{name!r} {(None,) + shapes[name]}" for name in open_dims)
            + " from the representative data")
    return dataclasses.replace(resolved, notes=source.notes + (note,))


def _graph_name(model, spec_name: str) -> str:
    """The name :func:`_graph.with_input_shapes` knows an input by (its input layer's)."""
    for tensor in model.inputs:
        if tensor.name == spec_name:
            layer = _compat.producer(tensor)
            return layer.name if layer is not None else spec_name
    return spec_name


def _run_converter(source: "_Source", *, mode: str, sparse: bool, qat: bool, samples: list,
                   input_type: str, output_type: str, progress: bool,
                   float_fallback: bool = False) -> bytes:
    """One TFLiteConverter run with the options of ``mode``."""
    converter = source.make_converter()
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparse:
        converter.optimizations = list(converter.optimizations) + [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in _CALIBRATED:
        if not qat:
            names = [s.name for s in source.specs] if source.by_name else None
            converter.representative_dataset = calibration.representative_dataset(
                samples, input_names=names, progress=progress)
        # For a QAT graph the converter takes the fake-quant ranges; requesting the
        # int8-only op set there makes it demand a representative dataset, so the
        # post-check in convert() is what guarantees a fully-integer file.
        if not (qat and mode == "int8"):
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if mode == "int8"
                else tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ] + ([tf.lite.OpsSet.TFLITE_BUILTINS] if float_fallback else [])
        converter.inference_input_type = tf.as_dtype(input_type)
        converter.inference_output_type = tf.as_dtype(output_type)
    try:
        with _compat.quiet_stdout(), _export_safe_names(source.keras_model):
            return converter.convert()
    except _compat.ConverterError as e:
        error = (_BatchOneFailure if "should be of the same rank" in str(e) else
                 ConversionError)
        raise error(_explain(str(e), mode, source.keras_model)) from None
    except RuntimeError as e:  # the calibrator's quantizer raises plain RuntimeErrors
        head = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        integer = [spec.name for spec in source.specs
                   if np.issubdtype(np.dtype(spec.dtype), np.integer)]
        if mode == "int16x8" and integer and "recorded during calibration" in head:
            # Measured on every zoo model with int32 ids (wide & deep, two-tower, a causal
            # decoder): the 16x8 quantizer asks for a range of the integer input itself.
            raise ConversionError(
                f"Conversion to 'int16x8' failed: TFLite's 16x8 quantizer wants a calibrated "
                f"range for the integer input(s) {integer} (ids, categories) and records "
                f"none ({head}). int16x8 takes float inputs only; use mode='int8', which "
                "keeps integer inputs as they are.") from None
        raise ConversionError(
            f"Conversion to {mode!r} failed while quantizing: {head}. "
            + ("int16x8 covers fewer ops than int8; try mode='int8'."
               if mode == "int16x8" else "Try mode='dynamic' or 'float32'.")) from None


def _integer_moves(model_bytes: bytes, mode: str) -> Tuple[bytes, Tuple[str, ...]]:
    """:func:`tfcompress.rewrite.integer_moves` for the integer modes, with its note."""
    if mode not in _CALIBRATED:
        return model_bytes, ()
    try:
        rewritten, count = integer_moves(model_bytes)
    except Exception:  # pylint: disable=broad-except  # unreadable: the checks refuse it
        return model_bytes, ()
    if not count:
        return model_bytes, ()
    return rewritten, (f"{count} op(s) that only move values (SPLIT, RESHAPE...) came out of "
                       "the converter in float between DEQUANTIZE and QUANTIZE; they run on "
                       "the integers, which gives the same outputs",)


def _through_post_training(model, samples: list, error: "ConversionError", *,
                           input_type: str, output_type: str, sparse: bool) -> ConversionResult:
    """The int8 file of ``post_training_quantize(model)``, for a calibrated file that
    cannot run because activations were 0 on every calibration sample: its quantizers'
    ranges are never narrower than ``quantization.MIN_ACTIVATION_RANGE``."""
    x = [np.concatenate([np.asarray(s[i]) for s in samples]) for i in range(len(samples[0]))]
    try:
        quantized = post_training.post_training_quantize(model, x if len(x) > 1 else x[0],
                                                         num_samples=len(samples), progress=False)
        result = convert(quantized, input_type=input_type, output_type=output_type,
                         progress=False, sparse=sparse)
    except (ValueError, TypeError) as e:  # ConversionError included
        head = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{error} post_training_quantize could not take this model "
                              f"either: {head}") from None
    note = ("calibrated ranges of 0 (activations 0 on every calibration sample) made the file "
            "unable to run, so it was converted through post_training_quantize, whose ranges "
            "are at least quantization.MIN_ACTIVATION_RANGE wide")
    return dataclasses.replace(result, notes=result.notes + (note,))


def _check_runs(verified: inspector.VerifiedModel, mode: str) -> None:
    """Both kernel paths must prepare the file: a file TFLite cannot run is not a result,
    and one that crashes LiteRT must not take the user's process with it.

    The file is built and allocated once per kernel path in a fresh LiteRT-only process
    first (``runtime.trial_run(isolate=True)``, about 0.4 s).
    Measured: int16x8 files of MobileNet / MobileNetV2 fail the reference kernels'
    DEPTHWISE_CONV_2D prepare ("no_integer_overflow_from_quantization"); an int8 file
    with a squeeze-excite block whose ReLU was dead on every calibration sample made
    XNNPACK free memory twice (SIGABRT) while preparing it.
    """
    problem = _run_problem(verified)
    if problem:
        kernels, head = problem
        raise ConversionError(
            f"The {mode!r} file cannot run on {kernels}: {head}"
            + _degenerate_note(verified.report)
            + (" Try mode='int8'." if mode == "int16x8" else ""))


# No activation of a working network spans this much: a quantized range this wide was
# calibrated on a mask's fill value (-1e9) or an infinity.
_ABSURD_RANGE = 1e8


def _check_ranges(report: inspector.ModelReport) -> None:
    """Refuses a file with an integer activation whose range is absurdly wide.

    Measured: a MultiHeadAttention called with ``use_causal_mask=True`` (Keras fills the
    masked scores with -1e9) converted with a scale of 9.3e35 on the scores: every score
    quantized to one value, so the file attended uniformly to every position, the future
    ones too, and still passed an end-to-end check on a small model.
    """
    wide = [t for t in report.tensors if not t.is_constant and t.quantization is not None
            and t.dtype in ("int8", "int16") and t.quantization.scale
            and max(t.quantization.scale) * (2 ** (8 if t.dtype == "int8" else 16))
            > _ABSURD_RANGE]
    if not wide:
        return
    t = wide[0]
    span = max(t.quantization.scale) * (2 ** (8 if t.dtype == "int8" else 16))
    raise ConversionError(
        f"The calibrated range of tensor {t.name!r} (layer {inspector.layer_name(t.name)!r}) "
        f"spans {span:.3g}: a mask's fill value (Keras writes -1e9 for masked attention "
        "scores) or an infinity reached it, so every real value of it quantizes to the same "
        f"integer and the file would compute something else ({len(wide)} such tensor(s)). "
        "An attention mask: quantize_model / post_training_quantize write a causal "
        "MultiHeadAttention as int8 ops that hold it; other masks: apply them outside the "
        "model, or convert with mode='dynamic' or 'float16'.")


def _run_problem(verified: inspector.VerifiedModel) -> Optional[Tuple[str, str]]:
    """``(kernel path, LiteRT's first line)`` where a trial in a child process failed
    (one child tries both paths in turn)."""
    try:
        # Built and allocated (where both measured crashes happened), not invoked: an
        # invocation of a large model on the reference kernels can take longer than the
        # trial's watchdog.
        runtime.trial_run(verified, kernels=("xnnpack", "reference"), isolate=True,
                          invoke=False)
    except (RuntimeError, ValueError) as e:  # InvalidModelError: the child died
        head = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        xnnpack = ("xnnpack", "error") in verified.trials
        return ("XNNPACK" if xnnpack else "the reference kernels"), head
    return None


def _runs(model_bytes: bytes) -> bool:
    """Whether the file verifies and runs on both kernel paths (tried in a child)."""
    try:
        return _run_problem(inspector.load(model_bytes)) is None
    except inspector.InvalidModelError:
        return False


# An activation scale below this comes from a range of [0, 0]: TFLite writes 4e-9 to 8e-9.
_DEGENERATE_SCALE = 1e-7


def _degenerate_note(report: inspector.ModelReport) -> str:
    """Names the activations whose calibrated range was empty (0 on every sample)."""
    dead = [t for t in report.tensors if not t.is_constant and t.quantization is not None
            and t.dtype in ("int8", "int16") and max(t.quantization.scale) < _DEGENERATE_SCALE]
    if not dead:
        return ""
    layers = sorted({inspector.layer_name(t.name) for t in dead})
    return (f" {len(dead)} activation tensor(s) were 0 on every calibration sample, so their "
            f"int8 scale is {min(max(t.quantization.scale) for t in dead):.2g} (layers: "
            f"{', '.join(layers[:4])}{', ...' if len(layers) > 4 else ''}); kernels cannot "
            "requantize into such a scale. Calibrate with data on which these layers are not "
            "all zero, remove the dead units (a ReLU that never fires), or quantize with "
            "quantize_model / post_training_quantize, whose ranges are never narrower than "
            "quantization.MIN_ACTIVATION_RANGE.")


SPARSE_CHECK_SAMPLES = 64  # inputs on which a sparse file must equal the dense one


def _sparse_or_dense(sparse: bytes, dense: bytes, samples: list,
                     specs: Sequence[calibration.InputSpec]) -> Tuple[bytes, Tuple[str, ...]]:
    """The sparse file if it computes exactly what the dense one does, else the dense file.

    Both files run on both kernel paths, on calibration samples (or random inputs
    when there are none), and every output must be bit-identical: the sparse encoding
    is only a way to store the same weights. Where no sparse weight is left (all were
    stored dense again) the dense file itself is returned.
    """
    try:
        verified = inspector.load(sparse)
    except inspector.InvalidModelError as e:  # measured: a Conv1DTranspose model's RESHAPE
        detail = str(e).split(": ", 1)[-1].split(" Received:")[0]
        logging.warning("convert(sparse=True): the sparse file does not verify (%s); writing "
                        "dense weights instead.", detail)
        return dense, (f"sparse weights: the sparse file does not verify ({detail}); the file "
                       "has dense weights",)
    if not any(t.sparsity is not None for t in verified.tree.subgraphs[0].tensors):
        return dense, ("sparse weights: none saves bytes or runs correctly here, so every "
                       "weight is stored dense",)
    failed = _run_problem(verified)
    if failed:
        logging.warning("convert(sparse=True): the sparse file cannot run on %s (%s); "
                        "writing dense weights instead.", *failed)
        return dense, (f"sparse weights: the sparse file cannot run on {failed[0]} "
                       f"({failed[1]}); the file has dense weights",)
    problem = _delegation_differs(sparse, dense) or _outputs_differ(sparse, dense, samples, specs)
    if problem:
        logging.warning("convert(sparse=True): %s; writing dense weights instead.", problem)
        return dense, (f"sparse weights: {problem}; the file has dense weights",)
    return sparse, ()


def _delegation_differs(sparse: bytes, dense: bytes) -> Optional[str]:
    """Names the ops XNNPACK leaves to the builtin kernels in the sparse file but takes in
    the dense one, or None. Measured: a Conv1D -> mean -> Dense model whose CONV_2D read
    DENSIFY'd weights had its FULLY_CONNECTED left out, so the XNNPACK path rounded it as
    the builtin kernels do: 1 output step from the dense file on some inputs, none on the
    calibration samples."""
    def taken(model_bytes):
        report = runtime.delegation(model_bytes)
        return report, sorted(op for _, op, _ in report.delegated if op != "DENSIFY")

    (report, sparse_ops), (_, dense_ops) = taken(sparse), taken(dense)
    if sparse_ops == dense_ops:
        return None
    left = ", ".join(f"#{i} {op}" for i, op, _ in report.left if op != "DENSIFY")
    return (f"XNNPACK leaves {left or 'ops'} of the sparse file to the builtin kernels, which "
            "it takes in the dense file (outputs could differ by a rounding step)")


def _outputs_differ(sparse: bytes, dense: bytes, samples: list,
                    specs: Sequence[calibration.InputSpec]) -> Optional[str]:
    for xnnpack in (True, False):
        reference = runtime.make_interpreter(dense, xnnpack=xnnpack)
        details = runtime.input_details(reference)
        if samples:
            batch = samples[:SPARSE_CHECK_SAMPLES]
            x = {spec.name: np.concatenate([np.asarray(s[i]) for s in batch])
                 for i, spec in enumerate(specs)}
            x = next(iter(x.values())) if len(x) == 1 else x
        else:
            rng = np.random.default_rng(0)
            x = {runtime.input_name(d): rng.uniform(-1, 1, (SPARSE_CHECK_SAMPLES,)
                                                    + tuple(d["shape"][1:])).astype("float32")
                 for d in details}
        want = runtime.predict(reference, x)
        got = runtime.predict(runtime.make_interpreter(sparse, xnnpack=xnnpack), x)
        for a, b in zip(want, got):
            if not np.array_equal(a, b):
                return ("they change the outputs on "
                        f"{'XNNPACK' if xnnpack else 'the reference kernels'} (max difference "
                        f"{float(np.max(np.abs(a - b))):.4g})")
    return None


def _is_qat(model) -> bool:
    return quantization.is_quantized(model)


def _check_ranges_set(model) -> None:
    """A QAT model converted from its own ranges must have seen data: a quantizer that
    never did has the range [0, 0], and the file would compute something else."""
    unset = [layer.name for layer in _graph.all_layers(model)
             if isinstance(layer, quantization.FakeQuant) and layer.built
             and layer.fixed_range is None and layer.follows is None
             and float(keras.ops.convert_to_numpy(layer.initialized)) == 0.0]
    if unset:
        raise ConversionError(
            f"{len(unset)} activation quantizer(s) of this quantization-aware model never saw "
            f"data, so their ranges are unset: {', '.join(unset[:5])}"
            + (f" and {len(unset) - 5} more" if len(unset) > 5 else "")
            + ". Train it (fit) or calibrate it (tfcompress.post_training.calibrate) before "
            "converting, or pass representative_data= to calibrate the file instead.")
    # A range or weight that is inf or NaN becomes a scale out of range, on which the
    # TFLite converter crashes the process (measured: SIGSEGV after "scale out of
    # expressed type range").
    broken = sorted({v.path for v in model.variables
                     if "float" in str(v.dtype)
                     and not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))})
    if broken:
        raise ConversionError(
            f"{len(broken)} variable(s) of this quantization-aware model are inf or NaN: "
            f"{', '.join(broken[:5])}" + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
            + ". Training diverged or a range saw infinite values; retrain (a lower "
            "learning rate) or recalibrate before converting.")


def _io_type(arg: str, value: Optional[str], mode: str) -> str:
    allowed = _IO_TYPES.get(mode, ("float32",))
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise ValueError(
            f"`{arg}` must be one of {list(allowed)} in mode {mode!r}. Received: {arg}={value!r}"
        )
    return value


# --------------------------------------------------------------------------- sources


def _resolve(model, *, batch_size, signature_key) -> _Source:
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"No such model file or directory. Received: {str(path)!r}.")
        if path.is_dir():
            if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
                raise ValueError(
                    f"{str(path)!r} is a directory but not a SavedModel (no saved_model.pb). "
                    "Expected a .keras or .h5 file or a SavedModel directory."
                )
            return _saved_model_source(str(path), signature_key)
        if path.suffix.lower() in _KERAS_SUFFIXES:
            return _keras_source(_load_keras(path), batch_size)
        if path.suffix.lower() == ".tflite":
            raise ValueError(
                f"{str(path)!r} is already a .tflite model; convert the Keras model or "
                "SavedModel it came from."
            )
        raise ValueError(
            f"Not a model file. Received: {str(path)!r}. Expected a .keras or .h5 file or "
            "a SavedModel directory."
        )
    if _compat.is_keras_model(model):
        return _keras_source(model, batch_size)
    if _compat.is_concrete_function(model):
        return _function_source(model)
    if _compat.is_tf_function(model):
        try:
            concrete = model.get_concrete_function()
        except (TypeError, ValueError) as e:
            raise ValueError(
                "A tf.function needs an input_signature to be converted "
                "(@tf.function(input_signature=[tf.TensorSpec(...)])), or pass "
                f"fn.get_concrete_function(spec). Received an error: {e}"
            ) from None
        return _function_source(concrete)
    if isinstance(model, tf.Module) and hasattr(model, "signatures"):
        raise TypeError(
            "Pass the SavedModel's directory path, not the object from tf.saved_model.load."
        )
    raise TypeError(
        "Unsupported model. Expected a Keras 3 model, a path to a .keras/.h5 file or a "
        "SavedModel directory, a tf.function with an input_signature, or a concrete "
        f"function. Received: {type(model).__name__}."
    )


def _load_keras(path: Path):
    try:
        return _compat.load_keras_model(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"Could not load {str(path)!r} as a Keras model: {e}") from None


def _spec_dtype(dtype) -> np.dtype:
    return np.dtype(tf.as_dtype(dtype).as_numpy_dtype)


def _keras_source(model, batch_size) -> _Source:
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):
        inputs = []
    notes: Tuple[str, ...] = ()
    if not inputs:
        return _subclassed_source(model, batch_size)
    specs = [
        calibration.InputSpec(t.name, tuple(t.shape), _spec_dtype(t.dtype)) for t in inputs
    ]
    mixed = _compat.mixed_policies(model)
    if mixed:  # float16 compute ops have no TFLite kernels; the variables are float32
        try:
            model = _compat.float32_copy(model)
        except ValueError as e:
            raise ConversionError(str(e)) from None
        notes += (f"mixed precision ({', '.join(mixed)}) rebuilt in float32 for conversion "
                  "(its float32 weights copied)",)
    target, unroll_notes = _unrolled(model)
    notes += unroll_notes
    if batch_size is not None and all(s.shape[0] in (None, batch_size) for s in specs):
        fixed = [keras.Input(batch_shape=(batch_size,) + tuple(s.shape[1:]), dtype=s.dtype.name,
                             name=s.name) for s in specs]
        try:
            target = keras.Model(fixed, target(fixed[0] if len(fixed) == 1 else fixed),
                                 name=_export_name(model.name))
            specs = [dataclasses.replace(s, shape=(batch_size,) + tuple(s.shape[1:])) for s in specs]
        except (ValueError, TypeError):
            pass  # a model that rejects a fixed batch keeps its own signature
    # The exported signature sorts inputs by name, so calibration feeds them by name.
    return _Source(lambda: tf.lite.TFLiteConverter.from_keras_model(target), specs, model,
                   by_name=True, notes=notes)


def _export_name(name: str) -> str:
    """A model name the converter's export takes (measured: a leading "_" sends
    TFLiteConverter down its tf_keras path, which fails with "'NoneType' object is not
    callable")."""
    return name.lstrip("_") or "model"


@contextlib.contextmanager
def _export_safe_names(model):
    """Renames, while the converter runs, the models nested in ``model`` whose name starts
    with "_" (see :func:`_export_name`); the names are restored afterwards."""
    nested = [] if model is None else [
        m for m in [model] + _compat.flatten_layers(model)
        if isinstance(m, keras.Model) and m.name.startswith("_")]
    names = [m.name for m in nested]
    for m in nested:
        m.name = _export_name(m.name)
    try:
        yield
    finally:
        for m, name in zip(nested, names):
            m.name = name


def _subclassed_source(model, batch_size) -> _Source:
    """A called subclassed model, wrapped in a Functional model of the shape it was called with."""
    shapes = _compat.built_input_shapes(model)
    if not model.built or not shapes:
        raise ValueError(
            f"The Keras model {model.name!r} ({type(model).__name__}) has no defined inputs "
            "and was never called. Give a Sequential an Input layer, or call the model once "
            "on a batch of data (model(x)) before converting it.")
    if len(shapes) != 1:
        raise ValueError(
            f"The subclassed model {model.name!r} ({type(model).__name__}) was called with "
            f"several arguments {sorted(shapes)}; tfcompress cannot trace it. Pass a "
            "tf.function with an input_signature, or rebuild it with the Functional API.")
    shape = tuple(next(iter(shapes.values())))
    inputs = keras.Input(batch_shape=(None,) + shape[1:], name="input")
    try:
        traced = keras.Model(inputs, model(inputs), name=_export_name(model.name))
    except (ValueError, TypeError) as e:
        raise ValueError(f"The subclassed model {model.name!r} could not be traced on an input "
                         f"of shape {(None,) + shape[1:]}: {e}") from None
    source = _keras_source(traced, batch_size)
    note = (f"subclassed model {model.name!r} traced on a float32 input of shape "
            f"{(None,) + shape[1:]} (the shape it was first called with)")
    return dataclasses.replace(source, notes=(note,) + source.notes)


def _graph_layers(model) -> list:
    """The layers of a Functional / Sequential model and of the graph models nested in it
    (not those inside a subclassed layer, which a clone cannot replace)."""
    layers = []
    for layer in getattr(model, "layers", []) if _compat.is_graph_model(model) else []:
        layers.append(layer)
        layers += _graph_layers(layer)
    return layers


def _recurrent_layers(model) -> list:
    """The RNN layers (a Bidirectional counts as one) that would run as a loop."""
    layers = _compat.flatten_layers(model)
    inner = {id(part) for layer in layers if isinstance(layer, keras.layers.Bidirectional)
             for part in (layer.forward_layer, layer.backward_layer)}
    return [layer for layer in layers if id(layer) not in inner and (
        (isinstance(layer, keras.layers.RNN) and not layer.unroll)
        or (isinstance(layer, keras.layers.Bidirectional) and not layer.forward_layer.unroll))]


def _unrolled(model):
    """``model`` with every recurrent layer unrolled over its (static) time steps.

    TFLite's converter dies with SIGSEGV on the loop of a Keras 3 LSTM / GRU / RNN at
    batch 1, and refuses it (TensorList ops) with a free batch; unrolled, the same
    weights compute the same outputs with FULLY_CONNECTED, LOGISTIC, TANH, MUL and ADD
    ops, which convert to int8. A sequence length that is not fixed cannot be unrolled.
    """
    recurrent = _recurrent_layers(model)
    if not recurrent:
        return model, ()
    names = ", ".join(f"{layer.name!r} ({type(layer).__name__})" for layer in recurrent)
    reachable = {id(layer) for layer in _graph_layers(model)}
    if not _compat.is_graph_model(model) or any(id(r) not in reachable for r in recurrent):
        raise ConversionError(
            f"Recurrent layers {names} in a subclassed model cannot be converted: TFLite's "
            "converter crashes on Keras 3's recurrent loop. Build them with unroll=True, or "
            "write the model with the Functional API so that tfcompress can unroll them.")
    steps = set()
    for layer in recurrent:
        shape = layer.input[0].shape if isinstance(layer.input, list) else layer.input.shape
        if len(shape) < 2 or shape[1] is None:
            raise ConversionError(
                f"Recurrent layer {layer.name!r} ({type(layer).__name__}) reads sequences of "
                f"unknown length {tuple(shape)}: TFLite's converter crashes on Keras 3's "
                "recurrent loop, and only a fixed length can be unrolled. Give the model's "
                "input a fixed number of time steps, e.g. keras.Input((49, 10)).")
        steps.add(int(shape[1]))
    # Masked layers as tfcompress writes them: Keras' own unrolled loop zeroes a
    # go_backwards layer's masked outputs in the wrong order (a masked Bidirectional
    # returning sequences: float32 file 0.12 of the output's magnitude from Keras).
    flat = _graph.functional(model, purpose="conversion", inline=True)  # nested layers too
    masked = {id(node.operation) for node in _compat.graph_nodes(flat)
              if any(node.operation is r for r in recurrent)
              and _compat.node_arguments(node)[1].get("mask") is not None}
    notes: tuple = ()
    if masked:
        model = flat
        unsplit = [layer.name for layer in recurrent if id(layer) in masked and
                   _graph.recurrent_refusal(layer, _node_of(model, layer)) is not None]
        masked -= {id(layer) for layer in recurrent if layer.name in unsplit}
        wrong = [name for name in unsplit if _backward_zeroed(model.get_layer(name))]
        if wrong:
            layer = next(r for r in recurrent if r.name == wrong[0])
            raise ConversionError(
                f"Recurrent layer {layer.name!r} ({type(layer).__name__}) reads a mask and "
                f"cannot be unrolled with it: "
                f"{_graph.recurrent_refusal(layer, _node_of(model, layer))}. Keras' own "
                "unrolled loop applies the mask of a backward layer in the wrong order, so "
                "tfcompress writes masked layers itself. Build the Embedding with "
                "mask_zero=False (or drop the Masking layer), or call the layer plainly.")
        model, split = _graph.split_recurrent(model, keep=lambda layer: id(layer) not in masked)
        # (a masked layer split_recurrent cannot write, that Keras' unroll gets right,
        # stays with Keras' unroll below)
        notes = tuple(split)
        recurrent = [r for r in recurrent if id(r) not in masked]
        if not recurrent:
            return model, notes
    pending = []

    def clone_function(layer):
        if not any(layer is r for r in recurrent):
            return layer
        config = layer.get_config()
        for key in ("layer", "backward_layer"):  # a Bidirectional's two directions
            if isinstance(config.get(key), dict):
                config[key]["config"]["unroll"] = True
        if "unroll" in config:
            config["unroll"] = True
        new = type(layer).from_config(config)
        pending.append((new, layer.get_weights()))
        return new

    clone = _graph.clone_model(model, clone_function=clone_function)
    for new, weights in pending:
        new.set_weights(weights)
    return clone, notes + (
        f"recurrent layers {names} unrolled over {', '.join(map(str, sorted(steps)))} "
        "time steps (TFLite's converter crashes on Keras 3's recurrent loop)",)


def _masked_attention(node) -> bool:
    """Whether an attention node is causal, or a MultiHeadAttention given padding masks."""
    kwargs = _compat.node_arguments(node)[1]
    if isinstance(node.operation, keras.layers.MultiHeadAttention) and (any(
            kwargs.get(k) is not None for k in ("query_mask", "value_mask", "key_mask"))
            or any(getattr(t, "_keras_mask", None) is not None for t in node.input_tensors)):
        return True
    return isinstance(node.operation, (keras.layers.MultiHeadAttention,)
                      + _graph.ATTENTION_LAYERS) and bool(kwargs.get("use_causal_mask"))


def _check_int16_sums(report: inspector.ModelReport) -> None:
    """Refuses a SUM of int16 values: TFLite's int16 SUM kernel is wrong (41% and 68% of
    the output's magnitude measured, over a middle and the last axis, on both kernel
    paths; MEAN is right). ``convert`` writes Keras' sums as MEAN times the count in
    int16x8 mode; a SUM that remains comes from a form it does not rewrite."""
    for op in report.ops:
        if op.op == "SUM" and any(report.tensors[t].dtype == "int16" for t in op.inputs
                                  if t >= 0):
            raise ConversionError(
                f"The int16x8 file has a SUM of int16 values (op #{op.index}, layer "
                f"{op.layer!r}), and TFLite's int16 SUM kernel computes it wrong (41% of the "
                "output's magnitude off, measured). Write the sum as keras.ops.mean(...) "
                "times the count, over axes past the batch, or use mode='int8'.")


def _backward_zeroed(layer) -> bool:
    """Whether Keras' ``unroll=True`` loop gets ``layer``'s masked outputs wrong: a
    go_backwards direction that zeroes masked outputs (a Bidirectional returning
    sequences forces that)."""
    directions = ((layer.forward_layer, layer.backward_layer)
                  if isinstance(layer, keras.layers.Bidirectional) else (layer,))
    return any(one.go_backwards and getattr(one, "zero_output_for_mask", False)
               for one in directions)


def _node_of(model, layer):
    return next((node for node in _compat.graph_nodes(model) if node.operation is layer), None)


def _batchnorms_as_depthwise(model):
    """``model`` with each BatchNormalization that TFLite cannot fold (one not right after
    a Conv, DepthwiseConv or Dense without activation: after an activation, fused or not,
    a pool, an input) written as the
    1x1 depthwise convolution it computes, and a note per such layer; or ``(model, ())``.

    Unfolded, TFLite writes the BatchNorm as MUL and ADD by constant vectors quantized
    with one scale for all channels: with the channels' scales far apart (a channel that
    ReLU nearly always zeroes), XNNPACK and the reference kernels differed by up to 17
    output steps on such a MUL (a Conv1D -> ReLU -> BatchNorm audio model). A depthwise
    convolution has one int8 scale per channel, as QAT makes it.
    """
    if not _compat.is_graph_model(model) or not any(
            type(layer) is keras.layers.BatchNormalization for layer in _graph.all_layers(model)):
        return model, ()
    model = _graph.functional(model, purpose="conversion")  # a Sequential's graph
    found = {}
    once = _graph.called_once(model)
    for node in _compat.graph_nodes(model):
        layer = node.operation
        if type(layer) is not keras.layers.BatchNormalization or len(node.input_tensors) != 1:
            continue
        rank = len(node.input_tensors[0].shape)
        producer = _compat.producer(node.input_tensors[0])
        # TFLite folds a BatchNorm into the Conv / Dense right before it, unless that
        # layer applies a (fused) activation first: Conv1D(activation="relu") -> BN.
        folds = (hasattr(producer, "kernel") or hasattr(producer, "depthwise_kernel")) and \
            getattr(producer, "activation", None) in (None, keras.activations.linear)
        if rank not in (3, 4) or layer.axis not in (-1, rank - 1) or folds or \
                id(layer) not in once:
            continue
        found[id(layer)] = rank
    if not found:
        return model, ()
    pending = []

    def clone_function(layer):
        if id(layer) not in found:
            return layer
        conv = (keras.layers.DepthwiseConv2D if found[id(layer)] == 4
                else keras.layers.DepthwiseConv1D)(1, name=layer.name, dtype=layer.dtype_policy)
        gamma, beta, mean, var = _bn_weights(layer)
        scale = gamma / np.sqrt(var + layer.epsilon)
        pending.append((conv, scale, beta - mean * scale))
        return conv

    def call_function(layer, *args, **kwargs):
        if any(layer is conv for conv, _, _ in pending):  # BatchNorm's `mask` and `training`
            return layer(args[0])
        return layer(*args, **kwargs)

    clone = _graph.clone_model(model, clone_function=clone_function, call_function=call_function,
                               keep_operations=True)
    for conv, scale, shift in pending:
        kernel = scale.reshape(tuple(conv.kernel.shape)).astype(np.float32)
        conv.set_weights([kernel, shift.astype(np.float32)])
    names = ", ".join(repr(c.name) for c, _, _ in pending)
    return clone, (f"BatchNormalization {names} (not after a Conv or Dense) converted as a 1x1 "
                   "depthwise convolution, so that each channel gets its own int8 scale",)


_NORMALIZATIONS = tuple(cls for cls in (keras.layers.LayerNormalization,
                                        getattr(keras.layers, "RMSNormalization", None)) if cls)


def _layernorms_decomposed(model, *, l2_samples=None):
    """``model`` with each LayerNormalization (not RMS-scaled) written as the int8 ops of
    :func:`tfcompress._graph.split_layernorms`, and a note; or ``(model, ())``.

    With ``l2_samples`` (calibration samples; int8 only, int16x8 has no
    L2_NORMALIZATION) the LayerNorms whose inputs' row variances spread too widely for
    an 8-bit variance (:func:`_wants_l2_norm`) divide by the L2 norm instead.
    """
    if not _compat.is_graph_model(model) or not any(
            type(layer) in _NORMALIZATIONS + (keras.layers.GroupNormalization,)
            for layer in _graph.all_layers(model)):
        return model, ()
    model = _graph.functional(model, purpose="conversion", inline=True)
    model, group_notes = _graph.split_groupnorms(model)
    l2 = _wants_l2_norm(model, l2_samples) if l2_samples else set()
    clone, notes = _graph.split_layernorms(
        model, any_axes=True,
        normalize=lambda layer: (lambda t: _graph.L2Normalize()(t)) if layer.name in l2 else None)
    if not notes:
        return model, ()
    return clone, ("LayerNormalization / RMSNormalization converted as int8 ops (Keras' own "
                   "forms leave a NEG or SQUARE float): " + "; ".join(group_notes + notes),)


# keras.ops nodes whose calibrated int8 form is float (NEG, SQUARE; logsumexp's IS_FINITE
# and SELECT; normalize's MINIMUM after RSQRT).
_OPERATOR_FORMS = ("Negative", "Square", "Logsumexp", "NotEqual")


def _int8_forms(model, *, l2_normalization: bool = True):
    """``model`` with the ops whose calibrated int8 form is float or wrong rewritten, and
    notes; or ``(model, ())``.

    Each ELU, SELU, softplus, mish... becomes ops with int8 kernels
    (:func:`tfcompress._graph.split_activations`: the converter keeps ELU in float and
    loses softplus' precision); each minimum / maximum of a tensor that other ops read too
    becomes SUB / ADD and RELU (:func:`tfcompress._graph.split_clamps`: the converter would
    clip that tensor for its other readers); ``-x``, ``square``, ``logsumexp`` become
    ops with int8 kernels (without ``l2_normalization``, the int16x8 case, each ``sum``
    over known axes becomes MEAN times the count: TFLite's int16 SUM is wrong); with
    ``l2_normalization``, each UnitNormalization and
    ``keras.ops.normalize`` becomes one L2_NORMALIZATION
    (:func:`tfcompress._graph.split_unit_normalizations`), and each input of a
    ``Dot(normalize=True)`` too (:func:`tfcompress._graph.split_dots`). A ``Masking``
    layer's float comparison becomes an int8 one (:func:`tfcompress._graph.split_masking`)
    and a masked GlobalAveragePooling1D int8 ops (:func:`tfcompress._graph.split_masked_means`:
    Keras divides by a float CAST of the mask). A
    MultiHeadAttention called with ``use_causal_mask=True`` becomes the int8 ops of
    :func:`tfcompress._graph.split_attention`, its mask an ADD of 0 or
    ``-_graph.MASK_SHIFT`` (Keras' -1e9 fill has no int8 range).
    """
    if not _compat.is_graph_model(model) or not any(
            _graph.activation_form(op) is not None or isinstance(op, keras.layers.Lambda)
            or type(op).__name__ in _graph.CLAMPS + _OPERATOR_FORMS
            + ("UnitNormalization", "Normalize", "Masking", "GlobalAveragePooling1D")
            + (() if l2_normalization else ("Sum",))
            or (isinstance(op, keras.layers.Dot) and op.normalize)
            or isinstance(op, (keras.layers.MultiHeadAttention,) + _graph.ATTENTION_LAYERS)
            for op in _graph.all_operations(model)):
        return model, ()
    clone = _graph.functional(model, purpose="conversion", inline=True)
    # A causal MultiHeadAttention as int8 ops with a mask int8 can hold (Keras' -1e9 fill
    # made the scores' calibrated scale 9.3e35: every score one value).
    # So is a MultiHeadAttention with the padding masks of Embedding(mask_zero=True).
    causal = {id(node.operation) for node in _compat.graph_nodes(clone)
              if _masked_attention(node)}
    clone, attention = _graph.split_attention(clone, keep=lambda layer: id(layer) not in causal)
    # In int16x8 an AdditiveAttention too: its score is a SUM, which becomes a MEAN below.
    split_too = () if l2_normalization else (keras.layers.AdditiveAttention,)
    clone, dots = _graph.split_dot_attention(
        clone, keep=lambda layer: id(layer) not in causal and not isinstance(layer, split_too))
    attention += dots
    clone, elus = _graph.split_activations(clone)
    clone, masking = _graph.split_masking(clone)
    clone, means = _graph.split_masked_means(clone)
    elus = attention + masking + means + elus
    clone, clamps = _graph.split_clamps(clone)
    clone, negations = _graph.split_operator_forms(
        clone, names=_OPERATOR_FORMS + (("Normalize",) if l2_normalization else ()))
    if not l2_normalization:  # int16x8: after the forms above, which write sums too
        clone, sums = _graph.split_operator_forms(clone, names=("Sum",))
        negations += sums
    elus += negations
    if l2_normalization:  # int16x8 has no L2_NORMALIZATION
        clone, units = _graph.split_unit_normalizations(clone)
        clone, dots = _graph.split_dots(clone, keep=lambda layer: not layer.normalize)
        elus += units + dots
    notes = ((("activations and normalizations converted as integer ops: "
               + "; ".join(elus)),) if elus else ()) + \
        ((("minimum / maximum rewritten: " + "; ".join(clamps)),) if clamps else ())
    return (clone, notes) if notes else (model, ())


# How many calibration samples measure the inputs of the LayerNorms.
_LAYERNORM_PROBE_SAMPLES = 64


def _wants_l2_norm(model, samples) -> set:
    """The LayerNorms over the last axis whose int8 form should divide by the L2 norm.

    The variance form quantizes ``var + eps`` on one 8-bit grid up to its largest
    value, so a row with a small variance gets a coarse one: about ``0.75 * max / (255
    * var)`` of error, in output standard deviations, for outputs up to 3 of them. The
    L2 form's output grid is ``1/128`` of the norm, ``0.5 * sqrt(C) / 128`` of a
    standard deviation. The L2 form is chosen where the variances of the calibration
    rows spread wider than ``max / p1 > 1.33 * sqrt(C)``. Measured (C = 8 / 64 / 256):
    rows of one scale, 2.7 / 2.1 / 1.8 output steps p99 from float with the variance
    and 2.5 / 2.4 / 3.9 with the norm; rows whose scale varies 20-fold, 31 / 25 / 12
    and 10 / 10 / 7.
    """
    calls: Dict[int, list] = {}
    for node in _compat.graph_nodes(model):
        if type(node.operation) in _NORMALIZATIONS and len(node.input_tensors) == 1:
            calls.setdefault(id(node.operation), []).append((node.operation, node.input_tensors[0]))
    found = [c[0] for c in calls.values() if len(c) == 1  # a shared LayerNorm keeps the variance
             and _graph.splittable_layernorm(c[0][0], len(c[0][1].shape))]
    if not found:
        return set()
    layers = [layer for layer, _ in found]
    batch = samples[:_LAYERNORM_PROBE_SAMPLES]
    x = [np.concatenate([np.asarray(s[i]) for s in batch]) for i in range(len(batch[0]))]
    try:
        probe = keras.Model(model.inputs, [tensor for _, tensor in found])
        inputs = probe.predict(x if len(x) > 1 else x[0], verbose=0)
    except (ValueError, TypeError) as e:  # the samples do not feed the Keras model as is
        logging.info("LayerNorm inputs not measured (%s); the variance form is used.", e)
        return set()
    chosen = set()
    for layer, values in zip(layers, inputs if len(layers) > 1 else [inputs]):
        values = np.asarray(values, np.float64)
        rows = values.reshape(-1, values.shape[-1])
        variance = (rows.var(axis=1) if type(layer) is keras.layers.LayerNormalization
                    else np.mean(rows * rows, axis=1)) + float(layer.epsilon)
        if variance.max() / np.percentile(variance, 1) > 1.33 * np.sqrt(values.shape[-1]):
            chosen.add(layer.name)
    return chosen


def _bn_weights(layer):
    """gamma, beta, moving mean and variance of a BatchNorm without scale or center."""
    weights = iter(np.asarray(w, np.float64) for w in layer.get_weights())
    channels = int(layer.moving_mean.shape[0])
    gamma = next(weights) if layer.scale else np.ones(channels)
    beta = next(weights) if layer.center else np.zeros(channels)
    return gamma, beta, next(weights), next(weights)


def _saved_model_source(path: str, signature_key: Optional[str]) -> _Source:
    key = signature_key or "serving_default"
    loaded = tf.saved_model.load(path)
    if key not in loaded.signatures:
        raise ValueError(
            f"The SavedModel {path!r} has no signature {key!r}. Available: "
            f"{sorted(loaded.signatures)}."
        )
    _, kwargs = loaded.signatures[key].structured_input_signature
    specs = [
        calibration.InputSpec(name, tuple(spec.shape.as_list()), _spec_dtype(spec.dtype))
        for name, spec in kwargs.items()
    ]
    return _Source(
        lambda: tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=[key]),
        specs, None, by_name=True,
    )


def _function_source(concrete) -> _Source:
    specs = [
        calibration.InputSpec(t.name.split(":")[0], tuple(t.shape.as_list()), _spec_dtype(t.dtype))
        for t in concrete.inputs if t.dtype != tf.resource
    ]
    return _Source(lambda: tf.lite.TFLiteConverter.from_concrete_functions([concrete]), specs)


# --------------------------------------------------------------------------- errors

_OP_RE = re.compile(r"'(tfl?\.\w+)' op")
_LOC_RE = re.compile(r'fused\["\w+:", "([^"@]+)')


def _explain(message: str, mode: str, keras_model) -> str:
    """Turns converter output into: which op, from which layer, in which mode."""
    ops = list(dict.fromkeys(_OP_RE.findall(message)))
    locations = list(dict.fromkeys(
        loc for loc in _LOC_RE.findall(message) if not loc.startswith("StatefulPartitionedCall")
    ))
    layers = _layers_for(locations, keras_model)
    if not ops:
        head = message.strip().splitlines()[0] if message.strip() else "unknown converter error"
        return f"Conversion to {mode!r} failed: {head}"
    parts = [f"Conversion to {mode!r} failed: op {', '.join(ops)} has no TFLite builtin kernel"
             + (" in the int8 op set" if mode == "int8" else "")]
    if layers:
        parts.append("it comes from layer " + ", ".join(layers))
    elif locations:
        parts.append("at " + ", ".join(locations))
    parts.append(
        "Replace the layer by one built from supported ops, keep it out of the model, or "
        "use mode='dynamic' or 'float32' if a float model is acceptable"
    )
    return "; ".join(parts) + "."


def _layers_for(locations: Sequence[str], keras_model) -> List[str]:
    if keras_model is None:
        return []

    by_name = {layer.name: layer for layer in _graph.all_layers(keras_model)}
    found = []
    for loc in locations:
        for part in loc.split("/"):
            candidates = [part, re.sub(r"_\d+$", "", part)]
            for c in candidates:
                if c in by_name and c != keras_model.name:
                    found.append(f"{c!r} ({type(by_name[c]).__name__})")
                    break
            else:
                continue
            break
    return list(dict.fromkeys(found))


def _float_ops_note(report: inspector.ModelReport, *, allow_io) -> Tuple[str, ...]:
    """The note for a ``float_fallback`` file: which ops compute in float, from which layers."""
    bad = {t.index for t in report.non_integer_tensors(allow_io=allow_io)}
    float_ops = [op for op in report.ops
                 if op.op not in ("QUANTIZE", "DEQUANTIZE") and any(
                     t in bad for t in op.outputs)]
    if not float_ops:
        return ()
    counts: Dict[str, int] = {}
    for op in float_ops:
        counts[op.op] = counts.get(op.op, 0) + 1
    layers = list(dict.fromkeys(op.layer for op in float_ops if op.layer))
    return (f"float_fallback: {len(float_ops)} of {len(report.ops)} ops run in float32 ("
            + ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
            + ")" + (f", from layers {', '.join(layers[:8])}"
                     + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
                     if layers else "") + "; the rest is int8.",)


def _check_fully_integer(report: inspector.ModelReport, *, allow_io, keras_model) -> None:
    bad = report.non_integer_tensors(allow_io=allow_io)
    if not bad:
        return
    consumers = {}
    for op in report.ops:
        for t in op.inputs + op.outputs:
            consumers.setdefault(t, op)
    lines = []
    for t in bad[:5]:
        op = consumers.get(t.index)
        where = f"op #{op.index} {op.op} (layer {op.layer!r})" if op else "no op"
        lines.append(f"tensor {t.name!r} is {t.dtype} at {where}")
    names = [layer.name for layer in _graph.all_layers(keras_model)] if keras_model is not None else []
    hint = ""
    inputs = {t.index for t in report.inputs}
    cast = next((t for t in bad if t.index in inputs and getattr(consumers.get(t.index), "op",
                                                                  None) == "CAST"), None)
    if cast is not None:
        hint = (f" Input {cast.name!r} is {cast.dtype} and cast to float inside the model: "
                "give the model a float32 input (keras.Input(shape, dtype='float32'), same "
                "values) and convert with input_type='uint8' to have the file take uint8 "
                "values.")
    if names and bad and not hint:
        op = consumers.get(bad[0].index)
        close = difflib.get_close_matches(op.layer, names, n=1) if op else []
        if close:
            hint = f" The first comes from Keras layer {close[0]!r}."
    raise ConversionError(
        "The converted model is not fully integer: " + "; ".join(lines)
        + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "") + "." + hint
    )
