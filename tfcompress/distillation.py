"""Knowledge distillation on top of Keras 3's own ``keras.distillation``.

Keras 3.15 ships ``Distiller``, ``LogitsDistillation`` and ``FeatureDistillation``;
this module adds only what they lack:

* :class:`SoftTargetDistillation`: Hinton's soft-target loss with the ``T^2`` gradient
  scaling, for models that end in logits *or* in a softmax (ResNet-8 does), with the
  temperature held in a variable so that :class:`TemperatureSchedule` can change it
  during ``fit`` without retracing (``LogitsDistillation`` bakes a Python float in);
* :class:`AttentionTransfer`: Zagoruyko & Komodakis' attention maps between conv
  feature maps whose channel counts differ;
* :class:`HintDistillation`: FitNets' hint loss between intermediate layers, with a
  learned 1x1 projection of the student's features when the widths differ
  (``FeatureDistillation`` needs equal shapes);
* :class:`Distiller`: ``keras.distillation.Distiller`` that also trains those
  projections, and whose errors for a misspelt layer name list the close matches;
* :func:`with_preprocessing`: a teacher that expects other inputs than the student
  (raw 0-255 vs /255) gets its own preprocessing in front, so both read the same batch.

Use them with ``keras.distillation.Distiller`` as usual (or with this module's
:class:`Distiller`, which :class:`HintDistillation` needs)::

    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student, student_loss_weight=0.1,
        distillation_losses=[SoftTargetDistillation(temperature=4.0, from_logits=False)])
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    distiller.fit(x, y, callbacks=[TemperatureSchedule(lambda epoch: 4.0 - epoch * 0.5)])

Example:
    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -2.0]], "float32")
    >>> round(float(soft_target_loss(t, t, temperature=4.0)), 4)  # float32: 0 to 1e-6
    0.0
"""

from __future__ import annotations

import difflib
from typing import Callable

import keras
from keras import ops

__all__ = [
    "AttentionTransfer",
    "Distiller",
    "HintDistillation",
    "LabelAndTeacherLoss",
    "SoftTargetDistillation",
    "TemperatureSchedule",
    "attention_map",
    "soft_target_loss",
    "with_preprocessing",
]


def _as_logits(x, from_logits: bool):
    return x if from_logits else ops.log(ops.clip(x, 1e-7, 1.0))


