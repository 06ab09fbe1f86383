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
