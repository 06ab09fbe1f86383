"""Rewriting `.tflite` flatbuffers: what the converter writes, made safe and smaller.

The check layer reads files (:mod:`tfcompress.inspector`) and rewrites them here,
with the flatbuffer schema that ships with LiteRT and no TensorFlow.
:func:`tidy_sparse_weights` is what ``convert(..., sparse=True)`` applies to the
converter's sparse output.
"""

from __future__ import annotations

from typing import Sequence

import flatbuffers
import numpy as np

from tfcompress import inspector, runtime
from tfcompress._compat_litert import tflite_schema

__all__ = ["SPARSE_CONSUMERS", "SPARSE_MODES", "tidy_sparse_weights"]

SPARSE_CONSUMERS = ("CONV_2D",)  # ops that XNNPACK prepares with sparse (DENSIFY) weights
SPARSE_MODES = ("int8", "float32")  # where those files run on both kernel paths


def tidy_sparse_weights(model_bytes: bytes, *, keep: Sequence[str] = SPARSE_CONSUMERS) -> bytes:
    """Makes the sparse weights of a converted file safe for XNNPACK, and smaller.

    Each DENSIFY op whose output goes to an op not in ``keep``, or whose sparse input
    takes more bytes than the dense tensor would (index arrays included: below about
    half zeros), is removed: its sparse input tensor gets the dense values (computed
    once by the reference kernels) and its consumers read that tensor, so
    ``sparse=True`` costs at most a few hundred bytes of bookkeeping where it saves
    nothing. The sparse inputs of the DENSIFY ops that stay
    lose their quantization parameters, a copy of those of DENSIFY's output, which
    is what the consumer reads (ResNet-8: 4 KB). A file without DENSIFY ops is
    returned unchanged.
    """
    schema = tflite_schema
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model_bytes), 0))
    codes = [inspector.op_name(c) for c in model.operatorCodes]
    graph = model.subgraphs[0]
    readers: dict = {}
    for op in graph.operators:
        for t in op.inputs if op.inputs is not None else ():
            readers.setdefault(int(t), []).append(codes[op.opcodeIndex])
    densify = [op for op in graph.operators if codes[op.opcodeIndex] == "DENSIFY"]
    if not densify:
        return model_bytes
    undo = [op for op in densify
            if any(r not in keep for r in readers.get(int(op.outputs[0]), []))
            or _sparse_nbytes(model, graph.tensors[int(op.inputs[0])])
            >= (inspector.expected_nbytes(graph.tensors[int(op.outputs[0])]) or float("inf"))]
    if undo:
        interpreter = runtime.make_interpreter(model_bytes, xnnpack=False, preserve_all_tensors=True)
        interpreter.invoke()  # DENSIFY runs on constants: any input gives the same weights
    rename = {}
    for op in densify:
        source, dense = int(op.inputs[0]), int(op.outputs[0])
        tensor = graph.tensors[source]
        if op not in undo:
            tensor.quantization = None
            continue
        tensor.sparsity = None
        tensor.shape = list(graph.tensors[dense].shape)
        tensor.quantization = graph.tensors[dense].quantization
        model.buffers[tensor.buffer].data = np.frombuffer(
            interpreter.get_tensor(dense).tobytes(), np.uint8)
        rename[dense] = source
    graph.operators = [op for op in graph.operators if op not in undo]
    for op in graph.operators:
        op.inputs = [rename.get(int(t), int(t)) for t in op.inputs]
    _drop_unused_tensors(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


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
