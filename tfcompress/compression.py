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
an uninterrupted run would. When everything is done, the directory is renamed to
``output_dir`` in one move. An existing ``output_dir`` is never overwritten silently.

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
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np

from tfcompress import (
    _graph,
    _io,
    benchmark,
    channel_pruning,
    inspector,
    lowrank,
    post_training,
    pruning,
    quantization,
    validation,
)
from tfcompress import data as data_lib
from tfcompress import report as report_lib
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
    "compress",
    "top1_accuracy",
    "write_report",
]

STATE_FILE = "state.json"


@dataclasses.dataclass(frozen=True)
class CompressionData:
    """Training inputs and labels, and held-out test inputs and labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @classmethod
    def from_any(cls, data) -> "CompressionData":
        """From a CompressionData, a :class:`tfcompress.data.Dataset`, a 4-tuple
        ``(x_train, y_train, x_test, y_test)`` or ``((x, y), (x_test, y_test))``."""
        if isinstance(data, cls):
            return data
        if isinstance(data, data_lib.Dataset):
            parts = (data.x_train, data.y_train, data.x_test, data.y_test)
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(
                isinstance(p, (tuple, list)) and len(p) == 2 for p in data):
            parts = (*data[0], *data[1])
        elif isinstance(data, (tuple, list)) and len(data) == 4:
            parts = tuple(data)
        else:
            raise TypeError("`data` is (x_train, y_train, x_test, y_test), ((x, y), (x_test, "
                            "y_test)) or a tfcompress.data.Dataset. Received: "
                            f"{type(data).__name__}")
        x, y, xt, yt = (np.asarray(p) for p in parts)
        if len(x) != len(y) or len(xt) != len(yt) or not len(x) or not len(xt):
            raise ValueError("Inputs and labels must be non-empty and of equal length. Received: "
                             f"{len(x)} train inputs, {len(y)} labels; {len(xt)} test inputs, "
                             f"{len(yt)} labels.")
        return cls(x.astype("float32"), y.reshape(-1).astype("int64"), xt.astype("float32"),
                   yt.reshape(-1).astype("int64"))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
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
    """

    model: Any
    tflite: bytes
    float_tflite: bytes
    stages: Tuple[dict, ...]
    validation: Optional[validation.ValidationReport]
    latency: Optional[dict]
    recipe: Recipe
    output_dir: Optional[str]

    @property
    def size_ratio(self) -> float:
        return len(self.tflite) / len(self.float_tflite)

    def summary(self) -> dict:
        """The headline numbers, JSON-ready."""
        out = {"recipe": self.recipe.to_dict(), "stages": list(self.stages),
               "float_tflite_bytes": len(self.float_tflite), "int8_tflite_bytes": len(self.tflite),
               "size_ratio": self.size_ratio, "latency": self.latency}
        if self.validation is not None:
            out["int8_accuracy_xnnpack"] = self.validation.xnnpack.accuracy
            out["int8_accuracy_reference"] = self.validation.reference.accuracy
            out["validation_passed"] = self.validation.passed
        return out

    def table(self) -> str:
        """Markdown: one row per stage, then the int8 file."""

        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"

        rows = [(s["stage"], s.get("params", "-"), pct(s.get("accuracy")), "-", "-")
                for s in self.stages]
        lat = self.latency or {}
        rows.append(("float .tflite (original)", "-", pct(self.stages[0].get("accuracy")),
                     len(self.float_tflite), f"{lat['float_ms']:.4f}" if lat else "-"))
        if self.validation is not None:
            acc = (f"{pct(self.validation.xnnpack.accuracy)} XNNPACK / "
                   f"{pct(self.validation.reference.accuracy)} reference")
        else:
            acc = "-"
        rows.append(("int8 .tflite", "-", acc,
                     f"{len(self.tflite)} ({self.size_ratio:.3f}x)",
                     f"{lat['int8_ms']:.4f} ({lat['ratio']:.3f}x)" if lat else "-"))
        return markdown_table(("stage", "params", "top-1", "size B", "XNNPACK p50 ms"), rows)


def _from_logits(model) -> bool:

    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return False
    return getattr(last, "activation", None) is not keras.activations.softmax


