"""``compress()``: one call from a trained Keras model to a checked int8 ``.tflite``.

The steps of a :class:`~tfcompress.recipe.Recipe` run in order: low-rank -> prune ->
quantize (calibration, then QAT) -> convert -> validate (XNNPACK and reference
kernels) -> benchmark. Training steps use Keras ``fit`` with the caller's batch size,
callbacks and ``tf.distribute`` strategy, and learn from the original model when the
recipe distils.

Interrupted runs resume: the run works in ``<output_dir>.partial/``, and after each
training step it saves the model there (``steps/NN_step.keras``) with the step's
numbers in ``state.json``. A second call with the same model, data and recipe
continues after the last completed step. Each step seeds Keras' random generators
with ``seed + step index``, so a resumed run redoes the interrupted step exactly as
an uninterrupted run would. The results are written to ``<output_dir>.partial/final``,
which is renamed to ``output_dir`` in one move; the checkpoints are deleted only after
that. An existing ``output_dir`` is never replaced without ``overwrite=True``, even one
another process created during the run. One run at a time works on an output: the
second gets an error naming the first one's pid (``<output_dir>.partial.lock``). A run
that fails says what it kept and how to resume or clean up.

Example (trains; see tests/test_compression.py):
    >>> import tfcompress as tc
    >>> result = tc.compress(model, (x, y, x_test, y_test),   # doctest: +SKIP
    ...                      recipe={"prune": {"kind": "channels", "sparsity": 0.25}},
    ...                      output_dir="out")
    >>> print(result.table())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np

from tfcompress import (
    _compat,
    _graph,
    _io,
    benchmark,
    channel_pruning,
    inspector,
    layer_kinds,
    lowrank,
    post_training,
    pruning,
    quantization,
    runtime,
    validation,
)
from tfcompress import data as data_lib
from tfcompress import report as report_lib
from tfcompress._progress import StatusLine
from tfcompress.converter import convert
from tfcompress.data import AUGMENTATIONS
from tfcompress.distillation import LabelAndTeacherLoss
from tfcompress.recipe import Recipe, as_recipe
from tfcompress.report import markdown_table

__all__ = [
    "CompressionData",
    "CompressionResult",
    "RECONSTRUCTION_SAMPLES",
    "STATE_FILE",
    "OUTPUT_TASKS",
    "TASKS",
    "compress",
    "detect_task",
    "input_names",
    "output_names",
    "output_tasks",
    "top1_accuracy",
    "write_report",
]

STATE_FILE = "state.json"


TASKS = ("classification", "binary", "regression", "multi_output")
OUTPUT_TASKS = ("classification", "binary", "regression")


def _integral(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) or a.dtype == bool or bool(
        np.all(np.asarray(a) == np.round(a)))


def input_names(model) -> List[str]:
    """The model's input names, in ``model.inputs`` order."""
    return [t.name for t in getattr(model, "inputs", None) or []]


def output_names(model) -> List[str]:
    """The model's output names, in ``model.outputs`` order."""
    names = list(getattr(model, "output_names", None) or [])
    outputs = list(getattr(model, "outputs", None) or [])
    return names if len(names) == len(outputs) else [f"output_{i}" for i in range(len(outputs))]


def _parts(a) -> Tuple[np.ndarray, ...]:
    """The arrays of one data field: ``(a,)`` for one array, the tuple itself otherwise."""
    return a if isinstance(a, tuple) else (a,)


def _head(a, n: int):
    """The first ``n`` samples of one data field (one array or a tuple of arrays)."""
    return tuple(p[:n] for p in a) if isinstance(a, tuple) else a[:n]


def _num_samples(a) -> int:
    return len(_parts(a)[0])


def _zero_one(y: np.ndarray) -> bool:
    return y.size > 0 and bool(np.all((y == 0) | (y == 1)))


def _output_task(out: tuple, y: np.ndarray, y_test: np.ndarray, task: str, what: str,
                 sigmoid: bool = False) -> str:
    """``"classification"``, ``"binary"`` or ``"regression"`` for one output of shape
    ``out`` (``sigmoid``: the output is a sigmoid's)."""
    targets = tuple(y.shape[1:])
    # One label per sample, or one per position of a sequence output (a tagger, a
    # language model's next-token logits: output (steps, classes), labels (steps,)).
    labels = np.issubdtype(y.dtype, np.integer) and (
        y.ndim == 1 or (len(out) >= 2 and targets == out[:-1]))
    classes = out[-1] if out else None
    shaped = targets == out or (targets == () and out == (1,))
    if task == "binary" or (task == "auto" and sigmoid):
        if shaped and _zero_one(y) and _zero_one(y_test):
            return "binary"
        if task == "binary":
            raise ValueError(f"task='binary' needs targets of 0 and 1 shaped as {what}'s "
                             f"output {out} (one per sigmoid). Received targets of shape "
                             f"{y.shape} ({y.dtype}) with values from {np.min(y)} to "
                             f"{np.max(y)}.")
    if task in ("auto", "classification") and labels and classes and classes > 1:
        lo, hi = int(min(y.min(), y_test.min())), int(max(y.max(), y_test.max()))
        if lo >= 0 and hi < classes:
            return "classification"
        if task == "classification":
            raise ValueError(f"Labels must be in [0, {classes}) for {what} with {classes} "
                             f"outputs. Received labels from {lo} to {hi}.")
    if task == "classification":
        raise ValueError(f"task='classification' needs one integer label per sample (or per "
                         f"position of a sequence output) and {what} with more than one "
                         f"class. Received targets of shape "
                         f"{y.shape} ({y.dtype}) for output {out}.")
    if shaped:
        return "regression"
    raise ValueError(
        f"The targets of {what} fit neither task: integer labels in [0, {classes}) make a "
        f"classifier, targets of the output's shape {out} a regression. Received targets "
        f"of shape {y.shape} ({y.dtype}).")


def _fixed_input_sizes(model, data: "CompressionData"):
    """``model`` with inputs of unknown size (``keras.Input((None, 8))``) fixed to the
    training arrays' sizes, sharing its layers: every stage and the ``.tflite`` file take
    that size (TFLite's kernels need it). The model is returned as it is otherwise."""
    open_dims = _graph.variable_dims(model)
    xs = _parts(data.x_train)
    if not open_dims or len(xs) != len(model.inputs):
        return model  # output_tasks() explains a mismatch
    layers = [_compat.producer(t) for t in model.inputs]
    shapes = {layer.name: tuple(np.shape(x)[1:]) for layer, x in zip(layers, xs)
              if layer is not None and layer.name in open_dims}
    return _graph.with_input_shapes(model, shapes)


def _is_one_hot(y: np.ndarray, classes) -> bool:
    return (y.ndim == 2 and bool(classes) and classes > 1 and y.shape[1] == classes
            and len(y) > 0 and bool(np.all((y == 0) | (y == 1)))
            and bool(np.all(y.sum(axis=1) == 1)))


