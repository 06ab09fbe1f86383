"""Every Keras object tfcompress registers survives serialization.

In the manner of Keras' ``run_class_serialization_test``: each registered class gets a
config round trip (``from_config(get_config())`` and ``serialize_keras_object`` /
``deserialize_keras_object``), then a check of what it computes after the trip:
layers and wrappers in a tiny Functional model saved to ``.keras`` and read back with
plain ``keras.models.load_model`` (no custom objects, no scopes), losses on the same
tensors, schedules at the same steps.

Objects are found by their registered name, not their module, so that moving a class
between modules does not break this file; adding a registered class without adding it
to :data:`REGISTERED` (and a case below) fails the first test.
"""

import copy

import keras
import numpy as np
import pytest

import tfcompress  # noqa: F401 - imports every submodule, so every class is registered
from tfcompress.quantization import QuantizeConfig

L = keras.layers

# Every class registered with register_keras_serializable(package="tfcompress").
REGISTERED = (
    "AllValuesQuantizer",
    "AttentionTransfer",
    "AutomatedGradualPruning",
    "ChannelMask",
    "ConstantSparsity",
    "Default8BitConvWeightsQuantizer",
    "Default8BitOutputQuantizeConfig",
    "Default8BitQuantizeConfig",
    "Distiller",
    "FakeQuant",
    "FixedQuantizer",
    "HintDistillation",
    "L2Normalize",
    "LabelAndTeacherLoss",
    "LastValueQuantizer",
    "MovingAverageQuantizer",
    "NoOpQuantizeConfig",
    "NoQuantizer",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "QuantizeAnnotate",
    "QuantizeWrapper",
    "QuantizeWrapperV2",
    "SoftTargetDistillation",
)


def _cls(name):
    cls = keras.saving.get_registered_object(f"tfcompress>{name}")
    assert cls is not None, f"tfcompress>{name} is not registered"
    return cls


def _rng():
    return np.random.default_rng(0)


@keras.saving.register_keras_serializable(package="tfcompress_tests")
class _UserQuantizeConfig(QuantizeConfig):
    """A user's QuantizeConfig, registered under the user's own package."""

    def __init__(self, output: bool = False):
        self.output = output

    def quantize_output(self, layer):
        return self.output

    def get_config(self):
        return {"output": self.output}


# ---------------------------------------------------------------------------
# One instance of each class, as a user would build it.
# ---------------------------------------------------------------------------


def _teacher_and_student():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1), name="t_in")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="t_conv")(inputs)
    teacher = keras.Model(inputs, L.Dense(3, name="t_out")(L.GlobalAveragePooling2D()(x)),
                          name="teacher")
    inputs = keras.Input((6, 6, 1), name="s_in")
    x = L.Conv2D(2, 3, padding="same", activation="relu", name="s_conv")(inputs)
    student = keras.Model(inputs, L.Dense(3, name="s_out")(L.GlobalAveragePooling2D()(x)),
                          name="student")
    return teacher, student


def _distiller():
    teacher, student = _teacher_and_student()
    return _cls("Distiller")(
        teacher=teacher, student=student, student_loss_weight=0.25,
        distillation_losses=[_cls("SoftTargetDistillation")(temperature=3.0),
                             _cls("HintDistillation")("t_conv", "s_conv")],
        distillation_loss_weights=[1.0, 0.5])


