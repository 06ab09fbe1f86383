import os

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


@pytest.fixture()
def count_parses(monkeypatch):
    """Counts how often a flatbuffer is verified (parsed and checked) from its bytes."""
    calls = []
    real = inspector._verify_bytes

    def counting(buf, what):
        calls.append(len(buf))
        return real(buf, what)

    monkeypatch.setattr(inspector, "_verify_bytes", counting)
    return calls


def test_load_verifies_once_and_a_verified_model_is_never_parsed_again(models_dir, count_parses):
    path = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    verified = inspector.load(path)
    assert count_parses == [path.stat().st_size]
    assert inspector.load(verified) is verified
    assert inspector.inspect(verified) is verified.report
    assert inspector.read_model(verified) == path.read_bytes()
    assert set(inspector.constant_values(verified)) == set(verified.constants)
    assert inspector.check_sparsity_m_by_n(verified).n == 2
    assert len(count_parses) == 1


def test_validate_and_benchmark_parse_each_file_once(models_dir, cifar, count_parses):
    from tfcompress import benchmark, validation

    int8 = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    ref = models_dir / "mlperf_tiny_resnet8_cifar10_float.tflite"
    x = cifar["x_test"][:4].astype("float32")
    report = validation.validate(int8, x, y=cifar["y_test"][:4], reference=ref, progress=False,
                                 per_layer_samples=2)
    assert report.per_layer and report.delegation.num_ops == 16
    assert sorted(count_parses) == sorted([int8.stat().st_size, ref.stat().st_size])
    verified = {"int8": inspector.load(int8), "float": inspector.load(ref)}
    count_parses.clear()
    validation.validate(verified["int8"], x, reference=verified["float"], progress=False,
                        per_layer_samples=2)
    benchmark.measure_latency(verified, runs=2, warmup=0)
    benchmark.benchmark_models(verified, runs=2, warmup=0, memory=False, progress=False)
    assert count_parses == []


