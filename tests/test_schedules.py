import keras
import pytest

from tfcompress.schedules import (AutomatedGradualPruning, ConstantSparsity, PolynomialDecay,
                                  deserialize)


def _at(schedule, step):
    prune, sparsity = schedule(step)
    return bool(prune), round(float(sparsity), 6)


def test_constant_sparsity_prunes_on_turns_inside_its_range():
    s = ConstantSparsity(0.6, begin_step=10, end_step=30, frequency=10)
    assert [_at(s, t)[0] for t in (0, 9, 10, 15, 20, 30, 31, 40)] == [
        False, False, True, False, True, True, False, False]
    assert _at(s, 0)[1] == 0.6


def test_constant_sparsity_end_step_minus_one_never_stops():
    s = ConstantSparsity(0.5, begin_step=0, end_step=-1, frequency=100)
    assert _at(s, 10_000)[0] and not _at(s, 10_001)[0]


def test_polynomial_decay_matches_tfmot_formula():
    s = PolynomialDecay(0.2, 0.8, begin_step=100, end_step=300, power=2, frequency=50)
    for step in (0, 100, 150, 200, 300, 1000):
        p = min(max((step - 100) / 200, 0.0), 1.0)
        expected = 0.8 + (0.2 - 0.8) * (1 - p) ** 2
        assert _at(s, step)[1] == pytest.approx(expected, abs=1e-6)
    assert [_at(s, t)[0] for t in (50, 100, 125, 150, 300, 350)] == [
        False, True, False, True, True, False]


def test_agp_is_cubic_polynomial_decay():
    agp = AutomatedGradualPruning(0.0, 0.9, begin_step=0, end_step=100, frequency=10)
    poly = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100, power=3, frequency=10)
    assert all(_at(agp, t) == _at(poly, t) for t in range(0, 120, 5))
    assert "power" not in agp.get_config()["config"]


@pytest.mark.parametrize("schedule", [
    ConstantSparsity(0.5, begin_step=3, end_step=9, frequency=2),
    PolynomialDecay(0.1, 0.7, begin_step=0, end_step=50, power=1, frequency=5),
    AutomatedGradualPruning(0.0, 0.5, begin_step=2, end_step=20, frequency=1),
])
def test_schedule_config_round_trips(schedule):
    config = schedule.get_config()
    assert set(config) == {"class_name", "config"}  # tfmot's form
    assert config["class_name"] == type(schedule).__name__
    assert type(schedule)(**config["config"]) == schedule
    assert type(schedule).from_config(config) == schedule
    assert type(schedule).from_config(config["config"]) == schedule
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule


@pytest.mark.parametrize("make, message", [
    (lambda: ConstantSparsity(1.0), "target_sparsity=1.0"),
    (lambda: ConstantSparsity(-0.1), "target_sparsity=-0.1"),
    (lambda: PolynomialDecay(0.0, 1.2, 0, 10), "final_sparsity=1.2"),
    (lambda: PolynomialDecay(0.0, 0.5, begin_step=10, end_step=5), "end_step=5"),
    (lambda: PolynomialDecay(0.0, 0.5, begin_step=10, end_step=-1), "end_step=-1"),
    (lambda: ConstantSparsity(0.5, begin_step=10, end_step=5), "end_step=5"),
    (lambda: ConstantSparsity(0.5, frequency=0), "frequency=0"),
    (lambda: ConstantSparsity(0.5, begin_step=-1), "begin_step=-1"),
    (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=0), "power=0"),
])
def test_bad_schedule_arguments_name_the_value(make, message):
    with pytest.raises(ValueError, match="Received: .*" + message.replace(".", r"\.")):
        make()


def test_step_of_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="begin_step"):
        ConstantSparsity(0.5, begin_step=1.5)


@pytest.mark.parametrize("schedule", [
    ConstantSparsity(0.7, 10, 20, 10),
    PolynomialDecay(0.2, 0.6, 10, 20, 5, 10),
])
def test_tfmot_style_deserialize_of_get_config_returns_an_equal_schedule(schedule):
    restored = keras.saving.deserialize_keras_object(
        schedule.get_config(),
        custom_objects={"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay})
    assert restored.__dict__ == schedule.__dict__
    assert deserialize(schedule.get_config()) == schedule


def test_polynomial_decay_with_end_step_equal_to_begin_step_jumps_to_the_final_sparsity():
    s = PolynomialDecay(0.2, 0.8, begin_step=10, end_step=10, frequency=1)
    assert _at(s, 9) == (False, 0.2)
    assert _at(s, 10) == (True, 0.8)
    assert _at(s, 11) == (False, 0.8)
