"""Reads a `.tflite` file without the interpreter.

The flatbuffer is parsed and checked in pure Python before any interpreter sees
it, so a truncated, corrupted or non-TFLite file becomes one
:class:`InvalidModelError` instead of a crash of the whole process.

Example:
    >>> from tfcompress import inspector
    >>> inspector.inspect(b"not a model")
    Traceback (most recent call last):
    ...
    tfcompress.inspector.InvalidModelError: Not a TFLite flatbuffer: too short (11 bytes; a TFLite file has at least 16). Received: <11 bytes>.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import functools
import os
import struct
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from tfcompress import report
from tfcompress._compat_litert import tflite_schema as _fb

__all__ = [
    "InvalidModelError",
    "MAX_FILE_BYTES",
    "MAX_OPS",
    "MAX_TENSOR_ELEMENTS",
    "MByNCheck",
    "ModelReport",
    "OpInfo",
    "QuantParams",
    "TensorInfo",
    "VerifiedModel",
    "check_sparsity_m_by_n",
    "constant_values",
    "expected_nbytes",
    "gzip_size",
    "id_bounds",
    "inspect",
    "layer_name",
    "load",
    "max_tensor_elements",
    "numpy_dtype",
    "op_name",
    "read_model",
    "sparse_to_dense",
    "tflite_sizes",
    "verify",
]

ModelSource = Union[bytes, bytearray, memoryview, str, os.PathLike, "VerifiedModel"]


class InvalidModelError(ValueError):
    """The bytes given are not a well-formed TFLite model."""


def _enum_names(enum_cls) -> Dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


_OP_NAMES = _enum_names(_fb.BuiltinOperator)
_TYPE_NAMES = {k: v.lower() for k, v in _enum_names(_fb.TensorType).items()}
_NUMPY_TYPES = {
    "float32": np.float32, "float16": np.float16, "float64": np.float64,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
    "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
    "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
}


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``."""

    scale: Tuple[float, ...]
    zero_point: Tuple[int, ...]
    axis: int = 0

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the main subgraph."""

    index: int
    name: str
    dtype: str
    shape: Tuple[int, ...]
    quantization: Optional[QuantParams]
    is_constant: bool
    nbytes: int
    zero_fraction: Optional[float]


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One operator of the main subgraph, with the layer it most likely came from."""

    index: int
    op: str
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    layer: str


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """What :func:`inspect` found in a `.tflite` file."""

    size_bytes: int
    num_subgraphs: int
    ops: Tuple[OpInfo, ...]
    tensors: Tuple[TensorInfo, ...]
    inputs: Tuple[TensorInfo, ...]
    outputs: Tuple[TensorInfo, ...]

    @property
    def op_histogram(self) -> Dict[str, int]:
        return dict(collections.Counter(op.op for op in self.ops).most_common())

    @property
    def weight_bytes_per_layer(self) -> Dict[str, int]:
        """Bytes of constant tensors, attributed to the first op that reads them."""
        seen, out = set(), collections.OrderedDict()
        for op in self.ops:
            for i in op.inputs:
                if i < 0 or i in seen or not self.tensors[i].is_constant:
                    continue
                seen.add(i)
                out[op.layer] = out.get(op.layer, 0) + self.tensors[i].nbytes
        return dict(out)

    @property
    def weight_tensors(self) -> Tuple[TensorInfo, ...]:
        """Constant tensors with at least two dimensions (kernels, not biases or shapes)."""
        return tuple(t for t in self.tensors if t.is_constant and len(t.shape) >= 2)

    @property
    def zero_weight_fraction(self) -> float:
        """Share of weight elements that are exactly zero (after dequantization)."""
        total = zeros = 0
        for t in self.weight_tensors:
            n = int(np.prod(t.shape))
            total += n
            zeros += round((t.zero_fraction or 0.0) * n)
        return zeros / total if total else 0.0

    def non_integer_tensors(self, *, allow_io: Sequence[str] = ()) -> Tuple[TensorInfo, ...]:
        """Tensors that break a fully-integer model.

        Activations must be quantized integers (int8, or uint8 as in older files and
        int16 in int16x8 files; or a dtype listed in ``allow_io`` for the model's own
        inputs and outputs), biases int32 or int64, weights int8 / uint8. Unquantized
        int32 tensors are fine where they are indices or shapes: token ids read by a
        GATHER, shapes from SHAPE, ARG_MAX outputs, and the like.
        """
        io = {t.index for t in self.inputs + self.outputs}
        bad = []
        for t in self.tensors:
            quantized_int = t.dtype in ("int8", "uint8") or (t.dtype == "int16" and t.quantization)
            if t.is_constant:
                ok = quantized_int or t.dtype in _INDEX_DTYPES
            elif t.index in io:
                ok = t.dtype == "int8" or t.dtype in allow_io or _is_index_tensor(self, t.index)
            else:
                ok = quantized_int or _is_index_tensor(self, t.index)
            if not ok:
                bad.append(t)
        return tuple(bad)

    def to_dict(self) -> dict:
        return {
            "size_bytes": self.size_bytes,
            "num_subgraphs": self.num_subgraphs,
            "op_histogram": self.op_histogram,
            "inputs": [dataclasses.asdict(t) for t in self.inputs],
            "outputs": [dataclasses.asdict(t) for t in self.outputs],
            "weight_bytes_per_layer": self.weight_bytes_per_layer,
            "zero_weight_fraction": self.zero_weight_fraction,
            "tensors": [dataclasses.asdict(t) for t in self.tensors],
            "ops": [dataclasses.asdict(o) for o in self.ops],
        }

    def summary(self) -> str:
        """A plain-text summary for terminals and logs."""
        lines = [f"size: {self.size_bytes} bytes, {len(self.ops)} ops, {len(self.tensors)} tensors"]
        lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in self.op_histogram.items()))
        for kind, ts in (("input", self.inputs), ("output", self.outputs)):
            names = _display_names([t.name for t in ts])
            for t in ts:
                lines.append(f"{kind}: {names[t.name]} {t.dtype}{list(t.shape)} "
                             f"{_fmt_quant(t.quantization)}")
        lines.append(f"zero weights: {100 * self.zero_weight_fraction:.1f}%")
        lines.append("weight bytes per layer:")
        names = _display_names(list(self.weight_bytes_per_layer), layers=True)
        for layer, n in self.weight_bytes_per_layer.items():
            lines.append(f"  {names[layer]:<40} {n:>10}")
        return "\n".join(lines)