def _count_params(model) -> int:
    """Trainable parameters: kernels and biases, not quantizer ranges or masks."""
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def top1_accuracy(model, x, y, *, batch_size: int = 256) -> float:
    """Top-1 accuracy of a Keras classifier on ``(x, y)``."""
    pred = np.argmax(model.predict(x, batch_size=batch_size, verbose=0), -1)
    return float(np.mean(pred == np.asarray(y).reshape(-1)))


def _loss(recipe: Recipe, from_logits: bool):
    if recipe.distill is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    return LabelAndTeacherLoss(temperature=recipe.distill.temperature,
                               alpha=recipe.distill.alpha, from_logits=from_logits)


class _Run:
    """The state of one compress() call: data, options, and the work directory."""

    def __init__(self, model, data, recipe, *, output_dir, batch_size, learning_rate, callbacks,
                 strategy, seed, verbose, from_logits, fit_kwargs, augment):
        self.original, self.data, self.recipe = model, data, recipe
        self.batch_size, self.learning_rate, self.callbacks = batch_size, learning_rate, callbacks
        self.strategy, self.seed, self.verbose, self.fit_kwargs = strategy, seed, verbose, fit_kwargs
        self.from_logits = _from_logits(model) if from_logits is None else from_logits
        self.work = Path(str(output_dir) + ".partial") if output_dir is not None else None
        self.augment = augment
        self.step_seed = seed
        self._target = None

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def target(self, x=None):
        """Labels, or labels packed with the original model's outputs on ``x``."""
        if self.recipe.distill is None:
            return self.data.y_train
        if x is None and self._target is not None:
            return self._target
        teacher = self.original.predict(self.data.x_train if x is None else x, batch_size=256,
                                        verbose=0)
        target = np.concatenate(
            [self.data.y_train[:, None].astype("float32"), teacher.astype("float32")], -1)
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
                          loss=_loss(self.recipe, self.from_logits))
        callbacks = list(extra_callbacks) + list(self.callbacks) + [_StepTimer()]
        if self.augment is None:
            model.fit(self.data.x_train, self.target(), batch_size=self.batch_size,
                      epochs=epochs, verbose=self.verbose, callbacks=callbacks, **self.fit_kwargs)
        else:
            # New augmented images every epoch; the original model answers on the same images.
            rng = np.random.default_rng(self.step_seed)
            for epoch in range(epochs):
                xa = self.augment(self.data.x_train, rng).astype("float32")
                model.fit(xa, self.target(xa), batch_size=self.batch_size, initial_epoch=epoch,
                          epochs=epoch + 1, verbose=self.verbose, callbacks=callbacks,
                          **self.fit_kwargs)
        return 1e3 * float(np.median(times[5:] or times))

    def accuracy(self, model) -> float:
        return top1_accuracy(model, self.data.x_test, self.data.y_test)


def _steps_per_epoch(run: _Run) -> int:
    return int(np.ceil(len(run.data.x_train) / run.batch_size))


RECONSTRUCTION_SAMPLES = data_lib.CALIBRATION_SAMPLES  # images for low-rank / channel refit


def _step_lowrank(run: _Run, model):

    cfg = run.recipe.lowrank
    with run.scope():
        factored = lowrank.factorize(model, energy=cfg.energy, ratio=cfg.ratio, layers=cfg.layers)
        if cfg.reconstruct and factored.factor_plans:
            lowrank.reconstruct(factored, model, run.data.x_train[:RECONSTRUCTION_SAMPLES],
                                seed=run.step_seed)
    step_ms = run.fit(factored, cfg.epochs, learning_rate=cfg.learning_rate)
    return factored, {"factored_layers": len(factored.factor_plans), "step_ms": step_ms}


def _step_prune(run: _Run, model):

    cfg = run.recipe.prune
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
            channel_pruning.reconstruct(wrapped, model, run.data.x_train[:RECONSTRUCTION_SAMPLES],
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
            model, run.data.x_train, estimator=cfg.estimator,
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
    stages = [{"stage": "original", "params": _count_params(model),
               "accuracy": run.accuracy(model), "seconds": 0.0}]
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
                        "accuracy": run.accuracy(current),
                        "seconds": time.perf_counter() - t0}, **numbers)
        stages.append(metrics)
        if run.work is not None:
            checkpoint = f"steps/{index + 1:02d}_{step}.keras"
            current.save(run.work / checkpoint)
            state["completed"].append({"step": step, "checkpoint": checkpoint, "metrics": metrics})
            _io.atomic_write_bytes(run.work / STATE_FILE,
                                   json.dumps(state, indent=2, default=float).encode(),
                                   overwrite=True)
    return current, stages