INSTANCES = {
    "AttentionTransfer": lambda: _cls("AttentionTransfer")("t_conv", "s_conv", p=3.0),
    "AutomatedGradualPruning": lambda: _cls("AutomatedGradualPruning")(
        0.1, 0.8, begin_step=10, end_step=110, frequency=20),
    "ChannelMask": lambda: _cls("ChannelMask")(
        pruning_schedule=_cls("PolynomialDecay")(0.0, 0.5, begin_step=0, end_step=40),
        name="mask"),
    "ConstantSparsity": lambda: _cls("ConstantSparsity")(0.6, begin_step=5, end_step=200,
                                                         frequency=7),
    "Distiller": _distiller,
    "FakeQuant": lambda: _cls("FakeQuant")(num_bits=16, decay=0.9, fixed_range=(-1.0, 2.0),
                                           name="fq"),
    "HintDistillation": lambda: _cls("HintDistillation")("t_conv", "s_conv"),
    "L2Normalize": lambda: _cls("L2Normalize")(epsilon=1e-6, name="l2"),
    "LabelAndTeacherLoss": lambda: _cls("LabelAndTeacherLoss")(temperature=2.5, alpha=0.3,
                                                               from_logits=False),
    "PolynomialDecay": lambda: _cls("PolynomialDecay")(0.2, 0.9, begin_step=3, end_step=103,
                                                       power=2, frequency=10),
    "PruneLowMagnitude": lambda: _cls("PruneLowMagnitude")(
        L.Dense(4, name="d"), pruning_schedule=_cls("ConstantSparsity")(0.5, frequency=1),
        block_size=(1, 2), block_pooling_type="MAX", name="pruned"),
    "QuantizeAnnotate": lambda: _cls("QuantizeAnnotate")(L.Dense(3, name="d"),
                                                         _UserQuantizeConfig(True)),
    "QuantizeWrapper": lambda: _cls("QuantizeWrapper")(
        L.Conv2D(4, 3, activation="softmax", name="c"),
        batchnorm=L.BatchNormalization(momentum=0.5, name="bn"), name="q"),
    "SoftTargetDistillation": lambda: _cls("SoftTargetDistillation")(temperature=2.0,
                                                                     from_logits=False),
    # tfmot's quantizer API (tfcompress.quantizers, tfcompress.default_8bit).
    "AllValuesQuantizer": lambda: _cls("AllValuesQuantizer")(8, False, True, False),
    "Default8BitConvWeightsQuantizer": lambda: _cls("Default8BitConvWeightsQuantizer")(),
    "Default8BitOutputQuantizeConfig": lambda: _cls("Default8BitOutputQuantizeConfig")(),
    "Default8BitQuantizeConfig": lambda: _cls("Default8BitQuantizeConfig")(
        ["kernel"], ["activation"], False),
    "FixedQuantizer": lambda: _cls("FixedQuantizer")(8, -1.0, 3.0, False),
    "LastValueQuantizer": lambda: _cls("LastValueQuantizer")(8, True, True, True),
    "MovingAverageQuantizer": lambda: _cls("MovingAverageQuantizer")(8, False, False, False),
    "NoOpQuantizeConfig": lambda: _cls("NoOpQuantizeConfig")(),
    "NoQuantizer": lambda: _cls("NoQuantizer")(),
    "QuantizeWrapperV2": lambda: _cls("QuantizeWrapperV2")(
        L.Dense(3, activation="relu", name="d"),
        _cls("Default8BitQuantizeConfig")(["kernel"], ["activation"], False), name="qv2"),
}

LAYERS = ("ChannelMask", "FakeQuant", "L2Normalize", "PruneLowMagnitude", "QuantizeAnnotate",
          "QuantizeWrapper", "QuantizeWrapperV2")
LOSSES = ("AttentionTransfer", "HintDistillation", "LabelAndTeacherLoss",
          "SoftTargetDistillation")
SCHEDULES = ("AutomatedGradualPruning", "ConstantSparsity", "PolynomialDecay")
MODELS = ("Distiller",)
QUANTIZERS = ("AllValuesQuantizer", "Default8BitConvWeightsQuantizer", "FixedQuantizer",
              "LastValueQuantizer", "MovingAverageQuantizer", "NoQuantizer")
QUANTIZE_CONFIGS = ("Default8BitOutputQuantizeConfig", "Default8BitQuantizeConfig",
                    "NoOpQuantizeConfig")


def test_every_registered_class_is_listed_and_has_a_round_trip_case():
    registered = {k.split(">", 1)[1] for k in keras.saving.get_custom_objects()
                  if k.startswith("tfcompress>")}
    assert registered == set(REGISTERED)
    assert set(INSTANCES) == set(REGISTERED)
    assert sorted(LAYERS + LOSSES + SCHEDULES + MODELS + QUANTIZERS
                  + QUANTIZE_CONFIGS) == sorted(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_from_config_of_get_config_gives_an_equal_config(name):
    obj = INSTANCES[name]()
    config = obj.get_config()
    # Keras' deserializers may consume nested dicts; the original must stay intact.
    revived = _cls(name).from_config(copy.deepcopy(config))
    assert type(revived) is _cls(name)
    assert revived.get_config() == config


@pytest.mark.parametrize("name", REGISTERED)
def test_serialize_then_deserialize_keras_object_gives_an_equal_object(name):
    obj = INSTANCES[name]()
    serialized = keras.saving.serialize_keras_object(obj)
    assert serialized["registered_name"] == f"tfcompress>{name}"
    revived = keras.saving.deserialize_keras_object(copy.deepcopy(serialized))
    assert type(revived) is _cls(name)
    assert keras.saving.serialize_keras_object(revived) == serialized


# ---------------------------------------------------------------------------
# Layers and wrappers: a .keras file read back by plain load_model.
# ---------------------------------------------------------------------------


def _fit_one_step(model, x, y, callbacks=()):
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=list(callbacks))


