"""search(): trials, budget, Pareto fronts, choice, report files."""

import json

import keras
import pytest

import tfcompress as tc
from tfcompress import data, pipeline
from tfcompress.recipe import Prune, Quantize, Recipe


def test_search_chooses_within_budget_and_writes_report(tmp_path, digits_model):
    model, ds = digits_model
    q = Quantize(epochs=1)
    candidates = [[Recipe(quantize=q, name="qat")],
                  [Recipe(prune=Prune(kind="channels", sparsity=s, epochs=1), quantize=q,
                          name=f"ch {s}") for s in (0.25, 0.5, 0.75)]]
    found = tc.search(model, ds, budget=0.05, objective="size", candidates=candidates, runs=20,
                      learning_rate=5e-4, output_dir=tmp_path / "s")
    names = [t["name"] for t in found.trials]
    assert names[0] == "qat" and names[1] == "ch 0.25"
    ok = [i for i, t in enumerate(found.trials)
          if t["val_accuracy"] >= found.float_val_accuracy - 0.05]
    if found.chosen is not None:
        assert found.chosen in ok
        assert found.chosen_trial["size_ratio"] == min(found.trials[i]["size_ratio"] for i in ok)
    # A family stops at its first recipe over the budget.
    for i, t in enumerate(found.trials[1:-1], start=1):
        assert t["val_accuracy"] >= found.float_val_accuracy - 0.05
    assert set(found.pareto_size) <= set(range(len(found.trials)))
    files = {p.name for p in (tmp_path / "s").iterdir()}
    assert {"search.json", "report.md", "accuracy_vs_size.png", "accuracy_vs_latency.png"} <= files
    saved = json.loads((tmp_path / "s" / "search.json").read_text())
    assert saved["objective"] == "size" and len(saved["trials"]) == len(found.trials)


def test_search_rejects_bad_options():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    d = ([[0.0] * 4] * 4, [0, 1, 0, 1], [[0.0] * 4] * 2, [0, 1])
    with pytest.raises(ValueError, match="Unknown objective 'speed'"):
        tc.search(m, d, objective="speed")
    with pytest.raises(ValueError, match="budget"):
        tc.search(m, d, budget=5)


def test_tolerant_channel_layers_follow_the_allowed_drop(digits_model):
    from tfcompress.recipe_search import tolerant_channel_layers

    # A trained model: an untrained one's accuracy can rise when channels go, so that
    # even a negative allowed drop would keep layers.
    model, ds = digits_model
    x, y = ds.x_test.astype("float32"), ds.y_test
    convs = sorted(layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert tolerant_channel_layers(model, x, y, max_drop=1.0) == convs
    # No group gains 5 points by losing a quarter of its channels at once.
    assert tolerant_channel_layers(model, x, y, max_drop=-0.05) == []


def test_default_candidates_families_and_reconstruction():
    from tfcompress.recipe_search import default_candidates

    ds = data.load_dataset("digits")
    keras.utils.set_random_seed(0)
    model = pipeline.small_cnn(ds.input_shape, ds.num_classes)
    x, y = ds.x_test[:64].astype("float32"), ds.y_test[:64]
    for reconstruct in (False, True):
        families = default_candidates(model, x, y_val=y, max_group_drop=1.0,
                                      reconstruct=reconstruct)
        assert [r.name for r in families[0]] == ["qat"]
        channel = [r for f in families for r in f if "channels" in r.name]
        assert [r.name for r in families[1]] == ["channels 0.125", "channels 0.25",
                                                 "channels 0.375", "channels 0.5"]
        assert any(r.name.startswith("tolerant channels") for r in channel)
        assert all(r.prune.kind == "channels" and r.prune.reconstruct is reconstruct
                   for r in channel)
        sparse = [r for f in families for r in f if r.name.startswith("sparse")]
        assert [r.name for r in sparse] == ["sparse 0.6", "sparse 0.7", "sparse 0.8"]
        # The layers with at least 1024 weights: not the 3x3x1x16 input conv, but the
        # 512x10 classifier of the Flatten head.
        big = ["conv2", "conv3", "classifier"]
        assert all(r.prune.kind == "unstructured" and r.prune.sparse_weights
                   and r.prune.layers == big for r in sparse)


def test_search_chooses_on_given_validation_data(digits_model):
    model, ds = digits_model
    x_val, y_val = ds.x_test[:100].astype("float32"), ds.y_test[:100]
    found = tc.search(model, ds, candidates=[[Recipe(quantize=Quantize(method="ptq"), name="ptq")]],
                      validation_data=(x_val, y_val), runs=5)
    assert found.float_val_accuracy == tc.compression.top1_accuracy(model, x_val, y_val)
    from tfcompress import runtime

    out = runtime.predict(runtime.make_interpreter(found.models[0]), x_val)
    assert found.trials[0]["val_accuracy"] == float((runtime.top1(out) == y_val).mean())
    with pytest.raises(ValueError, match="as many labels as samples"):
        tc.search(model, ds, validation_data=(x_val, y_val[:5]))
    with pytest.raises(TypeError, match="a pair"):
        tc.search(model, ds, validation_data=x_val)
