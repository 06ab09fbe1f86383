"""Runs `.tflite` models in the LiteRT interpreter, with or without XNNPACK.

One helper builds every interpreter in the package, so that the validator and
the benchmark always compare the same two kernel paths:

* ``xnnpack=True``: the interpreter's default, which applies the XNNPACK delegate;
* ``xnnpack=False``: ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``, TFLite's own builtin
  kernels (called the *reference* kernels in reports).

Every model passes :func:`tfcompress.inspector.verify` before an interpreter
sees it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfcompress import inspector
from tfcompress._progress import Progress
from tfcompress._compat_litert import Interpreter, OpResolverType, ops_details

__all__ = [
    "DelegationReport",
    "delegation",
    "dequantize",
    "input_details",
    "input_name",
    "intermediate_outputs",
    "make_interpreter",
    "check_shapes",
    "match_inputs",
    "output_step",
    "predict",
    "quantize",
    "top1",
]


def make_interpreter(
    model: inspector.ModelSource,
    *,
    xnnpack: bool = True,
    num_threads: int = 1,
    preserve_all_tensors: bool = False,
) -> Interpreter:
    """Builds and allocates an interpreter for a verified `.tflite` model.

    Args:
        model: bytes or path of a `.tflite` file.
        xnnpack: apply the XNNPACK delegate (the default path) or use only the
            builtin reference kernels.
        num_threads: interpreter threads (XNNPACK honours it; most builtin
            kernels are single-threaded).
        preserve_all_tensors: keep intermediate tensors readable after
            ``invoke`` (needed for per-layer errors; disables buffer reuse).
    """
    verified = inspector.load(model)
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be at least 1. Received: num_threads={num_threads}")
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(
        model_content=verified.bytes,
        num_threads=num_threads,
        experimental_op_resolver_type=resolver,
        experimental_preserve_all_tensors=preserve_all_tensors,
    )
    interpreter.allocate_tensors()
    return interpreter


def quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Brings real-valued data to an input tensor's dtype.

    Data that already has the tensor's integer dtype is taken as already
    quantized (for example uint8 pixels for a uint8 model); anything else is
    treated as real values and quantized with the tensor's scale and zero point.
    """
    dtype = np.dtype(detail["dtype"])
    x = np.asarray(x)
    if x.dtype == dtype:
        return x
    scale, zero_point = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        q = np.round(x.astype(np.float64) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    """Real values of an output tensor (float outputs pass through)."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale:
        return (q.astype(np.float32) - zero_point) * np.float32(scale)
    return q.astype(np.float32)


def output_step(model_report: inspector.ModelReport, output_index: int = 0) -> Optional[float]:
    """The output's quantization step (its scale), or None for a float output."""
    q = model_report.outputs[output_index].quantization
    return q.scale[0] if q is not None else None


def predict(
    interpreter: Interpreter,
    x,
    *,
    batch_size: int = 1,
    progress: Optional[str] = None,
) -> List[np.ndarray]:
    """Runs every sample of ``x`` and returns the real-valued outputs.

    Args:
        interpreter: from :func:`make_interpreter`.
        x: one array (single-input model) or a list of arrays, one per input,
            each with the sample axis first.
        batch_size: samples per ``invoke``; 1 works with every model.
        progress: a label to show a progress bar, or None for none.

    Returns:
        One float32 array per model output, samples first.
    """
    inputs = input_details(interpreter)
    outputs = interpreter.get_output_details()
    xs = match_inputs(inputs, x)
    check_shapes(inputs, xs)
    n = len(xs[0])
    if any(len(a) != n for a in xs):
        raise ValueError(f"Every input needs the same number of samples. Received "
                         f"{[len(a) for a in xs]}.")
    results: List[List[np.ndarray]] = [[] for _ in outputs]
    bar = _progbar(n, progress)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        for detail, data in zip(inputs, xs):
            batch = quantize(np.asarray(data[start:stop]), detail)
            if tuple(detail["shape"]) != batch.shape:
                interpreter.resize_tensor_input(detail["index"], batch.shape)
                interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], batch)
        interpreter.invoke()
        for i, detail in enumerate(outputs):
            results[i].append(dequantize(interpreter.get_tensor(detail["index"]), detail))
        if bar is not None:
            bar.update(stop)
    return [np.concatenate(r, axis=0) for r in results]


