"""Port of sparsity/keras/pruning_schedule_test.py (Keras 3, tfcompress)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.pruning import ConstantSparsity, PolynomialDecay

pytestmark = pytest.mark.quick
TYPES = ("constant_sparsity", "polynomial_decay")


def _schedule(kind, begin_step, end_step, frequency=10):
    if kind == "constant_sparsity":
        return ConstantSparsity(0.5, begin_step, end_step, frequency)
    return PolynomialDecay(0.2, 0.8, begin_step, end_step, 3, frequency)


@pytest.mark.parametrize("kind", TYPES)
def test_testBeginStepGreaterThanEqualsZero(kind):
    for begin in (-1, -5):
        with pytest.raises(ValueError):
            _schedule(kind, begin, 1000)
    for begin in (0, 1, 100):
        _schedule(kind, begin, 1000)


@pytest.mark.parametrize("kind", TYPES)
def test_testEndStepGreaterThanEqualsZero(kind):
    with pytest.raises(ValueError):
        _schedule(kind, 10, -5)
    for end in (0, 1, 100):
        _schedule(kind, 0, end)


@pytest.mark.parametrize("kind", TYPES)
def test_testEndStepGreaterThanEqualsBeginStep(kind):
    with pytest.raises(ValueError):
        _schedule(kind, 10, 5)
    _schedule(kind, 10, 10)
    _schedule(kind, 10, 20)


@pytest.mark.parametrize("kind", TYPES)
def test_testFrequencyIsPositive(kind):
    for frequency in (0, -1, -5):
        with pytest.raises(ValueError):
            _schedule(kind, 10, 1000, frequency)
    _schedule(kind, 10, 1000, 1)
    _schedule(kind, 10, 1000, 10)


def _validate_sparsity(make):
    for bad in (-0.001, -1.0, -10.0, 1.0, 10.0):
        with pytest.raises(ValueError):
            make(bad)
    for good in (0.0, 0.001, 0.5, 0.99):
        make(good)


@pytest.mark.parametrize("kind", TYPES)
def test_testSparsityValueIsValid(kind):
    if kind == "constant_sparsity":
        _validate_sparsity(lambda s: ConstantSparsity(s, 0))
    else:
        _validate_sparsity(lambda s: PolynomialDecay(s, 0.8, 0, 10))
        _validate_sparsity(lambda s: PolynomialDecay(0.2, s, 0, 10))


@pytest.mark.parametrize("kind", TYPES)
def test_testPrunesOnlyInBeginEndStepRange(kind):
    schedule = _schedule(kind, 100, 200, 1)
    for step, expected in ((90, False), (99, False), (100, True), (110, True), (200, True),
                           (201, False), (210, False)):
        assert bool(schedule(tf.Variable(step))[0]) is expected, step


@pytest.mark.parametrize("kind", TYPES)
def test_testOnlyPrunesAtValidFrequencySteps(kind):
    schedule = _schedule(kind, 100, 200, 10)
    for step, expected in ((109, False), (111, False), (100, True), (110, True)):
        assert bool(schedule(tf.Variable(step))[0]) is expected, step


def test_testPrunesForeverIfEndStepIsNegativeOne():
    schedule = ConstantSparsity(0.5, 0, -1, 10)
    for step in (10000, 100000000):
        assert bool(schedule(tf.Variable(step))[0])
        np.testing.assert_allclose(0.5, float(schedule(tf.Variable(step))[1]))


def test_testPrunesWithConstantSparsity():
    schedule = ConstantSparsity(0.5, 100, 200, 10)
    for step in (100, 110, 200):
        np.testing.assert_allclose(0.5, float(schedule(tf.Variable(step))[1]))


@pytest.mark.parametrize("schedule", [ConstantSparsity(0.7, 10, 20, 10),
                                      PolynomialDecay(0.2, 0.6, 10, 20, 5, 10)])
def test_testSerializeDeserialize(schedule):
    revived = keras.saving.deserialize_keras_object(
        schedule.get_config(),
        custom_objects={"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay})
    assert schedule.__dict__ == revived.__dict__


def test_testRaisesErrorIfEndStepIsNegative():
    with pytest.raises(ValueError):
        PolynomialDecay(0.4, 0.8, 10, -1)


def test_testPolynomialDecay_PrunesCorrectly():
    schedule = PolynomialDecay(0.2, 0.8, 100, 110, 3, 2)
    for step, value in ((100, 0.2), (102, 0.4928), (105, 0.725), (110, 0.8)):
        np.testing.assert_allclose(value, float(schedule(tf.Variable(step))[1]), rtol=1e-6)