def soft_target_loss(teacher, student, *, temperature, from_logits: bool = True):
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    The ``T^2`` factor keeps the gradient's size independent of ``T`` (Hinton et al.).
    With ``from_logits=False`` the inputs are probabilities; ``log p`` stands in for
    the logits, which gives the same softened distribution.
    """
    t = ops.softmax(_as_logits(teacher, from_logits) / temperature, axis=-1)
    log_s = ops.log_softmax(_as_logits(student, from_logits) / temperature, axis=-1)
    kl = ops.sum(t * (ops.log(ops.clip(t, 1e-12, 1.0)) - log_s), axis=-1)
    return ops.mean(kl) * temperature ** 2


@keras.saving.register_keras_serializable(package="tfcompress")
class SoftTargetDistillation(keras.distillation.DistillationLoss):
    """Hinton's soft-target loss with a schedulable temperature.

    Args:
        temperature: softening temperature (> 0).
        from_logits: False when the models end in a softmax.
    """

    def __init__(self, temperature: float = 4.0, from_logits: bool = True):
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"`temperature` must be a positive number. Received: "
                             f"temperature={temperature!r}")
        self.from_logits = from_logits
        self.temperature = keras.Variable(float(temperature), trainable=False,
                                          name="distillation_temperature")

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return soft_target_loss(teacher_outputs, student_outputs, temperature=self.temperature,
                                from_logits=self.from_logits)

    def get_config(self) -> dict:
        return {"temperature": float(self.temperature.numpy()), "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def attention_map(features, *, p: float = 2.0):
    """Spatial attention of a ``(batch, H, W, C)`` feature map: mean of ``|F|^p`` over
    channels, flattened and L2-normalized per sample."""
    a = ops.mean(ops.power(ops.abs(features), p), axis=-1)
    a = ops.reshape(a, (ops.shape(a)[0], -1))
    return a / (ops.sqrt(ops.sum(a * a, axis=-1, keepdims=True)) + 1e-12)


@keras.saving.register_keras_serializable(package="tfcompress")
class AttentionTransfer(keras.distillation.FeatureDistillation):
    """Attention transfer between two conv layers (their channel counts may differ).

    Args:
        teacher_layer_name: a conv-like teacher layer with output ``(B, H, W, Ct)``.
        student_layer_name: a student layer with output ``(B, H, W, Cs)``.
        p: exponent of the attention map.
    """

    def __init__(self, teacher_layer_name: str, student_layer_name: str, p: float = 2.0):
        super().__init__(loss="mse", teacher_layer_name=teacher_layer_name,
                         student_layer_name=student_layer_name)
        self.p = p

    def validate_outputs(self, teacher_outputs, student_outputs):
        t, s = tuple(teacher_outputs.shape[1:-1]), tuple(student_outputs.shape[1:-1])
        if t != s:
            raise ValueError(
                f"AttentionTransfer needs the same spatial size on both sides. Received: "
                f"teacher {self.teacher_layer_name!r} {t}, student {self.student_layer_name!r} {s}")

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        diff = attention_map(teacher_outputs, p=self.p) - attention_map(student_outputs, p=self.p)
        return ops.mean(ops.sum(diff * diff, axis=-1))

    def get_config(self) -> dict:
        return {"teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name, "p": self.p}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfcompress")
class HintDistillation(keras.distillation.FeatureDistillation):
    """Mean squared error between a teacher layer and a (projected) student layer.

    When the two layers' last dimensions differ, the student's features go through a
    learned projection first: a 1x1 convolution for feature maps, a Dense layer for
    vectors (Romero et al., FitNets). The projection exists only during training; the
    student itself is unchanged. Its weights are trained by :class:`Distiller` (Keras'
    own ``Distiller`` does not know about them and refuses this loss when one is needed).

    Args:
        teacher_layer_name: the teacher layer whose output is the hint.
        student_layer_name: the student layer that learns it (same spatial size).
    """

    def __init__(self, teacher_layer_name: str, student_layer_name: str):
        super().__init__(loss="mse", teacher_layer_name=teacher_layer_name,
                         student_layer_name=student_layer_name)
        self.projection = None
        self.trained_by = None

    def validate_model_compatibility(self, teacher, student):
        super().validate_model_compatibility(teacher, student)
        t = tuple(teacher.get_layer(self.teacher_layer_name).output.shape)
        s = tuple(student.get_layer(self.student_layer_name).output.shape)
        if len(t) != len(s) or t[1:-1] != s[1:-1]:
            raise ValueError(
                "HintDistillation needs features of the same rank and spatial size. Received: "
                f"teacher {self.teacher_layer_name!r} {t}, student {self.student_layer_name!r} {s}")
        if t[-1] != s[-1] and self.projection is None:
            name = f"hint_projection_{self.student_layer_name}_to_{self.teacher_layer_name}"
            self.projection = (keras.layers.Dense(t[-1], use_bias=False, name=name)
                               if len(t) == 2 else
                               keras.layers.Conv2D(t[-1], 1, use_bias=False, name=name)
                               if len(t) == 4 else None)
            if self.projection is None:
                raise ValueError(f"HintDistillation projects 2-D or 4-D features. Received: {s}")
            self.projection.build(s)

    def validate_outputs(self, teacher_outputs, student_outputs):
        pass  # shapes were checked against the models

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        if self.projection is not None:
            if self.trained_by is None:
                raise ValueError(
                    f"HintDistillation from {self.student_layer_name!r} needs a projection to "
                    f"{self.teacher_layer_name!r}'s width; use tfcompress.distillation.Distiller, "
                    "which trains it (keras.distillation.Distiller would leave it random).")
            student_outputs = self.projection(student_outputs)
        diff = ops.cast(teacher_outputs, student_outputs.dtype) - student_outputs
        return ops.mean(diff * diff)

    def get_config(self) -> dict:
        return {"teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_layer_name(model, name, role: str, argument: str) -> None:
    names = [layer.name for layer in model.layers]
    if name is not None and name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        raise ValueError(
            f"The {role} model {model.name!r} has no layer named {name!r}. "
            + (f"Close matches: {close}. " if close else f"Its layers: {names}. ")
            + f"Received: {argument}={name!r}")


@keras.saving.register_keras_serializable(package="tfcompress")
class Distiller(keras.distillation.Distiller):
    """``keras.distillation.Distiller`` that also trains :class:`HintDistillation` projections.

    Same arguments as Keras' class. Layer names of feature losses are checked first,
    and a misspelt one is reported with its close matches.
    """

    def __init__(self, teacher, student, distillation_losses, **kwargs):
        losses = distillation_losses if isinstance(distillation_losses, (list, tuple)) \
            else [distillation_losses]
        for loss in losses:
            for role, model, attr in (("teacher", teacher, "teacher_layer_name"),
                                      ("student", student, "student_layer_name")):
                if getattr(loss, attr, None) is not None and getattr(model, "inputs", None):
                    _check_layer_name(model, getattr(loss, attr), role, attr)
        super().__init__(teacher=teacher, student=student,
                         distillation_losses=distillation_losses, **kwargs)
        # Tracked as sublayers, so their weights are in trainable_weights and trained.
        self.hint_projections = [loss.projection for loss in self.distillation_losses
                                 if getattr(loss, "projection", None) is not None]
        for loss in self.distillation_losses:
            if isinstance(loss, HintDistillation):
                loss.trained_by = self.name


class TemperatureSchedule(keras.callbacks.Callback):
    """Sets the temperature of every :class:`SoftTargetDistillation` at each epoch.

    Args:
        schedule: ``epoch -> temperature``.
    """

    def __init__(self, schedule: Callable[[int], float]):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"`schedule` must be callable (epoch -> temperature). "
                            f"Received: {schedule!r}")
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        value = float(self.schedule(epoch))
        if value <= 0:
            raise ValueError(f"The temperature schedule returned {value} at epoch {epoch}; "
                             "temperatures must be positive.")
        losses = [loss for loss in getattr(self.model, "distillation_losses", [])
                  if isinstance(loss, SoftTargetDistillation)]
        if not losses:
            raise ValueError("TemperatureSchedule needs a keras.distillation.Distiller with a "
                             "SoftTargetDistillation loss. Received a model without one.")
        for loss in losses:
            loss.temperature.assign(value)


def with_preprocessing(model, preprocessing, *, name=None):
    """``model`` behind ``preprocessing`` (a layer or a function on tensors).

    Use it when teacher and student expect different inputs, e.g. a teacher trained
    on raw 0-255 pixels and a student on [0, 1]: ``with_preprocessing(teacher,
    keras.layers.Rescaling(255.0))`` reads the student's batch.
    """
    inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
    layer = preprocessing if isinstance(preprocessing, keras.layers.Layer) else \
        keras.layers.Lambda(preprocessing)
    return keras.Model(inputs, model(layer(inputs)), name=name or f"{model.name}_preprocessed")


@keras.saving.register_keras_serializable(package="tfcompress")
class LabelAndTeacherLoss(keras.losses.Loss):
    """``alpha * CE(label) + (1 - alpha) * T^2 KL(teacher_T || student_T)``.

    ``y_true`` packs the integer label in column 0 and the original model's output
    in the other columns, so that distillation is a plain ``fit`` on ``(x, packed)``
    and the teacher runs once per run, not at every step.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.1, from_logits: bool = True,
                 name: str = "label_and_teacher", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature, self.alpha, self.from_logits = temperature, alpha, from_logits

    def call(self, y_true, y_pred):
        # Last axis: the label, then the teacher's output (per position of a sequence too).
        labels, teacher = ops.cast(y_true[..., 0], "int32"), y_true[..., 1:]
        hard = keras.losses.sparse_categorical_crossentropy(labels, y_pred,
                                                            from_logits=self.from_logits)
        soft = soft_target_loss(teacher, y_pred, temperature=self.temperature,
                                from_logits=self.from_logits)
        return self.alpha * hard + (1 - self.alpha) * soft

    def get_config(self):
        return dict(super().get_config(), temperature=self.temperature, alpha=self.alpha,
                    from_logits=self.from_logits)