def _display_names(raw: Sequence[str], *, layers: bool = False) -> Dict[str, str]:
    """Keras layer names for TFLite names of the converter's nested form (a tensor
    ``m_1/m_1/quant_conv1_1/convolution;...`` or, with ``layers``, an op's layer path
    ``m_1/quant_conv1_1`` -> ``conv1``); other names, and any that two raw names would
    share, stay as written (``to_dict`` keeps them all)."""
    short = {name: report.user_layer_name(name + "/op" if layers else name)
             if "/" in name else name for name in raw}
    counts = collections.Counter(short.values())
    return {name: s if counts[s] == 1 else name for name, s in short.items()}


def _fmt_quant(q: Optional[QuantParams]) -> str:
    if q is None:
        return "(not quantized)"
    if q.per_channel:
        return f"(per-channel axis {q.axis}, {len(q.scale)} scales)"
    return f"(scale={q.scale[0]:.6g}, zero_point={q.zero_point[0]})"


# Ops whose output is an index or a shape whatever their inputs.
_INDEX_PRODUCERS = {"SHAPE", "ARG_MAX", "ARG_MIN", "CAST", "RANGE", "SIZE"}
_INDEX_DTYPES = ("int32", "int64", "bool")
# Ops whose bool output is integer work when their inputs are integers (masks).
_COMPARISONS = {"EQUAL", "NOT_EQUAL", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL"}


def _is_quantized_int(info: TensorInfo) -> bool:
    return info.dtype in ("int8", "uint8") or (info.dtype == "int16" and bool(info.quantization))


def _is_index_tensor(report: ModelReport, index: int, _seen=None) -> bool:
    """Unquantized int32 / int64 / bool data computed only from integer data.

    Such tensors are legitimate in a fully-integer file: shapes (SHAPE), ARG_MAX
    outputs, token ids read by GATHER and the integer arithmetic Keras does on them
    (``Embedding`` wraps negative ids: LESS, ADD, SELECT), and bool masks compared from
    quantized values by an integer kernel (GREATER of an int8 tensor and a constant). An
    integer tensor computed from float values, or from quantized ones by anything but a
    comparison, a cast or an arg-max, is not.
    """
    seen = {} if _seen is None else _seen
    if index in seen:
        return seen[index]
    seen[index] = False  # a cycle proves nothing
    info = report.tensors[index]
    ok = False
    if info.dtype in _INDEX_DTYPES and info.quantization is None:
        producers = [op for op in report.ops if index in op.outputs]
        if not producers:
            ok = info.is_constant or index in {t.index for t in report.inputs}
        elif producers[0].op in _INDEX_PRODUCERS:
            ok = True
        elif producers[0].op in _COMPARISONS:  # int8 compared in int8: a mask
            ok = all(_is_quantized_int(report.tensors[t]) or _is_index_tensor(report, t, seen)
                     for t in producers[0].inputs if t >= 0)
        else:
            ok = all(_is_index_tensor(report, t, seen) for t in producers[0].inputs if t >= 0)
    seen[index] = ok
    return ok


# Ops that read ids from an integer tensor: {op: (ids input, table input)}.
_ID_READERS = {"GATHER": (1, 0), "GATHER_ND": (1, 0), "EMBEDDING_LOOKUP": (0, 1)}


def id_bounds(model: ModelSource) -> Dict[int, int]:
    """How many ids each unquantized integer input of a `.tflite` file may hold.

    An input whose values reach the ids of a GATHER, GATHER_ND or EMBEDDING_LOOKUP
    (directly or through integer arithmetic, as Keras' ``Embedding`` does) is valid
    for ids in ``[0, bound)``: ``bound`` is the smallest gathered dimension of the
    tables it reaches. Other unquantized integer inputs get 1, as zero is the one value
    every index-like use accepts. Quantized, float and boolean inputs are not listed.

    Args:
        model: the file (bytes, a path or a :class:`VerifiedModel`).

    Returns:
        ``{input tensor index: bound}``.
    """
    verified = load(model)
    report, operators = verified.report, verified.tree.subgraphs[0].operators or []
    consumers: Dict[int, list] = collections.defaultdict(list)
    for op in report.ops:
        for position, t in enumerate(op.inputs):
            if t >= 0:
                consumers[t].append((op, position))

    def gathered(op) -> int:
        ids, table = _ID_READERS[op.op]
        if len(op.inputs) <= max(ids, table) or min(op.inputs[ids], op.inputs[table]) < 0:
            return 1
        shape = report.tensors[op.inputs[table]].shape
        if op.op == "GATHER_ND":  # ids of depth k index the table's first k dimensions
            depth = (report.tensors[op.inputs[ids]].shape or (1,))[-1]
            dims = shape[:max(1, depth)]
        else:
            axis = getattr(operators[op.index].builtinOptions, "axis", 0) if op.op == "GATHER" else 0
            axis = int(axis or 0)
            dims = (shape[axis % len(shape)],) if shape and -len(shape) <= axis < len(shape) else ()
        dims = [d for d in dims if d > 0]
        return min(dims) if dims else 1

    bounds = {}
    for info in report.inputs:
        if info.dtype not in ("int32", "int64") or info.quantization is not None:
            continue
        found, todo, seen = [], [info.index], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for op, position in consumers[t]:
                if op.op in _ID_READERS and position == _ID_READERS[op.op][0]:
                    found.append(gathered(op))
                    continue
                todo.extend(o for o in op.outputs if o >= 0
                            and report.tensors[o].dtype in ("int32", "int64")
                            and report.tensors[o].quantization is None)
        bounds[info.index] = max(1, min(found)) if found else 1
    return bounds


# The largest file read unless the caller allows more (MAX_FILE_BYTES=... or the
# TFCOMPRESS_MAX_FILE_BYTES environment variable): 2 GiB, the flatbuffer's own limit.
MAX_FILE_BYTES = 2 ** 31


def _max_file_bytes() -> int:
    value = os.environ.get("TFCOMPRESS_MAX_FILE_BYTES")
    if value is None:
        return MAX_FILE_BYTES
    try:
        return int(value)
    except ValueError:
        raise ValueError("TFCOMPRESS_MAX_FILE_BYTES must be a number of bytes. Received: "
                         f"{value!r}.") from None


def read_model(model: ModelSource, *, max_bytes: Optional[int] = None) -> bytes:
    """Returns the bytes of a `.tflite` given as bytes or a path.

    Only regular files are read (a FIFO would block forever, a device like
    ``/dev/zero`` never ends), and at most ``max_bytes`` (default
    :data:`MAX_FILE_BYTES`, or ``$TFCOMPRESS_MAX_FILE_BYTES``): the size is checked
    before reading, so a huge or sparse file is refused without being read.

    Raises:
        FileNotFoundError: the path does not exist.
        IsADirectoryError: the path is a directory.
        InvalidModelError: not a regular file, or larger than the limit.
        TypeError: ``model`` is neither bytes nor a path.
    """
    if isinstance(model, VerifiedModel):
        return model.bytes
    limit = _max_file_bytes() if max_bytes is None else max_bytes
    if isinstance(model, (bytes, bytearray, memoryview)):
        if len(model) > limit:
            raise InvalidModelError(f"The model is {len(model)} bytes, over the limit of {limit} "
                                    "(raise it with TFCOMPRESS_MAX_FILE_BYTES).")
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"No such TFLite file. Received: path={str(path)!r}.")
        if path.is_dir():
            raise IsADirectoryError(
                f"Expected a .tflite file, got a directory. Received: path={str(path)!r}."
            )
        with open(path, "rb", buffering=0) if path.is_file() else _refuse_special(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise InvalidModelError(
                    f"{str(path)!r} is {size} bytes, over the limit of {limit} bytes for a "
                    "model file (raise it with TFCOMPRESS_MAX_FILE_BYTES).")
            data = f.read(limit + 1)
        if len(data) > limit:  # the file grew while it was read
            raise InvalidModelError(f"{str(path)!r} is over the limit of {limit} bytes.")
        return data
    raise TypeError(
        "Expected the .tflite model as bytes or a path. "
        f"Received: model of type {type(model).__name__}."
    )


def _refuse_special(path: Path):
    raise InvalidModelError(f"{str(path)!r} is not a regular file (a FIFO, socket or device); "
                            "only regular .tflite files are read.")


def _describe(model: ModelSource, buf: bytes) -> str:
    if isinstance(model, (str, os.PathLike)):
        return f"path={str(model)!r}"
    return f"<{len(buf)} bytes>"


def _parse(buf: bytes):
    # The generated reader raises plain Python exceptions on out-of-range
    # offsets (struct.unpack_from / np.frombuffer bounds checks); it never
    # touches memory outside `buf`.
    model = _fb.Model.GetRootAs(buf, 0)
    return _fb.ModelT.InitFromObj(model)


class VerifiedModel:
    """A `.tflite` file whose bytes passed :func:`verify`: parsed once, then passed around.

    Every check-layer function (:func:`inspect`, ``runtime.make_interpreter``,
    ``validation.validate``, ``benchmark.measure_latency``, ...) accepts one in place of
    bytes or a path and uses it as it is, so a model read by :func:`load` is never read
    or parsed again. Build it with :func:`load`, not directly.

    Attributes:
        bytes: the file's bytes.
        tree: the parsed flatbuffer (the schema's object API).
        source: where the bytes came from (for messages).
    """

    def __init__(self, buf: bytes, tree, source: str):
        self.bytes = buf
        self.tree = tree
        self.source = source
        # Outcomes of runtime.trial_run: {(kernel, invoked): True, (kernel, "error"): exc}.
        self.trials: Dict[tuple, object] = {}

    @functools.cached_property
    def report(self) -> "ModelReport":
        """The :class:`ModelReport` of the main subgraph (computed on first use)."""
        return _report(self.bytes, self.tree)

    @functools.cached_property
    def constants(self) -> Dict[int, np.ndarray]:
        """Stored values of every dense constant tensor (see :func:`constant_values`)."""
        return _constants(self.tree)

    def __len__(self) -> int:
        return len(self.bytes)

    def __repr__(self) -> str:
        return f"VerifiedModel({self.source}, {len(self.bytes)} bytes)"


def load(model: ModelSource) -> VerifiedModel:
    """Reads and verifies a `.tflite` once; a :class:`VerifiedModel` is returned as it is.

    >>> load(b"TFL3")
    Traceback (most recent call last):
    ...
    tfcompress.inspector.InvalidModelError: Not a TFLite flatbuffer: too short (4 bytes; a TFLite file has at least 16). Received: <4 bytes>.

    Raises:
        InvalidModelError: with what is wrong, for any malformed input.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(model, VerifiedModel):
        return model
    buf = read_model(model)
    what = _describe(model, buf)
    return VerifiedModel(buf, _verify_bytes(buf, what), what)


def verify(model: ModelSource):
    """Checks a `.tflite` flatbuffer and returns its parsed object tree.

    Every table is unpacked with bounds checks, then every index (tensor,
    buffer, opcode, subgraph input/output) is checked to be in range and every
    constant buffer to hold exactly the bytes its shape and dtype need.

    Raises:
        InvalidModelError: with what is wrong, for any malformed input.
    """
    return load(model).tree


def _verify_bytes(buf: bytes, what: str):
    if len(buf) < 16:
        raise InvalidModelError(
            f"Not a TFLite flatbuffer: too short ({len(buf)} bytes; a TFLite file has at "
            f"least 16). Received: {what}."
        )
    if buf[4:8] != b"TFL3":
        raise InvalidModelError(
            "Not a TFLite flatbuffer: the file identifier is "
            f"{bytes(buf[4:8])!r}, expected b'TFL3'. Received: {what}."
        )
    try:
        too_big = list(_graph_size_problems(buf))
        if too_big:
            raise InvalidModelError(f"The graph is too large to read: {'; '.join(too_big[:3])}. "
                                    f"Received: {what}.")
        tree = _parse(buf)
    except (struct.error, ValueError, IndexError, TypeError, OverflowError, UnicodeDecodeError) as e:
        if isinstance(e, InvalidModelError):
            raise
        raise InvalidModelError(
            f"Corrupted or truncated TFLite file ({len(buf)} bytes): the flatbuffer "
            f"could not be read ({type(e).__name__}: {e}). Received: {what}."
        ) from None
    problems = list(_semantic_problems(tree, len(buf)))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InvalidModelError(
            f"Corrupted or truncated TFLite file ({len(buf)} bytes): {shown}. Received: {what}."
        )
    return tree


# The most operators a subgraph may have unless the caller allows more (TFCOMPRESS_MAX_OPS):
# reading a graph in Python takes about half a millisecond per operator here, and a crafted
# 1.2 MB file with 20,000 operators took 10 s. Tensors and buffers may be four times as many.
MAX_OPS = 10_000


def _max_ops() -> int:
    value = os.environ.get("TFCOMPRESS_MAX_OPS")
    if not value:
        return MAX_OPS
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"TFCOMPRESS_MAX_OPS must be a number of operators. Received: "
                         f"{value!r}.") from None


def _graph_size_problems(buf: bytes):
    """Counts read with the flatbuffer's lazy accessors, before the whole tree is unpacked.

    Bounds what the full parse and every later loop over the graph cost: operators,
    tensors and buffers per file, and how many tensor entries an operator or a
    subgraph's input / output list may have (a list of 100,000 copies of one tensor
    took 19 s to report). Raises the reader's own exceptions on a corrupted file.
    """
    limit = _max_ops()
    model = _fb.Model.GetRootAs(buf, 0)
    if model.SubgraphsLength() > limit:
        yield f"{model.SubgraphsLength()} subgraphs, over the limit of {limit} (TFCOMPRESS_MAX_OPS)"
        return
    if model.BuffersLength() > 4 * limit:
        yield (f"{model.BuffersLength()} buffers, over the limit of {4 * limit} "
               "(four times TFCOMPRESS_MAX_OPS)")
    for s_i in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s_i)
        n_ops, n_tensors = sg.OperatorsLength(), sg.TensorsLength()
        if n_ops > limit:
            yield f"subgraph {s_i} has {n_ops} operators, over the limit of {limit} (TFCOMPRESS_MAX_OPS)"
            return
        if n_tensors > 4 * limit:
            yield (f"subgraph {s_i} has {n_tensors} tensors, over the limit of {4 * limit} "
                   "(four times TFCOMPRESS_MAX_OPS)")
            return
        for which in ("Inputs", "Outputs"):
            n = getattr(sg, which + "Length")()
            if n > n_tensors:
                yield (f"subgraph {s_i} lists {n} {which.lower()}, more than its {n_tensors} "
                       "tensors")
        most = max(n_tensors, 256)  # an op may read one tensor several times, not endlessly
        for o_i in range(n_ops):
            op = sg.Operators(o_i)
            for which in ("Inputs", "Outputs", "Intermediates"):
                n = getattr(op, which + "Length")()
                if n > most:
                    yield (f"subgraph {s_i} op {o_i} lists {n} {which.lower()}, more than "
                           f"{most} (the subgraph has {n_tensors} tensors)")
                    return


# Input slots an op may leave empty (-1); every other slot of these ops must name a tensor.
_OPTIONAL_INPUTS = {
    "CONV_2D": {2}, "DEPTHWISE_CONV_2D": {2}, "FULLY_CONNECTED": {2}, "TRANSPOSE_CONV": {3},
    "CONV_3D": {2}, "CONV_3D_TRANSPOSE": {3}, "SVDF": {3, 4}, "RESHAPE": {1},
}
# Ops whose many optional inputs (peepholes, projections, states) may each be -1.
_MANY_OPTIONAL = {"LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM",
                  "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN", "RNN", "CUSTOM",
                  "CALL_ONCE", "WHILE", "IF", "STABLEHLO_COMPOSITE"}
# Tensors larger than this many elements (or than 256 elements per byte of the file) are
# refused: one flipped bit in a shape made a 98 KB file ask for 17 GB. Raise it with
# TFCOMPRESS_MAX_TENSOR_ELEMENTS for models with really large activations.
MAX_TENSOR_ELEMENTS = 2 ** 24


def _max_elements(size: int) -> int:
    value = os.environ.get("TFCOMPRESS_MAX_TENSOR_ELEMENTS")
    if not value:
        return max(MAX_TENSOR_ELEMENTS, 256 * size)
    try:
        return int(value)
    except ValueError:
        raise ValueError("TFCOMPRESS_MAX_TENSOR_ELEMENTS must be a number of elements. "
                         f"Received: {value!r}.") from None


def max_tensor_elements(size: int) -> int:
    """The most elements one tensor of a ``size``-byte file may have (see :data:`MAX_TENSOR_ELEMENTS`).

    All the tensors of a subgraph together may have four times as many.

    >>> max_tensor_elements(1000) == MAX_TENSOR_ELEMENTS
    True
    """
    return _max_elements(size)


def _elements(shape) -> int:
    """The product of ``shape`` in Python integers (numpy's would overflow or warn)."""
    count = 1
    for d in shape:
        count *= int(d)
    return count


def _count_text(n: int) -> str:
    return str(n) if n < 10 ** 15 else f"about 10^{len(str(n)) - 1}"


def _tensor_problems(s_i: int, t_i: int, t, limit: int):
    shape = [int(d) for d in (t.shape if t.shape is not None else [])]
    if any(d < 0 for d in shape):
        yield f"subgraph {s_i} tensor {t_i} ({_name(t)}) has a negative dimension {shape}"
        return
    count = _elements(shape)
    if count > limit:
        yield (f"subgraph {s_i} tensor {t_i} ({_name(t)}) of shape {shape} has {_count_text(count)} "
               f"elements, over the limit of {limit} (TFCOMPRESS_MAX_TENSOR_ELEMENTS)")
    q = t.quantization
    scale = list(q.scale) if q is not None and q.scale is not None else []
    zero = list(q.zeroPoint) if q is not None and q.zeroPoint is not None else []
    if not scale:
        return
    if len(zero) != len(scale):
        yield (f"subgraph {s_i} tensor {t_i} ({_name(t)}) has {len(scale)} scale(s) and "
               f"{len(zero)} zero point(s)")
    if not all(np.isfinite(v) and v >= 0 for v in scale):
        yield f"subgraph {s_i} tensor {t_i} ({_name(t)}) has a negative or non-finite scale"
    if len(scale) > 1 and (not 0 <= q.quantizedDimension < len(shape)
                           or shape[q.quantizedDimension] != len(scale)):
        yield (f"subgraph {s_i} tensor {t_i} ({_name(t)}) has {len(scale)} scales along "
               f"dimension {q.quantizedDimension} of shape {shape}")


# (fewest inputs, most inputs, fewest outputs, most outputs) of common builtin ops, as
# their kernels check them (None: any number). The kernels assume these counts in places.
_UNARY = (1, 1, 1, 1)
_BINARY = (2, 2, 1, 1)
_ARITY = {
    "CONV_2D": (2, 3, 1, 1), "DEPTHWISE_CONV_2D": (2, 3, 1, 1), "FULLY_CONNECTED": (2, 3, 1, 2),
    "TRANSPOSE_CONV": (3, 4, 1, 1), "ADD": _BINARY, "SUB": _BINARY, "MUL": _BINARY,
    "DIV": _BINARY, "MAXIMUM": _BINARY, "MINIMUM": _BINARY, "SQUARED_DIFFERENCE": _BINARY,
    "PRELU": _BINARY, "BATCH_MATMUL": _BINARY, "MEAN": _BINARY, "SUM": _BINARY,
    "REDUCE_MAX": _BINARY, "REDUCE_MIN": _BINARY, "REDUCE_PROD": _BINARY, "TRANSPOSE": _BINARY,
    "EXPAND_DIMS": _BINARY, "GATHER": _BINARY, "ARG_MAX": _BINARY, "ARG_MIN": _BINARY,
    "RESIZE_BILINEAR": _BINARY, "RESIZE_NEAREST_NEIGHBOR": _BINARY,
    "AVERAGE_POOL_2D": _UNARY, "MAX_POOL_2D": _UNARY, "L2_POOL_2D": _UNARY, "SOFTMAX": _UNARY,
    "LOGISTIC": _UNARY, "TANH": _UNARY, "RELU": _UNARY, "RELU6": _UNARY,
    "RELU_N1_TO_1": _UNARY, "HARD_SWISH": _UNARY, "LEAKY_RELU": _UNARY, "QUANTIZE": _UNARY,
    "DEQUANTIZE": _UNARY, "DENSIFY": _UNARY, "SQUEEZE": _UNARY, "SHAPE": _UNARY,
    "CAST": _UNARY, "ABS": _UNARY, "EXP": _UNARY, "LOG": _UNARY, "SQRT": _UNARY,
    "RSQRT": _UNARY, "NEG": _UNARY, "FLOOR": _UNARY, "L2_NORMALIZATION": _UNARY,
    "RESHAPE": (1, 2, 1, 1), "PAD": (2, 3, 1, 1), "PADV2": (3, 3, 1, 1),
    "SLICE": (3, 3, 1, 1), "STRIDED_SLICE": (4, 4, 1, 1), "CONCATENATION": (1, None, 1, 1),
    "PACK": (1, None, 1, 1), "SPLIT": (2, 2, 1, None), "UNPACK": (1, 1, 1, None),
}


def _pool_problems(s_i: int, o_i: int, op, name: str, tensors, ins):
    """A pooling window must fit its input: one of 2x128 over an 8x8 input kept XNNPACK's
    reshape busy for 15 s (found by tools/fuzz_tflite.py)."""
    options = op.builtinOptions
    if not all(hasattr(options, k) for k in ("filterHeight", "filterWidth", "strideH", "strideW")):
        yield f"subgraph {s_i} op {o_i} ({name}) has no pooling options"
        return
    window = (int(options.filterHeight), int(options.filterWidth))
    strides = (int(options.strideH), int(options.strideW))
    if min(window + strides) < 1:
        yield (f"subgraph {s_i} op {o_i} ({name}) has window {window} and strides {strides}; "
               "both must be at least 1")
        return
    shape = tensors[ins[0]].shape if ins and ins[0] >= 0 else None
    # SAME padding allows a window larger than the input (a 3x3 pool over 2x2); not by far.
    fits = lambda w, d: w <= max(2 * int(d), int(d) + 8)  # noqa: E731
    if shape is not None and len(shape) == 4 and not (fits(window[0], shape[1])
                                                      and fits(window[1], shape[2])):
        yield (f"subgraph {s_i} op {o_i} ({name}) has a {window[0]}x{window[1]} window over "
               f"an input of {int(shape[1])}x{int(shape[2])}; at most twice the input (or 8 "
               "more) is accepted")


def _op_problems(s_i: int, o_i: int, op, name: str, tensors, buffers):
    ins = [int(i) for i in (op.inputs if op.inputs is not None else [])]
    outs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
    if name in _ARITY:
        lo_in, hi_in, lo_out, hi_out = _ARITY[name]
        for what, n, lo, hi in (("inputs", len(ins), lo_in, hi_in),
                                ("outputs", len(outs), lo_out, hi_out)):
            if n < lo or (hi is not None and n > hi):
                allowed = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi else f"at least {lo}"
                yield f"subgraph {s_i} op {o_i} ({name}) has {n} {what}; {name} takes {allowed}"
                return
    if name in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"):
        yield from _pool_problems(s_i, o_i, op, name, tensors, ins)
    optional = _OPTIONAL_INPUTS.get(name, set())
    for slot, i in enumerate(ins):
        if i == -1 and name not in _MANY_OPTIONAL and slot not in optional:
            yield f"subgraph {s_i} op {o_i} ({name}) leaves its required input {slot} empty"
    for i in outs:
        if i == -1:
            yield f"subgraph {s_i} op {o_i} ({name}) has an empty output"
        elif 0 <= i < len(tensors):
            b = tensors[i].buffer
            if 0 < b < len(buffers) and buffers[b].data is not None and len(buffers[b].data):
                yield f"subgraph {s_i} op {o_i} ({name}) writes into constant tensor {i}"


def _semantic_problems(tree, size: int):
    if tree.version != 3:
        yield f"schema version {tree.version}, expected 3"
    subgraphs = tree.subgraphs or []
    buffers = tree.buffers or []
    codes = tree.operatorCodes or []
    if not subgraphs:
        yield "no subgraph"
    elif not len(subgraphs[0].outputs if subgraphs[0].outputs is not None else []):
        yield "the main subgraph has no outputs"
    for b_i, b in enumerate(buffers):
        if b.offset and b.offset > 1 and b.offset + b.size > size:
            yield f"buffer {b_i} points past the end of the file"
    limit = _max_elements(size)
    for s_i, sg in enumerate(subgraphs):
        tensors = sg.tensors or []
        n = len(tensors)
        total = sum(_elements(max(int(d), 0) for d in (t.shape if t.shape is not None else []))
                    for t in tensors)
        if total > 4 * limit:
            yield (f"subgraph {s_i}'s tensors have {_count_text(total)} elements together, over the "
                   f"limit of {4 * limit} (four times TFCOMPRESS_MAX_TENSOR_ELEMENTS)")
        for t_i, t in enumerate(tensors):
            yield from _tensor_problems(s_i, t_i, t, limit)
            if t.buffer >= len(buffers) and t.buffer != 0:
                yield f"subgraph {s_i} tensor {t_i} names buffer {t.buffer} of {len(buffers)}"
                continue
            data = buffers[t.buffer].data if t.buffer < len(buffers) else None
            expected = expected_nbytes(t)
            if data is not None and len(data) and expected is not None and len(data) != expected:
                yield (f"subgraph {s_i} tensor {t_i} ({_name(t)}) holds {len(data)} bytes, "
                       f"its shape and dtype need {expected}")
        for which in ("inputs", "outputs"):
            for i in getattr(sg, which) if getattr(sg, which) is not None else []:
                if not 0 <= i < n:
                    yield f"subgraph {s_i} {which[:-1]} tensor {i} out of range (0..{n - 1})"
        for o_i, op in enumerate(sg.operators or []):
            if not 0 <= op.opcodeIndex < len(codes):
                yield f"subgraph {s_i} op {o_i} has opcode {op.opcodeIndex} of {len(codes)}"
            ins = op.inputs if op.inputs is not None else []
            outs = op.outputs if op.outputs is not None else []
            bad = [i for i in list(ins) + list(outs) if not -1 <= i < n]
            for i in bad:
                yield f"subgraph {s_i} op {o_i} uses tensor {i} out of range (0..{n - 1})"
            if not bad and 0 <= op.opcodeIndex < len(codes):
                yield from _op_problems(s_i, o_i, op, op_name(codes[op.opcodeIndex]), tensors,
                                        buffers)


def numpy_dtype(t) -> Optional[np.dtype]:
    """The numpy dtype of a flatbuffer tensor (schema object API), None if it has none."""
    np_type = _NUMPY_TYPES.get(_TYPE_NAMES.get(t.type, ""))
    return None if np_type is None else np.dtype(np_type)


def _vector(array) -> Optional[np.ndarray]:
    values = getattr(array, "values", None) if array is not None else None
    return None if values is None else np.asarray(values, np.int64)


def sparse_to_dense(t, buffers) -> np.ndarray:
    """The dense values of a sparse constant tensor (TFLite's sparsity format, any order).

    The stored values are walked level by level in ``traversalOrder``: a DENSE level
    counts to its size, a SPARSE_CSR level reads the indices between two segment
    boundaries; block dimensions (``blockMap``) are folded back into the dimensions
    they split, and positions past a dimension's size (block padding) are dropped.
    Elements that are not stored are zero, as in TFLite's own densification.

    Raises:
        InvalidModelError: the sparsity parameters do not describe the stored values.
    """
    dtype = numpy_dtype(t)
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
    sp = t.sparsity
    if dtype is None or sp is None or not shape:
        raise InvalidModelError(f"Tensor {_name(t)!r} is not a sparse constant with a shape.")
    data = buffers[t.buffer].data if 0 < t.buffer < len(buffers) else None
    values = np.frombuffer(np.asarray(data if data is not None else [], np.uint8).tobytes(), dtype)
    order = [int(v) for v in (sp.traversalOrder if sp.traversalOrder is not None else [])]
    blocks = [int(v) for v in (sp.blockMap if sp.blockMap is not None else [])]
    levels = list(sp.dimMetadata or [])
    n = len(shape)
    if sorted(order) != list(range(n + len(blocks))) or len(levels) != len(order) or any(
            not 0 <= b < n for b in blocks):
        raise InvalidModelError(f"Sparse tensor {_name(t)!r}: traversal order {order}, block "
                                f"map {blocks} and {len(levels)} levels do not fit shape {shape}.")
    block_size = {b: int(levels[order.index(n + i)].denseSize) for i, b in enumerate(blocks)}
    dense = np.zeros(shape, dtype)
    index = [0] * (n + len(blocks))

    def place(position: int) -> None:
        if position >= len(values):
            raise InvalidModelError(f"Sparse tensor {_name(t)!r} stores fewer values than its "
                                    "sparsity parameters address.")
        coord, padding = [], False
        for d in range(n):
            if d in block_size:
                size, within = block_size[d], index[n + blocks.index(d)]
                if index[d] >= -(-shape[d] // size) or within >= size:
                    raise InvalidModelError(f"Sparse tensor {_name(t)!r}: block index out of "
                                            f"range for shape {shape}.")
                c = index[d] * size + within
                padding = padding or c >= shape[d]  # the last block runs past the edge
            else:
                c = index[d]
                if not 0 <= c < shape[d]:
                    raise InvalidModelError(f"Sparse tensor {_name(t)!r}: index {c} out of "
                                            f"range for shape {shape}.")
            coord.append(c)
        if not padding:
            dense[tuple(coord)] = values[position]

    def walk(level: int, parent: int) -> None:
        if level == len(levels):
            place(parent)
            return
        meta, axis = levels[level], order[level]
        if meta.format == 0:  # DENSE
            size = int(meta.denseSize)
            for i in range(size):
                index[axis] = i
                walk(level + 1, parent * size + i)
            return
        segments, indices = _vector(meta.arraySegments), _vector(meta.arrayIndices)
        if segments is None or indices is None or parent + 1 >= len(segments):
            raise InvalidModelError(f"Sparse tensor {_name(t)!r}: level {level} has no segments "
                                    "or indices for the position it is reached from.")
        for j in range(int(segments[parent]), int(segments[parent + 1])):
            if not 0 <= j < len(indices):
                raise InvalidModelError(f"Sparse tensor {_name(t)!r}: a segment points past its "
                                        "indices.")
            index[axis] = int(indices[j])
            walk(level + 1, j)

    walk(0, 0)
    return dense


def expected_nbytes(t) -> Optional[int]:
    """Bytes of a dense flatbuffer tensor's data; None if sparse, dynamic or unknown."""
    dtype = _TYPE_NAMES.get(t.type)
    if t.sparsity is not None or dtype is None:
        return None
    shape = list(t.shape) if t.shape is not None else []
    if any(d < 0 for d in shape):
        return None
    count = _elements(shape)
    if dtype == "int4":
        return (count + 1) // 2
    np_type = _NUMPY_TYPES.get(dtype)
    return None if np_type is None else count * np.dtype(np_type).itemsize


def _name(t) -> str:
    return t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name or "")


def op_name(code) -> str:
    """The builtin op name (``CONV_2D``) or the custom op's own name."""
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == _fb.BuiltinOperator.CUSTOM:
        custom = code.customCode
        return custom.decode("utf-8", "replace") if isinstance(custom, bytes) else str(custom)
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def layer_name(tensor_name: str) -> str:
    """Best guess of the Keras layer behind a TFLite tensor name.

    Example:
        >>> layer_name("functional_1/conv2d_1/BiasAdd;functional_1/conv2d_1/convolution")
        'conv2d_1'
        >>> layer_name("model/activation_3/Relu")
        'activation_3'
        >>> layer_name("StatefulPartitionedCall:0")
        'StatefulPartitionedCall:0'
    """
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    if len(parts) >= 3:
        return "/".join(parts[1:-1])
    if len(parts) == 2:
        return parts[0]
    return first


def _tensor_info(index: int, t, buffers) -> TensorInfo:
    dtype = _TYPE_NAMES.get(t.type, f"type_{t.type}")
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
    q = t.quantization
    quant = None
    if q is not None and q.scale is not None and len(q.scale):
        zps = q.zeroPoint if q.zeroPoint is not None else [0] * len(q.scale)
        quant = QuantParams(
            scale=tuple(float(s) for s in q.scale),
            zero_point=tuple(int(z) for z in zps),
            axis=int(q.quantizedDimension),
        )
    data = buffers[t.buffer].data if 0 < t.buffer < len(buffers) else None
    is_constant = data is not None and len(data) > 0
    nbytes = len(data) if is_constant else 0
    zero_fraction = None
    np_type = _NUMPY_TYPES.get(dtype)
    if is_constant and np_type is not None:
        values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype=np_type)
        # A sparse tensor stores only some of its elements; the rest are zeros.
        total = int(np.prod(shape)) if t.sparsity is not None and shape else values.size
        if values.size and total >= values.size:
            zero = 0
            if quant is not None and len(set(quant.zero_point)) == 1:
                zero = quant.zero_point[0]
            zero_fraction = float((total - values.size + np.sum(values == zero)) / total)
    return TensorInfo(index, _name(t), dtype, shape, quant, is_constant, nbytes, zero_fraction)


