"""Flatbuffer rewrites of tfcompress.rewrite (the sparse ones are in test_converter)."""

import flatbuffers
import keras
import numpy as np
import pytest

from tfcompress import convert, inspector, rewrite, runtime
from tfcompress._compat_litert import tflite_schema as fb


def _parse(buf):
    return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(bytearray(buf), 0))


def _pack(model):
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode(model, builtin):
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _in_float(buf, op_name, requantize=1.0):
    """The file with ``op_name`` run in float, as the converter sometimes leaves a move:
    DEQUANTIZE -> op -> QUANTIZE (to the same grid, or one ``requantize`` times coarser)."""
    model = _parse(buf)
    graph = model.subgraphs[0]
    codes = [inspector.op_name(c) for c in model.operatorCodes]
    at = next(i for i, op in enumerate(graph.operators) if codes[op.opcodeIndex] == op_name)
    op = graph.operators[at]
    slot = rewrite.INTEGER_MOVES[op_name]

    def float_copy(index):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = graph.tensors[index].name + b"_f", \
            list(graph.tensors[index].shape), fb.TensorType.FLOAT32, 0
        graph.tensors.append(t)
        return len(graph.tensors) - 1

    new_ops = []
    source = int(op.inputs[slot])
    dq = fb.OperatorT()
    dq.opcodeIndex, dq.inputs, dq.outputs = _opcode(model, fb.BuiltinOperator.DEQUANTIZE), \
        [source], [float_copy(source)]
    op.inputs[slot] = dq.outputs[0]
    for k, out in enumerate(list(op.outputs)):
        f = float_copy(int(out))
        op.outputs[k] = f
        q = fb.OperatorT()
        q.opcodeIndex, q.inputs, q.outputs = _opcode(model, fb.BuiltinOperator.QUANTIZE), [f], [int(out)]
        graph.tensors[int(out)].quantization.scale = [
            float(graph.tensors[int(out)].quantization.scale[0]) * requantize]
        new_ops.append(q)
    graph.operators[at:at + 1] = [dq, op] + new_ops
    return _pack(model)


def _outputs(buf, x):
    return [runtime.predict(runtime.make_interpreter(buf, xnnpack=xnnpack), x)
            for xnnpack in (True, False)]


@pytest.fixture(scope="module")
def int8_file():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 6), name="x")
    a, b = keras.ops.split(keras.layers.Dense(12)(inputs), 2, axis=-1)
    x = keras.layers.Reshape((8 * 6,))(keras.layers.Multiply()([keras.ops.tanh(a), b]))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    data = np.random.default_rng(0).uniform(-1, 1, (64, 8, 6)).astype("float32")
    return convert(model, representative_data=data, progress=False).model_bytes, data[:16]


@pytest.mark.parametrize("op_name", ["SPLIT", "RESHAPE"])
def test_a_move_left_in_float_runs_on_the_integers_again_with_the_same_outputs(int8_file, op_name):
    buf, x = int8_file
    assert op_name in inspector.inspect(buf).op_histogram
    floated = _in_float(buf, op_name)
    assert inspector.inspect(floated).non_integer_tensors(allow_io=("int8",))
    fixed, count = rewrite.integer_moves(floated)
    assert count == 1
    report = inspector.inspect(fixed)
    assert not report.non_integer_tensors(allow_io=("int8",))
    assert report.op_histogram == inspector.inspect(buf).op_histogram
    for want, got in zip(_outputs(buf, x), _outputs(fixed, x)):
        assert all(np.array_equal(a, b) for a, b in zip(want, got))


def test_a_move_quantized_to_another_grid_stays_in_float(int8_file):
    """An int8 requantization rounds ties otherwise than QUANTIZE of the float values
    (measured: outputs differ), so only chains back to the same grid are rewritten."""
    buf, _ = int8_file
    floated = _in_float(buf, "RESHAPE", requantize=2.0)
    assert rewrite.integer_moves(floated) == (floated, 0)


def test_files_without_such_moves_are_returned_as_they_are(int8_file):
    buf, _ = int8_file
    assert rewrite.integer_moves(buf) == (buf, 0)


def test_convert_repairs_a_float_move_and_says_so(monkeypatch):
    from tfcompress import converter

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 6), name="x")
    a, b = keras.ops.split(keras.layers.Dense(12)(inputs), 2, axis=-1)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(a * b)))
    data = np.random.default_rng(0).uniform(-1, 1, (64, 8, 6)).astype("float32")
    plain = convert(model, representative_data=data, progress=False)
    real = converter._run_converter
    monkeypatch.setattr(converter, "_run_converter",
                        lambda *args, **kwargs: _in_float(real(*args, **kwargs), "SPLIT"))
    repaired = convert(model, representative_data=data, progress=False)
    assert any("only move values" in note for note in repaired.notes)
    assert repaired.report.op_histogram == plain.report.op_histogram
    for want, got in zip(_outputs(plain.model_bytes, data[:8]), _outputs(repaired.model_bytes, data[:8])):
        assert all(np.array_equal(u, v) for u, v in zip(want, got))


def test_one_op_model_runs_a_conv_alone_as_stored_and_in_real_values(models_dir):
    path = models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite"
    report = inspector.inspect(path)
    conv = next(op for op in report.ops if op.op == "CONV_2D")
    stored = rewrite.one_op_model(path.read_bytes(), conv.index, real=False)
    real = rewrite.one_op_model(path.read_bytes(), conv.index, real=True)
    assert [op.op for op in inspector.inspect(stored).ops] == ["CONV_2D"]
    info = report.tensors[conv.inputs[0]]
    q = np.random.default_rng(0).integers(-128, 128, size=info.shape).astype("int8")
    outs = {}
    for name, model, value in (("stored", stored, q), ("real", real, (
            q.astype("float32") - info.quantization.zero_point[0]) * info.quantization.scale[0])):
        interpreter = runtime.make_interpreter(model, xnnpack=False)
        (detail,) = interpreter.get_input_details()
        assert detail["dtype"] == (np.int8 if name == "stored" else np.float32)
        interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        interpreter.invoke()
        outs[name] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    out = report.tensors[conv.outputs[0]].quantization
    expected = np.clip(np.round(outs["real"] / out.scale[0] + out.zero_point[0]), -128, 127)
    assert np.abs(outs["stored"].astype(int) - expected).max() <= 1



def test_one_op_model_refuses_type_changes_in_real_values(tiny_dense):
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    buf = convert(tiny_dense, representative_data=x, input_type="float32", output_type="float32",
                  progress=False).model_bytes
    ops = inspector.inspect(buf).ops
    for op in ops:
        real = rewrite.one_op_model(buf, op.index, real=True)
        assert (real is None) == (op.op in ("QUANTIZE", "DEQUANTIZE")), op.op
        assert rewrite.one_op_model(buf, op.index, real=False) is not None
    assert {"QUANTIZE", "DEQUANTIZE", "FULLY_CONNECTED"} <= {op.op for op in ops}