def labels_from_one_hot(model, data: "CompressionData", task="auto") -> "CompressionData":
    """``data`` with one-hot targets of a classifier output as integer labels.

    Targets written for ``categorical_crossentropy`` (one row per sample, a single 1 among
    the output's classes, in both the training and the test targets) become the class
    indices, so the output is trained with sparse cross-entropy and scored by top-1
    accuracy instead of being taken for a regression of its probabilities. Outputs given
    ``task="regression"`` are left alone.
    """
    outputs = list(getattr(model, "outputs", None) or [])
    tasks = [task] * len(outputs) if isinstance(task, str) else list(task)
    ys, yts = list(_parts(data.y_train)), list(_parts(data.y_test))
    if len(ys) != len(outputs) or len(yts) != len(outputs) or len(tasks) != len(outputs):
        return data  # output_tasks() explains the mismatch
    changed = False
    for i, (out, t) in enumerate(zip(outputs, tasks)):
        classes = out.shape[-1] if len(out.shape) == 2 else None
        y, yt = np.asarray(ys[i]), np.asarray(yts[i])
        if t in ("auto", "multi_output", "classification") and _is_one_hot(y, classes) \
                and _is_one_hot(yt, classes) and not _sigmoid_output(out):
            ys[i], yts[i] = y.argmax(axis=1).astype("int64"), yt.argmax(axis=1).astype("int64")
            changed = True
    if not changed:
        return data
    pack = (lambda parts: tuple(parts)) if isinstance(data.y_train, tuple) else (
        lambda parts: parts[0])
    return dataclasses.replace(data, y_train=pack(ys), y_test=pack(yts))


def output_tasks(model, data: "CompressionData", task="auto") -> Tuple[str, ...]:
    """The task of each output (``"classification"`` or ``"regression"``), after checking
    that the data fits the model; see :func:`detect_task`."""
    tasks = [task] if isinstance(task, str) else list(task)
    allowed = ("auto",) + TASKS
    if not tasks or any(not isinstance(t, str) or t not in allowed for t in tasks):
        raise ValueError(f"Unknown task. Received: task={task!r}. Allowed: "
                         + ", ".join(repr(t) for t in allowed)
                         + ", or one of 'auto', 'classification', 'binary', 'regression' "
                         "per output.")
    inputs, outputs = list(getattr(model, "inputs", None) or []), list(
        getattr(model, "outputs", None) or [])
    xs = _parts(data.x_train)
    if len(xs) != max(1, len(inputs)):
        raise ValueError(f"Model {model.name!r} has {len(inputs)} inputs "
                         f"{input_names(model)}; received {len(xs)} input arrays.")
    for tensor, x in zip(inputs, xs):
        want, got = tuple(tensor.shape[1:]), tuple(x.shape[1:])
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
            which = f"input {tensor.name!r} of model" if len(inputs) > 1 else "model"
            raise ValueError(f"The inputs have shape {got} per sample; {which} {model.name!r} "
                             f"takes {want}. Received: an array of shape {x.shape}.")
    ys, yts = _parts(data.y_train), _parts(data.y_test)
    names = output_names(model)
    if len(ys) != max(1, len(outputs)):
        raise ValueError(f"Model {model.name!r} has {len(outputs)} outputs {names}; received "
                         f"{len(ys)} target arrays (pass one per output, in output order or "
                         "as a dict keyed by output name).")
    if isinstance(task, str):
        single = task
        if single == "multi_output" and len(outputs) < 2:
            raise ValueError(f"task='multi_output' is for models with several outputs; "
                             f"{model.name!r} has {len(outputs)}.")
        if len(outputs) > 1 and single not in ("auto", "multi_output"):
            raise ValueError(f"Model {model.name!r} has {len(outputs)} outputs {names}: pass "
                             "task='auto' or a list with one task per output. Received: "
                             f"task={single!r}.")
        tasks = ["auto" if single == "multi_output" else single] * len(ys)
    elif len(tasks) != len(ys) or any(t == "multi_output" for t in tasks):
        raise ValueError(f"A list of tasks gives one of 'auto', 'classification', "
                         f"'binary', 'regression' per output ({len(ys)}: {names}). Received: {task!r}.")
    found = []
    for i, (t, y, yt) in enumerate(zip(tasks, ys, yts)):
        out = tuple(outputs[i].shape[1:]) if outputs else ()
        what = f"output {names[i]!r}" if len(ys) > 1 else "a model"
        found.append(_output_task(out, np.asarray(y), np.asarray(yt), t, what,
                                  sigmoid=bool(outputs) and _sigmoid_output(outputs[i])))
    return tuple(found)


def detect_task(model, data: "CompressionData", task="auto") -> str:
    """``"classification"``, ``"binary"``, ``"regression"`` or ``"multi_output"``, after
    checking the data fits the model.

    ``"auto"``: a classifier when the targets are integer labels (one per sample, or one
    per position of a sequence output) that index the model's last axis; ``"binary"`` when the output is a sigmoid's and the
    targets are 0 and 1 in its shape (one label, or several: multi-label); a regression
    (an autoencoder too) when the targets have the shape of the model's output. A model with several outputs is ``"multi_output"``:
    each output is a classifier or a regression by the same rule (:func:`output_tasks`;
    ``task`` may also list one task per output). Models with several inputs take one
    input array per input.

    Raises:
        ValueError: an unknown task, inputs or targets that do not fit the model's inputs
            and outputs, or targets that fit neither task (or not the one asked for).
    """
    tasks = output_tasks(model, data, task)
    return tasks[0] if len(tasks) == 1 else "multi_output"


def _arrays(value, names: Sequence[str], field: str) -> Tuple[np.ndarray, ...]:
    """One data field as a tuple of arrays, one per name (a dict is matched by name)."""
    if len(names) <= 1:
        if isinstance(value, dict):
            if len(value) != 1:
                raise ValueError(f"`{field}` is a dict of {len(value)} arrays; the model has "
                                 f"one {'input' if field.startswith('x') else 'output'}.")
            value = next(iter(value.values()))
        return (np.asarray(value),)
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        unknown = [k for k in value if k not in names]
        if missing or unknown:
            raise ValueError(f"`{field}` names {sorted(map(str, value))}; the model's are "
                             f"{list(names)}." + (f" Missing: {missing}." if missing else "")
                             + (f" Unknown: {unknown}." if unknown else ""))
        return tuple(np.asarray(value[n]) for n in names)
    if isinstance(value, (list, tuple)) and len(value) == len(names):
        return tuple(np.asarray(v) for v in value)
    raise ValueError(f"`{field}` needs one array per model "
                     f"{'input' if field.startswith('x') else 'output'} {list(names)}: a list "
                     f"in that order or a dict keyed by name. Received: {type(value).__name__}"
                     + (f" of length {len(value)}" if isinstance(value, (list, tuple)) else "")
                     + ".")


def _target(a: np.ndarray, n: int) -> np.ndarray:
    """Integer labels as int64 (one per sample, flat; or one per position of a sequence
    output, as given), any other target as float32."""
    if _integral(a) and a.size == n:
        return a.reshape(-1).astype("int64")
    if _integral(a) and a.ndim >= 2 and np.issubdtype(a.dtype, np.integer):
        return a.astype("int64")  # the task check decides: labels per position, or not
    return a.astype("float32")