def inspect(model: ModelSource) -> ModelReport:
    """Reports ops, tensors, quantization and weights of a `.tflite` model.

    Args:
        model: the model as bytes or a path to a `.tflite` file.

    Returns:
        A :class:`ModelReport` of the main (first) subgraph.

    Raises:
        InvalidModelError: the bytes are not a well-formed TFLite model.
        FileNotFoundError: the path does not exist.
    """
    return load(model).report


def _report(buf: bytes, tree) -> ModelReport:
    sg = tree.subgraphs[0]
    buffers = tree.buffers or []
    tensors = tuple(_tensor_info(i, t, buffers) for i, t in enumerate(sg.tensors or []))
    codes = tree.operatorCodes or []
    ops = []
    for i, op in enumerate(sg.operators or []):
        outs = tuple(int(x) for x in (op.outputs if op.outputs is not None else []))
        ins = tuple(int(x) for x in (op.inputs if op.inputs is not None else []))
        layer = layer_name(tensors[outs[0]].name) if outs and outs[0] >= 0 else f"op_{i}"
        ops.append(OpInfo(i, op_name(codes[op.opcodeIndex]), ins, outs, layer))
    inputs = tuple(tensors[i] for i in (sg.inputs if sg.inputs is not None else []))
    outputs = tuple(tensors[i] for i in (sg.outputs if sg.outputs is not None else []))
    return ModelReport(len(buf), len(tree.subgraphs), tuple(ops), tensors, inputs, outputs)


