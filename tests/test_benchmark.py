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
    stats = benchmark.measure_latency({"a": model, "b": model}, runs=20, cpus=[0])
    assert os.sched_getaffinity(0) == before
    assert len(stats["a"].samples_ms) == 20
    assert 0.0 < benchmark.paired_ratio(stats["a"], stats["b"]) < 10.0


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
    # int8 is smaller, and on the reference kernels clearly faster than float.
    assert report.rows[1]["size_bytes"] < report.rows[0]["size_bytes"] / 3
    assert report.rows[3]["ratio_to_first"] < 0.8
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