def _export_and_check(run: _Run, current, original_accuracy: float):
    """Converts, validates and times; each file is verified once and passed on."""
    recipe, data = run.recipe, run.data
    calib = data.x_train[:data_lib.CALIBRATION_SAMPLES]
    progress = bool(run.verbose)
    float_tflite = convert(run.original, mode="float32", progress=False).verified
    sparse = (recipe.prune is not None and recipe.prune.kind != "channels"
              and recipe.prune.sparse_weights)
    int8 = convert(current, representative_data=None if recipe.quantize is not None else calib,
                   progress=progress, sparse=sparse).verified
    report = None
    if recipe.validate is not None:
        drop = recipe.validate.max_accuracy_drop
        thresholds = validation.Thresholds(
            min_accuracy=None if drop is None else max(0.0, original_accuracy - drop),
            require_fully_integer=recipe.validate.require_fully_integer)
        report = validation.validate(int8, data.x_test, y=data.y_test, reference=float_tflite,
                                     thresholds=thresholds, progress=progress)
    latency = None
    if recipe.benchmark is not None:
        stats = benchmark.measure_latency({"float": float_tflite, "int8": int8},
                                          runs=recipe.benchmark.runs,
                                          num_threads=recipe.benchmark.num_threads)
        latency = {"float_ms": stats["float"].p50_ms, "int8_ms": stats["int8"].p50_ms,
                   "ratio": benchmark.paired_ratio(stats["int8"], stats["float"]),
                   "runs": recipe.benchmark.runs, "num_threads": recipe.benchmark.num_threads}
    return int8, float_tflite, report, latency


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
) -> CompressionResult:
    """Compresses a trained Keras classifier to a checked, fully-int8 ``.tflite``.

    Args:
        model: a trained Sequential or Functional Keras model (not changed).
        data: ``(x_train, y_train, x_test, y_test)`` (or see
            :meth:`CompressionData.from_any`): training steps fit on the first pair;
            every accuracy is measured on the second.
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
            layer: a softmax means probabilities).
        seed: the random seed; step ``i`` runs with ``seed + i``.
        verbose: Keras verbosity (1 shows progress bars).
        fit_kwargs: other ``fit`` arguments (not ``epochs``, ``x``, ``y``).
        augment: ``"flip_and_shift"`` or a function ``(x, numpy Generator) -> x`` that
            makes new training images every epoch (with distillation, the original
            model labels them). Seeded per step, so resumed runs repeat it exactly.

    Returns:
        A :class:`CompressionResult`.
    """
    recipe = as_recipe(recipe)
    data = CompressionData.from_any(data)
    augment = _augmentation(augment)
    fit_kwargs = _checked_fit_kwargs(fit_kwargs)
    if output_dir is not None and Path(output_dir).exists() and not overwrite:
        raise FileExistsError(f"Refusing to overwrite the existing output directory "
                              f"{str(output_dir)!r}. Pass overwrite=True (CLI: --overwrite).")

    _graph.functional(model, purpose="compress")  # a clear error for subclassed models
    run = _Run(model, data, recipe, output_dir=output_dir, batch_size=batch_size,
               learning_rate=learning_rate, callbacks=callbacks, strategy=strategy, seed=seed,
               verbose=verbose, from_logits=from_logits, fit_kwargs=fit_kwargs, augment=augment)
    state = None
    if run.work is not None:
        fp = _fingerprint(model, data, recipe, seed, batch_size, learning_rate, augment)
        state = _load_state(run.work, fp, resume)
    current, stages = _train(run, state)
    int8, float_tflite, report, latency = _export_and_check(run, current, stages[0]["accuracy"])
    result = CompressionResult(current, int8.bytes, float_tflite.bytes, tuple(stages), report,
                               latency, recipe, None)
    if run.work is None:
        return result
    _write_outputs(run.work, result, int8)
    final = Path(output_dir)
    if final.exists():  # overwrite=True was checked above
        shutil.rmtree(final)
    os.replace(run.work, final)
    return dataclasses.replace(result, output_dir=str(final))