def constant_values(model: ModelSource) -> Dict[int, np.ndarray]:
    """The stored values of every dense constant tensor, by tensor index.

    Values are returned as stored (int8 weights stay int8; dequantize with the
    tensor's :class:`QuantParams` if needed). Sparse-encoded tensors are skipped.

    Args:
        model: the model as bytes or a path to a `.tflite` file.

    Returns:
        ``{tensor_index: array shaped like the tensor}`` for the main subgraph.
    """
    return dict(load(model).constants)


def _constants(tree) -> Dict[int, np.ndarray]:
    buffers = tree.buffers or []
    out = {}
    for i, t in enumerate(tree.subgraphs[0].tensors or []):
        data = buffers[t.buffer].data if 0 < t.buffer < len(buffers) else None
        np_type = _NUMPY_TYPES.get(_TYPE_NAMES.get(t.type, ""))
        if data is None or not len(data) or np_type is None or t.sparsity is not None:
            continue
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
        values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype=np_type)
        if values.size == int(np.prod(shape)):
            out[i] = values.reshape(shape)
    return out


def gzip_size(model: ModelSource, *, level: int = 9) -> int:
    """Bytes of the model after gzip, the size that matters for a download.

    Zeros from unstructured pruning do not shrink a `.tflite` file; they only make
    it compress better, which is what this measures.

    >>> gzip_size(bytes(10_000)) < 100
    True
    """
    buf = model if isinstance(model, (bytes, bytearray, memoryview)) else read_model(model)
    return len(gzip.compress(bytes(buf), compresslevel=level, mtime=0))


