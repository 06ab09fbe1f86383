import numpy as np
import pytest

from tfcompress import inspector


def test_published_int8_resnet8_is_read_without_interpreter(models_dir):
    report = inspector.inspect(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    assert report.op_histogram == {"CONV_2D": 9, "ADD": 3, "AVERAGE_POOL_2D": 1, "RESHAPE": 1,
                                   "FULLY_CONNECTED": 1, "SOFTMAX": 1}
    (inp,) = report.inputs
    assert inp.dtype == "int8" and inp.shape == (1, 32, 32, 3)
    assert inp.quantization.scale == (1.0,) and inp.quantization.zero_point == (-128,)
    assert report.outputs[0].dtype == "int8"
    assert not report.non_integer_tensors()
    conv_weights = [t for t in report.weight_tensors if len(t.shape) == 4]
    assert all(t.quantization.per_channel for t in conv_weights)
    assert sum(report.weight_bytes_per_layer.values()) == sum(
        t.nbytes for t in report.tensors if t.is_constant)


def test_third_party_mobilenet_inspects(models_dir):
    report = inspector.inspect(models_dir / "coral_mobilenet_v2_1.0_224_quant.tflite")
    assert report.inputs[0].dtype == "uint8" and report.inputs[0].shape == (1, 224, 224, 3)
    assert report.outputs[0].shape == (1, 1001)
    assert report.op_histogram["DEPTHWISE_CONV_2D"] == 17
    assert 0.0 <= report.zero_weight_fraction < 0.1
    assert "DEPTHWISE_CONV_2D" in report.summary()


def test_zero_weights_are_counted_at_the_zero_point(models_dir):
    report = inspector.inspect(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    t = report.weight_tensors[0]
    assert t.zero_fraction is not None and 0.0 <= t.zero_fraction <= 1.0


@pytest.mark.parametrize("cut", [0, 10, 100, 5000, -1])
def test_truncated_file_gives_one_clear_error(models_dir, cut):
    buf = (models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes()
    with pytest.raises(inspector.InvalidModelError, match="TFLite"):
        inspector.inspect(buf[:cut] if cut >= 0 else buf[:-1])


def test_non_tflite_bytes_are_rejected():
    with pytest.raises(inspector.InvalidModelError, match="file identifier"):
        inspector.inspect(b"\x00" * 64)


def test_corrupted_offsets_are_rejected_before_any_interpreter(models_dir):
    buf = bytearray((models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes())
    buf[0:4] = (len(buf) + 1000).to_bytes(4, "little")  # root table beyond the end
    with pytest.raises(inspector.InvalidModelError, match="Corrupted or truncated"):
        inspector.verify(bytes(buf))


def test_random_corruption_never_crashes(models_dir):
    from tfcompress import runtime

    good = (models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(30):
        buf = bytearray(good)
        for i in rng.integers(0, len(buf), 20):
            buf[i] = rng.integers(0, 256)
        try:
            interpreter = runtime.make_interpreter(bytes(buf), xnnpack=False)
            interpreter.invoke()
        except (inspector.InvalidModelError, RuntimeError, ValueError):
            pass


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such TFLite file"):
        inspector.inspect(tmp_path / "missing.tflite")
    with pytest.raises(IsADirectoryError):
        inspector.inspect(tmp_path)
    with pytest.raises(TypeError, match="Received: model of type int"):
        inspector.inspect(3)