@dataclasses.dataclass(frozen=True)
class CompressionData:
    """Training inputs and targets, and held-out test inputs and targets.

    Each field is one array, or (models with several inputs or outputs) a tuple of
    arrays in the model's input or output order.
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any

    @classmethod
    def from_any(cls, data, *, inputs: Sequence[str] = (),
                 outputs: Sequence[str] = ()) -> "CompressionData":
        """From a CompressionData, a :class:`tfcompress.data.Dataset`, a 4-tuple
        ``(x_train, y_train, x_test, y_test)`` or ``((x, y), (x_test, y_test))``.

        With more than one name in ``inputs`` (``outputs``), each x (y) is a list of
        arrays in that order or a dict keyed by those names.
        """
        if isinstance(data, cls):
            return data
        if isinstance(data, data_lib.Dataset):
            fields = (data.x_train, data.y_train, data.x_test, data.y_test)
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(
                isinstance(p, (tuple, list)) and len(p) == 2 for p in data):
            fields = (*data[0], *data[1])
        elif isinstance(data, (tuple, list)) and len(data) == 4:
            fields = tuple(data)
        else:
            raise TypeError("`data` is (x_train, y_train, x_test, y_test), ((x, y), (x_test, "
                            "y_test)) or a tfcompress.data.Dataset. Received: "
                            f"{type(data).__name__}")
        names = dict(x_train=inputs, x_test=inputs, y_train=outputs, y_test=outputs)
        arrays = {}
        for field, value in zip(("x_train", "y_train", "x_test", "y_test"), fields):
            arrays[field] = _arrays(value, names[field], field)
            for i, a in enumerate(arrays[field]):
                where = field if len(arrays[field]) == 1 else f"{field}[{i}]"
                if a.dtype == object:
                    raise TypeError(f"`{where}` is an array of Python objects. A model with "
                                    "several inputs or outputs takes one array per input "
                                    "or output (a list, or a dict keyed by name).")
                if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
                    raise TypeError(f"`{where}` must hold numbers. Received dtype {a.dtype}.")
                if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
                    bad = int(np.sum(~np.isfinite(a)))
                    raise ValueError(f"`{where}` holds {bad} NaN or infinite value(s); "
                                     "training and calibration need finite data.")
        for split in ("train", "test"):
            lengths = [len(a) if a.ndim else 0
                       for a in arrays[f"x_{split}"] + arrays[f"y_{split}"]]
            if not lengths[0] or len(set(lengths)) != 1:
                raise ValueError(
                    "Inputs and labels must be non-empty and of equal length. Received: "
                    + "; ".join(f"{len(arrays['x_' + s][0])} {s} inputs, "
                                f"{len(arrays['y_' + s][0])} labels"
                                for s in ("train", "test")) + f" (lengths {lengths}).")
        ys = [_target(y, len(y)) for y in arrays["y_train"]]
        yts = [_target(y, len(y)) for y in arrays["y_test"]]
        for i, (y, yt) in enumerate(zip(ys, yts)):
            if y.dtype != yt.dtype:  # labels in one split only: both are float targets
                ys[i], yts[i] = y.astype("float32"), yt.astype("float32")

        def pack(items):
            items = tuple(items)
            return items if len(items) > 1 else items[0]

        return cls(pack(a.astype("float32") for a in arrays["x_train"]), pack(ys),
                   pack(a.astype("float32") for a in arrays["x_test"]), pack(yts))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for field in (self.x_train, self.y_train, self.x_test, self.y_test):
            for a in _parts(field):
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class CompressionResult:
    """What :func:`compress` made, and what each step bought.

    Attributes:
        model: the final Keras model (the QAT model when the recipe quantizes).
        tflite: the int8 ``.tflite`` bytes.
        float_tflite: the original model as a float ``.tflite`` (the reference).
        stages: one dict per completed stage: ``stage``, ``params``, ``accuracy``
            (Keras, on the test data), ``seconds``, and the stage's own numbers.
        validation: the :class:`~tfcompress.validation.ValidationReport`, or None.
        latency: ``{"float_ms", "int8_ms", "ratio"}`` from the benchmark step, or None.
        recipe: the recipe that ran.
        output_dir: where the files are, or None.
        task: ``"classification"``, ``"regression"`` or ``"multi_output"``.
        int8_mse: for a regression, the int8 file's test MSE ``{"xnnpack", "reference"}``.
        int8_outputs: for a model with several outputs, the int8 file's score per output
            on each kernel path: ``{"xnnpack": {name: {"accuracy"} or {"mse"}},
            "reference": ...}`` (each stage has the Keras model's under ``outputs``).
    """

    model: Any
    tflite: bytes
    float_tflite: bytes
    stages: Tuple[dict, ...]
    validation: Optional[validation.ValidationReport]
    latency: Optional[dict]
    recipe: Recipe
    output_dir: Optional[str]
    task: str = "classification"
    int8_mse: Optional[dict] = None
    int8_outputs: Optional[dict] = None

    @property
    def size_ratio(self) -> float:
        return len(self.tflite) / len(self.float_tflite)

    def summary(self) -> dict:
        """The headline numbers, JSON-ready."""
        out = {"recipe": self.recipe.to_dict(), "stages": list(self.stages),
               "float_tflite_bytes": len(self.float_tflite), "int8_tflite_bytes": len(self.tflite),
               "size_ratio": self.size_ratio, "latency": self.latency}
        out["task"] = self.task
        if self.int8_mse is not None:
            out["int8_mse_xnnpack"] = self.int8_mse["xnnpack"]
            out["int8_mse_reference"] = self.int8_mse["reference"]
        if self.int8_outputs is not None:
            out["int8_outputs"] = self.int8_outputs
        if self.validation is not None:
            out["int8_accuracy_xnnpack"] = self.validation.xnnpack.accuracy
            out["int8_accuracy_reference"] = self.validation.reference.accuracy
            out["validation_passed"] = self.validation.passed
        return out

    def table(self) -> str:
        """Markdown: one row per stage, then the int8 file."""

        regression = self.task == "regression"

        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"

        def per_output(scores):
            return "; ".join(f"{name} {_score_text(v)}" for name, v in scores.items())

        def score(stage):
            if stage.get("outputs") is not None:
                return per_output(stage["outputs"])
            return (f"{stage['mse']:.4g}" if stage.get("mse") is not None else "-") \
                if regression else pct(stage.get("accuracy"))

        rows = [(s["stage"], s.get("params", "-"), score(s), "-", "-") for s in self.stages]
        lat = self.latency or {}
        rows.append(("float .tflite (original)", "-", score(self.stages[0]),
                     len(self.float_tflite), f"{lat['float_ms']:.4f}" if lat else "-"))
        if regression and self.int8_mse is not None:
            acc = (f"{self.int8_mse['xnnpack']:.4g} XNNPACK / "
                   f"{self.int8_mse['reference']:.4g} reference")
        elif self.int8_outputs is not None:
            acc = (f"XNNPACK: {per_output(self.int8_outputs['xnnpack'])} / reference: "
                   f"{per_output(self.int8_outputs['reference'])}")
        elif self.validation is not None and not regression:
            acc = (f"{pct(self.validation.xnnpack.accuracy)} XNNPACK / "
                   f"{pct(self.validation.reference.accuracy)} reference")
        else:
            acc = "-"
        rows.append(("int8 .tflite", "-", acc,
                     f"{len(self.tflite)} ({self.size_ratio:.3f}x)",
                     f"{lat['int8_ms']:.4f} ({lat['ratio']:.3f}x)" if lat else "-"))
        metric = {"regression": "test MSE", "multi_output": "per output (top-1 or MSE)"}
        return markdown_table(("stage", "params", metric.get(self.task, "top-1"),
                               "size B", "XNNPACK p50 ms"), rows)


def _softmax_layer(layer) -> bool:
    return isinstance(layer, keras.layers.Softmax) or getattr(
        layer, "activation", None) is keras.activations.softmax


def _sigmoid_output(tensor) -> bool:
    """Whether a model output is a sigmoid's (a Dense / Conv / Activation with
    ``activation="sigmoid"``)."""
    layer = _compat.producer(tensor)
    return layer is not None and layer_kinds.activation_name(layer) == "sigmoid"


def _from_logits(model) -> bool:

    return not _softmax_layer(model.layers[-1])


def _outputs_from_logits(model, tasks: Sequence[str] = ()) -> Tuple[bool, ...]:
    """Per output: whether it is logits (not the output of a softmax, or of a sigmoid
    for a ``"binary"`` output)."""
    outputs = list(getattr(model, "outputs", None) or [])
    binary = [t == "binary" for t in tasks] + [False] * len(outputs)
    if len(outputs) <= 1 and not binary[0]:
        return (_from_logits(model),)
    return tuple(not _sigmoid_output(t) if b else not _softmax_layer(_compat.producer(t))
                 for t, b in zip(outputs, binary))


def _count_params(model) -> int:
    """Trainable parameters: kernels and biases, not quantizer ranges or masks."""
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def top1_accuracy(model, x, y, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of a Keras classifier on ``(x, y)``."""
    pred = np.argmax(model.predict(x, batch_size=batch_size, verbose=0), -1)
    return float(np.mean(pred.reshape(-1) == np.asarray(y).reshape(-1)))  # per position too


