"""Compression recipes: which steps :func:`tfcompress.compress` runs, and how.

A recipe is plain data. It is built in Python, or read from a JSON or YAML file,
and it always writes back to the same dict. The steps run in this order:
``lowrank`` -> ``prune`` -> ``quantize`` -> convert -> ``validate`` -> ``benchmark``.
``distill`` is not a step of its own: it changes the loss of every training step
(pruning fine-tuning, QAT) so that it learns from the original model. Setting a
step to None (``null`` in a file), or giving it ``enabled: false``, switches it off.

Example:
    >>> r = Recipe.from_dict({"prune": {"kind": "channels", "sparsity": 0.25, "epochs": 2},
    ...                       "distill": {"temperature": 4.0}, "benchmark": None})
    >>> r.steps()
    ['prune', 'quantize', 'convert', 'validate']
    >>> r.prune.kind, r.quantize.method, r.to_dict()["benchmark"]
    ('channels', 'qat', None)
    >>> Recipe.from_dict({"prune": {"sparsity": 2.0}})
    Traceback (most recent call last):
    ...
    ValueError: prune.sparsity must be in [0, 1). Received: 2.0
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

from tfcompress.data import CALIBRATION_SAMPLES

__all__ = [
    "Benchmark",
    "Distill",
    "LowRank",
    "Prune",
    "Quantize",
    "Recipe",
    "Validate",
    "as_recipe",
]


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def _type_ok(value, hint) -> bool:
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # numpy integers too, never booleans
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) \
            and type(value).__name__ != "bool_"
    if hint is float:
        return _is_number(value) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    return True


def _describe_hint(hint) -> str:
    if typing.get_origin(hint) is typing.Union:
        parts = [_describe_hint(h) for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(parts) + " or null"
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        return "a list of " + ("strings" if item is str else _describe_hint(item))
    return {bool: "true or false", int: "an integer", float: "a finite number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _check_types(step: str, obj) -> None:
    """Every field of a step has its annotated type (``epochs: true`` is not 1).

    Raises:
        TypeError: naming the field, the value received and what is allowed.
    """
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if not _type_ok(value, hints[field.name]):
            raise TypeError(f"{step}.{field.name} must be {_describe_hint(hints[field.name])}. "
                            f"Received: {value!r}")


def _check_positive(step: str, name: str, value, *, integer: bool = False) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{step}.{name} must be a positive {'integer' if integer else 'number'}"
                         f"{'' if integer else ' or null'}. Received: {value!r}")


def _check_choice(step: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{step}.{name} must be one of {tuple(allowed)}. Received: {value!r}")


def _check_fraction(step: str, name: str, value, *, closed: bool = False) -> None:
    ok = _is_number(value) and 0 <= value and (value <= 1 if closed else value < 1)
    if not ok:
        raise ValueError(f"{step}.{name} must be in [0, 1{']' if closed else ')'}. Received: {value!r}")


def _check_epochs(step: str, epochs) -> None:
    if not _type_ok(epochs, int) or epochs < 0:
        raise ValueError(f"{step}.epochs must be a non-negative integer. Received: {epochs!r}")


@dataclasses.dataclass(frozen=True)
class LowRank:
    """SVD factorization (:func:`tfcompress.lowrank.factorize`), then ``epochs`` of fine-tuning.

    ``reconstruct``: before fine-tuning, refit the second layer of each pair by least
    squares on training images (:func:`tfcompress.lowrank.reconstruct`).
    """

    energy: Optional[float] = None
    ratio: Optional[float] = 0.5
    layers: Optional[List[str]] = None
    epochs: int = 1
    learning_rate: Optional[float] = None  # None: compress()'s learning_rate
    reconstruct: bool = False

    def __post_init__(self):
        _check_types("lowrank", self)
        _check_positive("lowrank", "learning_rate", self.learning_rate)
        if (self.energy is None) == (self.ratio is None):
            raise ValueError("lowrank needs exactly one of energy and ratio. Received: "
                             f"energy={self.energy!r}, ratio={self.ratio!r}")
        _check_fraction("lowrank", "energy" if self.energy is not None else "ratio",
                        self.energy if self.energy is not None else self.ratio, closed=True)
        _check_epochs("lowrank", self.epochs)


@dataclasses.dataclass(frozen=True)
class Prune:
    """Pruning with a polynomial schedule over the first ``ramp`` share of ``epochs``.

    ``kind``: ``"unstructured"`` (magnitude; a smaller file, see ``sparse_weights``),
    ``"2:4"`` (N:M for sparse kernels), or ``"channels"`` (removes filters; faster).
    ``reconstruct`` (channels only): remove the channels at once, refit the layers that
    read them by least squares on training images
    (:func:`tfcompress.channel_pruning.reconstruct`), then fine-tune for ``epochs``
    with the channels fixed; ``ramp`` is then unused.
    ``layers``: prune only these layers (channels: only their groups).
    ``sparse_weights`` (unstructured and 2:4): store the pruned kernels in TFLite's
    sparse format, so the ``.tflite`` itself is smaller (``convert(sparse=True)``);
    the runtime expands them once when it loads the file.
    """

    kind: str = "unstructured"
    sparsity: float = 0.5
    epochs: int = 2
    ramp: float = 0.67
    criterion: str = "l2"
    learning_rate: Optional[float] = None
    layers: Optional[List[str]] = None
    reconstruct: bool = False
    sparse_weights: bool = True

    KINDS = ("unstructured", "2:4", "channels")

    def __post_init__(self):
        _check_types("prune", self)
        _check_positive("prune", "learning_rate", self.learning_rate)
        _check_choice("prune", "criterion", self.criterion, ("l1", "l2"))
        if self.kind not in self.KINDS:
            raise ValueError(f"prune.kind must be one of {self.KINDS}. Received: {self.kind!r}")
        _check_fraction("prune", "sparsity", self.sparsity)
        _check_fraction("prune", "ramp", self.ramp, closed=True)
        if self.reconstruct and self.kind != "channels":
            raise ValueError("prune.reconstruct applies to kind 'channels' only. Received: "
                             f"kind={self.kind!r}, reconstruct=True")
        _check_epochs("prune", self.epochs)


@dataclasses.dataclass(frozen=True)
class Distill:
    """Soft targets from the original model: ``alpha * CE + (1 - alpha) * T^2 KL``."""

    temperature: float = 4.0
    alpha: float = 0.1

    def __post_init__(self):
        _check_types("distill", self)
        if not _is_number(self.temperature) or not self.temperature > 0:
            raise ValueError(f"distill.temperature must be positive. Received: {self.temperature!r}")
        _check_fraction("distill", "alpha", self.alpha, closed=True)


@dataclasses.dataclass(frozen=True)
class Quantize:
    """Post-training calibration, then ``epochs`` of QAT (``method="ptq"``: none)."""

    method: str = "qat"
    epochs: int = 1
    estimator: str = "percentile"
    calibration_samples: int = CALIBRATION_SAMPLES
    learning_rate: Optional[float] = None

    # post_training.ESTIMATORS (not imported: this module stays free of Keras)
    ESTIMATORS = ("minmax", "moving_average", "percentile", "mse")

    def __post_init__(self):
        _check_types("quantize", self)
        if self.method not in ("qat", "ptq"):
            raise ValueError(f"quantize.method must be 'qat' or 'ptq'. Received: {self.method!r}")
        _check_epochs("quantize", self.epochs)
        _check_choice("quantize", "estimator", self.estimator, self.ESTIMATORS)
        _check_positive("quantize", "calibration_samples", self.calibration_samples, integer=True)
        _check_positive("quantize", "learning_rate", self.learning_rate)


@dataclasses.dataclass(frozen=True)
class Validate:
    """Thresholds for the int8 file (see :class:`tfcompress.Thresholds`)."""

    max_accuracy_drop: Optional[float] = None  # in accuracy points (0..1) below the original
    require_fully_integer: bool = True

    def __post_init__(self):
        _check_types("validate", self)
        if self.max_accuracy_drop is not None:
            _check_fraction("validate", "max_accuracy_drop", self.max_accuracy_drop, closed=True)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """Host latency of the float and int8 files, interleaved."""

    runs: int = 100
    num_threads: int = 1

    def __post_init__(self):
        _check_types("benchmark", self)
        _check_positive("benchmark", "runs", self.runs, integer=True)
        _check_positive("benchmark", "num_threads", self.num_threads, integer=True)


_STEPS = {"lowrank": LowRank, "prune": Prune, "distill": Distill, "quantize": Quantize,
          "validate": Validate, "benchmark": Benchmark}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The steps of a compression run (None switches a step off)."""

    lowrank: Optional[LowRank] = None
    prune: Optional[Prune] = None
    distill: Optional[Distill] = None
    quantize: Optional[Quantize] = Quantize()
    validate: Optional[Validate] = Validate()
    benchmark: Optional[Benchmark] = Benchmark()
    name: str = "recipe"

    def steps(self) -> List[str]:
        """The steps that run, in order (``convert`` always runs)."""
        order = ["lowrank", "prune", "quantize", "convert", "validate", "benchmark"]
        return [s for s in order if s == "convert" or getattr(self, s) is not None]

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name}
        for key in _STEPS:
            step = getattr(self, key)
            out[key] = None if step is None else dataclasses.asdict(step)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> "Recipe":
        if not isinstance(config, dict):
            raise TypeError(f"A recipe is a mapping of steps. Received: {type(config).__name__}")
        unknown = set(config) - set(_STEPS) - {"name"}
        if unknown:
            raise ValueError(f"Unknown recipe steps {sorted(unknown)}. Allowed: "
                             f"{sorted(_STEPS)} and 'name'.")
        kwargs: Dict[str, Any] = {"name": config.get("name", "recipe")}
        if not isinstance(kwargs["name"], str):
            raise TypeError(f"name must be a string. Received: {kwargs['name']!r}")
        for key, step_cls in _STEPS.items():
            if key not in config:
                continue
            value = config[key]
            if value is None or value is False or (isinstance(value, dict)
                                                    and value.get("enabled", True) is False):
                kwargs[key] = None
                continue
            if value is True:
                value = {}
            if not isinstance(value, dict):
                raise TypeError(f"Recipe step {key!r} must be a mapping, null or a boolean. "
                                f"Received: {value!r}")
            fields = {f.name for f in dataclasses.fields(step_cls)}
            value = {k: v for k, v in value.items() if k != "enabled"}
            extra = set(value) - fields
            if extra:
                raise ValueError(f"Unknown options {sorted(extra)} for step {key!r}. "
                                 f"Allowed: {sorted(fields)}.")
            kwargs[key] = step_cls(**value)
        return cls(**kwargs)

    @classmethod
    def load(cls, path) -> "Recipe":
        """Reads a recipe from a ``.json``, ``.yaml`` or ``.yml`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No such recipe file. Received: {str(path)!r}.")
        if path.suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(f"A recipe file ends in .json, .yaml or .yml. Received: {str(path)!r}.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"The recipe {str(path)!r} is not UTF-8 text ({e}).") from None
        if path.suffix == ".json":
            try:
                config = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"The recipe {str(path)!r} is not valid JSON: {e}.") from None
        else:
            # Optional: PyYAML is needed only for YAML recipes.
            import yaml

            try:  # safe_load: tags such as !!python/object are refused, never executed
                config = yaml.safe_load(text)
            except yaml.YAMLError as e:
                where = getattr(e, "problem_mark", None)
                at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
                problem = getattr(e, "problem", None) or str(e)
                raise ValueError(f"The recipe {str(path)!r} is not valid YAML{at}: "
                                 f"{' '.join(str(problem).split())}.") from None
        return cls.from_dict(config if config is not None else {})


def as_recipe(recipe) -> Recipe:
    """A :class:`Recipe` from a Recipe, a dict, a file path, or None (the default recipe)."""
    if recipe is None:
        return Recipe()
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, (str, Path)):
        return Recipe.load(recipe)
    raise TypeError("`recipe` is a Recipe, a dict, or a path to a JSON/YAML file. "
                    f"Received: {type(recipe).__name__}")
