import keras
import numpy as np
import pytest

import tfcompress as tc
from tfcompress import lowrank

L = keras.layers


def _conv_model(kernel=(3, 3), strides=(1, 1), padding="same", dilation=(1, 1)):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 6))
    x = L.Conv2D(8, kernel, strides=strides, padding=padding, dilation_rate=dilation,
                 activation="relu", name="conv")(inputs)
    return keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(x)))


X = np.random.RandomState(0).rand(4, 12, 12, 6).astype("float32")


@pytest.mark.parametrize("method", ["channel", "spatial"])
@pytest.mark.parametrize("kwargs", [
    {}, {"strides": (2, 1)}, {"padding": "valid"}, {"strides": (2, 2), "padding": "valid"},
    {"dilation": (2, 1)}, {"kernel": (3, 5)},
])
def test_full_rank_conv_factorization_is_exact(method, kwargs):
    model = _conv_model(**kwargs)
    full = min(lowrank._matrix(model.get_layer("conv"), method).shape)
    small = lowrank.factorize(model, ranks={"conv": full}, layers=["conv"], method=method)
    kinds = [(l.name, l.kernel.shape[:2]) for l in small.layers if isinstance(l, L.Conv2D)]
    assert [k[0] for k in kinds] == ["conv_u", "conv_v"]
    np.testing.assert_allclose(small.predict(X, verbose=0), model.predict(X, verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_full_rank_dense_factorization_is_exact_and_keeps_activation():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((20,))
    model = keras.Model(inputs, L.Dense(4)(L.Dense(16, activation="relu", name="d")(inputs)))
    small = lowrank.factorize(model, ranks={"d": 16}, layers=["d"])
    assert small.get_layer("d_u").activation.__name__ == "linear"
    assert not small.get_layer("d_u").use_bias
    assert small.get_layer("d_v").activation.__name__ == "relu"
    x = np.random.RandomState(1).rand(5, 20).astype("float32")
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_ratio_bounds_parameters_and_energy_picks_the_rank():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((784,))
    x = L.Dense(512, activation="relu", name="a")(inputs)
    model = keras.Model(inputs, L.Dense(10, name="out")(L.Dense(512, name="b")(x)))
    small = lowrank.factorize(model, ratio=1 / 3, layers=["a", "b"])
    for plan in small.factor_plans:
        assert plan.params_after <= plan.params_before / 3
    kernel = model.get_layer("a").kernel.numpy()
    s = np.linalg.svd(kernel, compute_uv=False)
    by_energy = lowrank.factorize(model, energy=0.5, layers=["a"])
    rank = by_energy.factor_plans[0].rank
    kept = (s[:rank] ** 2).sum() / (s ** 2).sum()
    assert kept >= 0.5 and (s[:rank - 1] ** 2).sum() / (s ** 2).sum() < 0.5


def test_factored_model_trains_saves_loads_and_converts_with_fewer_macs(tmp_path):
    model = _conv_model()
    small = lowrank.factorize(model, ratio=0.3)
    assert lowrank.count_macs(small) < lowrank.count_macs(model)
    small.compile("adam", "mse")
    small.fit(X, np.zeros((4, 3)), verbose=0)
    small.save(tmp_path / "small.keras")
    loaded = keras.models.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(loaded.predict(X, verbose=0), small.predict(X, verbose=0))
    result = tc.convert(loaded, representative_data=X, progress=False)
    assert not result.report.non_integer_tensors()
    assert result.report.op_histogram["CONV_2D"] == 2


def test_sensitivity_reports_error_per_layer_and_ratio():
    report = lowrank.sensitivity(_conv_model(), X, ratios=(0.2, 0.6))
    assert set(report) == {"conv", "head"}
    errors = report["conv"]
    assert errors[0.2] > errors[0.6] >= 0.0


@pytest.mark.parametrize("method", ["channel", "spatial"])
def test_reconstruct_refits_second_factors_towards_the_original(method):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 6))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2")(h)
    model = keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(h)))
    x = np.random.RandomState(1).rand(64, 12, 12, 6).astype("float32")
    reference = model.predict(x, verbose=0)
    small = lowrank.factorize(model, ratio=0.3, layers=["conv1", "conv2"], method=method)
    error = lambda m: float(np.sqrt(np.mean((m.predict(x, verbose=0) - reference) ** 2)))  # noqa: E731
    before = error(small)
    report = lowrank.reconstruct(small, model, x[:48])
    assert list(report) == ["conv1", "conv2"]  # graph order
    assert all(after < first for first, after in report.values())
    assert error(small) < 0.8 * before
    with pytest.raises(ValueError, match="no factored pair"):
        lowrank.reconstruct(model, model, x)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of `energy` and `ratio`"),
    ({"energy": 0.9, "ratio": 0.5}, "exactly one of `energy` and `ratio`"),
    ({"ratio": 1.5}, "ratio=1.5"),
    ({"energy": 0.0}, "energy=0.0"),
    ({"ratio": 0.5, "method": "tucker"}, "method='tucker'"),
    ({"ratio": 0.5, "layers": ["nope"]}, "No layer named \\['nope'\\]"),
    ({"ranks": {"conv": 100}, "method": "spatial"},
     r"'conv' \(Conv2D, spatial factorization\) has a 18x24 matrix, so its rank must be an "
     r"integer in \[1, 18\]\. Received: ranks\['conv'\]=100"),
    ({"ranks": {"head": 0}}, r"rank must be an integer in \[1, 3\]\. Received: ranks\['head'\]=0"),
])
def test_bad_arguments_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lowrank.factorize(_conv_model(), **kwargs)


