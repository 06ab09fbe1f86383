"""Accuracy-aware recipe search: the smallest or fastest int8 model within a budget.

:func:`search` splits the training data into a part to train on and a validation
part to choose on (the test data only gives the reported numbers). It tries
recipes in families ordered from mild to aggressive: QAT only, channel pruning at
rising ratios, and low-rank factorization of the layers that per-layer sensitivity
says tolerate it. A family stops at its first recipe that misses the budget. Every
int8 file is then timed in one interleaved run with the float original, the Pareto
fronts (accuracy vs size, accuracy vs latency) are computed, and the recipe with the
best objective inside the budget is chosen.

Example (trains; see tests/test_search.py):
    >>> import tfcompress as tc
    >>> found = tc.search(model, (x, y, x_test, y_test), budget=0.01,  # doctest: +SKIP
    ...                   objective="latency", output_dir="search")
    >>> found.chosen["recipe"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import keras
import numpy as np

from tfcompress import _graph, _io, benchmark, channel_pruning, lowrank, runtime
from tfcompress.compression import (CompressionData, compress, detect_task, input_names,
                                    output_names, top1_accuracy)
from tfcompress.recipe import Distill, LowRank, Prune, Quantize, Recipe, Validate, as_recipe
from tfcompress.report import markdown_table, pareto_front, tradeoff_plot

__all__ = [
    "OBJECTIVES",
    "SearchResult",
    "default_candidates",
    "search",
    "sensitive_layers",
    "sparse_layers",
    "tolerant_channel_layers",
]

OBJECTIVES = ("size", "latency")


def sensitive_layers(model, x, *, ratio: float = 0.5, tolerance: float = 0.05) -> Dict[str, float]:
    """Per-layer sensitivity to low-rank factoring at ``ratio`` of the parameters.

    Returns:
        ``{layer: relative output error}`` for every layer that can be factored at
        that ratio; layers with an error at most ``tolerance`` are the candidates.
    """

    report = lowrank.sensitivity(model, x, ratios=(ratio,))
    return {name: errors[ratio] for name, errors in report.items() if errors[ratio] == errors[ratio]}


def tolerant_channel_layers(model, x, y, *, ratio: float = 0.25, max_drop: float = 0.25):
    """Producers of the channel groups whose one-shot pruning at ``ratio`` costs at most
    ``max_drop`` of top-1 accuracy (see :func:`tfcompress.channel_pruning.sensitivity`)."""

    y = np.asarray(y).reshape(-1)
    base = top1_accuracy(model, x, y)
    report = channel_pruning.sensitivity(model, x, y, ratios=(ratio,))
    keep = [name for name, acc in report.items() if base - acc[ratio] <= max_drop]
    return sorted({layer for name in keep for layer in name.split(",")})


def sparse_layers(model, *, min_weights: int = 1024) -> List[str]:
    """Names of the Conv2D / Dense layers whose kernels have at least ``min_weights`` weights.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, name="c1"),
    ...                       keras.layers.Conv2D(32, 3, name="c2"),
    ...                       keras.layers.GlobalAveragePooling2D(),
    ...                       keras.layers.Dense(2, name="head")])
    >>> sparse_layers(m)
    ['c2']
    """

    return [layer.name for layer in _graph.all_layers(model)
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
            and int(np.prod(layer.kernel.shape)) >= min_weights]


def default_candidates(model, x_val, *, epochs: int = 3, distill="default",
                       channel_ratios: Sequence[float] = (0.125, 0.25, 0.375, 0.5),
                       lowrank_tolerance: float = 0.05,
                       train_learning_rate: Optional[float] = None,
                       qat_learning_rate: Optional[float] = None,
                       y_val=None, tolerant_ratios: Sequence[float] = (0.25, 0.5, 0.75),
                       max_group_drop: float = 0.25,
                       reconstruct: bool = False,
                       sparse_ratios: Sequence[float] = (0.6, 0.7, 0.8),
                       sparse_min_weights: int = 1024) -> List[List[Recipe]]:
    """Families of recipes, each ordered from mild to aggressive.

    Args:
        model: the float model.
        x_val: inputs for the per-layer sensitivity.
        epochs: fine-tuning epochs per training step.
        distill: the distillation of every training step: a :class:`Distill`,
            ``"default"`` for ``Distill()``, or None for labels only.
        channel_ratios: channel-pruning ratios to try.
        lowrank_tolerance: largest relative output error for a layer to be factored.
        train_learning_rate: learning rate of the pruning and low-rank fine-tuning
            (None: compress()'s).
        qat_learning_rate: learning rate of QAT (None: compress()'s). QAT starts
            from calibrated ranges and needs less than recovery from pruning does.
        y_val: labels of ``x_val``; with them, a third family prunes only the channel
            groups whose one-shot pruning at 25% costs at most ``max_group_drop``
            (per-group sensitivity), at ``tolerant_ratios``.
        reconstruct: channel families remove their channels at once and refit the
            layers that read them (``Prune(reconstruct=True)``) instead of masking
            them gradually.
        sparse_ratios: unstructured sparsities of the family whose int8 files store
            the pruned kernels in TFLite's sparse format (smaller, not faster; below
            about half zeros the format saves nothing).
        sparse_min_weights: that family prunes only layers whose kernels have at least
            this many weights: the sparse format pays for its indices there, and the
            small input convolutions and classifier heads are the most sensitive.
    """
    d = Distill() if isinstance(distill, str) and distill == "default" else distill
    if d is not None and not isinstance(d, Distill):
        raise TypeError("`distill` must be a Distill, \"default\" or None. "
                        f"Received: distill={distill!r}")
    qat = Quantize(epochs=epochs, learning_rate=qat_learning_rate)
    families = [[Recipe(quantize=qat, distill=d, name="qat")]]
    families.append([Recipe(prune=Prune(kind="channels", sparsity=r, epochs=epochs,
                                             learning_rate=train_learning_rate,
                                             reconstruct=reconstruct), quantize=qat,
                            distill=d, name=f"channels {r:g}") for r in channel_ratios])
    if y_val is not None:
        tolerant_channels = tolerant_channel_layers(model, x_val, y_val, max_drop=max_group_drop)
        if tolerant_channels:
            families.append([
                Recipe(prune=Prune(kind="channels", sparsity=r, epochs=epochs,
                                   learning_rate=train_learning_rate, layers=tolerant_channels,
                                   reconstruct=reconstruct),
                       quantize=qat, distill=d, name=f"tolerant channels {r:g}")
                for r in tolerant_ratios])
    big = sparse_layers(model, min_weights=sparse_min_weights)
    if big and sparse_ratios:
        families.append([Recipe(prune=Prune(kind="unstructured", sparsity=r, epochs=epochs,
                                             learning_rate=train_learning_rate, layers=big),
                                quantize=qat, distill=d, name=f"sparse {r:g}")
                         for r in sparse_ratios])
    sens = sensitive_layers(model, x_val[:128])
    tolerant = sorted(name for name, err in sens.items() if err <= lowrank_tolerance)
    if tolerant:
        families.append([Recipe(lowrank=LowRank(ratio=0.5, layers=tolerant, epochs=epochs,
                                               learning_rate=train_learning_rate),
                                quantize=qat, distill=d, name=f"lowrank 0.5 ({len(tolerant)} layers)")])
    return families


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Every tried recipe with its numbers, the Pareto fronts and the choice.

    ``trials`` hold ``name``, ``recipe``, ``val_accuracy`` (int8, XNNPACK, on the
    validation split), ``test_accuracy`` (int8, XNNPACK, on the test data),
    ``size_bytes``, ``size_ratio`` and ``latency_ratio`` (both over the float
    original), and ``seconds``. ``chosen`` indexes ``trials`` (None when no recipe
    is within the budget).
    """

    trials: tuple
    float_val_accuracy: float
    float_test_accuracy: float
    float_size_bytes: int
    budget: float
    objective: str
    chosen: Optional[int]
    pareto_size: tuple
    pareto_latency: tuple
    models: tuple = dataclasses.field(default=(), repr=False)  # int8 bytes per trial

    @property
    def chosen_trial(self) -> Optional[dict]:
        return None if self.chosen is None else self.trials[self.chosen]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("models")
        return d

    def table(self) -> str:

        rows = [("float original", f"{100 * self.float_val_accuracy:.2f}",
                 f"{100 * self.float_test_accuracy:.2f}", self.float_size_bytes, "1.000", "1.000",
                 "", "")]
        for i, t in enumerate(self.trials):
            within = t["val_accuracy"] >= self.float_val_accuracy - self.budget
            marks = ("chosen" if i == self.chosen else "") + (
                " front" if i in self.pareto_size or i in self.pareto_latency else "")
            rows.append((t["name"], f"{100 * t['val_accuracy']:.2f}",
                         f"{100 * t['test_accuracy']:.2f}", t["size_bytes"],
                         f"{t['size_ratio']:.3f}", f"{t['latency_ratio']:.3f}",
                         "yes" if within else "no", marks.strip()))
        return markdown_table(("recipe", "val top-1 %", "test top-1 %", "size B", "size / float",
                               "latency / float", "within budget", ""), rows)

    def save(self, directory, *, overwrite: bool = False) -> Path:
        """Writes search.json, report.md, the two trade-off plots and the chosen model."""

        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise FileExistsError(f"Refusing to overwrite {str(directory)!r}. Pass overwrite=True.")
        work = Path(str(directory) + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _io.atomic_write_bytes(work / "search.json",
                               json.dumps(self.to_dict(), indent=2, default=float).encode())
        names = [t["name"] for t in self.trials]
        budget_line = 100 * (self.float_val_accuracy - self.budget)
        for key, label, plot in (("size_ratio", "int8 .tflite size / float .tflite size",
                                  "accuracy_vs_size.png"),
                                 ("latency_ratio", "XNNPACK latency / float .tflite latency "
                                  "(interleaved, same run)", "accuracy_vs_latency.png")):
            tradeoff_plot(work / plot,
                                 [(t[key], 100 * t["val_accuracy"]) for t in self.trials], names,
                                 xlabel=label, ylabel="int8 top-1 on the validation split (%)",
                                 title=f"Tried recipes: accuracy vs {key.split('_')[0]}",
                                 chosen=self.chosen, reference=(1.0, 100 * self.float_val_accuracy),
                                 budget=budget_line)
        lines = [f"# Recipe search: {self.objective}, budget {100 * self.budget:.2f} pp", "",
                 self.table(), "", "![accuracy vs size](accuracy_vs_size.png)", "",
                 "![accuracy vs latency](accuracy_vs_latency.png)", ""]
        if self.chosen is not None:
            t = self.trials[self.chosen]
            _io.atomic_write_bytes(work / "chosen_int8.tflite", self.models[self.chosen])
            _io.atomic_write_bytes(work / "chosen_recipe.json",
                                   json.dumps(t["recipe"], indent=2).encode())
            lines += [f"Chosen: **{t['name']}**: test top-1 {100 * t['test_accuracy']:.2f}% "
                      f"(float {100 * self.float_test_accuracy:.2f}%), size "
                      f"{t['size_ratio']:.3f}x, latency {t['latency_ratio']:.3f}x.", ""]
        else:
            lines += ["No recipe stayed within the budget.", ""]
        _io.atomic_write_bytes(work / "report.md", "\n".join(lines).encode())
        if directory.exists():
            shutil.rmtree(directory)
        work.rename(directory)
        return directory


def search(
    model,
    data,
    *,
    budget: float = 0.01,
    objective: str = "size",
    candidates: Optional[Sequence[Sequence[Any]]] = None,
    validation_split: float = 0.1,
    validation_data=None,
    epochs: int = 3,
    runs: int = 100,
    cpus: Optional[Sequence[int]] = None,
    output_dir=None,
    overwrite: bool = False,
    verbose: int = 0,
    candidate_options: Optional[dict] = None,
    **compress_kwargs,
) -> SearchResult:
    """Finds the smallest (or fastest) int8 model within an accuracy budget.

    Args:
        model: the trained float Keras model.
        data: as for :func:`tfcompress.compress`.
        budget: the largest allowed drop in top-1 accuracy, as a fraction (0.01 is
            one percentage point), measured on the validation split.
        objective: ``"size"`` (the int8 file) or ``"latency"`` (XNNPACK, relative to
            the float file, measured interleaved).
        candidates: families of recipes (Recipe, dict or path), each mild to
            aggressive; default :func:`default_candidates`.
        validation_split: the share of the training data held out to choose on.
        validation_data: ``(x, y)`` to choose on instead; the trials then train on all
            of the training data. Prefer it when the model was trained on the training
            data given here: a held-out share of images it has seen measures
            memorisation, and favours recipes that keep it (MLPerf ResNet-8 on the CIFAR
            subset: 92.75% on such a split, 88.10% on the test images).
        epochs: fine-tuning epochs per training step of the default candidates.
        runs: timed invocations per model for the latency ratios.
        cpus: cores to pin the latency measurement to, e.g. ``[1]``.
        output_dir: write the search report here (see :meth:`SearchResult.save`).
        overwrite: replace an existing ``output_dir``.
        verbose: as in :func:`tfcompress.compress` (1: a line per training step).
        candidate_options: keyword arguments for :func:`default_candidates`
            (learning rates, channel ratios, distillation).
        **compress_kwargs: passed to every :func:`~tfcompress.compress` call
            (batch_size, learning_rate, callbacks, strategy, seed, ...).
    """

    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}. Allowed: {OBJECTIVES}.")
    if not 0 <= budget < 1:
        raise ValueError(f"`budget` is a fraction of accuracy in [0, 1). Received: {budget!r}")
    if not 0 < validation_split < 1:
        raise ValueError(f"`validation_split` must be in (0, 1). Received: {validation_split!r}")
    if output_dir is not None and Path(output_dir).exists() and not overwrite:
        raise FileExistsError(f"Refusing to overwrite {str(output_dir)!r}. Pass overwrite=True.")
    full = CompressionData.from_any(data, inputs=input_names(model),
                                    outputs=output_names(model))
    task = detect_task(model, full)
    if task != "classification" or isinstance(full.x_train, tuple):
        raise ValueError("search() ranks recipes by top-1 accuracy, so it needs a classifier "
                         "with one input and integer labels; for a regression model or a model "
                         f"with several inputs or outputs (this one: {task}, "
                         f"{len(input_names(model))} input(s)), run compress() with a recipe of "
                         "your choice.")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("`validation_data` is a pair (x, y). Received: "
                            f"{type(validation_data).__name__}")
        x_val, y_val = (np.asarray(a) for a in validation_data)
        if len(x_val) != len(y_val) or not len(x_val):
            raise ValueError("`validation_data` needs as many labels as samples, at least one. "
                             f"Received: {len(x_val)} samples and {len(y_val)} labels")
        trial_data = CompressionData(full.x_train, full.y_train, x_val, y_val.reshape(-1))
    else:
        n_val = max(1, int(round(len(full.x_train) * validation_split)))
        trial_data = CompressionData(full.x_train[:-n_val], full.y_train[:-n_val],
                                     full.x_train[-n_val:], full.y_train[-n_val:])

    float_val = top1_accuracy(model, trial_data.x_test, trial_data.y_test)
    float_test = top1_accuracy(model, full.x_test, full.y_test)
    if candidates is None:
        families = default_candidates(model, trial_data.x_test, y_val=trial_data.y_test,
                                      epochs=epochs, **(candidate_options or {}))
    else:
        families = [[as_recipe(r) for r in family] for family in candidates]
    trials, models = [], []
    float_tflite = None
    for family in families:
        for recipe in family:
            recipe = recipe.replace(validate=Validate(require_fully_integer=True), benchmark=None)
            if verbose:
                print(f"trying {recipe.name}")
            t0 = time.perf_counter()
            r = compress(model, trial_data, recipe=recipe, verbose=verbose, **compress_kwargs)
            float_tflite = r.float_tflite
            test_out = runtime.predict(runtime.make_interpreter(r.tflite), full.x_test)
            trials.append({
                "name": recipe.name, "recipe": recipe.to_dict(),
                "val_accuracy": r.validation.xnnpack.accuracy,
                "test_accuracy": float(np.mean(runtime.top1(test_out) == full.y_test)),
                "size_bytes": len(r.tflite), "size_ratio": r.size_ratio,
                "fully_integer": r.validation.fully_integer,
                "seconds": time.perf_counter() - t0})
            models.append(r.tflite)
            if trials[-1]["val_accuracy"] < float_val - budget:
                break  # the rest of this family is more aggressive still
    files = {"float": float_tflite}
    files.update({f"trial {i}": m for i, m in enumerate(models)})
    stats = benchmark.measure_latency(files, runs=runs, cpus=cpus)
    for i, t in enumerate(trials):
        t["latency_ratio"] = benchmark.paired_ratio(stats[f"trial {i}"], stats["float"])
        t["latency_ms"] = stats[f"trial {i}"].p50_ms

    key = "size_ratio" if objective == "size" else "latency_ratio"
    ok = [i for i, t in enumerate(trials)
          if t["val_accuracy"] >= float_val - budget and t["fully_integer"]]
    chosen = min(ok, key=lambda i: (trials[i][key], -trials[i]["val_accuracy"])) if ok else None
    result = SearchResult(
        tuple(trials), float_val, float_test, len(float_tflite), budget, objective, chosen,
        tuple(pareto_front([(t["size_ratio"], t["val_accuracy"]) for t in trials])),
        tuple(pareto_front([(t["latency_ratio"], t["val_accuracy"]) for t in trials])),
        tuple(models))
    if output_dir is not None:
        result.save(output_dir, overwrite=overwrite)
    return result
