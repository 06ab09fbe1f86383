"""How exactly each kernel path rounds: int8 FULLY_CONNECTED and 1x1 CONV_2D outputs
against the exact requantization of their own int32 accumulators.

An int8 FULLY_CONNECTED (or 1x1, stride-1 CONV_2D) computes ``acc = sum((a - za) * w) +
bias`` exactly in int32, then ``round(acc * s_a * s_w / s_out) + z_out``. This tool runs a
fully int8 file on both kernel paths (XNNPACK and TFLite's builtin kernels) with every
tensor kept, recomputes that exact rounding in float64 from the int8 inputs *each path
gave the op*, and counts the outputs the path put one or more steps off it. Outputs at
the clamp (a fused ReLU's zero point, -128 or 127) and within 1e-6 of a tie are left out.

It is the measurement behind the zoo's failed end-to-end cells whose every op is within
one step of its float op: the builtin kernels requantize with a high multiply and then a
rounding shift, two roundings, and send a fraction of each op's outputs one step off;
XNNPACK and a fake-quant Keras model round once.

Models: zoo names (``tests/zoo.py``, size small, int8 with calibration) or ``.tflite``
paths (random inputs in each input's int8 range).

Usage:
    .venv/bin/python tools/kernel_rounding.py --models=resnet50,ds_cnn,mobilenet_v2 \\
        --out=results/kernel_rounding.json [--samples=8]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common  # noqa: E402

flags.DEFINE_list("models", ["resnet50", "ds_cnn", "mobilenet_v2"],
                  "Zoo model names or .tflite paths.")
flags.DEFINE_string("out", "results/kernel_rounding.json",
                    "JSON output; a .md table is written beside it.")
flags.DEFINE_integer("samples", 8, "Input samples per model.")
FLAGS = flags.FLAGS

_TIE = 1e-6


def _file_and_inputs(name: str, samples: int):
    """``(model_bytes, int8 inputs)`` for a zoo name or a .tflite path."""
    from tfcompress import inspector, runtime

    if name.endswith(".tflite"):
        buf = inspector.load(name)
        interpreter = runtime.make_interpreter(buf, xnnpack=False)
        rng = np.random.default_rng(0)
        x = [rng.integers(-128, 128, size=(samples,) + tuple(d["shape"][1:])).astype(d["dtype"])
             for d in interpreter.get_input_details()]
        return buf.model_bytes, x
    import tfcompress as tc
    import zoo

    spec = zoo.spec_for(name, "small")
    model = spec.build("small")
    data = zoo.make_data(spec, model, "small")
    result = tc.convert(model, representative_data=data["calib"], progress=False)
    interpreter = runtime.make_interpreter(result.model_bytes, xnnpack=False)
    x = data["eval"]
    arrays = list(x.values()) if isinstance(x, dict) else [x]
    quantized = []
    for detail, array in zip(interpreter.get_input_details(), arrays):
        array = np.asarray(array)[:samples]
        scale, zero = detail["quantization"]
        if np.issubdtype(array.dtype, np.integer) or not scale:
            quantized.append(array.astype(detail["dtype"]))
        else:
            quantized.append(np.clip(np.round(array / scale + zero), -128, 127).astype(np.int8))
    return result.model_bytes, quantized


def _run(interpreter, x, sample: int):
    """Runs one sample (files with a fixed batch of 1 are the common case)."""
    for detail, array in zip(interpreter.get_input_details(), x):
        interpreter.set_tensor(detail["index"], array[sample:sample + 1])
    interpreter.invoke()
    return interpreter


def _matmul_ops(interpreter):
    """FULLY_CONNECTED and 1x1 stride-1 CONV_2D ops with int8 inputs, weights and output."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():  # the op list; LiteRT has no public one
        if op["op_name"] not in ("FULLY_CONNECTED", "CONV_2D") or len(op["inputs"]) < 2:
            continue
        a, w = op["inputs"][0], op["inputs"][1]
        b = op["inputs"][2] if len(op["inputs"]) > 2 else -1
        o = op["outputs"][0]
        if any(details[i]["dtype"] != np.int8 for i in (a, w, o)):
            continue
        shape = details[w]["shape"]
        if op["op_name"] == "CONV_2D" and (len(shape) != 4 or tuple(shape[1:3]) != (1, 1)):
            continue
        yield op, a, w, b, o, details


def _off(interpreter, op, a, w, b, o, details) -> tuple:
    """``(outputs checked, outputs off the exact rounding, worst |steps|)`` of one op."""
    try:
        inputs = interpreter.get_tensor(a).astype(np.int64)
        weights = interpreter.get_tensor(w).astype(np.int64)
        bias = interpreter.get_tensor(b).astype(np.int64) if b >= 0 else 0
        out = interpreter.get_tensor(o).astype(np.int64)
    except ValueError:  # a tensor the delegate kept to itself
        return 0, 0, 0.0
    qa, qw, qo = (details[i]["quantization_parameters"] for i in (a, w, o))
    weights = weights.reshape(weights.shape[0], -1)  # (out, in)
    if op["op_name"] == "CONV_2D" and inputs.shape[:-1] != out.shape[:-1]:
        return 0, 0, 0.0  # strided
    if op["op_name"] == "FULLY_CONNECTED":
        inputs = inputs.reshape(-1, weights.shape[1])
        out = out.reshape(-1, weights.shape[0])
    if inputs.shape[-1] != weights.shape[1]:
        return 0, 0, 0.0
    acc = (inputs - int(qa["zero_points"][0])) @ weights.T + bias
    multiplier = (float(qa["scales"][0]) * np.asarray(qw["scales"], "float64")
                  / float(qo["scales"][0]))
    real = acc * multiplier + int(qo["zero_points"][0])
    exact = np.round(real)
    keep = ((exact > out.min()) & (exact < 127) & (exact > -128)
            & (np.abs(np.abs(real - np.floor(real)) - 0.5) > _TIE))
    diff = np.abs(out - exact)[keep]
    return int(diff.size), int(np.count_nonzero(diff)), float(diff.max(initial=0.0))


def measure(name: str, samples: int) -> dict:
    model_bytes, x = _file_and_inputs(name, samples)
    row = {"model": name}
    from tfcompress import runtime

    for path, xnnpack in (("xnnpack", True), ("builtin", False)):
        interpreter = runtime.make_interpreter(model_bytes, xnnpack=xnnpack,
                                               preserve_all_tensors=True)
        ops = []
        for sample in range(len(x[0])):
            _run(interpreter, x, sample)
            ops += [_off(interpreter, *found) for found in _matmul_ops(interpreter)]
        checked = sum(c for c, _, _ in ops)
        off = sum(n for _, n, _ in ops)
        row[path] = {"ops": sum(1 for c, _, _ in ops if c) // len(x[0]), "outputs": checked,
                     "off": off,
                     "fraction_off": off / checked if checked else None,
                     "worst_steps": max((m for _, _, m in ops), default=0.0)}
    return row


def main(argv):
    del argv
    rows = [measure(name, FLAGS.samples) for name in FLAGS.models]

    def cell(r):
        f = r["fraction_off"]
        if f is None:
            return "-"
        return f"{100 * f:.3f}% of {r['outputs']} ({r['ops']} ops, max {r['worst_steps']:.0f})"

    _common.write_results(Path(FLAGS.out), {"samples": FLAGS.samples, "rows": rows},
                          _common.table(["model", "XNNPACK off exact", "builtin off exact"],
                                        [[r["model"], cell(r["xnnpack"]), cell(r["builtin"])]
                                         for r in rows]))


if __name__ == "__main__":
    app.run(main)