def _loss(recipe: Recipe, from_logits: bool, task: str = "classification"):
    if task == "binary":
        # Distillation blends the targets into soft 0..1 labels (see _Run.target).
        return keras.losses.BinaryCrossentropy(from_logits=from_logits)
    if task == "regression":
        # Distillation blends the targets: alpha*|p-y|^2 + (1-alpha)*|p-t|^2 equals
        # |p - (alpha*y + (1-alpha)*t)|^2 up to a constant (see _Run.target).
        return keras.losses.MeanSquaredError()
    if recipe.distill is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    return LabelAndTeacherLoss(temperature=recipe.distill.temperature,
                               alpha=recipe.distill.alpha, from_logits=from_logits)


def _feed(x):
    """One data field as Keras takes it: an array, or a list for several inputs."""
    return list(x) if isinstance(x, tuple) else x


def _output_score(task: str, pred: np.ndarray, y: np.ndarray, from_logits: bool = False) -> dict:
    """``{"accuracy"}`` of a classifier output (of each sigmoid, thresholded at 0.5, or 0
    for logits, for a binary one), ``{"mse"}`` of a regression output."""
    if task == "binary":
        pred = np.asarray(pred)
        hit = (pred > (0.0 if from_logits else 0.5)) == (y.reshape(pred.shape) > 0.5)
        return {"accuracy": float(np.mean(hit))}
    if task == "classification":
        return {"accuracy": float(np.mean(np.argmax(pred, -1).reshape(-1) == y.reshape(-1)))}
    return {"mse": float(np.mean((pred - y.reshape(pred.shape)) ** 2))}


def _as_array(pred) -> np.ndarray:
    """The one output of a single-output model's ``predict`` (a dict or list of one)."""
    if isinstance(pred, dict):
        pred = keras.tree.flatten(pred)
    return np.asarray(pred[0] if isinstance(pred, (list, tuple)) else pred)


def _score_text(score: Optional[dict]) -> str:
    if not score:
        return "-"
    if score.get("accuracy") is not None:
        return f"{100 * score['accuracy']:.2f}%"
    return f"MSE {score['mse']:.4g}" if score.get("mse") is not None else "-"


