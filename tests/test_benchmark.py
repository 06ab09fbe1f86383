import dataclasses

import numpy as np
import pytest

from tfcompress.benchmark import measure_latency


def test_interleaved_latency_of_int8_and_float(models_dir):
    stats = measure_latency({
        "float": models_dir / "mlperf_tiny_resnet8_cifar10_float.tflite",
        "int8": models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite",
    }, runs=20, warmup=2)
    for s in stats.values():
        assert s.runs == 20 and 0 < s.p50_ms <= s.p90_ms <= s.p99_ms
        assert s.init_ms > 0 and s.size_bytes > 0
    assert stats["int8"].size_bytes < stats["float"].size_bytes


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        measure_latency({})
    with pytest.raises(ValueError, match="runs=0"):
        measure_latency({"m": b"x"}, runs=0)


def test_pinned_measurement_restores_the_process_affinity(tiny_dense):
    import os

    import tfcompress as tc
    from tfcompress import benchmark

    model = tc.convert(tiny_dense, representative_data=np.random.rand(8, 6).astype("float32"),
                       progress=False).model_bytes
    before = os.sched_getaffinity(0)
    during = []
    stats = benchmark.measure_latency({"a": model, "b": model}, runs=20, cpus=[0],
                                      on_round=lambda: during.append(os.sched_getaffinity(0)))
    assert os.sched_getaffinity(0) == before
    assert len(stats["a"].samples_ms) == 20
    assert during == [{0}] * 20  # every timed round ran on the pinned core


