"""Rewriting `.tflite` flatbuffers: what the converter writes, made safe and smaller.

The check layer reads files (:mod:`tfcompress.inspector`) and rewrites them here,
with the flatbuffer schema that ships with LiteRT and no TensorFlow.
:func:`tidy_sparse_weights` is what ``convert(..., sparse=True)`` applies to the
converter's sparse output.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import flatbuffers
import numpy as np

from tfcompress import inspector
from tfcompress._compat_litert import tflite_schema

__all__ = ["INTEGER_MOVES", "SPARSE_CONSUMERS", "SPARSE_MODES", "integer_moves", "one_op_model",
           "tidy_sparse_weights"]

SPARSE_CONSUMERS = ("CONV_2D",)  # ops that XNNPACK prepares with sparse (DENSIFY) weights
SPARSE_MODES = ("int8", "float32")  # where those files run on both kernel paths
# Ops that only move values: {op: the input slot of the values}.
INTEGER_MOVES = {"SPLIT": 1, "SPLIT_V": 0, "RESHAPE": 0, "SQUEEZE": 0, "EXPAND_DIMS": 0,
                 "TRANSPOSE": 0, "UNPACK": 0, "SLICE": 0, "STRIDED_SLICE": 0, "GATHER": 0}


def tidy_sparse_weights(model_bytes: bytes, *, keep: Sequence[str] = SPARSE_CONSUMERS,
                        dense: Optional[bytes] = None) -> bytes:
    """Makes the sparse weights of a converted file safe for XNNPACK, and smaller.

    Only a DENSIFY op that feeds ops in ``keep`` alone, and whose sparse input takes
    fewer bytes than the dense tensor would (index arrays included: below about half
    zeros it does not), stays. Every other sparse constant is stored dense again, and
    its readers read it directly: the inputs of the other DENSIFY ops, and sparse
    weights that an op reads without a DENSIFY. The converter writes the latter for
    FULLY_CONNECTED layers with fewer than 16 inputs (1x16 blocks), and their
    encoding has lost blocks (measured: rows with non-zero weights stored empty, so
    TFLite and a faithful decoder both read wrong weights). Their dense values can
    therefore only come from ``dense``, the same model converted without sparsity;
    every other sparse tensor is decoded (:func:`tfcompress.inspector.sparse_to_dense`),
    or also taken from ``dense`` when it is given. The sparse inputs of the DENSIFY ops
    that stay lose their quantization parameters, a copy of those of DENSIFY's output,
    which is what the consumer reads (ResNet-8: 4 KB). A file without sparse tensors is
    returned unchanged.

    Args:
        model_bytes: the converter's output with sparse weights.
        keep: the ops whose DENSIFY-fed weights stay sparse.
        dense: the same model converted without sparsity (ops in the same order).

    Raises:
        ValueError: an op reads sparse weights directly and ``dense`` is not given, or
            ``dense`` does not have the same ops and tensors.
    """
    schema = tflite_schema
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model_bytes), 0))
    codes = [inspector.op_name(c) for c in model.operatorCodes]
    graph = model.subgraphs[0]
    if not any(t.sparsity is not None for t in graph.tensors or ()):
        return model_bytes
    readers: dict = {}
    for op in graph.operators:
        for t in op.inputs if op.inputs is not None else ():
            readers.setdefault(int(t), []).append(codes[op.opcodeIndex])
    densify = [op for op in graph.operators if codes[op.opcodeIndex] == "DENSIFY"]
    stay = [op for op in densify
            if all(r in keep for r in readers.get(int(op.outputs[0]), []))
            and _sparse_nbytes(model, graph.tensors[int(op.inputs[0])])
            < (inspector.expected_nbytes(graph.tensors[int(op.outputs[0])]) or float("inf"))]
    kept = {int(op.inputs[0]) for op in stay}
    rename = {int(op.outputs[0]): int(op.inputs[0]) for op in densify if op not in stay}
    graph.operators = [op for op in graph.operators if op in stay or op not in densify]
    for op in graph.operators:
        op.inputs = [rename.get(int(t), int(t)) for t in op.inputs]
    from_dense = _dense_counterparts(model, codes, dense) if dense is not None else {}
    for index, tensor in enumerate(graph.tensors):
        if tensor.sparsity is None:
            continue
        if index in kept:
            tensor.quantization = None
            continue
        output = next((d for d, src in rename.items() if src == index), None)
        if index in from_dense:
            shape, quantization, values = from_dense[index]
        elif output is not None:  # DENSIFY's output carries the dense shape and quantization
            shape, quantization = list(graph.tensors[output].shape), graph.tensors[output].quantization
            tensor.shape = shape
            values = inspector.sparse_to_dense(tensor, model.buffers)
        else:
            raise ValueError(
                f"Tensor {tensor.name!r} holds sparse weights that an op reads without a "
                "DENSIFY; their encoding cannot be trusted, so pass `dense`, the same model "
                "converted without sparsity.")
        tensor.shape, tensor.quantization, tensor.sparsity = list(shape), quantization, None
        model.buffers[tensor.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
    _drop_unused_tensors(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def integer_moves(model_bytes: bytes) -> Tuple[bytes, int]:
    """Runs ``DEQUANTIZE -> move -> QUANTIZE`` chains of an integer file in integers.

    The converter's calibration sometimes records no range for the output of an op
    that only moves values (measured: the SPLIT of an unrolled GRU cell, depending on
    the layer names and on what the process converted before) and leaves it in float
    between a DEQUANTIZE and QUANTIZE ops. Where every QUANTIZE after such a move
    (:data:`INTEGER_MOVES`) goes back to the grid the DEQUANTIZE read (the same scale
    and zero point: it gives back the very integers), the move reads the DEQUANTIZE's
    per-tensor int8 / int16 input directly, writes that tensor's quantization, and the
    DEQUANTIZE and QUANTIZE ops go. The outputs are the same integers, bit for bit.
    A QUANTIZE to another grid would round otherwise as an integer requantization, so
    such a chain stays as it is.

    Args:
        model_bytes: a converted file.

    Returns:
        ``(file, number of moves rewritten)``; the file itself when there are none.
    """
    schema = tflite_schema
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model_bytes), 0))
    codes = [inspector.op_name(c) for c in model.operatorCodes]
    graph = model.subgraphs[0]
    tensors, graph_outputs = graph.tensors or [], {int(t) for t in graph.outputs}
    integer = (schema.TensorType.INT8, schema.TensorType.INT16)
    producer, readers = {}, {}
    for op in graph.operators or ():
        for t in op.outputs if op.outputs is not None else ():
            producer[int(t)] = op
        for t in op.inputs if op.inputs is not None else ():
            readers.setdefault(int(t), []).append(op)

    def per_tensor(t):
        q = t.quantization
        return (q is not None and q.scale is not None and len(q.scale) == 1
                and (q.zeroPoint is None or len(q.zeroPoint) == 1))

    def same_grid(a, b) -> bool:
        za = int(a.zeroPoint[0]) if a.zeroPoint is not None else 0
        zb = int(b.zeroPoint[0]) if b.zeroPoint is not None else 0
        return za == zb and abs(float(a.scale[0]) - float(b.scale[0])) <= 1e-6 * float(a.scale[0])

    drop, rename, count = set(), {}, 0
    for op in graph.operators or ():
        slot = INTEGER_MOVES.get(codes[op.opcodeIndex])
        if slot is None or op.inputs is None or len(op.inputs) <= slot:
            continue
        values = int(op.inputs[slot])
        dequantize = producer.get(values)
        if dequantize is None or codes[dequantize.opcodeIndex] != "DEQUANTIZE" \
                or len(readers.get(values, [])) != 1 or values in graph_outputs:
            continue
        source = tensors[int(dequantize.inputs[0])]
        outs = [int(t) for t in op.outputs]
        if source.type not in integer or not per_tensor(source) or any(
                o in graph_outputs or any(
                    codes[r.opcodeIndex] != "QUANTIZE" or int(r.outputs[0]) in graph_outputs
                    or tensors[int(r.outputs[0])].type != source.type
                    or not per_tensor(tensors[int(r.outputs[0])])
                    or not same_grid(tensors[int(r.outputs[0])].quantization, source.quantization)
                    for r in readers.get(o, [])) for o in outs):
            continue
        op.inputs[slot] = int(dequantize.inputs[0])
        drop.add(id(dequantize))
        for o in outs:
            tensors[o].type = source.type
            tensors[o].quantization = schema.QuantizationParametersT()
            tensors[o].quantization.scale = [float(source.quantization.scale[0])]
            tensors[o].quantization.zeroPoint = [
                int(source.quantization.zeroPoint[0]) if source.quantization.zeroPoint is not None else 0]
            for quantize in readers.get(o, []):
                drop.add(id(quantize))
                rename[int(quantize.outputs[0])] = o
        count += 1
    if not count:
        return model_bytes, 0
    graph.operators = [op for op in graph.operators if id(op) not in drop]
    for op in graph.operators:
        op.inputs = [rename.get(int(t), int(t)) for t in op.inputs]
    _drop_unused_tensors(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), count


def one_op_model(model_bytes: bytes, op_index: int, *, real: bool) -> Optional[bytes]:
    """A file that runs one op of ``model_bytes`` (first subgraph) on its own.

    The op keeps its options; its constant inputs are stored with it and every other
    input becomes an input of the new file, in the op's input order. With ``real``, every
    quantized tensor becomes float32 and quantized constants (weights, biases) hold their
    real values ``scale * (q - zero_point)`` (per channel where the file quantizes per
    channel): the float op the integer kernel approximates. Tensors without quantization
    (shapes, axes, indices) keep their type.

    Args:
        model_bytes: a verified `.tflite` file.
        op_index: the op's position in the first subgraph.
        real: the op in real values (True) or as the file stores it (False).

    Returns:
        The new file, or None where one op cannot stand alone: an op that calls other
        subgraphs or carries intermediate tensors (LSTM), sparse or 4-bit constants, an op
        with no output, or, with ``real``, a type change (QUANTIZE, DEQUANTIZE, CAST),
        which has no float counterpart.
    """
    schema = tflite_schema
    model = _unpacked(model_bytes)  # shared between calls: read here, never changed
    graph = model.subgraphs[0]
    op = graph.operators[op_index]
    code = inspector.op_name(model.operatorCodes[op.opcodeIndex])
    if (code in ("WHILE", "IF", "CALL_ONCE", "CUSTOM", "DELEGATE") or op.intermediates is not None
            and len(op.intermediates) or op.outputs is None or not len(op.outputs)
            or real and code in ("QUANTIZE", "DEQUANTIZE", "CAST")):
        return None
    tensors = graph.tensors
    order = [int(t) for t in list(op.inputs) + list(op.outputs) if int(t) >= 0]
    new_index = {old: new for new, old in enumerate(dict.fromkeys(order))}
    new_index[-1] = -1
    buffers, new_tensors, inputs = [schema.BufferT()], [], []
    for old in new_index:
        if old < 0:
            continue
        t = tensors[old]
        if t.sparsity is not None or inspector.numpy_dtype(t) is None:
            return None
        data = model.buffers[t.buffer].data if t.buffer else None
        constant = data is not None and len(data) > 0
        copy = schema.TensorT()
        copy.name, copy.shape, copy.type = t.name, t.shape, t.type
        copy.shapeSignature, copy.quantization = t.shapeSignature, t.quantization
        quantized = _has_scale(t)
        if real and quantized:
            copy.type, copy.quantization = schema.TensorType.FLOAT32, None
            if constant:
                data = _real_values(t, data).tobytes()
        if constant:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(bytes(data), np.uint8)
            buffers.append(buffer)
            copy.buffer = len(buffers) - 1
        else:
            copy.buffer = 0
            if old not in {int(o) for o in op.outputs}:
                inputs.append(new_index[old])
        new_tensors.append(copy)
    single = schema.OperatorT()
    single.opcodeIndex, single.builtinOptionsType = op.opcodeIndex, op.builtinOptionsType
    single.builtinOptions, single.customOptions = op.builtinOptions, op.customOptions
    single.inputs = [new_index[int(t)] for t in op.inputs]
    single.outputs = [new_index[int(t)] for t in op.outputs]
    sub = schema.SubGraphT()
    sub.tensors, sub.operators, sub.inputs = new_tensors, [single], inputs
    sub.outputs = [new_index[int(t)] for t in op.outputs]
    out = schema.ModelT()
    out.version, out.operatorCodes, out.subgraphs = 3, model.operatorCodes, [sub]
    out.buffers, out.description = buffers, b"one op"
    builder = flatbuffers.Builder(1024)
    builder.Finish(out.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@functools.lru_cache(maxsize=2)
def _unpacked(model_bytes: bytes):
    """The object tree of a file, kept for the next call on the same bytes (one_op_model
    is called once per op of a file)."""
    return tflite_schema.ModelT.InitFromObj(tflite_schema.Model.GetRootAsModel(bytearray(model_bytes), 0))


def _has_scale(t) -> bool:
    q = t.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0


def _real_values(t, data) -> np.ndarray:
    """The float32 values of a quantized constant, per channel where it has several scales."""
    q = t.quantization
    values = np.frombuffer(bytes(data), inspector.numpy_dtype(t)).astype(np.float64)
    shape = [int(d) for d in t.shape] if t.shape is not None else [values.size]
    values = values.reshape(shape)
    scale = np.asarray(q.scale, np.float64)
    zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0] * len(scale), np.float64)
    if len(scale) > 1:
        view = [1] * len(shape)
        view[int(q.quantizedDimension or 0)] = len(scale)
        scale, zero = scale.reshape(view), zero.reshape(view)
    return ((values - zero) * scale).astype(np.float32)


def _dense_counterparts(model, codes, dense: bytes) -> dict:
    """``{sparse tensor index: (shape, quantization, dense values)}`` from the dense file.

    The two files come from one converter run each on the same graph, so without the
    DENSIFY ops their ops match one to one, input slot by input slot (a kept DENSIFY's
    consumer reads its output, which is not sparse, and is skipped).
    """
    other = tflite_schema.ModelT.InitFromObj(
        tflite_schema.Model.GetRootAsModel(bytearray(dense), 0))
    other_codes = [inspector.op_name(c) for c in other.operatorCodes]
    ops = [o for o in model.subgraphs[0].operators if codes[o.opcodeIndex] != "DENSIFY"]
    other_ops = other.subgraphs[0].operators
    if [codes[o.opcodeIndex] for o in ops] != [other_codes[o.opcodeIndex] for o in other_ops]:
        raise ValueError("The dense file's ops differ from the sparse file's: not the same model.")
    tensors, other_tensors = model.subgraphs[0].tensors, other.subgraphs[0].tensors
    values = inspector.constant_values(dense)
    out = {}
    for op, other_op in zip(ops, other_ops):
        for t, u in zip(op.inputs, other_op.inputs):
            t, u = int(t), int(u)
            if t < 0 or tensors[t].sparsity is None:
                continue
            if u not in values or values[u].dtype != inspector.numpy_dtype(tensors[t]):
                raise ValueError(f"The dense file has no constant where sparse tensor "
                                 f"{tensors[t].name!r} is read.")
            out[t] = (list(other_tensors[u].shape), other_tensors[u].quantization, values[u])
    return out


def _drop_unused_tensors(model) -> None:
    """Removes the tensors and op codes of the first subgraph that nothing refers to."""
    graph = model.subgraphs[0]
    used = {int(t) for op in graph.operators for t in list(op.inputs) + list(op.outputs)}
    used |= {int(t) for t in list(graph.inputs) + list(graph.outputs)}
    used.discard(-1)  # an omitted optional input
    index = {old: new for new, old in enumerate(sorted(used))}
    index[-1] = -1
    graph.tensors = [graph.tensors[i] for i in sorted(used)]
    for op in graph.operators:
        op.inputs = [index[int(t)] for t in op.inputs]
        op.outputs = [index[int(t)] for t in op.outputs]
        if op.intermediates is not None:
            op.intermediates = [index[int(t)] for t in op.intermediates if int(t) in index]
    graph.inputs = [index[int(t)] for t in graph.inputs]
    graph.outputs = [index[int(t)] for t in graph.outputs]
    for signature in model.signatureDefs or ():
        if signature.subgraphIndex == 0:
            for item in list(signature.inputs or ()) + list(signature.outputs or ()):
                item.tensorIndex = index[int(item.tensorIndex)]
    if len(model.subgraphs) == 1:
        codes = sorted({op.opcodeIndex for op in graph.operators})
        model.operatorCodes = [model.operatorCodes[c] for c in codes]
        for op in graph.operators:
            op.opcodeIndex = codes.index(op.opcodeIndex)


def _sparse_nbytes(model, tensor) -> int:
    """Bytes of a sparse constant: its stored values and its index arrays."""
    n = len(model.buffers[tensor.buffer].data)
    for dim in tensor.sparsity.dimMetadata or ():
        for array in (dim.arraySegments, dim.arrayIndices):
            if array is not None and getattr(array, "values", None) is not None:
                n += np.asarray(array.values).nbytes
    return n
