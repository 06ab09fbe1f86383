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


def _check_fraction(step: str, name: str, value, *, closed: bool = False) -> None:
    ok = isinstance(value, (int, float)) and 0 <= value and (value <= 1 if closed else value < 1)
    if not ok:
        raise ValueError(f"{step}.{name} must be in [0, 1{']' if closed else ')'}. Received: {value!r}")


def _check_epochs(step: str, epochs) -> None:
    if not isinstance(epochs, int) or epochs < 0:
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
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
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

    def __post_init__(self):
        if self.method not in ("qat", "ptq"):
            raise ValueError(f"quantize.method must be 'qat' or 'ptq'. Received: {self.method!r}")
        _check_epochs("quantize", self.epochs)


@dataclasses.dataclass(frozen=True)
class Validate:
    """Thresholds for the int8 file (see :class:`tfcompress.Thresholds`)."""

    max_accuracy_drop: Optional[float] = None  # in accuracy points (0..1) below the original
    require_fully_integer: bool = True


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """Host latency of the float and int8 files, interleaved."""

    runs: int = 100
    num_threads: int = 1


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
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            # Optional: PyYAML is needed only for YAML recipes.
            import yaml

            config = yaml.safe_load(text)
        elif path.suffix == ".json":
            config = json.loads(text)
        else:
            raise ValueError(f"A recipe file ends in .json, .yaml or .yml. Received: {str(path)!r}.")
        return cls.from_dict(config or {})


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