def test_side_by_side_report_table_json_csv_and_plot(models_dir, tmp_path):
    import csv
    import json

    from tfcompress import benchmark

    report = benchmark.benchmark_models(
        {"float": models_dir / "mlperf_tiny_resnet8_cifar10_float.tflite",
         "int8": models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"},
        kernels=["xnnpack", "reference"], num_threads=[1], runs=20, warmup=2, progress=False)
    assert [(r["model"], r["kernels"]) for r in report.rows] == [
        ("float", "xnnpack"), ("int8", "xnnpack"), ("float", "reference"), ("int8", "reference")]
    for r in report.rows:
        assert set(r) == set(benchmark.BenchmarkReport.COLUMNS)
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["init_ms"] > 0 and 0 < r["gzip_bytes"] < r["size_bytes"]
        assert 10 < r["peak_rss_mib"] < 2000 and 0 < r["model_rss_mib"] < r["peak_rss_mib"]
    assert report.rows[0]["ratio_to_first"] == 1.0
    # int8 is smaller. (How much faster it runs is measured by tools/latency_benchmark.py;
    # how ratio_to_first is computed is tested on injected timings below.)
    assert report.rows[1]["size_bytes"] < report.rows[0]["size_bytes"] / 3
    assert report.table().count("\n") == 5
    report.save_json(tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["rows"][1]["model"] == "int8"
    report.save_csv(tmp_path / "b.csv")
    rows = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert len(rows) == 4 and rows[3]["kernels"] == "reference"
    png = report.plot(tmp_path / "b.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        report.plot(tmp_path / "b.png")


class _FakeClock:
    """``time.perf_counter`` for benchmark.py: only fake interpreters move it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def _two_files(models_dir):
    """Two real, different .tflite files (models are verified before they are timed)."""
    return {"a": (models_dir / "mlperf_tiny_resnet8_cifar10_float.tflite").read_bytes(),
            "b": (models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes()}


def test_latency_statistics_come_from_interleaved_rounds_of_injected_timings(monkeypatch,
                                                                             models_dir):
    from tfcompress import benchmark

    # Milliseconds per timed round. The paired ratio (median of a/b per round: 0.5, 1, 0.5,
    # 10, 1 -> 1.0) differs from the ratio of the medians (3 / 5 = 0.6) on purpose.
    timed = {"a": [1.0, 2.0, 3.0, 100.0, 5.0], "b": [2.0, 2.0, 6.0, 10.0, 5.0]}
    init = {"a": 7.0, "b": 11.0}
    models = _two_files(models_dir)
    clock, invoked, built = _FakeClock(), [], []

    class FakeInterpreter:
        def __init__(self, name):
            self.name, self.calls = name, 0

        def get_input_details(self):
            return []

        def invoke(self):
            invoked.append(self.name)
            self.calls += 1
            if self.calls > 2:  # after warmup=2 untimed calls
                clock.now += timed[self.name][self.calls - 3] / 1e3

    def make_interpreter(model, *, xnnpack, num_threads):
        buf = bytes(getattr(model, "bytes", model))  # bytes, or the verified model
        name = next(k for k, v in models.items() if v == buf)
        built.append((name, xnnpack, num_threads))
        clock.now += init[name] / 1e3
        return FakeInterpreter(name)

    monkeypatch.setattr(benchmark, "time", clock)
    monkeypatch.setattr(benchmark.runtime, "make_interpreter", make_interpreter)
    rounds = []
    stats = benchmark.measure_latency(models, xnnpack=False, num_threads=2, warmup=2, runs=5,
                                      on_round=lambda: rounds.append(len(invoked)))
    assert built == [("a", False, 2), ("b", False, 2)]
    # Warmup right after each interpreter is built, then one call of each model per round.
    assert invoked == ["a", "a", "b", "b"] + ["a", "b"] * 5
    assert rounds == [6, 8, 10, 12, 14]
    for name, s in stats.items():
        t = np.array(timed[name])
        assert (s.name, s.xnnpack, s.num_threads, s.runs) == (name, False, 2, 5)
        assert s.samples_ms == pytest.approx(timed[name])
        assert (s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms) == pytest.approx(
            (np.percentile(t, 50), np.percentile(t, 90), np.percentile(t, 99), t.mean()))
        assert s.init_ms == pytest.approx(init[name])
        assert s.size_bytes == len(models[name])
    assert benchmark.paired_ratio(stats["a"], stats["b"]) == pytest.approx(1.0)
    assert stats["a"].p50_ms / stats["b"].p50_ms == pytest.approx(0.6)
    short = dataclasses.replace(stats["b"], samples_ms=stats["b"].samples_ms[:4])
    with pytest.raises(ValueError, match="5 and 4 samples"):
        benchmark.paired_ratio(stats["a"], short)


def test_report_ratio_to_first_is_the_paired_ratio_within_each_configuration(monkeypatch,
                                                                             models_dir):
    from tfcompress import benchmark

    # Per configuration, each model's per-round times; "base" is the first model.
    timed = {("xnnpack", 1): {"base": (2.0, 4.0, 8.0), "small": (1.0, 1.0, 8.0)},
             ("xnnpack", 2): {"base": (1.0, 1.0, 1.0), "small": (3.0, 1.0, 2.0)},
             ("reference", 1): {"base": (10.0, 10.0, 10.0), "small": (1.0, 2.0, 3.0)},
             ("reference", 2): {"base": (4.0, 2.0, 1.0), "small": (1.0, 1.0, 1.0)}}
    calls = []

    def measure_latency(models, *, xnnpack, num_threads, warmup, runs, cpus, **_):
        kernels = "xnnpack" if xnnpack else "reference"
        calls.append((list(models), kernels, num_threads, warmup, runs, cpus))
        out = {}
        for name, buf in models.items():
            t = np.array(timed[kernels, num_threads][name])
            out[name] = benchmark.LatencyStats(
                name, xnnpack, num_threads, runs, float(np.median(t)), float(t.max()),
                float(t.max()), float(t.mean()), 0.5, len(buf), tuple(t))
        return out

    monkeypatch.setattr(benchmark, "measure_latency", measure_latency)
    files = _two_files(models_dir)
    models = {"base": files["a"], "small": files["b"]}
    report = benchmark.benchmark_models(models, num_threads=[1, 2], warmup=4, runs=3,
                                        cpus=[0, 1], memory=False, progress=False)
    assert calls == [(["base", "small"], k, t, 4, 3, [0, 1])
                     for k in ("xnnpack", "reference") for t in (1, 2)]
    assert [(r["model"], r["kernels"], r["threads"]) for r in report.rows] == [
        (m, k, t) for k in ("xnnpack", "reference") for t in (1, 2) for m in ("base", "small")]
    ratios = {(r["model"], r["kernels"], r["threads"]): r["ratio_to_first"] for r in report.rows}
    # Medians of the per-round ratios, never the ratio of the medians (0.25 at xnnpack, 1).
    assert ratios == pytest.approx({
        ("base", "xnnpack", 1): 1.0, ("small", "xnnpack", 1): 0.5,
        ("base", "xnnpack", 2): 1.0, ("small", "xnnpack", 2): 2.0,
        ("base", "reference", 1): 1.0, ("small", "reference", 1): 0.2,
        ("base", "reference", 2): 1.0, ("small", "reference", 2): 0.5})
    for r in report.rows:
        assert set(r) == set(benchmark.BenchmarkReport.COLUMNS)
        t = timed[r["kernels"], r["threads"]][r["model"]]
        assert r["p50_ms"] == float(np.median(t)) and r["mean_ms"] == pytest.approx(np.mean(t))
        assert r["size_bytes"] == len(models[r["model"]])
        assert r["gzip_bytes"] < r["size_bytes"]
        assert np.isnan(r["peak_rss_mib"]) and np.isnan(r["model_rss_mib"])  # memory=False
    assert (report.warmup, report.runs, report.cpus) == (4, 3, (0, 1))
    lines = report.table().splitlines()
    assert len(lines) == 2 + 8 and lines[3].split("|")[-2].strip() == "0.500"
    assert lines[2].split("|")[-2].strip() == "1.000" and "| - |" in lines[2]


def test_benchmark_models_rejects_bad_options(models_dir):
    from tfcompress import benchmark

    m = {"m": models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"}
    with pytest.raises(ValueError, match="Allowed: .'xnnpack', 'reference'"):
        benchmark.benchmark_models(m, kernels=["gpu"])
    with pytest.raises(ValueError, match="num_threads"):
        benchmark.benchmark_models(m, num_threads=[0])
    with pytest.raises(ValueError, match="cpus=\\[1\\]"):
        benchmark.benchmark_models(m, num_threads=[2], cpus=[1])
    with pytest.raises(tc_invalid()):
        benchmark.benchmark_models({"junk": b"not a model at all, no"}, progress=False)


def tc_invalid():
    from tfcompress import InvalidModelError

    return InvalidModelError


def test_text_models_are_timed_on_ids_inside_their_tables():
    """Unquantized int32 inputs are ids: random ones over the int32 range used to make
    GATHER fail ("index out of bounds") in every latency and memory measurement."""
    import keras

    import tfcompress as tc
    from tfcompress import benchmark, inspector, runtime

    keras.utils.set_random_seed(0)
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    kind = keras.Input((1,), dtype="int32", name="kind")
    count = keras.Input((1,), dtype="int32", name="count")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(37, 8)(tokens))
    y = keras.layers.Flatten()(keras.layers.Embedding(5, 4)(kind))
    z = keras.ops.cast(count, "float32")  # a count, not an id: CAST stays float in int8
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 37, (16, 12)), rng.integers(0, 5, (16, 1)), rng.integers(0, 9, (16, 1))]
    data = [a.astype("int32") for a in data]
    int8_model = keras.Model([tokens, kind], keras.layers.Dense(3)(keras.layers.Concatenate()([x, y])))
    float_model = keras.Model([tokens, kind, count],
                              keras.layers.Dense(3)(keras.layers.Concatenate()([x, y, z])))
    files = {"float32": tc.convert(float_model, mode="float32", progress=False).model_bytes,
             "int8": tc.convert(int8_model, representative_data=data[:2], progress=False).model_bytes}
    expected = {"tokens": 37, "kind": 5, "count": 1}
    for buf in files.values():
        report = inspector.inspect(buf)
        names = {t.index: next(n for n in expected if n in t.name) for t in report.inputs}
        bounds = inspector.id_bounds(buf)
        assert {names[i]: b for i, b in bounds.items()} == {n: expected[n] for n in names.values()}
        it = runtime.make_interpreter(buf, xnnpack=False)
        for d, a in zip(it.get_input_details(), runtime.random_inputs(it, bounds=bounds)):
            assert 0 <= a.min() and a.max() < expected[names[d["index"]]]
            if names[d["index"]] == "tokens":
                assert len(np.unique(a)) > 10
    stats = benchmark.measure_latency(files, runs=3, warmup=1)
    assert set(stats) == {"float32", "int8"}
    peak, _ = benchmark.peak_memory(files["int8"], runs=1)
    assert peak > 0