class _Run:
    """The state of one compress() call: data, options, and the work directory."""

    def __init__(self, model, data, recipe, *, output_dir, batch_size, learning_rate, callbacks,
                 strategy, seed, verbose, from_logits, fit_kwargs, augment,
                 tasks=("classification",)):
        self.original, self.data, self.recipe = model, data, recipe
        self.tasks = tuple(tasks)
        self.task = self.tasks[0] if len(self.tasks) == 1 else "multi_output"
        self.output_names = output_names(model) if len(self.tasks) > 1 else []
        self.batch_size, self.learning_rate, self.callbacks = batch_size, learning_rate, callbacks
        self.strategy, self.seed, self.verbose, self.fit_kwargs = strategy, seed, verbose, fit_kwargs
        if from_logits is None:
            self.from_logits = _outputs_from_logits(model, self.tasks)
        else:
            self.from_logits = (bool(from_logits),) * len(self.tasks)
        self.work = Path(str(output_dir) + ".partial") if output_dir is not None else None
        self.augment = augment
        self.step_seed = seed
        self._target = None

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def loss(self):
        """The training loss: one, or a list with one per output."""
        losses = [_loss(self.recipe, logits, task)
                  for task, logits in zip(self.tasks, self.from_logits)]
        return losses[0] if len(losses) == 1 else losses

    def target(self, x=None):
        """Labels, or labels packed with the original model's outputs on ``x`` (one
        array, or a list with one per output)."""
        if self.recipe.distill is None:
            return _feed(self.data.y_train)
        if x is None and self._target is not None:
            return self._target
        teacher = self.original.predict(_feed(self.data.x_train if x is None else x),
                                        batch_size=256, verbose=0)
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        if isinstance(teacher, dict):
            teachers = [teacher[name] for name in output_names(self.original)]
        targets = []
        for task, t, y, logits in zip(self.tasks, teachers, _parts(self.data.y_train),
                                      self.from_logits):
            t = np.asarray(t, "float32")
            if task == "binary":  # soft labels: the teacher's probabilities blended in
                alpha = self.recipe.distill.alpha
                p = 1.0 / (1.0 + np.exp(-t)) if logits else t
                targets.append(alpha * y.reshape(t.shape).astype("float32") + (1 - alpha) * p)
            elif task == "regression":
                alpha = self.recipe.distill.alpha
                targets.append(alpha * y.reshape(t.shape).astype("float32") + (1 - alpha) * t)
            else:
                targets.append(np.concatenate([y[..., None].astype("float32"), t], -1))
        target = targets[0] if len(targets) == 1 else targets
        if x is None:
            self._target = target
        return target

    def fit(self, model, epochs: int, extra_callbacks=(), learning_rate=None) -> float:
        """Compiles and trains ``model``; returns the median step time in ms."""
        if epochs == 0:
            return float("nan")
        times: List[float] = []

        class _StepTimer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - self.t)

        with self.scope():
            model.compile(keras.optimizers.Adam(learning_rate or self.learning_rate),
                          loss=self.loss())
        # verbose=1: one line for the step (epoch, loss, time; redrawn on a terminal),
        # verbose=2: Keras' progress bar per epoch as well.
        line = StatusLine(sys.stdout) if self.verbose == 1 else None
        start, shown = time.perf_counter(), {"text": ""}

        class _EpochLine(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                loss = (logs or {}).get("loss")
                shown["text"] = (f"  epoch {epoch + 1}/{epochs}"
                                 + ("" if loss is None else f", loss {loss:.4f}")
                                 + f", {time.perf_counter() - start:.1f}s")
                line.show(shown["text"], force=True)

        callbacks = list(extra_callbacks) + list(self.callbacks) + [_StepTimer()] + (
            [_EpochLine()] if line is not None else [])
        keras_verbose = 1 if self.verbose >= 2 else 0
        if self.augment is None:
            model.fit(_feed(self.data.x_train), self.target(), batch_size=self.batch_size,
                      epochs=epochs, verbose=keras_verbose, callbacks=callbacks, **self.fit_kwargs)
        else:
            # New augmented images every epoch; the original model answers on the same images.
            rng = np.random.default_rng(self.step_seed)
            for epoch in range(epochs):
                xa = self.augment(self.data.x_train, rng).astype("float32")
                model.fit(xa, self.target(xa), batch_size=self.batch_size, initial_epoch=epoch,
                          epochs=epoch + 1, verbose=keras_verbose, callbacks=callbacks,
                          **self.fit_kwargs)
        if line is not None and shown["text"]:
            line.done(shown["text"])
        return 1e3 * float(np.median(times[5:] or times))

    def accuracy(self, model) -> Optional[float]:
        """Top-1 accuracy on the test data (per sigmoid for a binary output), else None."""
        if self.task == "binary":
            return self.scores(model)["accuracy"]
        if self.task != "classification":
            return None
        return top1_accuracy(model, _feed(self.data.x_test), self.data.y_test)

    def output_scores(self, outputs: Sequence[np.ndarray]) -> List[dict]:
        """Per output, in the model's output order: ``{"accuracy"}`` or ``{"mse"}``."""
        return [_output_score(task, np.asarray(pred), y, logits) for task, pred, y, logits
                in zip(self.tasks, outputs, _parts(self.data.y_test), self.from_logits)]

    def scores(self, model) -> dict:
        """The stage's quality numbers: ``accuracy`` for a classifier, ``mse`` for a
        regression, ``outputs`` (name -> either) for a model with several outputs."""
        if self.task == "classification":
            return {"accuracy": self.accuracy(model)}
        pred = model.predict(_feed(self.data.x_test), batch_size=256, verbose=0)
        if self.task == "regression":
            return {"accuracy": None, **_output_score("regression", pred, self.data.y_test)}
        if self.task == "binary":
            return {"mse": None, **_output_score("binary", _as_array(pred), self.data.y_test,
                                                 self.from_logits[0])}
        if isinstance(pred, dict):  # keyed as the model's outputs were written; their
            # order is model.outputs' (flattened, keys sorted), while a QAT model's
            # output_names are its FakeQuant layers' (quant_out_<name>)
            pred = list(keras.tree.flatten(pred))
        return {"accuracy": None, "mse": None,
                "outputs": dict(zip(self.output_names, self.output_scores(pred)))}


def _steps_per_epoch(run: _Run) -> int:
    return int(np.ceil(_num_samples(run.data.x_train) / run.batch_size))


RECONSTRUCTION_SAMPLES = data_lib.CALIBRATION_SAMPLES  # images for low-rank / channel refit


def _step_lowrank(run: _Run, model):

    cfg = run.recipe.lowrank
    with run.scope():
        factored = lowrank.factorize(model, energy=cfg.energy, ratio=cfg.ratio, layers=cfg.layers)
        if cfg.reconstruct and factored.factor_plans:
            lowrank.reconstruct(factored, model,
                                _feed(_head(run.data.x_train, RECONSTRUCTION_SAMPLES)),
                                seed=run.step_seed)
    step_ms = run.fit(factored, cfg.epochs, learning_rate=cfg.learning_rate)
    return factored, {"factored_layers": len(factored.factor_plans), "step_ms": step_ms}


def _own_copy(run: _Run, model):
    """``model``, or a copy of it when it is the original: pruning wraps (and masks) the
    layers it is given, as tfmot's does, and the original stays the unchanged teacher."""
    if model is not run.original:
        return model
    with run.scope():
        copy = _graph.clone_model(model, keep_operations=True)
    copy.set_weights(model.get_weights())
    return copy


def _step_prune(run: _Run, model):

    cfg = run.recipe.prune
    model = _own_copy(run, model)
    total = max(1, _steps_per_epoch(run) * cfg.epochs)
    end = max(1, int(total * cfg.ramp))
    freq = max(1, end // 10)
    before = _count_params(model)
    with run.scope():
        if cfg.kind == "channels" and cfg.reconstruct:
            # All at once, then refit what reads the removed channels; the constant
            # schedule keeps the same channels masked while fine-tuning.
            wrapped = channel_pruning.prune_channels(
                model, pruning_schedule=pruning.ConstantSparsity(cfg.sparsity, 0, frequency=freq),
                criterion=cfg.criterion, layers=cfg.layers)
            channel_pruning.ChannelController(wrapped).update(cfg.sparsity)
            channel_pruning.reconstruct(wrapped, model,
                                        _feed(_head(run.data.x_train, RECONSTRUCTION_SAMPLES)),
                                        seed=run.step_seed)
        elif cfg.kind == "channels":
            schedule = pruning.PolynomialDecay(0.0, cfg.sparsity, begin_step=0, end_step=end,
                                               frequency=freq)
            wrapped = channel_pruning.prune_channels(model, pruning_schedule=schedule,
                                                     criterion=cfg.criterion, layers=cfg.layers)
        elif cfg.kind == "2:4":
            wrapped = pruning.prune_low_magnitude(
                model, pruning_schedule=pruning.ConstantSparsity(0.5, 0, frequency=freq),
                sparsity_m_by_n=(2, 4), layers=cfg.layers)
        else:
            schedule = pruning.PolynomialDecay(0.0, cfg.sparsity, begin_step=0, end_step=end,
                                               frequency=freq)
            wrapped = pruning.prune_low_magnitude(model, pruning_schedule=schedule,
                                                  layers=cfg.layers)
    step_ms = run.fit(wrapped, cfg.epochs, [pruning.UpdatePruningStep()],
                      learning_rate=cfg.learning_rate)
    with run.scope():
        model = pruning.strip_pruning(wrapped)
    return model, {"kind": cfg.kind, "sparsity": pruning.sparsity_report(model).total_sparsity,
                   "params_before": before, "step_ms": step_ms}


def _step_quantize(run: _Run, model):

    cfg = run.recipe.quantize
    with run.scope():
        qmodel = post_training.post_training_quantize(
            model, _feed(run.data.x_train), estimator=cfg.estimator,
            num_samples=cfg.calibration_samples, progress=False)
    step_ms = float("nan")
    if cfg.method == "qat":
        step_ms = run.fit(qmodel, cfg.epochs, [quantization.FreezeBatchNormStatistics(0)],
                          learning_rate=cfg.learning_rate)
    return qmodel, {"method": cfg.method, "step_ms": step_ms}


_TRAINING_STEPS = {"lowrank": _step_lowrank, "prune": _step_prune, "quantize": _step_quantize}


def _fingerprint(model, data: CompressionData, recipe: Recipe, seed: int, batch_size: int,
                 learning_rate: float, augment) -> str:
    h = hashlib.sha256()
    h.update(recipe.to_json().encode())
    augment_name = getattr(augment, "__qualname__", repr(augment))
    h.update(f"{seed} {batch_size} {learning_rate} {augment_name}".encode())
    h.update(data.fingerprint().encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def _load_state(work: Path, fingerprint: str, resume: bool) -> dict:
    state_path = work / STATE_FILE
    if work.exists() and state_path.exists() and resume:
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{str(work)!r} holds an interrupted run of a different model, data or recipe "
                f"(fingerprint {state.get('fingerprint')} != {fingerprint}). Pass resume=False "
                "(CLI: --noresume) to discard it, or choose another output_dir.")
        return state
    if work.exists():
        shutil.rmtree(work)
    (work / "steps").mkdir(parents=True)
    state = {"fingerprint": fingerprint, "completed": []}
    _io.atomic_write_bytes(state_path, json.dumps(state, indent=2).encode(), overwrite=True)
    return state


def _augmentation(augment):
    if isinstance(augment, str):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {augment!r}. Allowed: {sorted(AUGMENTATIONS)} "
                             "or a function (x, rng) -> x.")
        return AUGMENTATIONS[augment]
    if augment is not None and not callable(augment):
        raise TypeError(f"`augment` is a name or a function. Received: {type(augment).__name__}")
    return augment


def _checked_fit_kwargs(fit_kwargs) -> dict:
    fit_kwargs = dict(fit_kwargs or {})
    clash = {"epochs", "x", "y", "batch_size", "callbacks"} & set(fit_kwargs)
    if clash:
        raise ValueError(f"fit_kwargs cannot set {sorted(clash)}: epochs come from the recipe, "
                         "data from `data`, batch_size and callbacks are arguments of compress().")
    return fit_kwargs


def _train(run: _Run, state: Optional[dict]):
    """Runs (or resumes) the recipe's training steps; returns the model and the stages."""
    model, verbose, seed = run.original, run.verbose, run.seed
    stages = [dict({"stage": "original", "params": _count_params(model), "seconds": 0.0},
                   **run.scores(model))]
    current = model
    training = [s for s in run.recipe.steps() if s in _TRAINING_STEPS]
    done = {c["step"]: c for c in (state or {}).get("completed", [])}
    for index, step in enumerate(training):
        if step in done:
            current = keras.models.load_model(run.work / done[step]["checkpoint"], compile=False)
            stages.append(done[step]["metrics"])
            if verbose:
                print(f"[{index + 1}/{len(training)}] {step}: resumed from "
                      f"{done[step]['checkpoint']}")
            continue
        if verbose:
            print(f"[{index + 1}/{len(training)}] {step}")
        keras.utils.set_random_seed(seed + index)
        run.step_seed = seed + index
        t0 = time.perf_counter()
        current, numbers = _TRAINING_STEPS[step](run, current)
        metrics = dict({"stage": step, "params": _count_params(current),
                        "seconds": time.perf_counter() - t0}, **run.scores(current), **numbers)
        stages.append(metrics)
        if run.work is not None:
            checkpoint = f"steps/{index + 1:02d}_{step}.keras"
            current.save(run.work / checkpoint)
            state["completed"].append({"step": step, "checkpoint": checkpoint, "metrics": metrics})
            _io.atomic_write_bytes(run.work / STATE_FILE,
                                   json.dumps(state, indent=2, default=float).encode(),
                                   overwrite=True)
    return current, stages


def _file_inputs(run: _Run, x):
    """Data for a ``.tflite``: one array, or a dict keyed by the Keras input names (the
    names of the file's signature)."""
    if not isinstance(x, tuple):
        return x
    return dict(zip(input_names(run.original), x))


def _file_outputs(model: inspector.VerifiedModel, x, *, xnnpack: bool) -> List[np.ndarray]:
    """The file's outputs on ``x``, in the Keras model's output order."""
    interpreter = runtime.make_interpreter(model, xnnpack=xnnpack)
    outputs = runtime.predict(interpreter, x)
    return [outputs[i] for i in runtime.output_order(interpreter)]


def _export_and_check(run: _Run, current, original_accuracy: float):
    """Converts, validates and times; each file is verified once and passed on."""
    recipe, data = run.recipe, run.data
    calib = _file_inputs(run, _head(data.x_train, data_lib.CALIBRATION_SAMPLES))
    x_test = _file_inputs(run, data.x_test)
    progress = bool(run.verbose)
    float_tflite = convert(run.original, mode="float32", progress=False).verified
    sparse = (recipe.prune is not None and recipe.prune.kind != "channels"
              and recipe.prune.sparse_weights)
    int8 = convert(current, representative_data=None if recipe.quantize is not None else calib,
                   progress=progress, sparse=sparse).verified
    report = None
    if recipe.validate is not None:
        drop = recipe.validate.max_accuracy_drop
        classifier = run.task == "classification"
        thresholds = validation.Thresholds(
            min_accuracy=None if drop is None or not classifier
            else max(0.0, original_accuracy - drop),
            max_error_steps_p99=None if classifier else validation.DEFAULT_MAX_ERROR_STEPS_P99,
            require_fully_integer=recipe.validate.require_fully_integer)
        report = validation.validate(int8, x_test, y=data.y_test if classifier else None,
                                     reference=float_tflite, thresholds=thresholds,
                                     progress=progress)
    latency = None
    if recipe.benchmark is not None:
        stats = benchmark.measure_latency({"float": float_tflite, "int8": int8},
                                          runs=recipe.benchmark.runs,
                                          num_threads=recipe.benchmark.num_threads)
        latency = {"float_ms": stats["float"].p50_ms, "int8_ms": stats["int8"].p50_ms,
                   "ratio": benchmark.paired_ratio(stats["int8"], stats["float"]),
                   "runs": recipe.benchmark.runs, "num_threads": recipe.benchmark.num_threads}
    int8_mse = int8_outputs = None
    if run.task == "regression":
        int8_mse = {}
        for name, xnnpack in (("xnnpack", True), ("reference", False)):
            out = _file_outputs(int8, x_test, xnnpack=xnnpack)[0]
            int8_mse[name] = float(np.mean((out - data.y_test.reshape(out.shape)) ** 2))
    elif run.task == "binary":
        name = output_names(run.original)[0]
        int8_outputs = {path: {name: _output_score("binary", _file_outputs(
            int8, x_test, xnnpack=xnnpack)[0], data.y_test, run.from_logits[0])}
            for path, xnnpack in (("xnnpack", True), ("reference", False))}
    elif run.task == "multi_output":
        int8_outputs = {}
        for name, xnnpack in (("xnnpack", True), ("reference", False)):
            scores = run.output_scores(_file_outputs(int8, x_test, xnnpack=xnnpack))
            int8_outputs[name] = dict(zip(run.output_names, scores))
    return int8, float_tflite, report, latency, int8_mse, int8_outputs


def compress(
    model,
    data,
    *,
    recipe=None,
    output_dir=None,
    overwrite: bool = False,
    resume: bool = True,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    callbacks: Sequence = (),
    strategy=None,
    from_logits: Optional[bool] = None,
    seed: int = 0,
    verbose: int = 1,
    fit_kwargs: Optional[Mapping[str, Any]] = None,
    augment=None,
    task: str = "auto",
) -> CompressionResult:
    """Compresses a trained Keras model to a checked, fully-int8 ``.tflite``.

    Args:
        model: a trained Sequential or Functional Keras model (not changed): a
            classifier, a regression (an autoencoder too), or a model with several
            inputs and outputs, each output a classifier or a regression.
        data: ``(x_train, y_train, x_test, y_test)`` (or see
            :meth:`CompressionData.from_any`): training steps fit on the first pair;
            every score is measured on the second. With several inputs (outputs), each
            x (y) is a list of arrays in the model's order or a dict keyed by name.
        recipe: a :class:`~tfcompress.recipe.Recipe`, a dict, or a JSON/YAML path.
            Default: calibrate + 1 epoch of QAT, convert, validate, benchmark.
        output_dir: where to write the results; None keeps everything in memory (and
            cannot resume).
        overwrite: replace an existing ``output_dir`` (otherwise FileExistsError).
        resume: continue an interrupted run found in ``<output_dir>.partial``.
        batch_size, learning_rate, callbacks: passed to every training step's
            ``compile``/``fit`` (epochs come from the recipe).
        strategy: a ``tf.distribute`` strategy whose scope builds and compiles the
            training models.
        from_logits: whether the model outputs logits (default: guessed from its last
            layer: a softmax, or a sigmoid for a binary output, means probabilities).
        seed: the random seed; step ``i`` runs with ``seed + i``.
        verbose: 0 prints nothing; 1 a line per training step and its epochs (epoch,
            loss, seconds; redrawn in place on a terminal, written once in logs); 2 also
            Keras' progress bar for every epoch.
        fit_kwargs: other ``fit`` arguments (not ``epochs``, ``x``, ``y``).
        augment: ``"flip_and_shift"`` or a function ``(x, numpy Generator) -> x`` that
            makes new training images every epoch (with distillation, the original
            model labels them). Seeded per step, so resumed runs repeat it exactly.
        task: ``"classification"`` (integer labels, or one-hot rows that
            :func:`labels_from_one_hot` turns into them; top-1 accuracy, cross-entropy),
            ``"binary"`` (0/1 targets of the output's shape for a sigmoid output, one
            or several labels per sample: binary cross-entropy, accuracy per sigmoid
            thresholded at 0.5; validated by output error, not accuracy),
            ``"regression"`` (targets of the output's shape, an autoencoder too: mean
            squared error), or ``"auto"`` to tell from the targets and the model
            (:func:`detect_task`); for several outputs, ``"auto"`` / ``"multi_output"``
            or a list with one task per output (each output gets its own loss and
            score; distillation packs or blends each output's targets with the original
            model's). The data is checked against the model before training.

    Returns:
        A :class:`CompressionResult`.
    """
    recipe = as_recipe(recipe)
    _check_run_arguments(batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    data = CompressionData.from_any(data, inputs=input_names(model), outputs=output_names(model))
    augment = _augmentation(augment)
    fit_kwargs = _checked_fit_kwargs(fit_kwargs)
    if output_dir is not None:
        _check_output_dir(Path(output_dir), overwrite=overwrite)

    _graph.functional(model, purpose="compress")  # a clear error for subclassed models
    model = _fixed_input_sizes(model, data)
    data = labels_from_one_hot(model, data, task)
    tasks = output_tasks(model, data, task)
    if augment is not None and (tasks != ("classification",) or isinstance(data.x_train, tuple)):
        raise ValueError("`augment` changes the images of a single-input classifier (not its "
                         f"targets); this model has {len(_parts(data.x_train))} input(s) and "
                         f"output tasks {list(tasks)}. Pass augment=None.")
    run = _Run(model, data, recipe, output_dir=output_dir, batch_size=batch_size,
               learning_rate=learning_rate, callbacks=callbacks, strategy=strategy, seed=seed,
               verbose=verbose, from_logits=from_logits, fit_kwargs=fit_kwargs, augment=augment,
               tasks=tasks)
    if run.work is None:
        return _run_steps(run, None)[0]
    final = Path(output_dir)
    # One run at a time per output: a second one would share (and break) the checkpoints.
    with _io.exclusive_lock(Path(str(run.work) + ".lock"), what=f"{str(run.work)!r}"):
        _check_output_dir(final, overwrite=overwrite)  # again: another run may have finished
        fp = _fingerprint(model, data, recipe, seed, batch_size, learning_rate, augment)
        state = _load_state(run.work, fp, resume)
        try:
            result, int8 = _run_steps(run, state)
            # The results go to a folder of their own inside the work directory, which
            # replaces nothing until the end: a kill anywhere before the rename resumes
            # from the checkpoints, which are deleted only after it.
            staged = run.work / "final"
            _write_outputs(staged, result, int8)
            _publish(staged, final, overwrite=overwrite)
        except BaseException as e:
            _explain_failure(e, run.work, state)
            raise
        shutil.rmtree(run.work, ignore_errors=True)
    return dataclasses.replace(result, output_dir=str(final))


def _run_steps(run: "_Run", state: Optional[dict]):
    """Training steps, then export and checks: (CompressionResult, verified int8 file)."""
    current, stages = _train(run, state)
    int8, float_tflite, report, latency, int8_mse, int8_outputs = _export_and_check(
        run, current, stages[0]["accuracy"])
    return CompressionResult(current, int8.bytes, float_tflite.bytes, tuple(stages), report,
                             latency, run.recipe, None, run.task, int8_mse, int8_outputs), int8


def _check_run_arguments(*, batch_size, learning_rate, seed) -> None:
    """compress()'s numeric arguments, checked before any work."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: {batch_size!r}")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating)) \
            or not np.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError("`learning_rate` must be a positive finite number. Received: "
                         f"learning_rate={learning_rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an integer. Received: {seed!r}")


def _check_output_dir(final: Path, *, overwrite: bool) -> None:
    if final.exists() and not overwrite:
        raise FileExistsError(f"Refusing to overwrite the existing output directory "
                              f"{str(final)!r}. Pass overwrite=True (CLI: --overwrite).")
    for parent in final.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"The output directory {str(final)!r} would be inside {str(parent)!r}, "
                    "which is a file, not a folder. Choose another output_dir.")
            break


def _publish(staged: Path, final: Path, *, overwrite: bool) -> None:
    """Moves the finished results to ``final``; replaces it only with ``overwrite``."""
    aside = None
    if overwrite and final.exists():
        aside = final.with_name(f".{final.name}.replaced-{os.getpid()}")
        os.rename(final, aside)
    try:
        _io.rename_no_replace(staged, final)
    except FileExistsError:
        raise FileExistsError(
            f"Refusing to overwrite {str(final)!r}: it was created while this run worked. The "
            f"results are in {str(staged)!r}; run again with overwrite=True (CLI: --overwrite) "
            "to replace it (the run resumes from its checkpoints).") from None
    if aside is not None:
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)


def _explain_failure(e: BaseException, work: Path, state: Optional[dict]) -> None:
    """Says on ``e`` what is left of the run and how to resume or clean up."""
    done = [c["step"] for c in (state or {}).get("completed", [])]
    if not done:  # nothing worth resuming: leave nothing behind
        shutil.rmtree(work, ignore_errors=True)
        note = f"No training step had completed, so {str(work)!r} was removed."
    else:
        note = (f"The completed step(s) {', '.join(done)} are checkpointed in {str(work)!r}: "
                "run the same command again to resume after them, or pass resume=False "
                f"(CLI: --noresume) to start over, or delete {str(work)!r}.")
    if hasattr(e, "add_note"):
        e.add_note(note)


def _write_outputs(work: Path, result: CompressionResult, int8: inspector.VerifiedModel) -> None:
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted export left
    work.mkdir(parents=True)
    _io.atomic_write_bytes(work / "model_int8.tflite", result.tflite)
    _io.atomic_write_bytes(work / "original_float.tflite", result.float_tflite)
    result.model.save(work / "model.keras")
    if result.validation is not None:
        result.validation.save(work / "validation.json")
    _io.atomic_write_bytes(work / "recipe.json", result.recipe.to_json().encode())
    _io.atomic_write_bytes(work / "result.json",
                           json.dumps(result.summary(), indent=2, default=float).encode())
    write_report(work, result, verified=int8)


def _user_layer_names(model) -> List[str]:
    """The Keras layer names of ``model``, a wrapper's wrapped layer's name included."""
    names = []
    for layer in getattr(model, "layers", ()):
        inner = getattr(layer, "layer", None)
        names.append(layer.name)
        if isinstance(inner, keras.layers.Layer):
            names.append(inner.name)
    return names


def _weights_per_layer(model: inspector.VerifiedModel, names) -> dict:
    out: dict = {}
    for t in model.report.weight_tensors:
        layer = report_lib.user_layer_name(t.name, names)
        out[layer] = out.get(layer, 0) + int(np.prod(t.shape))
    return out


def write_report(directory, result: "CompressionResult", *,
                 verified: Optional[inspector.VerifiedModel] = None,
                 overwrite: bool = False) -> Path:
    """Writes ``report.md``, ``report.html`` and their plots for a :class:`CompressionResult`.

    ``report.html`` is self-contained (the plots are embedded), ``report.md`` links the
    PNG files beside it. Plots: accuracy (or test error) after each stage and of the
    int8 file, on an axis scaled to the numbers; parameters after each stage; weights
    per layer in the float and int8 files; the share of zero weights per layer when
    pruning left any; the per-layer quantization error (in output quantization steps)
    when validation measured it. Layers carry their Keras names.

    Args:
        directory: an existing folder.
        result: what :func:`compress` returned.
        verified: the int8 file of ``result`` already verified (not parsed again).
        overwrite: replace the report and plots already in ``directory``.

    Returns:
        The path of ``report.md``.
    """
    directory = Path(directory)
    names = _user_layer_names(result.model)
    int8 = verified or inspector.load(result.tflite)
    doc = report_lib.Document(f"Compression report: {result.recipe.name}")
    regression = result.task == "regression"
    v = result.validation
    headline = (f"The int8 file is {len(result.tflite) / 1000:.1f} KB, "
                f"{result.size_ratio:.3f}x the float file ({len(result.float_tflite) / 1000:.1f} KB).")
    if v is not None and not regression and v.xnnpack.accuracy is not None:
        headline += (f" Top-1 on the test data: {100 * v.xnnpack.accuracy:.2f}% (XNNPACK), "
                     f"against {100 * result.stages[0]['accuracy']:.2f}% for the original model.")
    if v is not None:
        headline += " Validation " + ("passed." if v.passed else
                                      "FAILED: " + "; ".join(v.failures) + ".")
    doc.paragraph(headline)
    doc.heading("What each step bought")
    doc.markdown_table(result.table())

    key = "mse" if regression else "accuracy"
    stages = [s for s in result.stages if s.get(key) is not None]
    labels = [s["stage"] for s in stages]
    values = [s[key] if regression else 100 * s[key] for s in stages]
    if regression and result.int8_mse is not None:
        labels.append("int8 file (XNNPACK)")
        values.append(result.int8_mse["xnnpack"])
    elif v is not None and v.xnnpack.accuracy is not None:
        labels.append("int8 file (XNNPACK)")
        values.append(100 * v.xnnpack.accuracy)
    label = "test MSE" if regression else "top-1 accuracy on the test data (%)"
    if values:  # a model with several outputs has its scores per output in the table
        report_lib.dot_chart(directory / "stages.png", labels, values, xlabel=label,
                             title="Test error after each stage" if regression
                             else "Accuracy after each stage (axis zoomed to the values)",
                             fmt="{:.4g}" if regression else "{:.2f}", overwrite=overwrite)
        doc.image(directory / "stages.png",
                  "test MSE after each stage" if regression else "accuracy after each stage")
    report_lib.bar_chart(directory / "params.png", [s["stage"] for s in result.stages],
                         {"parameters": [float(s["params"]) for s in result.stages]},
                         xlabel="trainable parameters after the stage",
                         title="Model size after each stage", fmt="{:,.0f}",
                         overwrite=overwrite)
    doc.image(directory / "params.png", "parameters after each stage")

    per_layer_int8 = _weights_per_layer(int8, names)
    per_layer_float = _weights_per_layer(inspector.load(result.float_tflite), names)
    layers = list(per_layer_float) + [n for n in per_layer_int8 if n not in per_layer_float]
    if layers:
        doc.heading("Weights per layer")
        report_lib.bar_chart(
            directory / "weights.png", layers,
            {"float file": [float(per_layer_float.get(n, np.nan)) for n in layers],
             "int8 file": [float(per_layer_int8.get(n, np.nan)) for n in layers]},
            xlabel="weights per layer (elements, biases included)",
            title="Weights per layer: original float file and int8 file", fmt="{:,.0f}",
            overwrite=overwrite)
        doc.image(directory / "weights.png", "weights per layer")
    zeros = {}
    for t in int8.report.weight_tensors:
        if len(t.shape) >= 2:  # kernels; biases and scales are never pruned
            zeros[report_lib.user_layer_name(t.name, names)] = 100 * (t.zero_fraction or 0.0)
    if zeros and max(zeros.values()) >= 5.0:
        doc.heading("Per-layer sparsity")
        report_lib.bar_chart(directory / "sparsity.png", list(zeros),
                             {"zero weights (%)": list(zeros.values())},
                             xlabel="share of kernel weights that are exactly zero in the int8 file (%)",
                             title="Per-layer sparsity", overwrite=overwrite)
        doc.image(directory / "sparsity.png", "per-layer sparsity")
    elif zeros:
        doc.paragraph(f"No layer's kernel has 5% or more zero weights (at most "
                      f"{max(zeros.values()):.1f}%), so no sparsity plot: "
                      + ("channel pruning removes whole channels instead of zeroing weights."
                         if result.recipe.prune is not None and result.recipe.prune.kind == "channels"
                         else "the model was not pruned to zeros."))
    if v is not None:
        doc.heading("Validation (int8 file, XNNPACK and reference kernels)")
        doc.code(v.summary())
        if v.per_layer:
            report_lib.bar_chart(
                directory / "quantization_error.png",
                [report_lib.user_layer_name(e.tensor, names) for e in v.per_layer],
                {"RMSE / scale": [e.rmse_over_scale for e in v.per_layer]},
                xlabel="RMS error against the float model, in quantization steps",
                title="Per-layer quantization error", overwrite=overwrite)
            doc.image(directory / "quantization_error.png", "per-layer quantization error")
    if result.latency is not None:
        doc.heading("Latency (host, XNNPACK, interleaved)")
        doc.paragraph(report_lib.latency_text(result.latency) + " Per-op times on a phone: "
                      "examples/android_benchmark with `--enable_op_profiling=true`.")
    doc.heading("Recipe")
    doc.code(json.dumps(result.recipe.to_dict(), indent=2), "json")
    return doc.save(directory, overwrite=overwrite)
