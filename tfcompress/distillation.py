"""Knowledge distillation on top of Keras 3's own ``keras.distillation``.

Keras 3.15 ships ``Distiller``, ``LogitsDistillation`` and ``FeatureDistillation``;
this module adds only what they lack:

* :class:`SoftTargetDistillation`: Hinton's soft-target loss with the ``T^2`` gradient
  scaling, for models that end in logits *or* in a softmax (ResNet-8 does), with the
  temperature held in a variable so that :class:`TemperatureSchedule` can change it
  during ``fit`` without retracing (``LogitsDistillation`` bakes a Python float in);
* :class:`AttentionTransfer`: Zagoruyko & Komodakis' attention maps between conv
  feature maps whose channel counts differ;
* :func:`with_preprocessing`: a teacher that expects other inputs than the student
  (raw 0-255 vs /255) gets its own preprocessing in front, so both read the same batch.

Use them with ``keras.distillation.Distiller`` as usual::

    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student, student_loss_weight=0.1,
        distillation_losses=[SoftTargetDistillation(temperature=4.0, from_logits=False)])
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    distiller.fit(x, y, callbacks=[TemperatureSchedule(lambda epoch: 4.0 - epoch * 0.5)])

Example:
    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -2.0]], "float32")
    >>> round(float(soft_target_loss(t, t, temperature=4.0)), 6)
    0.0
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import ops

__all__ = [
    "AttentionTransfer",
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
