"""The main job's demo: the pipeline on digits, the stage lines, the latency comparison."""

import io

import numpy as np
import pytest

from tfcompress import benchmark, pipeline
from tfcompress.pipeline import DEMO_RECIPE, compare_latency, run_demo


@pytest.fixture(scope="module")
def digits_demo(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    out = io.StringIO()
    demo = run_demo(dataset="digits", epochs=3, output_dir=str(tmp_path / "demo"), stream=out)
    return demo, out.getvalue(), tmp_path


def test_demo_on_digits_runs_the_whole_pipeline(digits_demo):
    demo, printed, tmp_path = digits_demo
    r = demo.result
    assert demo.dataset == "digits" and r.recipe.name == DEMO_RECIPE["name"]
    assert [s["stage"] for s in r.stages] == ["original", "prune", "quantize"]
    assert r.validation.fully_integer and r.size_ratio < 0.3
    # One line per stage, no Keras progress bars.
    lines = printed.splitlines()
    stages = [l for l in lines if l.startswith("[")]
    assert [l[:5] for l in stages] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert "epoch 3/3" in stages[0] and "epoch 4/4" in stages[1] and "epoch 2/2" in stages[2]
    assert len(lines) <= 7 and "\r" not in printed
    # The latency came from thousands of interleaved rounds, with the noise floor.
    assert r.latency["runs"] == DEMO_RECIPE["benchmark"]["runs"] >= 2000
    assert r.latency["noise_ci95"][0] <= r.latency["noise_ratio"] <= r.latency["noise_ci95"][1]
    table = demo.table()
    assert "| int8 .tflite |" in table and "0.2" in table and "x" in table
    written = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"model_int8.tflite", "original_float.tflite", "test_data.npz", "report.md",
            "report.html", "result.json"} <= written
    with np.load(tmp_path / "demo" / "test_data.npz") as f:
        assert f["x"].shape == (360, 8, 8, 1) and f["y"].shape == (360,)
    steps = demo.next_steps()
    assert [s.split()[1] for s in steps] == ["inspect", "validate", "benchmark"]
    assert all(str(tmp_path / "demo" / "model_int8.tflite") in s for s in steps)


def test_demo_command_prints_results_and_next_commands_in_few_lines(digits_demo, monkeypatch,
                                                                     capsys):
    from absl import flags

    from tfcompress import cli

    demo, _, _ = digits_demo
    monkeypatch.setattr(pipeline, "run_demo", lambda **kwargs: demo)
    flags.FLAGS.unparse_flags()
    assert cli.main(flags.FLAGS(["tfcompress", "demo", "--output_dir=x"])) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) <= 25  # with the stage lines, make main stays under 40
    assert "| int8 .tflite |" in out and "int8 against float: top-1" in out
    assert "Latency int8 / float" in out and "interleaved rounds" in out
    assert sum(l.startswith("  tfcompress ") for l in lines) == 3
    assert "report.html" in out


def test_demo_refuses_an_existing_output_dir(tmp_path):
    (tmp_path / "demo").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        pipeline._write(None, tmp_path / "demo", False, None)


def _fake_stats(monkeypatch, times):
    def measure_latency(models, *, runs, warmup, num_threads):
        assert list(models) == ["float", "int8", "float again"] and runs == len(times["float"])
        return {name: benchmark.LatencyStats(name, True, 1, runs, float(np.median(t)), 0, 0, 0, 0,
                                             0, tuple(t)) for name, t in times.items()}

    monkeypatch.setattr(benchmark, "measure_latency", measure_latency)


def test_compare_latency_says_when_a_difference_is_within_noise(monkeypatch):
    rng = np.random.default_rng(0)
    base = 10 + rng.random(3000)
    noise = lambda: base * (1 + 0.05 * rng.standard_normal(3000))  # noqa: E731
    _fake_stats(monkeypatch, {"float": base, "int8": noise(), "float again": noise()})
    lat = compare_latency(b"f", b"i", runs=3000)
    assert lat["within_noise"] and lat["ratio_ci95"][0] < 1 < lat["ratio_ci95"][1]
    assert abs(lat["noise_ratio"] - 1) < 0.01
    assert lat["float_p10_ms"] < lat["float_ms"] < lat["float_p90_ms"]
    assert "within noise" in pipeline._latency_verdict(lat)

    _fake_stats(monkeypatch, {"float": base, "int8": 0.5 * noise(), "float again": noise()})
    lat = compare_latency(b"f", b"i", runs=3000)
    assert not lat["within_noise"] and lat["ratio"] == pytest.approx(0.5, abs=0.01)
    assert "faster, beyond noise" in pipeline._latency_verdict(lat)


def test_median_confidence_interval_covers_the_median_and_shrinks_with_samples():
    rng = np.random.default_rng(1)
    m, (lo, hi) = pipeline._median_ci(rng.normal(1.0, 0.1, 100))
    m2, (lo2, hi2) = pipeline._median_ci(rng.normal(1.0, 0.1, 10000))
    assert lo <= m <= hi and lo2 <= m2 <= hi2 and hi2 - lo2 < (hi - lo) / 5


def test_stage_labels_follow_the_recipe():
    from tfcompress.recipe import as_recipe

    assert pipeline._stage_labels(as_recipe(DEMO_RECIPE)) == [
        "prune 25% of the channels, distilled", "quantization-aware training, distilled"]
    assert pipeline._stage_labels(as_recipe({"quantize": {"method": "ptq"}})) == [
        "post-training quantization (calibrate)"]