def input_name(detail: dict) -> str:
    """The signature name of an input (``serving_default_image:0`` -> ``image``).

    Details from :func:`input_details` carry the name the file's signature gives the
    input, which is the Keras ``Input`` name even where the tensor itself is named
    after an op (a QAT model's input tensors take their FakeQuant's name).
    """
    if detail.get("signature_name"):
        return detail["signature_name"]
    name = detail["name"].split(":")[0]
    return name[len("serving_default_"):] if name.startswith("serving_default_") else name


def input_details(interpreter: Interpreter) -> List[dict]:
    """The interpreter's input details, each with its ``signature_name`` (or None)."""
    details = interpreter.get_input_details()
    names: Dict[int, str] = {}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:  # one signature: its input names are the model's
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        names = {d["index"]: key for key, d in runner.get_input_details().items()}
    return [dict(d, signature_name=names.get(d["index"])) for d in details]


def match_inputs(details: Sequence[dict], x) -> List[np.ndarray]:
    """Orders user data like the interpreter's inputs.

    ``x`` is one array (single-input models), a dict keyed by input name (the
    Keras ``Input`` name or the `.tflite` tensor name), or a list in the
    `.tflite` file's own input order (which the converter may sort by name).
    """
    if isinstance(x, dict):
        out = []
        for d in details:
            for key in (d["name"], input_name(d)):
                if key in x:
                    out.append(x[key])
                    break
            else:
                raise ValueError(
                    f"No data for model input {input_name(d)!r}. Received keys: {sorted(x)}. "
                    f"The model's inputs: {[input_name(e) for e in details]}."
                )
        return out
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(xs) != len(details):
        raise ValueError(
            f"The model has {len(details)} input(s) {[input_name(d) for d in details]}; "
            f"received data for {len(xs)}. Pass a dict keyed by input name."
        )
    if len(xs) > 1 and not all(_fits(d, a) for d, a in zip(details, xs)):
        # A list in the Keras model's order: the file may sort its inputs by name.
        orders = [p for p in itertools.permutations(range(len(xs)))
                  if all(_fits(d, xs[i]) for d, i in zip(details, p))]
        if len(orders) == 1:
            return [xs[i] for i in orders[0]]
    return xs


def _sample_shape(detail: dict) -> Tuple[int, ...]:
    """An input's shape without the batch axis; -1 where the file leaves a size free."""
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    return tuple(int(v) for v in shape[1:])


def _fits(detail: dict, data) -> bool:
    got = np.shape(data)[1:]
    want = _sample_shape(detail)
    return len(got) == len(want) and all(w in (-1, g) for w, g in zip(want, got))


def check_shapes(details: Sequence[dict], xs: Sequence) -> None:
    """Refuses data whose samples do not have the shape of the model's inputs.

    The interpreter would resize its input to whatever it is given and compute
    something for it; a wrong shape must be an error instead.

    Raises:
        ValueError: naming the input, the shape it takes and the shape received.
    """
    for detail, data in zip(details, xs):
        if np.ndim(data) == 0 or not len(data):
            raise ValueError(f"No samples for input {input_name(detail)!r}: data of shape "
                             f"{np.shape(data)}; pass an array with the sample axis first.")
        if not _fits(detail, data):
            want = tuple(None if v == -1 else v for v in _sample_shape(detail))
            raise ValueError(
                f"Input {input_name(detail)!r} takes samples of shape {want}; received data of "
                f"shape {np.shape(data)}, i.e. samples of shape {np.shape(data)[1:]}. Reshape "
                "or resize the data (the sample axis comes first).")


def _progbar(n: int, label: Optional[str]) -> Optional[Progress]:
    if not label:
        return None
    print(label)
    return Progress(n, unit="sample")


