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
