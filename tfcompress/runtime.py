"""Runs `.tflite` models in the LiteRT interpreter, with or without XNNPACK.

One helper builds every interpreter in the package, so that the validator and
the benchmark always compare the same two kernel paths:

* ``xnnpack=True``: the interpreter's default, which applies the XNNPACK delegate;
* ``xnnpack=False``: ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``, TFLite's own builtin
  kernels (called the *reference* kernels in reports).

Every model passes :func:`tfcompress.inspector.verify` before an interpreter
sees it. What the verifier cannot rule out (a kernel that crashes on a combination of
shapes and options it accepts) is tried first in a forked child process
(:func:`trial_run`): the child builds, allocates and invokes the interpreter once, and
only if it survives does this process do the same. A SIGSEGV there becomes an
:class:`~tfcompress.inspector.InvalidModelError` here.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfcompress import inspector
from tfcompress._progress import Progress
from tfcompress._compat_litert import Interpreter, OpResolverType, ops_details

__all__ = [
    "DelegationReport",
    "TRIAL_TIMEOUT_S",
    "delegation",
    "dequantize",
    "fixed_batch",
    "input_details",
    "input_name",
    "intermediate_outputs",
    "make_interpreter",
    "check_shapes",
    "match_inputs",
    "output_step",
    "predict",
    "quantize",
    "random_inputs",
    "sample_groups",
    "top1",
    "trial_run",
]

# A trial that takes longer than this is a hang: the child is killed and the file refused.
TRIAL_TIMEOUT_S = 30.0


def make_interpreter(
    model: inspector.ModelSource,
    *,
    xnnpack: bool = True,
    num_threads: int = 1,
    preserve_all_tensors: bool = False,
    isolate: Optional[bool] = None,
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
        isolate: first build, allocate and invoke the model in a child process
            (:func:`trial_run`) so that a crashing kernel cannot take this process
            down. None (the default) does it where a fork is safe, i.e. in processes
            that have not imported TensorFlow (whose threads make a fork unsafe), which
            are the ones reading files from outside: ``inspect``, ``validate``,
            ``benchmark``. True: always (a fresh LiteRT-only process when TensorFlow is
            loaded); False: never.

    Raises:
        InvalidModelError: the file does not verify, or the trial's child process
            died (a signal) or hung.
        RuntimeError: LiteRT refused the model (allocation or the trial's invoke).
    """
    verified = inspector.load(model)
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be at least 1. Received: num_threads={num_threads}")
    trial_run(verified, kernels=("xnnpack" if xnnpack else "reference",),
              num_threads=num_threads, isolate=isolate)
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
    done = 0
    for group, count in sample_groups(inputs, xs, batch_size=batch_size):
        for detail, data in zip(inputs, group):
            batch = quantize(data, detail)
            if tuple(detail["shape"]) != batch.shape:
                interpreter.resize_tensor_input(detail["index"], batch.shape)
                interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], batch)
        interpreter.invoke()
        for i, detail in enumerate(outputs):
            results[i].append(dequantize(interpreter.get_tensor(detail["index"]), detail)[:count])
        done += count
        if bar is not None:
            bar.update(done)
    return [np.concatenate(r, axis=0) for r in results]


def fixed_batch(details: Sequence[dict]) -> int:
    """The batch size a file's inputs fix (``keras.Input((10,), batch_size=4)``: 4), or 1
    for a free batch axis or one of size 1."""
    sizes = {int(np.asarray(d.get("shape_signature", d["shape"]))[0]) for d in details
             if len(d["shape"])}
    fixed = [size for size in sizes if size > 1]
    return max(fixed) if fixed else 1


def sample_groups(details: Sequence[dict], xs: Sequence[np.ndarray], *, batch_size: int = 1):
    """Yields ``(arrays, count)``: ``batch_size`` samples of every input at a time, or the
    file's fixed batch (:func:`fixed_batch`), the last group padded with copies of its
    last sample; ``count`` says how many of its samples are real."""
    size = fixed_batch(details)
    size = batch_size if size == 1 else size
    n = len(xs[0])
    for start in range(0, n, size):
        stop = min(start + size, n)
        group = [np.asarray(a[start:stop]) for a in xs]
        if fixed_batch(details) > 1 and stop - start < size:
            group = [np.concatenate([g, np.repeat(g[-1:], size - len(g), axis=0)]) for g in group]
        yield group, stop - start


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