def _model_with(name):
    """A tiny Functional model holding a ``name`` layer in a non-trivial state, and inputs."""
    rng = _rng()
    keras.utils.set_random_seed(0)
    if name == "ChannelMask":
        inputs = keras.Input((5, 5, 2))
        mask = INSTANCES[name]()
        x = mask(L.Conv2D(4, 3, name="c1")(inputs))
        model = keras.Model(inputs, L.Dense(2)(L.Flatten()(L.Conv2D(3, 1, name="c2")(x))))
        mask.mask.assign([1.0, 0.0, 1.0, 0.0])
        mask.pruning_step.assign(7)
        return model, rng.random((4, 5, 5, 2), dtype="float32")
    if name == "FakeQuant":
        inputs = keras.Input((6,))
        x = _cls("FakeQuant")(name="fq_learned")(L.Dense(5)(inputs))
        model = keras.Model(inputs, _cls("FakeQuant")(fixed_range=(-1.0, 1.0))(L.Dense(3)(x)))
        x = rng.normal(size=(8, 6)).astype("float32")
        _fit_one_step(model, x, rng.random((8, 3), dtype="float32"))
        learned = model.get_layer("fq_learned")
        assert float(learned.max_value.numpy()) > 0.0 > float(learned.min_value.numpy())
        return model, x
    if name == "L2Normalize":
        inputs = keras.Input((6,))
        model = keras.Model(inputs, L.Dense(2)(INSTANCES[name]()(L.Dense(4)(inputs))))
        return model, rng.normal(size=(8, 6)).astype("float32")
    if name == "PruneLowMagnitude":
        from tfcompress.pruning import UpdatePruningStep

        inputs = keras.Input((6,))
        model = keras.Model(inputs, L.Dense(2)(INSTANCES[name]()(inputs)))
        x = rng.normal(size=(8, 6)).astype("float32")
        _fit_one_step(model, x, rng.random((8, 2), dtype="float32"), [UpdatePruningStep()])
        assert float(np.mean(model.get_layer("pruned").masks[0].numpy() == 0)) == 0.5
        return model, x
    if name == "QuantizeAnnotate":
        inputs = keras.Input((6,))
        model = keras.Model(inputs, INSTANCES[name]()(L.Dense(5, activation="relu")(inputs)))
        return model, rng.normal(size=(4, 6)).astype("float32")
    if name == "QuantizeWrapper":
        # A folded BatchNorm on a conv, and a softmax Dense with its pre-activation quantizer.
        wrapper = _cls("QuantizeWrapper")
        inputs = keras.Input((6, 6, 2))
        x = wrapper(L.Conv2D(4, 3, activation="relu", name="c"),
                    batchnorm=L.BatchNormalization(name="bn"))(inputs)
        outputs = wrapper(L.Dense(3, activation="softmax", name="d"))(L.Flatten()(x))
        model = keras.Model(inputs, _cls("FakeQuant")()(outputs))
        x = rng.normal(size=(8, 6, 6, 2)).astype("float32")
        _fit_one_step(model, x, rng.random((8, 3), dtype="float32"))
        bn = model.get_layer("quant_c").batchnorm
        assert not np.allclose(bn.moving_mean.numpy(), 0.0)  # the step moved the statistics
        assert float(model.get_layer("quant_d").pre_activation.max_value.numpy()) > 0.0
        return model, x
    if name == "QuantizeWrapperV2":
        inputs = keras.Input((6,))
        wrapper = INSTANCES[name]()
        model = keras.Model(inputs, wrapper(inputs))
        x = rng.normal(size=(8, 6)).astype("float32")
        _fit_one_step(model, x, rng.random((8, 3), dtype="float32"))
        assert any(float(w.numpy()) > 0.0 for w in wrapper.non_trainable_weights
                   if w.path.endswith("activation_0_max"))  # the activation range moved
        return model, x
    raise AssertionError(f"no model for {name}")


@pytest.mark.parametrize("name", LAYERS)
def test_layer_in_a_keras_file_loads_with_plain_load_model_and_computes_the_same(name, tmp_path):
    model, x = _model_with(name)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert any(type(layer) is _cls(name) for layer in loaded.layers)
    assert len(loaded.weights) == len(model.weights)
    for a, b in zip(model.weights, loaded.weights):  # masks, ranges, steps, BN statistics
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Losses: the same value on the same tensors after a round trip.
# ---------------------------------------------------------------------------


def _loss_value(name, loss):
    rng = _rng()
    if name == "LabelAndTeacherLoss":  # y_true packs the label and the teacher's probabilities
        teacher = rng.dirichlet(np.ones(4), size=5).astype("float32")
        y_true = np.concatenate([rng.integers(0, 4, (5, 1)).astype("float32"), teacher], -1)
        return float(loss(y_true, rng.dirichlet(np.ones(4), size=5).astype("float32")))
    if name == "SoftTargetDistillation":
        t, s = (rng.dirichlet(np.ones(4), size=5).astype("float32") for _ in range(2))
        return float(loss.compute_loss(t, s))
    # Feature losses: (B, H, W, C) maps of the same width (no projection is needed).
    t, s = (rng.normal(size=(3, 4, 4, 2)).astype("float32") for _ in range(2))
    return float(loss.compute_loss(t, s))


