"""Recipes: defaults, switching steps off, files, and errors that say what is allowed."""

import json

import pytest

from tfcompress.recipe import LowRank, Prune, Recipe, as_recipe


def test_default_recipe_quantizes_converts_validates_and_times():
    assert Recipe().steps() == ["quantize", "convert", "validate", "benchmark"]


def test_every_step_can_be_switched_off_and_round_trips():
    r = Recipe.from_dict({"lowrank": {"ratio": 0.4}, "prune": {"kind": "2:4"},
                          "quantize": {"enabled": False}, "validate": False, "benchmark": None,
                          "distill": True})
    assert r.steps() == ["lowrank", "prune", "convert"]
    assert r.distill.temperature == 4.0
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_dict(json.loads(r.to_json())) == r


def test_json_and_yaml_files(tmp_path):
    (tmp_path / "r.yaml").write_text("name: mine\nprune:\n  kind: channels\n  sparsity: 0.25\n"
                                     "benchmark: null\n")
    (tmp_path / "r.json").write_text(json.dumps({"prune": {"kind": "channels", "sparsity": 0.25},
                                                 "benchmark": None, "name": "mine"}))
    assert as_recipe(tmp_path / "r.yaml") == as_recipe(str(tmp_path / "r.json"))
    assert as_recipe(tmp_path / "r.yaml").prune == Prune(kind="channels", sparsity=0.25)
    with pytest.raises(FileNotFoundError, match="No such recipe file"):
        Recipe.load(tmp_path / "missing.yaml")
    (tmp_path / "r.txt").write_text("{}")
    with pytest.raises(ValueError, match=r"\.json, \.yaml or \.yml"):
        Recipe.load(tmp_path / "r.txt")


@pytest.mark.parametrize("config, error, message", [
    ({"prune": {"kind": "random"}}, ValueError, "prune.kind must be one of"),
    ({"prune": {"sparsity": 1.0}}, ValueError, r"prune.sparsity must be in \[0, 1\)"),
    ({"quantize": {"method": "int4"}}, ValueError, "'qat' or 'ptq'"),
    ({"quantize": {"epochs": -1}}, ValueError, "non-negative integer"),
    ({"distill": {"temperature": 0}}, ValueError, "must be positive"),
    ({"prune": {"sparsty": 0.5}}, ValueError, r"Unknown options \['sparsty'\]"),
    ({"prune": {"reconstruct": True}}, ValueError, "kind 'channels' only. Received: kind='unstructured'"),
    ({"pruning": {}}, ValueError, r"Unknown recipe steps \['pruning'\]"),
    ({"prune": 0.5}, TypeError, "must be a mapping"),
    ([], TypeError, "is a Recipe, a dict"),
])
def test_errors_name_what_was_received(config, error, message):
    with pytest.raises(error, match=message):
        as_recipe(config)


def test_lowrank_needs_exactly_one_of_energy_and_ratio():
    with pytest.raises(ValueError, match="exactly one of energy and ratio"):
        LowRank(energy=0.9, ratio=0.5)
    assert LowRank(energy=0.9, ratio=None).energy == 0.9


@pytest.mark.parametrize("config, error, message", [
    ({"quantize": {"learning_rate": float("nan")}}, TypeError,
     r"quantize.learning_rate must be a finite number or null. Received: nan"),
    ({"prune": {"epochs": True}}, TypeError, r"prune.epochs must be an integer. Received: True"),
    ({"benchmark": {"runs": -5}}, ValueError,
     r"benchmark.runs must be a positive integer. Received: -5"),
    ({"benchmark": {"runs": "5"}}, TypeError, r"benchmark.runs must be an integer. Received: '5'"),
    ({"prune": {"layers": "conv2d"}}, TypeError,
     r"prune.layers must be a list of strings or null. Received: 'conv2d'"),
    ({"quantize": {"estimator": "max"}}, ValueError, r"quantize.estimator must be one of"),
    ({"quantize": {"calibration_samples": 0}}, ValueError, r"calibration_samples must be a positive"),
    ({"validate": {"max_accuracy_drop": 5}}, ValueError, r"max_accuracy_drop must be in \[0, 1\]"),
    ({"validate": {"require_fully_integer": "yes"}}, TypeError, r"must be true or false"),
    ({"distill": {"alpha": "0.1"}}, TypeError, r"distill.alpha must be a finite number"),
    ({"lowrank": {"ratio": 0.5, "learning_rate": -1.0}}, ValueError,
     r"lowrank.learning_rate must be a positive number or null. Received: -1.0"),
    ({"name": 7}, TypeError, r"name must be a string. Received: 7"),
])
def test_wrong_types_and_ranges_are_refused_before_any_training(config, error, message):
    with pytest.raises(error, match=message):
        Recipe.from_dict(config)


@pytest.mark.parametrize("name, text, message", [
    ("broken.yaml", "prune: {sparsity: [0.5\n", r"is not valid YAML \(line 2, column 1\)"),
    ("tag.yaml", "prune: !!python/object/apply:os.system ['touch PWNED']\n",
     r"not valid YAML .*could not determine a constructor for the tag"),
    ("nan.yaml", "quantize:\n  learning_rate: .nan\n", r"quantize.learning_rate .* Received: nan"),
    ("epochs.yaml", "prune:\n  epochs: true\n", r"prune.epochs must be an integer"),
    ("broken.json", "{bad", r"is not valid JSON"),
    ("list.yaml", "- 1\n- 2\n", r"A recipe is a mapping of steps"),
])
def test_bad_recipe_files_give_one_line_errors(tmp_path, monkeypatch, name, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises((TypeError, ValueError), match=message) as info:
        Recipe.load(tmp_path / name)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "PWNED").exists()