def output_order(interpreter: Interpreter) -> List[int]:
    """Positions in ``get_output_details()`` of the outputs in signature order.

    The converter names a Keras model's outputs ``output_0``, ``output_1``, ... in the
    model's order, while the file may list them otherwise. For files whose single
    signature numbers its outputs so, the positions follow those numbers (the Keras
    output order); otherwise the file's own order.
    """
    details = interpreter.get_output_details()
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return list(range(len(details)))
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    named = runner.get_output_details()
    numbers = {}
    for key, d in named.items():
        if key.startswith("output_") and key[len("output_"):].isdigit():
            numbers[d["index"]] = int(key[len("output_"):])
    if len(numbers) != len(details) or sorted(numbers.values()) != list(range(len(details))):
        return list(range(len(details)))
    position = {d["index"]: i for i, d in enumerate(details)}
    return [position[index] for index, _ in sorted(numbers.items(), key=lambda kv: kv[1])]


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
    trial_run(verified, kernels=("xnnpack",), invoke=False, num_threads=num_threads)
    interpreter = make_interpreter(verified, xnnpack=True, num_threads=num_threads,
                                   isolate=False)
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

    Runs one sample per ``invoke`` (a file with a fixed batch: that many, the last group
    padded) with all tensors preserved (builtin kernels by default, since a delegate hides
    its intermediate tensors).
    """
    verified = inspector.load(model)
    report = verified.report
    interpreter = make_interpreter(verified, xnnpack=xnnpack, num_threads=num_threads,
                                   preserve_all_tensors=True)
    inputs = input_details(interpreter)  # a dict of data is matched by signature names
    xs = match_inputs(inputs, x)
    wanted = [t for op in report.ops for t in op.outputs
              if t >= 0 and report.tensors[t].dtype in ("float32", "int8", "uint8", "int16")
              and report.tensors[t].shape]
    collected: Dict[str, List[np.ndarray]] = {}
    for group, _ in sample_groups(inputs, xs):  # one sample per invoke, or the fixed batch
        for detail, data in zip(inputs, group):
            interpreter.set_tensor(detail["index"], quantize(data, detail))
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


def _fork_is_safe() -> bool:
    """No TensorFlow in this process: its thread pools make a forked child unsafe."""
    return hasattr(os, "fork") and "tensorflow" not in sys.modules


def trial_run(
    model: inspector.ModelSource,
    *,
    kernels: Sequence[str] = ("xnnpack", "reference"),
    invoke: bool = True,
    num_threads: int = 1,
    isolate: Optional[bool] = None,
    timeout: Optional[float] = None,
) -> None:
    """Builds, allocates and (optionally) invokes the model once in a child process.

    The verifier checks what it can; a kernel's prepare or eval can still crash on
    a file it accepts (LiteRT trusts shapes and options), which would kill the
    whole process. The child runs the same steps on random inputs first; if it dies,
    this raises instead. The outcome is remembered on the
    :class:`~tfcompress.inspector.VerifiedModel`, so each model is tried once per
    kernel path (a trial with ``invoke`` also covers one without).

    Args:
        model: the model (a ``VerifiedModel`` keeps the outcome for later calls).
        kernels: the paths to try: ``"xnnpack"`` and / or ``"reference"``.
        invoke: run one invocation after allocating (``False``: building only, as
            ``inspect`` needs for the XNNPACK partitions).
        num_threads: interpreter threads in the child.
        isolate: see :func:`make_interpreter` (None: only where a fork is safe).
        timeout: seconds before the child counts as hung (default
            :data:`TRIAL_TIMEOUT_S`).

    Raises:
        InvalidModelError: the child was killed by a signal or hung.
        RuntimeError: LiteRT refused the model in the child, with its message.
    """
    verified = inspector.load(model)
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"`num_threads` must be at least 1. Received: num_threads={num_threads}")
    unknown = [k for k in kernels if k not in ("xnnpack", "reference")]
    if unknown:
        raise ValueError(f"Unknown kernel path(s) {unknown}. Allowed: 'xnnpack', 'reference'.")
    if isolate is False or (isolate is None and not _fork_is_safe()):
        return
    done = verified.trials
    todo = [k for k in kernels if not (done.get((k, True)) or (not invoke and done.get((k, False))))]
    for k in kernels:
        error = done.get((k, "error"))
        if error is not None:
            raise error
    if not todo:
        return
    steps = _run_child(verified.bytes, todo, invoke, num_threads,
                       TRIAL_TIMEOUT_S if timeout is None else timeout,
                       fork=_fork_is_safe())
    # steps: [(kernel, step, error or None)], the last one unfinished if the child died
    for kernel, step, outcome in steps:
        if outcome == "ok":
            continue
        where = ("XNNPACK" if kernel == "xnnpack" else "the reference kernels") + f" ({step})"
        if outcome.startswith("RuntimeError: "):
            error: Exception = RuntimeError(f"{outcome[len('RuntimeError: '):]} [{where}]")
        elif outcome.startswith("Invalid: "):
            error = inspector.InvalidModelError(
                f"{outcome[len('Invalid: '):]} [{where}] Received: {verified.source}.")
        elif outcome.startswith("ValueError: "):  # the interpreter could not read the file
            error = inspector.InvalidModelError(
                f"LiteRT could not load the model with {where}: "
                f"{outcome[len('ValueError: '):]} Received: {verified.source}.")
        else:
            error = inspector.InvalidModelError(
                f"LiteRT {outcome} on this file with {where}; the file was tried in a child "
                f"process first, so only the child died. Received: {verified.source}.")
        done[(kernel, "error")] = error
        raise error
    for k in todo:
        done[(k, invoke)] = True


def _trial_steps(buf: bytes, kernels: Sequence[str], invoke: bool, num_threads: int, report):
    """The child's work; ``report(kernel, step)`` before each step."""
    for kernel in kernels:
        report(kernel, "build")
        resolver = (OpResolverType.AUTO if kernel == "xnnpack"
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it = Interpreter(model_content=buf, num_threads=num_threads,
                         experimental_op_resolver_type=resolver)
        report(kernel, "allocate")
        it.allocate_tensors()
        _check_planned_sizes(it, len(buf))
        report(kernel, "list ops")
        ops_details(it)
        if invoke:
            report(kernel, "invoke")
            bounds = inspector.id_bounds(buf)
            for d, a in zip(it.get_input_details(), random_inputs(it, bounds=bounds)):
                it.set_tensor(d["index"], a)
            it.invoke()
            for d in it.get_output_details():
                it.get_tensor(d["index"])
        # The child leaves through os._exit, which skips destructors: free it here, so a
        # crash in LiteRT's teardown shows in the trial, not at the end of the real run.
        report(kernel, "free")
        del it
        report(kernel, "done")


def _check_planned_sizes(interpreter, file_size: int) -> None:
    """Tensor sizes after the kernels' prepare, which derives shapes from the inputs.

    The verifier bounds the shapes stored in the file; an input dimension within that
    bound can still grow every tensor after it (one changed input size made a 98 KB
    file's tensors take gigabytes), so the same bound is applied to the shapes the
    interpreter planned, before anything runs on them.
    """
    limit = inspector.max_tensor_elements(file_size)
    total = 0
    for d in interpreter.get_tensor_details():
        n = int(np.prod(d["shape"], dtype=np.float64)) if len(d["shape"]) else 1
        total += n
        if n > limit:
            raise inspector.InvalidModelError(
                f"Tensor {d['index']} ({d['name']}) has shape {[int(v) for v in d['shape']]} "
                f"once the kernels derive it from the inputs: {n} elements, over the limit of "
                f"{limit} "
                "(TFCOMPRESS_MAX_TENSOR_ELEMENTS raises it).")
    if total > 4 * limit:
        raise inspector.InvalidModelError(
            f"The interpreter's tensors have {total} elements together once the kernels "
            f"derive their shapes from the inputs, over the limit of {4 * limit} (four times "
            "TFCOMPRESS_MAX_TENSOR_ELEMENTS).")


def random_inputs(interpreter, seed: int = 0, *,
                  bounds: Optional[Dict[int, int]] = None) -> List[np.ndarray]:
    """Random data of each input's shape and dtype.

    Quantized integer inputs get their full range, float inputs [0, 1), booleans 0 or
    1. Unquantized integer inputs are ids or counts: they get ``[0, bounds[index])``
    (:func:`tfcompress.inspector.id_bounds`), zeros where ``bounds`` does not list
    them, never an id out of a table's range.
    """
    rng = np.random.default_rng(seed)
    bounds = bounds or {}
    arrays = []
    for d in interpreter.get_input_details():
        dtype = np.dtype(d["dtype"])
        if dtype == np.bool_:
            arrays.append(rng.integers(0, 2, size=d["shape"]).astype(dtype))
        elif np.issubdtype(dtype, np.integer) and not d["quantization"][0]:
            arrays.append(rng.integers(0, max(1, bounds.get(d["index"], 1)), size=d["shape"])
                          .astype(dtype))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            arrays.append(rng.integers(info.min, info.max, size=d["shape"], endpoint=True)
                          .astype(dtype))
        else:
            arrays.append(rng.random(d["shape"]).astype(dtype))
    return arrays


def _run_child(buf: bytes, kernels, invoke: bool, num_threads: int, timeout: float, *,
               fork: bool):
    """Runs :func:`_trial_steps` in a child; returns [(kernel, step, outcome)]."""
    if fork:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                os.close(read_fd)
                faulthandler.disable()  # its dump of a crash here would reach the terminal
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)  # LiteRT's own log lines would repeat the parent's

                def report(kernel, step):
                    os.write(write_fd, (json.dumps([kernel, step]) + "\n").encode())

                try:
                    _trial_steps(buf, kernels, invoke, num_threads, report)
                except Exception as e:  # LiteRT's refusal, reported to the parent
                    os.write(write_fd, (json.dumps(["error", _refusal(e)]) + "\n").encode())
            except BaseException:  # the child must never return into the caller's code
                code = 3
            finally:
                os._exit(code)
        os.close(write_fd)
        lines, status = _collect(read_fd, pid, timeout)
    else:
        lines, status = _spawn_child(buf, kernels, invoke, num_threads, timeout)
    return _outcomes(lines, status)


