"""Pruning schedules: when to prune, and to what sparsity, at a training step.

The math is a pair of pure functions of the step (:func:`should_prune` and
:func:`polynomial_sparsity`); the classes are thin serializable shells around them.
Their ``get_config()`` has tfmot's form, ``{"class_name": ..., "config": {constructor
arguments}}``, which tfmot-style code hands to ``deserialize_keras_object``;
``from_config`` takes that form or the flat arguments, so ``keras.saving`` round trips
work too.

Every schedule follows tfmot's contract, ``schedule(step) -> (should_prune,
sparsity)``, so any object with that ``__call__`` (a tfmot schedule included) can be
given to :func:`tfcompress.pruning.prune_low_magnitude` without importing tfmot.

Example:
    >>> s = PolynomialDecay(initial_sparsity=0.0, final_sparsity=0.8,
    ...                     begin_step=0, end_step=100, frequency=10)
    >>> [round(float(s(step)[1]), 3) for step in (0, 50, 100, 200)]
    [0.0, 0.7, 0.8, 0.8]
    >>> bool(s(15)[0]), bool(s(20)[0])
    (False, True)
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = [
    "AutomatedGradualPruning",
    "ConstantSparsity",
    "MISSING_CALLBACK",
    "PolynomialDecay",
    "PruningSchedule",
    "deserialize",
    "polynomial_sparsity",
    "should_prune",
]


def should_prune(step, *, begin_step: int, end_step: int, frequency: int):
    """Whether masks are recomputed at ``step`` (tfmot semantics).

    True when ``begin_step <= step <= end_step`` (``end_step=-1``: no end) and
    ``(step - begin_step)`` is a multiple of ``frequency``.

    >>> bool(should_prune(200, begin_step=100, end_step=-1, frequency=50))
    True
    >>> bool(should_prune(201, begin_step=100, end_step=-1, frequency=50))
    False
    """
    step = ops.cast(step, "int64")
    in_range = ops.greater_equal(step, begin_step)
    if end_step != -1:
        in_range = ops.logical_and(in_range, ops.less_equal(step, end_step))
    on_turn = ops.equal(ops.mod(step - begin_step, frequency), 0)
    return ops.logical_and(in_range, on_turn)


def polynomial_sparsity(step, *, initial_sparsity: float, final_sparsity: float,
                        begin_step: int, end_step: int, power: float):
    """Sparsity that moves from ``initial`` to ``final`` as ``1 - (1 - p) ** power``.

    ``p`` is the fraction of ``[begin_step, end_step]`` elapsed, clipped to [0, 1].
    With ``power=3`` this is Zhu & Gupta's automated gradual pruning.

    >>> round(float(polynomial_sparsity(5, initial_sparsity=0.0, final_sparsity=0.5,
    ...                                 begin_step=0, end_step=10, power=1)), 3)
    0.25
    """
    step = ops.cast(step, "float32")
    if end_step == begin_step:  # no ramp: the final sparsity from begin_step on
        p = ops.cast(ops.greater_equal(step, begin_step), "float32")
    else:
        p = ops.clip((step - begin_step) / float(end_step - begin_step), 0.0, 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * ops.power(1.0 - p, power)


def _check_sparsity(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")


def _check_steps(begin_step, end_step, frequency, *, end_required: bool) -> None:
    for name, value in (("begin_step", begin_step), ("end_step", end_step),
                        ("frequency", frequency)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}")
    if begin_step < 0:
        raise ValueError(f"`begin_step` must be >= 0. Received: begin_step={begin_step}")
    if end_required and end_step < begin_step:
        raise ValueError(
            "`end_step` must be at least `begin_step`. "
            f"Received: begin_step={begin_step}, end_step={end_step}"
        )
    if not end_required and end_step != -1 and end_step < begin_step:
        raise ValueError(
            "`end_step` must be -1 (never stop) or >= `begin_step`. "
            f"Received: begin_step={begin_step}, end_step={end_step}"
        )
    if frequency <= 0:
        raise ValueError(f"`frequency` must be > 0. Received: frequency={frequency}")


MISSING_CALLBACK = (
    "Pruning step is -1: PruneLowMagnitude needs the UpdatePruningStep callback during "
    "training. Add `callbacks=[tfcompress.pruning.UpdatePruningStep()]` to `fit`, or call "
    "its on_train_batch_begin() in a custom training loop."
)


class PruningSchedule:
    """Base class: ``__call__(step) -> (should_prune, sparsity)`` as tensors.

    Subclasses implement ``__call__`` and :meth:`arguments` (their constructor
    arguments); :meth:`get_config` wraps those in tfmot's form.
    """

    def __call__(self, step):  # pragma: no cover - abstract
        raise NotImplementedError

    def arguments(self) -> dict:
        """The constructor arguments, flat: ``type(self)(**self.arguments())`` is equal.

        A tfmot-style subclass that overrides only ``get_config`` gets its arguments
        read from there.
        """
        if type(self).get_config is not PruningSchedule.get_config:
            config = self.get_config()
            return config["config"] if set(config) == {"class_name", "config"} else config
        raise NotImplementedError(f"{type(self).__name__} must implement arguments().")

    # tfmot's helpers for custom schedules, under their names.
    def _should_prune_in_step(self, step, begin_step, end_step, frequency):
        return should_prune(step, begin_step=begin_step, end_step=end_step,
                            frequency=frequency)

    def _validate_step(self, begin_step, end_step, frequency, allow_negative_1):
        _check_steps(begin_step, end_step, frequency, end_required=not allow_negative_1)

    def _validate_sparsity(self, sparsity, variable_name):
        _check_sparsity(variable_name, sparsity)

    def get_config(self) -> dict:
        """``{"class_name": <class>, "config": <constructor arguments>}``, as tfmot's."""
        return {"class_name": type(self).__name__, "config": self.arguments()}

    @classmethod
    def from_config(cls, config: dict):
        """The schedule from :meth:`get_config`'s form or from flat constructor arguments."""
        if set(config) == {"class_name", "config"}:
            config = config["config"]
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.arguments() == other.arguments()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.arguments().items()))))