@dataclasses.dataclass(frozen=True)
class DelegationReport:
    """Which ops XNNPACK took and which it left to the builtin kernels."""

    num_ops: int
    partitions: Tuple[Tuple[int, ...], ...]
    delegated: Tuple[Tuple[int, str, str], ...]
    left: Tuple[Tuple[int, str, str], ...]

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    @property
    def fully_delegated(self) -> bool:
        return not self.left and self.num_partitions == 1

    def describe(self) -> str:
        if not self.partitions:
            return f"XNNPACK took none of the {self.num_ops} ops."
        text = (f"XNNPACK took {len(self.delegated)} of {self.num_ops} ops in "
                f"{self.num_partitions} partition(s)")
        if self.left:
            text += "; left to the builtin kernels: " + ", ".join(
                f"#{i} {op} ({layer})" for i, op, layer in self.left)
        return text + "."


def delegation(model: inspector.ModelSource, *, num_threads: int = 1) -> DelegationReport:
    """Finds the ops the XNNPACK delegate replaced, partition by partition.

    The interpreter lists each delegate kernel as an extra ``DELEGATE`` node
    whose inputs and outputs are the partition's boundary; walking back from its
    outputs to its inputs recovers the original ops it runs.
    """
    verified = inspector.load(model)
    report = verified.report
    interpreter = make_interpreter(verified, xnnpack=True, num_threads=num_threads)
    nodes = ops_details(interpreter)
    n = len(report.ops)
    producer: Dict[int, int] = {}
    for op in report.ops:
        for t in op.outputs:
            producer[t] = op.index
    partitions = []
    for node in nodes[n:]:
        if node["op_name"] != "DELEGATE":
            continue
        boundary = {int(t) for t in node["inputs"]}
        members, stack = set(), [int(t) for t in node["outputs"]]
        while stack:
            t = stack.pop()
            if t in boundary or t not in producer or producer[t] in members:
                continue
            op_index = producer[t]
            members.add(op_index)
            stack.extend(i for i in report.ops[op_index].inputs if i >= 0)
        partitions.append(tuple(sorted(members)))
    taken = set().union(*partitions) if partitions else set()
    as_row = lambda op: (op.index, op.op, op.layer)  # noqa: E731
    return DelegationReport(
        num_ops=n,
        partitions=tuple(partitions),
        delegated=tuple(as_row(op) for op in report.ops if op.index in taken),
        left=tuple(as_row(op) for op in report.ops if op.index not in taken),
    )


def intermediate_outputs(
    model: inspector.ModelSource, x, *, xnnpack: bool = False, num_threads: int = 1
) -> Dict[str, np.ndarray]:
    """Real values of every op output for the samples in ``x``, keyed by tensor name.

    Runs one sample per ``invoke`` with all tensors preserved (builtin kernels by
    default, since a delegate hides its intermediate tensors).
    """
    verified = inspector.load(model)
    report = verified.report
    interpreter = make_interpreter(verified, xnnpack=xnnpack, num_threads=num_threads,
                                   preserve_all_tensors=True)
    inputs = interpreter.get_input_details()
    xs = match_inputs(inputs, x)
    wanted = [t for op in report.ops for t in op.outputs
              if t >= 0 and report.tensors[t].dtype in ("float32", "int8", "uint8", "int16")
              and report.tensors[t].shape]
    collected: Dict[str, List[np.ndarray]] = {}
    for i in range(len(xs[0])):
        for detail, data in zip(inputs, xs):
            interpreter.set_tensor(detail["index"], quantize(np.asarray(data[i:i + 1]), detail))
        interpreter.invoke()
        for t in wanted:
            info = report.tensors[t]
            q = info.quantization
            detail = {"dtype": info.dtype, "quantization": (q.scale[0], q.zero_point[0]) if q and not q.per_channel else (0.0, 0)}
            collected.setdefault(info.name, []).append(dequantize(interpreter.get_tensor(t), detail))
    return {k: np.concatenate(v, axis=0) for k, v in collected.items()}


def top1(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Arg-max of the first output over its last axis."""
    return np.argmax(outputs[0].reshape(len(outputs[0]), -1), axis=-1)