def test_unsupported_layer_is_named():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, L.DepthwiseConv2D(3, name="dw")(inputs))
    with pytest.raises(ValueError, match=r"dw \(DepthwiseConv2D\).*Supported: Dense"):
        lowrank.factorize(model, ratio=0.5, layers=["dw"])


def test_factored_mnist_mlp_keeps_accuracy_after_one_epoch(data_dir):
    from tfcompress import data

    ds = data.load_dataset("mnist", data_dir=data_dir)
    x = ds.x_train[:6000].reshape(-1, 784).astype("float32") / 255
    xt = ds.x_test[:2000].reshape(-1, 784).astype("float32") / 255
    keras.utils.set_random_seed(0)
    inputs = keras.Input((784,))
    h = L.Dense(256, activation="relu", name="h2")(L.Dense(256, activation="relu", name="h1")(inputs))
    model = keras.Model(inputs, L.Dense(10)(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(x, ds.y_train[:6000], epochs=3, batch_size=64, verbose=0)
    small = lowrank.factorize(model, ratio=1 / 3, layers=["h1", "h2"])  # the head stays
    small.compile("adam", loss, metrics=["accuracy"])
    small.fit(x, ds.y_train[:6000], epochs=1, batch_size=64, verbose=0)
    before = model.evaluate(xt, ds.y_test[:2000], verbose=0)[1]
    after = small.evaluate(xt, ds.y_test[:2000], verbose=0)[1]
    assert after >= before - 0.01
    assert small.count_params() < 0.45 * model.count_params()


@pytest.mark.parametrize("method", ["channel", "spatial"])
def test_factor_plans_are_read_back_from_a_reloaded_model(tmp_path, method):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 6))
    h = L.Conv2D(8, 3, strides=(2, 1), padding="same", activation="relu", name="conv")(inputs)
    h = L.Conv2D(8, (1, 3), name="wide")(h)
    h = L.Dense(16, activation="relu", name="mlp")(L.Flatten()(h))
    model = keras.Model(inputs, L.Dense(3, name="head")(h))
    small = lowrank.factorize(model, ratio=0.3, method=method)
    assert {p.method for p in small.factor_plans} >= {method, "dense"}
    assert lowrank.factor_plans(small) == small.factor_plans
    small.save(tmp_path / "small.keras")
    loaded = keras.models.load_model(tmp_path / "small.keras")
    assert not hasattr(loaded, "factor_plans")
    assert lowrank.factor_plans(loaded) == small.factor_plans
    assert lowrank.factor_plans(model) == ()


def test_factor_plans_need_a_real_pair_not_just_the_names():
    inputs = keras.Input((8,))
    h = L.Dense(4, name="x_u")(inputs)  # has a bias: not the first half of a pair
    model = keras.Model(inputs, L.Dense(2, name="x_v")(h))
    assert lowrank.factor_plans(model) == ()
    inputs = keras.Input((8,))
    h = L.Dense(4, use_bias=False, name="y_u")(inputs)
    model = keras.Model(inputs, [L.Dense(2, name="y_v")(h), L.Dense(1, name="other")(h)])
    assert lowrank.factor_plans(model) == ()  # its output is read by another layer too


def test_a_shared_layer_is_factored_once_for_all_its_calls():
    # A Dense shared by two inputs (a siamese encoder) got two pairs with one name:
    # Keras' "The name 'enc_u' is used 2 times in the model".
    keras.utils.set_random_seed(0)
    left, right = keras.Input((16,), name="left"), keras.Input((16,), name="right")
    shared = keras.layers.Dense(16, name="enc")
    out = keras.layers.Dense(1, name="head")(keras.layers.Subtract()([shared(left), shared(right)]))
    model = keras.Model([left, right], out)
    small = lowrank.factorize(model, ranks={"enc": 16})  # full rank: the same function
    names = [layer.name for layer in small.layers]
    assert names.count("enc_u") == 1 and names.count("enc_v") == 1, names
    x = [np.random.default_rng(i).normal(size=(8, 16)).astype("float32") for i in (0, 1)]
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-4)