def test_int32_token_ids_read_by_gather_count_as_integer():
    import keras

    from tfcompress import convert

    keras.utils.set_random_seed(0)
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 8)(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(tokens, keras.layers.Dense(3)(x))
    ids = np.random.default_rng(0).integers(0, 50, (32, 12)).astype("int32")
    result = convert(model, representative_data=ids, progress=False)  # used to be refused
    report = result.report
    assert report.inputs[0].dtype == "int32" and "GATHER" in report.op_histogram
    assert not report.non_integer_tensors(allow_io=("int8",))
    # An int32 tensor that carries values into a math op is still not integer.
    assert not inspector._is_index_tensor(report, report.outputs[0].index)


def test_only_regular_files_are_read_and_never_beyond_the_limit(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    with pytest.raises(inspector.InvalidModelError, match="not a regular file"):
        inspector.read_model(fifo)  # would block forever if it were opened and read
    with pytest.raises(inspector.InvalidModelError, match="not a regular file"):
        inspector.read_model("/dev/zero")
    big = tmp_path / "big.tflite"
    with open(big, "wb") as f:  # 4 GiB, sparse: nothing is read to refuse it
        f.truncate(4 * 2 ** 30)
    with pytest.raises(inspector.InvalidModelError, match=r"4294967296 bytes, over the limit"):
        inspector.read_model(big)
    monkeypatch.setenv("TFCOMPRESS_MAX_FILE_BYTES", "100")
    with pytest.raises(inspector.InvalidModelError, match="over the limit of 100"):
        inspector.inspect(bytes(1000))


def _mutated(models_dir, edit):
    """The published ResNet-8 int8 file with one edit made through the schema's object API."""
    import flatbuffers

    from tfcompress._compat_litert import tflite_schema as fb

    buf = (models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(buf, 0))
    edit(model, model.subgraphs[0])
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _first(graph, model, name):
    return next(op for op in graph.operators
                if inspector.op_name(model.operatorCodes[op.opcodeIndex]) == name)


def _set(holder, attr, index, value):
    values = np.array(getattr(holder, attr))  # the object API's arrays are read-only views
    values[index] = value
    setattr(holder, attr, values)


@pytest.mark.parametrize("edit, message", [
    (lambda m, g: setattr(g.tensors[_first(g, m, "CONV_2D").inputs[1]].quantization,
                          "zeroPoint", []), r"has 16 scale\(s\) and 0 zero point\(s\)"),
    (lambda m, g: _set(_first(g, m, "CONV_2D"), "inputs", 1, -1),
     r"\(CONV_2D\) leaves its required input 1 empty"),
    (lambda m, g: _set(_first(g, m, "ADD"), "inputs", 0, -1),
     r"\(ADD\) leaves its required input 0 empty"),
    (lambda m, g: _set(_first(g, m, "CONV_2D"), "outputs", 0, _first(g, m, "CONV_2D").inputs[1]),
     r"writes into constant tensor"),
    (lambda m, g: _set(g.tensors[int(g.inputs[0])], "shape", 1, 33554448),
     r"elements, over the limit"),
    # 100,000 entries sharing one tensor: refused before the tree is unpacked (19 s before)
    (lambda m, g: setattr(g, "outputs", np.full(100_000, g.outputs[0], np.int32)),
     r"too large to read: subgraph 0 lists 100000 outputs, more than its 38 tensors"),
    (lambda m, g: setattr(_first(g, m, "ADD"), "inputs",
                          np.full(100_000, _first(g, m, "ADD").inputs[0], np.int32)),
     r"too large to read: subgraph 0 op 3 lists 100000 inputs, more than 256"),
    (lambda m, g: setattr(_first(g, m, "ADD"), "inputs",
                          np.array(list(_first(g, m, "ADD").inputs) * 2, np.int32)),
     r"\(ADD\) has 4 inputs; ADD takes 2"),
    (lambda m, g: setattr(_first(g, m, "SOFTMAX"), "outputs", np.array([], np.int32)),
     r"\(SOFTMAX\) has 0 outputs; SOFTMAX takes 1"),
])
def test_files_the_interpreter_would_trust_wrongly_are_refused(models_dir, edit, message):
    with pytest.raises(inspector.InvalidModelError, match=message):
        inspector.load(_mutated(models_dir, edit))


def test_the_published_and_third_party_files_still_verify(models_dir):
    for name in ("mlperf_tiny_resnet8_cifar10_int8.tflite",
                 "mlperf_tiny_resnet8_cifar10_float.tflite",
                 "coral_mobilenet_v2_1.0_224_quant.tflite"):
        inspector.load(models_dir / name)


def test_graphs_over_the_operator_limit_are_refused_before_parsing(models_dir, monkeypatch):
    monkeypatch.setenv("TFCOMPRESS_MAX_OPS", "10")
    monkeypatch.setattr(inspector, "_parse", lambda buf: pytest.fail("parsed"))
    with pytest.raises(inspector.InvalidModelError,
                       match=r"subgraph 0 has 16 operators, over the limit of 10 "
                             r"\(TFCOMPRESS_MAX_OPS\)"):
        inspector.load(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite")


@pytest.mark.filterwarnings("error")  # numpy's product used to overflow here, with warnings
def test_a_long_shape_of_huge_dimensions_is_counted_exactly(models_dir):
    huge = lambda m, g: setattr(g.tensors[int(g.inputs[0])], "shape",  # noqa: E731
                                np.full(40, 2 ** 30, np.int32))
    with pytest.raises(inspector.InvalidModelError,
                       match=r"of shape \[1073741824, .*\] has about 10\^361 elements, over the "
                             r"limit"):
        inspector.load(_mutated(models_dir, huge))


def _pool(model, graph):
    return _first(graph, model, "AVERAGE_POOL_2D").builtinOptions


@pytest.mark.parametrize("edit, message", [
    (lambda m, g: setattr(_pool(m, g), "filterWidth", 128),  # XNNPACK took 15 s on 2x128
     r"\(AVERAGE_POOL_2D\) has a 8x128 window over an input of 8x8"),
    (lambda m, g: setattr(_pool(m, g), "strideH", 0), r"both must be at least 1"),
    (lambda m, g: setattr(g, "outputs", np.array([], np.int32)), r"main subgraph has no outputs"),
])
def test_options_and_outputs_a_kernel_would_choke_on_are_refused(models_dir, edit, message):
    with pytest.raises(inspector.InvalidModelError, match=message):
        inspector.load(_mutated(models_dir, edit))


def test_summary_names_layers_as_the_user_wrote_them(models_dir):
    import dataclasses

    report = inspector.inspect(models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    # Third-party names have no Keras nesting: written as they are.
    assert "  activation_1 " in report.summary() and "input: input_1_int8 " in report.summary()
    # The converter's form for a Keras model: model/model/quant_<layer>_N/op;...
    nested = dataclasses.replace(
        report,
        ops=tuple(dataclasses.replace(op, layer=f"m_1/quant_{op.layer}_1") for op in report.ops),
        inputs=tuple(dataclasses.replace(t, name="m_1/m_1/quant_image_1/FakeQuant;m_1/x")
                     for t in report.inputs))
    text = nested.summary()
    assert "input: image int8" in text, text
    assert "  activation_1 " in text and "quant_" not in text, text
    assert nested.to_dict()["inputs"][0]["name"].startswith("m_1/m_1/quant_image_1")