@dataclasses.dataclass(frozen=True)
class MByNCheck:
    """Whether each weight of a `.tflite` keeps an N:M pattern."""

    n: int
    m: int
    tensors: Tuple[Tuple[str, Tuple[int, ...], bool], ...]

    @property
    def ok(self) -> bool:
        """True when at least one weight was checked and every checked one keeps N:M."""
        return bool(self.tensors) and all(kept for _, _, kept in self.tensors)


def check_sparsity_m_by_n(model, *, n: int = 2, m: int = 4,
                          ops: Sequence[str] = ("FULLY_CONNECTED", "CONV_2D")) -> MByNCheck:
    """Checks that the weights of a `.tflite` keep at most ``n`` non-zeros in every ``m``.

    Groups run along the innermost axis of each weight (input channels in TFLite's
    layout). Weights whose innermost size is not a multiple of ``m`` are skipped.

    Args:
        model: `.tflite` bytes or path.
        n, m: the pattern (2:4 by default).
        ops: the op types whose weight input (input 1) is checked.

    Returns:
        An :class:`MByNCheck`; ``.ok`` is the verdict.
    """
    verified = load(model)
    report, values = verified.report, verified.constants
    rows = []
    for op in report.ops:
        if op.op not in ops or len(op.inputs) < 2 or op.inputs[1] not in values:
            continue
        info = report.tensors[op.inputs[1]]
        w = values[op.inputs[1]]
        if w.ndim < 2 or w.shape[-1] % m:
            continue
        zero = info.quantization.zero_point[0] if info.quantization else 0
        nonzero = (w.reshape(-1, m) != zero).sum(axis=1)
        rows.append((info.name, tuple(w.shape), bool(np.all(nonzero <= n))))
    return MByNCheck(n, m, tuple(rows))


def tflite_sizes(model) -> Dict[str, int]:
    """``{"bytes": raw size, "gzip_bytes": gzip size}`` of a `.tflite` (bytes or path).

    >>> tflite_sizes(bytes(1000))["bytes"]
    1000
    """
    buf = read_model(model) if not isinstance(model, (bytes, bytearray)) else model
    return {"bytes": len(buf), "gzip_bytes": gzip_size(buf)}
