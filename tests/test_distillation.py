import keras
import numpy as np
import pytest

from tfcompress import distillation
from tfcompress.distillation import (AttentionTransfer, SoftTargetDistillation,
                                     TemperatureSchedule, soft_target_loss)

L = keras.layers


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_soft_target_loss_is_t_squared_kl_of_softened_distributions():
    rng = np.random.RandomState(0)
    t, s = rng.randn(5, 4).astype("float32"), rng.randn(5, 4).astype("float32")
    pt, ps = _softmax(t / 3.0), _softmax(s / 3.0)
    expected = 9.0 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
    assert float(soft_target_loss(t, s, temperature=3.0)) == pytest.approx(expected, rel=1e-4)
    # Probabilities in, same answer: log p stands in for the logits.
    from_probs = soft_target_loss(_softmax(t), _softmax(s), temperature=3.0, from_logits=False)
    assert float(from_probs) == pytest.approx(expected, rel=1e-3)


def _pair():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="t_conv")(inputs)
    teacher = keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(2, 3, padding="same", activation="relu", name="s_conv")(inputs)
    student = keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
    return teacher, student


def test_distiller_trains_student_towards_teacher_with_a_scheduled_temperature():
    teacher, student = _pair()
    x = np.random.RandomState(0).rand(64, 8, 8, 1).astype("float32")
    y = teacher.predict(x, verbose=0).argmax(-1)
    loss = SoftTargetDistillation(temperature=4.0)
    distiller = keras.distillation.Distiller(teacher=teacher, student=student,
                                             distillation_losses=[loss], student_loss_weight=0.1)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = float(soft_target_loss(teacher.predict(x, verbose=0), student.predict(x, verbose=0),
                                    temperature=4.0))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(loss.temperature.numpy()))

    distiller.fit(x, y, epochs=3, batch_size=16, verbose=0,
                  callbacks=[TemperatureSchedule(lambda e: 4.0 - e), Record()])
    assert seen == [4.0, 3.0, 2.0]
    after = float(soft_target_loss(teacher.predict(x, verbose=0), student.predict(x, verbose=0),
                                   temperature=4.0))
    assert after < before


def test_attention_transfer_between_layers_with_different_channel_counts():
    teacher, student = _pair()
    a = distillation.attention_map(np.random.rand(2, 4, 4, 5).astype("float32"))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(a), axis=-1), 1.0, rtol=1e-5)
    at = AttentionTransfer("t_conv", "s_conv")
    distiller = keras.distillation.Distiller(teacher=teacher, student=student,
                                             distillation_losses=[at], student_loss_weight=0.5)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.RandomState(1).rand(32, 8, 8, 1).astype("float32")
    history = distiller.fit(x, np.zeros(32, "int64"), epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    with pytest.raises(ValueError, match="same spatial size"):
        at.validate_outputs(np.zeros((1, 4, 4, 2)), np.zeros((1, 2, 2, 2)))


def test_losses_round_trip_their_config():
    for loss in (SoftTargetDistillation(temperature=2.5, from_logits=False),
                 AttentionTransfer("a", "b", p=1.0)):
        config = loss.get_config()
        clone = type(loss).from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert restored.get_config() == config


def test_teacher_with_other_preprocessing_reads_the_students_batch():
    teacher, _ = _pair()
    wrapped = distillation.with_preprocessing(teacher, L.Rescaling(255.0))
    x = np.random.RandomState(2).rand(4, 8, 8, 1).astype("float32")
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), teacher.predict(x * 255, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="temperature=0"):
        SoftTargetDistillation(temperature=0)
    with pytest.raises(TypeError, match="must be callable"):
        TemperatureSchedule(3.0)


def test_hint_distillation_trains_a_projection_between_different_widths():
    teacher, student = _pair()  # t_conv has 8 channels, s_conv 2, both 8x8
    params = student.count_params()
    hint = distillation.HintDistillation("t_conv", "s_conv")
    distiller = distillation.Distiller(teacher=teacher, student=student,
                                       distillation_losses=[hint], student_loss_weight=0.1)
    assert hint.projection is not None and tuple(hint.projection.kernel.shape) == (1, 1, 2, 8)
    assert any(w is hint.projection.kernel for w in distiller.trainable_weights)
    before = hint.projection.kernel.numpy().copy()
    x = np.random.RandomState(1).rand(64, 8, 8, 1).astype("float32")
    t_features = keras.Model(teacher.inputs, teacher.get_layer("t_conv").output).predict(x, verbose=0)
    s_layer = keras.Model(student.inputs, student.get_layer("s_conv").output)

    def hint_error():
        projected = np.asarray(hint.projection(s_layer.predict(x, verbose=0)))
        return float(np.mean((projected - t_features) ** 2))

    first = hint_error()
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(x, np.zeros(64, "int64"), epochs=5, batch_size=16, verbose=0)
    assert not np.allclose(hint.projection.kernel.numpy(), before)  # the projection learned
    assert hint_error() < 0.7 * first  # and the student's features moved towards the hint
    assert student.count_params() == params  # the student itself has no extra layer


def test_hint_distillation_refuses_keras_distiller_and_bad_names():
    teacher, student = _pair()
    plain = keras.distillation.Distiller(
        teacher=teacher, student=student, student_loss_weight=0.5,
        distillation_losses=[distillation.HintDistillation("t_conv", "s_conv")])
    plain.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="use tfcompress.distillation.Distiller"):
        plain.fit(np.zeros((4, 8, 8, 1), "float32"), np.zeros(4, "int64"), verbose=0)
    with pytest.raises(ValueError, match=r"no layer named 't_cnv'\. Close matches: \['t_conv'\]"):
        distillation.Distiller(teacher=teacher, student=student,
                               distillation_losses=[AttentionTransfer("t_cnv", "s_conv")])
    with pytest.raises(ValueError, match="same rank and spatial size"):
        distillation.Distiller(teacher=teacher, student=student,
                               distillation_losses=[distillation.HintDistillation(
                                   "t_conv", student.layers[-1].name)])  # a vector, not a map