@keras.saving.register_keras_serializable(package="tfcompress")
class ConstantSparsity(PruningSchedule):
    """The same target sparsity at every pruning turn.

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: first step at which masks are computed.
        end_step: last step (inclusive) at which masks are recomputed; -1 for no end.
        frequency: masks are recomputed every ``frequency`` steps.

    >>> s = ConstantSparsity(0.5, begin_step=10)
    >>> bool(s(0)[0]), bool(s(10)[0]), float(s(10)[1])
    (False, True, 0.5)
    """

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int = -1,
                 frequency: int = 100):
        _check_sparsity("target_sparsity", target_sparsity)
        _check_steps(begin_step, end_step, frequency, end_required=False)
        self.target_sparsity = float(target_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step):
        prune = should_prune(step, begin_step=self.begin_step, end_step=self.end_step,
                             frequency=self.frequency)
        return prune, ops.convert_to_tensor(self.target_sparsity, "float32")

    def arguments(self) -> dict:
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


@keras.saving.register_keras_serializable(package="tfcompress")
class PolynomialDecay(PruningSchedule):
    """Sparsity rising polynomially from ``initial_sparsity`` to ``final_sparsity``.

    Same arguments and meaning as tfmot's ``PolynomialDecay``; after ``end_step`` the
    sparsity stays at ``final_sparsity`` and masks are no longer recomputed.

    Args:
        initial_sparsity: sparsity at ``begin_step``, in [0, 1).
        final_sparsity: sparsity from ``end_step`` on, in [0, 1).
        begin_step: first pruning step.
        end_step: last pruning step, at least ``begin_step`` (equal: the final
            sparsity at once, where tfmot divides by zero).
        power: exponent of the decay (3 is automated gradual pruning).
        frequency: masks are recomputed every ``frequency`` steps.
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int,
                 end_step: int, power: float = 3, frequency: int = 100):
        _check_sparsity("initial_sparsity", initial_sparsity)
        _check_sparsity("final_sparsity", final_sparsity)
        _check_steps(begin_step, end_step, frequency, end_required=True)
        if not isinstance(power, (int, float)) or power <= 0:
            raise ValueError(f"`power` must be a positive number. Received: power={power!r}")
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.power = power
        self.frequency = frequency

    def __call__(self, step):
        prune = should_prune(step, begin_step=self.begin_step, end_step=self.end_step,
                             frequency=self.frequency)
        sparsity = polynomial_sparsity(
            step, initial_sparsity=self.initial_sparsity, final_sparsity=self.final_sparsity,
            begin_step=self.begin_step, end_step=self.end_step, power=self.power)
        return prune, sparsity

    def arguments(self) -> dict:
        return {"initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "power": self.power, "frequency": self.frequency}


@keras.saving.register_keras_serializable(package="tfcompress")
class AutomatedGradualPruning(PolynomialDecay):
    """Zhu & Gupta's cubic schedule (AGP): :class:`PolynomialDecay` with power 3.

    >>> s = AutomatedGradualPruning(0.0, 0.9, begin_step=0, end_step=1000, frequency=100)
    >>> round(float(s(500)[1]), 4)
    0.7875
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int,
                 end_step: int, frequency: int = 100):
        super().__init__(initial_sparsity, final_sparsity, begin_step, end_step,
                         power=3, frequency=frequency)

    def arguments(self) -> dict:
        config = super().arguments()
        del config["power"]
        return config


def deserialize(schedule):
    """A schedule from a schedule, its Keras config, or None (50% from step 0, every 100).

    >>> deserialize(None)
    ConstantSparsity(target_sparsity=0.5, begin_step=0, end_step=-1, frequency=100)

    Raises:
        TypeError: ``schedule`` is neither a config nor callable.
    """
    if schedule is None:
        return ConstantSparsity(0.5, begin_step=0, end_step=-1, frequency=100)
    if isinstance(schedule, dict):
        known = {cls.__name__: cls for cls in (ConstantSparsity, PolynomialDecay,
                                               AutomatedGradualPruning)}
        if set(schedule) == {"class_name", "config"} and schedule["class_name"] in known:
            return known[schedule["class_name"]].from_config(schedule)  # tfmot's form
        return keras.saving.deserialize_keras_object(schedule)
    if not callable(schedule):
        raise TypeError("`pruning_schedule` must be a schedule: an object with "
                        "`__call__(step) -> (should_prune, sparsity)`. "
                        f"Received: pruning_schedule={schedule!r}")
    return schedule