def _first(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _refusal(e: Exception) -> str:
    """How the child reports an exception: ``RuntimeError: ...`` or ``ValueError: ...``."""
    if isinstance(e, inspector.InvalidModelError):
        return f"Invalid: {_first(e)}"
    kind = "RuntimeError" if isinstance(e, RuntimeError) else "ValueError"
    return f"{kind}: {type(e).__name__}: {_first(e)}" if kind == "ValueError" and not \
        isinstance(e, ValueError) else f"{kind}: {_first(e)}"


def _collect(read_fd: int, pid: int, timeout: float):
    """Reads the child's progress lines until it exits or ``timeout`` passes."""
    chunks, deadline, status = [], time.monotonic() + timeout, None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "hang"
                break
            ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(read_fd, 65536)
                if chunk:
                    chunks.append(chunk)
                    continue
                _, raw = os.waitpid(pid, 0)
                status = raw
                break
    finally:
        os.close(read_fd)
    return b"".join(chunks).decode("utf-8", "replace").splitlines(), status


# The spawned variant for processes where fork is unsafe: LiteRT only, model on stdin.
_TRIAL_PROBE = r"""
import json, sys
from tfcompress import runtime
a = json.loads(sys.argv[1])
def report(kernel, step):
    sys.stdout.write(json.dumps([kernel, step]) + "\n"); sys.stdout.flush()
try:
    runtime._trial_steps(sys.stdin.buffer.read(), a["kernels"], a["invoke"], a["threads"], report)
except Exception as e:
    report("error", runtime._refusal(e))
"""


def _spawn_child(buf: bytes, kernels, invoke: bool, num_threads: int, timeout: float):
    args = json.dumps({"kernels": list(kernels), "invoke": invoke, "threads": num_threads})
    try:
        out = subprocess.run([sys.executable, "-c", _TRIAL_PROBE, args], input=buf,
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], "hang"
    code = out.returncode
    status = (-code) & 0x7F if code < 0 else code << 8  # as os.waitpid reports it
    return out.stdout.decode("utf-8", "replace").splitlines(), status


def _outcomes(lines, status):
    current, outcomes = None, []
    for line in lines:
        try:
            kernel, step = json.loads(line)
        except ValueError:
            continue
        if kernel == "error":
            if current is not None:
                outcomes.append((current[0], current[1], step))
            return outcomes
        if step == "done":
            outcomes.append((kernel, "done", "ok"))
            current = None
        else:
            current = (kernel, step)
    if status == "hang":
        what = "did not finish within the trial's time limit (hung)"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        what = f"crashed ({name})"
    elif os.WEXITSTATUS(status) != 0:
        what = f"failed (its process exited with status {os.WEXITSTATUS(status)})"
    else:
        return outcomes
    kernel, step = current if current is not None else ("xnnpack", "start")
    outcomes.append((kernel, step, what))
    return outcomes