def _write_outputs(work: Path, result: CompressionResult, int8: inspector.VerifiedModel) -> None:
    shutil.rmtree(work / "steps", ignore_errors=True)
    (work / STATE_FILE).unlink(missing_ok=True)
    _io.atomic_write_bytes(work / "model_int8.tflite", result.tflite)
    _io.atomic_write_bytes(work / "original_float.tflite", result.float_tflite)
    result.model.save(work / "model.keras")
    if result.validation is not None:
        result.validation.save(work / "validation.json")
    _io.atomic_write_bytes(work / "recipe.json", result.recipe.to_json().encode())
    _io.atomic_write_bytes(work / "result.json",
                           json.dumps(result.summary(), indent=2, default=float).encode())
    write_report(work, result, verified=int8)


def _short_name(name: str, width: int = 38) -> str:
    name = name.split(";")[0]
    return name if len(name) <= width else "..." + name[-(width - 3):]


def write_report(directory, result: "CompressionResult", *,
                 verified: Optional[inspector.VerifiedModel] = None) -> Path:
    """Writes ``report.md`` and its plots for a :class:`~tfcompress.compression.CompressionResult`.

    Plots: accuracy and parameters after each stage; the share of zero weights
    per layer in the int8 file; the per-layer quantization error (in output
    quantization steps) when validation ran.

    Args:
        directory: an existing folder.
        result: what :func:`compress` returned.
        verified: the int8 file of ``result`` already verified (not parsed again).

    Returns:
        The path of ``report.md``.
    """
    directory = Path(directory)
    lines = [f"# Compression report: {result.recipe.name}", "",
             "## What each step bought", "", result.table(), ""]
    stages = [s for s in result.stages if s.get("accuracy") is not None]
    report_lib.bar_chart(directory / "stages.png", [s["stage"] for s in stages],
              {"top-1 accuracy (%)": [100 * s["accuracy"] for s in stages]},
              xlabel="top-1 accuracy on the test data (%), Keras model after the stage",
              title="Accuracy after each stage")
    report_lib.bar_chart(directory / "params.png", [s["stage"] for s in stages],
              {"parameters": [float(s["params"]) for s in stages]},
              xlabel="trainable parameters after the stage", title="Model size after each stage")
    lines += ["![accuracy after each stage](stages.png)", "",
              "![parameters after each stage](params.png)", ""]

    weights = inspector.load(verified or result.tflite).report.weight_tensors
    if weights:
        report_lib.bar_chart(directory / "sparsity.png", [_short_name(t.name) for t in weights],
                  {"zero weights (%)": [100 * (t.zero_fraction or 0.0) for t in weights]},
                  xlabel="share of weights that are exactly zero in the int8 file (%)",
                  title="Per-layer sparsity")
        lines += ["## Per-layer sparsity", "", "![per-layer sparsity](sparsity.png)", ""]
    if result.validation is not None:
        lines += ["## Validation (int8 file, XNNPACK and reference kernels)", "", "```",
                  result.validation.summary(), "```", ""]
        errors = result.validation.per_layer
        if errors:
            report_lib.bar_chart(directory / "quantization_error.png",
                      [_short_name(e.layer or e.tensor) for e in errors],
                      {"RMSE / scale": [e.rmse_over_scale for e in errors]},
                      xlabel="RMS error against the float model, in quantization steps",
                      title="Per-layer quantization error")
            lines += ["![per-layer quantization error](quantization_error.png)", ""]
    if result.latency is not None:
        lat = result.latency
        lines += ["## Latency (host, XNNPACK, interleaved)", "",
                  f"float {lat['float_ms']:.4f} ms, int8 {lat['int8_ms']:.4f} ms: "
                  f"{lat['ratio']:.3f}x ({lat['runs']} runs, {lat['num_threads']} thread(s)). "
                  "Per-op times on a phone: examples/android_benchmark with "
                  "--enable_op_profiling=true.", ""]
    lines += ["## Recipe", "", "```json", json.dumps(result.recipe.to_dict(), indent=2), "```", ""]
    return _io.atomic_write_bytes(directory / "report.md", "\n".join(lines).encode())