@pytest.mark.parametrize("name", LOSSES)
def test_loss_gives_the_same_value_after_a_serialization_round_trip(name):
    loss = INSTANCES[name]()
    if name == "SoftTargetDistillation":
        loss.temperature.assign(5.0)  # as a TemperatureSchedule would: the trip keeps it
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    before = _loss_value(name, loss)
    assert before > 0.0
    assert _loss_value(name, revived) == pytest.approx(before, rel=1e-6)


def test_model_compiled_with_label_and_teacher_loss_reloads_it_from_a_keras_file(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(inputs))
    model.compile("adam", loss=INSTANCES["LabelAndTeacherLoss"]())
    rng = _rng()
    x = rng.random((6, 4), dtype="float32")
    y = np.concatenate([rng.integers(0, 3, (6, 1)), rng.dirichlet(np.ones(3), 6)], -1)
    model.fit(x, y.astype("float32"), batch_size=6, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.loss) is _cls("LabelAndTeacherLoss")
    assert loaded.loss.get_config() == model.loss.get_config()
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0),
                                                             rel=1e-6)


# ---------------------------------------------------------------------------
# Schedules: the same (should_prune, sparsity) at every step after a round trip.
# ---------------------------------------------------------------------------

STEPS = (0, 1, 3, 5, 10, 12, 30, 53, 100, 103, 110, 111, 200, 201, 1000)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_gives_the_same_values_at_every_step_after_a_serialization_round_trip(name):
    schedule = INSTANCES[name]()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert revived == schedule

    def values(s):
        return [(bool(s(step)[0]), float(s(step)[1])) for step in STEPS]

    assert values(revived) == values(schedule)
    assert {prune for prune, _ in values(schedule)} == {True, False}  # turns and off-turns


# ---------------------------------------------------------------------------
# Quantizers and QuantizeConfigs: the same quantized values after a round trip.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", QUANTIZERS)
def test_quantizer_quantizes_the_same_after_a_serialization_round_trip(name):
    quantizer = INSTANCES[name]()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(quantizer))
    assert revived == quantizer
    x = _rng().normal(size=(4, 3)).astype("float32")
    holder_a, holder_b = L.Layer(), L.Layer()
    a, b = quantizer.build(x.shape, "t", holder_a), revived.build(x.shape, "t", holder_b)
    for training in (True, False):
        np.testing.assert_array_equal(np.asarray(quantizer(x, training, a)),
                                      np.asarray(revived(x, training, b)))


@pytest.mark.parametrize("name", QUANTIZE_CONFIGS)
def test_quantize_config_describes_the_same_quantizers_after_a_round_trip(name):
    config = INSTANCES[name]()
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(config))
    layer = L.Dense(3, activation="relu")
    layer.build((None, 4))
    assert [q for _, q in revived.get_weights_and_quantizers(layer)] == [
        q for _, q in config.get_weights_and_quantizers(layer)]
    assert revived.get_output_quantizers(layer) == config.get_output_quantizers(layer)


# ---------------------------------------------------------------------------
# Distiller: a Model, saved and loaded whole.
# ---------------------------------------------------------------------------


# Keras' own Distiller overrides compile() without compile_from_config(), so
# load_model warns and leaves the loaded Distiller uncompiled; that is Keras' behaviour.
@pytest.mark.filterwarnings("ignore:`compile\\(\\)` was not called:UserWarning")
def test_distiller_in_a_keras_file_loads_with_plain_load_model_and_keeps_its_state(tmp_path):
    distiller = _distiller()
    rng = _rng()
    x = rng.random((8, 6, 6, 1), dtype="float32")
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(x, rng.integers(0, 3, 8), batch_size=8, epochs=1, verbose=0)
    expected = distiller.predict(x, verbose=0)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert type(loaded) is _cls("Distiller")
    assert [type(loss).__name__ for loss in loaded.distillation_losses] == [
        "SoftTargetDistillation", "HintDistillation"]
    assert float(loaded.distillation_losses[0].temperature.numpy()) == 3.0
    assert loaded.student_loss_weight == 0.25
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    # The hint projection (student width 2 -> teacher width 4) is trained state too.
    (projection,) = distiller.hint_projections
    (revived,) = loaded.hint_projections
    np.testing.assert_array_equal(revived.kernel.numpy(), projection.kernel.numpy())
