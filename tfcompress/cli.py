"""The ``tfcompress`` command: a thin absl layer over the library.

Usage:
    tfcompress convert MODEL --output=OUT.tflite [--data=CALIB] [--mode=int8] [--sparse] ...
    tfcompress validate MODEL.tflite --data=DATA [--reference=FLOAT] [thresholds]
    tfcompress inspect MODEL.tflite [--json]
    tfcompress benchmark MODEL.tflite [MODEL2.tflite ...] [--kernels=xnnpack,reference]
        [--threads=1,2] [--runs=100] [--warmup=10] [--cpus=1] [--json_out=F] [--csv_out=F]
        [--plot_out=F.png] [--output_dir=DIR]
    tfcompress compress MODEL --output_dir=DIR [--recipe=RECIPE.yaml] [--data=DATA.npz |
        --dataset=NAME] [--batch_size=32] [--learning_rate=1e-4] [--noresume]
    tfcompress search MODEL --output_dir=DIR [--budget=0.01] [--objective=size|latency]
        [--data=DATA.npz | --dataset=NAME] [--search_epochs=3]
    tfcompress demo [--dataset=auto] [--epochs=20] [--recipe=RECIPE] [--output_dir=DIR]

Exit codes:
    0  success (validate: every threshold met)
    1  validate: a threshold was not met
    2  bad input: missing or invalid file, bad data, unknown mode, existing
       output, a model that cannot be converted; one line on stderr, no
       traceback, no output file
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np
from absl import app, flags
from absl import logging as absl_logging

# Only the TensorFlow-free layers at module level: inspect, validate and benchmark
# must run where TensorFlow is not installed.
from tfcompress import _io, inspector, runtime
from tfcompress import data as data_lib
from tfcompress.benchmark import benchmark_models
from tfcompress.validation import Thresholds, validate

__all__ = [
    "COMMANDS",
    "UsageError",
    "main",
    "run",
]

FLAGS = flags.FLAGS
COMMANDS = ("convert", "validate", "inspect", "benchmark", "compress", "search", "demo")

flags.DEFINE_string("output", None, "convert: path of the .tflite to write.")
flags.DEFINE_boolean("overwrite", False, "convert/demo: replace an existing output.")
# A string, not an enum: a bad value must exit 2 with the allowed ones (absl exits 1).
flags.DEFINE_string("mode", "int8", "convert: conversion mode: int8 | int16x8 | float16 | "
                    "dynamic | float32.")
flags.DEFINE_boolean("debug", False, "On an error, show the whole traceback too.")
flags.DEFINE_boolean("verbose", False, "Show TensorFlow's and LiteRT's own log lines and "
                     "library warnings, which are hidden by default.")
flags.DEFINE_string("input_type", None, "convert: int8 | uint8 | float32 (int16 in int16x8 mode).")
flags.DEFINE_string("output_type", None, "convert: like --input_type, for outputs.")
flags.DEFINE_string("data", None,
                    "convert: calibration data; validate: evaluation data. An .npz (arrays "
                    "--x_key and --y_key), an .npy, or a folder of images.")
flags.DEFINE_string("x_key", "x", "Array name of the inputs in an .npz (x_test, x_train are tried too).")
flags.DEFINE_string("y_key", "y", "Array name of the labels in an .npz (y_test, y_train are tried too).")
flags.DEFINE_boolean("sparse", False, "convert: store pruned weights (>= 30% zeros) in TFLite's "
                     "sparse format, for a smaller file.")
flags.DEFINE_integer("num_samples", None, "Use at most this many samples "
                     f"(convert: default {data_lib.CALIBRATION_SAMPLES}).")
flags.DEFINE_float("preprocess_scale", None, "Multiply input data by this before use (e.g. 0.00392).")
flags.DEFINE_float("preprocess_offset", None, "Add this to input data after scaling.")
flags.DEFINE_list("image_size", None, "HEIGHT,WIDTH to resize images to.")
flags.DEFINE_string("label_regex", r"_(\d+)\.\w+$",
                    "validate with an image folder: first group of this pattern in a file name is its label.")
flags.DEFINE_integer("label_offset", 0, "validate: add this to every label (e.g. 1 for 1001-class models).")
flags.DEFINE_string("reference", None, "validate: the float model (.tflite, .keras, .h5, SavedModel).")
flags.DEFINE_float("min_accuracy", None, "validate: fail below this top-1 accuracy (0..1).")
flags.DEFINE_float("min_float_agreement", None, "validate: fail below this agreement with float.")
flags.DEFINE_float("min_xnnpack_agreement", None, "validate: fail below this XNNPACK-vs-reference agreement.")
flags.DEFINE_float("max_error_steps_p99", None, "validate: fail above this p99 output error in steps.")
flags.DEFINE_boolean("require_fully_integer", False, "validate: fail unless every tensor is integer.")
flags.DEFINE_float("max_size_ratio", None, "validate: fail above this size over the float file.")
flags.DEFINE_boolean("per_op", False, "validate: also run each integer op alone against its float op "
                     "on the inputs the file gave it (steps per op, both kernel paths).")
flags.DEFINE_float("max_op_steps", None, "validate: fail when an integer op is further than this "
                   "from its float op, in steps of its output (implies --per_op).")
flags.DEFINE_integer("num_threads", 1, "Interpreter threads.")
flags.DEFINE_boolean("json", False, "inspect/validate: print JSON instead of text.")
flags.DEFINE_string("json_out", None, "validate/benchmark: also write the report as JSON here.")
flags.DEFINE_string("dataset", "auto",
                    "demo/compress/search: auto | digits | mnist | fashion_mnist | cifar10 "
                    "(compress/search: used when --data is not given).")
flags.DEFINE_string("recipe", None, "compress/demo: a recipe file (.json, .yaml, .yml).")
flags.DEFINE_integer("batch_size", 32, "compress/search: training batch size.")
flags.DEFINE_float("learning_rate", 1e-4, "compress/search: fine-tuning learning rate.")
flags.DEFINE_boolean("resume", True, "compress: continue an interrupted run of the same recipe.")
flags.DEFINE_float("budget", 0.01, "search: largest top-1 drop allowed (fraction, 0.01 = 1 pp).")
flags.DEFINE_enum("objective", "size", ["size", "latency"], "search: what to minimise.")
flags.DEFINE_integer("search_epochs", 3, "search: fine-tuning epochs per training step.")
flags.DEFINE_integer("epochs", None, "demo: training epochs of the float model (default: "
                     "30 on digits, 5 on the other datasets).")
flags.DEFINE_string("output_dir", None,
                    "demo: write models and reports here; benchmark: write benchmark.json, "
                    ".csv, .md and .png here.")
flags.DEFINE_boolean("progress", True, "Show progress bars.")
flags.DEFINE_list("kernels", ["xnnpack", "reference"],
                  "benchmark: kernel paths, any of xnnpack (LiteRT's default delegate) and "
                  "reference (builtin kernels).")
flags.DEFINE_list("threads", None, "benchmark: thread counts, e.g. 1,2 (default --num_threads).")
flags.DEFINE_integer("runs", 100, "benchmark: timed invocations per model and configuration.")
flags.DEFINE_integer("warmup", 10, "benchmark: untimed invocations before timing.")
flags.DEFINE_list("cpus", None, "benchmark: pin to these cores while timing (Linux), e.g. 1.")
flags.DEFINE_boolean("memory", True, "benchmark: measure peak resident memory per model.")
flags.DEFINE_string("csv_out", None, "benchmark: also write the rows as CSV here.")
flags.DEFINE_string("plot_out", None, "benchmark: also write a PNG bar chart here.")


# The modules behind convert, compress, search and demo (and a Keras --reference).
_NEEDS_TENSORFLOW = ("tensorflow", "keras", "sklearn")


class UsageError(ValueError):
    """A command line that cannot be run."""


def _load_data(path: str, *, want_labels: bool, image_size=None, input_shape=None):
    """(x, y) from an .npz/.npy file or an image folder."""



    if not os.path.exists(path):
        raise FileNotFoundError(f"No such data file or folder. Received: --data={path!r}.")
    if os.path.isdir(path):
        size = image_size or (tuple(input_shape[1:3]) if input_shape is not None else None)
        if size is None or None in size:
            raise UsageError("Pass --image_size=HEIGHT,WIDTH for an image folder.")
        channels = input_shape[3] if input_shape is not None and len(input_shape) == 4 else 3
        x, y, _ = data_lib.load_image_folder(path, size=size, channels=channels,
                                         label_regex=FLAGS.label_regex if want_labels else None)
        return x, y
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False), None
        except ValueError as e:  # pickled objects (never loaded: they run code), not numpy
            raise UsageError(f"Cannot read --data={path!r} as a numeric array: {e}.") from None
    if not path.endswith(".npz"):
        raise UsageError(f"--data must be an .npz or .npy file or an image folder. Received: {path!r}.")
    with np.load(path, allow_pickle=False) as f:
        keys = list(f.keys())
        x_key = next((k for k in (FLAGS.x_key, "x_test", "x_train", "x") if k in keys), None)
        if x_key is None:
            raise UsageError(f"No input array in {path!r}: it holds {keys}; set --x_key.")
        y_key = next((k for k in (FLAGS.y_key, x_key.replace("x", "y", 1)) if k in keys), None)
        return f[x_key], (f[y_key] if y_key is not None else None)


def _preprocess(x):
    if FLAGS.preprocess_scale is None and FLAGS.preprocess_offset is None:
        return x
    x = x.astype("float32")
    if FLAGS.preprocess_scale is not None:
        x = x * FLAGS.preprocess_scale
    if FLAGS.preprocess_offset is not None:
        x = x + FLAGS.preprocess_offset
    return x


def _image_size():
    if FLAGS.image_size is None:
        return None
    try:
        h, w = (int(v) for v in FLAGS.image_size)
    except ValueError:
        raise UsageError(f"--image_size must be HEIGHT,WIDTH. Received: {FLAGS.image_size}.") from None
    return h, w


def cmd_convert(args: List[str]) -> int:
    # TensorFlow boundary: only convert, compress, search and demo load TensorFlow.
    from tfcompress.converter import MODES, convert

    if FLAGS.mode not in MODES:
        raise UsageError(f"Unknown --mode. Received: --mode={FLAGS.mode}. Allowed: "
                         f"{', '.join(MODES)}.")
    if len(args) != 1:
        raise UsageError("convert takes one model path: tfcompress convert MODEL --output=OUT.tflite")
    if not FLAGS.output:
        raise UsageError("convert needs --output=OUT.tflite")

    if os.path.isdir(FLAGS.output):
        raise IsADirectoryError(f"--output must be the path of a .tflite file, not a directory. "
                                f"Received: --output={FLAGS.output!r}.")
    if os.path.exists(FLAGS.output) and not FLAGS.overwrite:
        raise FileExistsError(f"Refusing to overwrite {FLAGS.output!r}; pass --overwrite.")
    data = None
    if FLAGS.data is not None:
        if os.path.isdir(FLAGS.data):
            data = FLAGS.data  # the converter decodes and resizes to the model's input
        else:
            data, _ = _load_data(FLAGS.data, want_labels=False)
    preprocess = None
    if FLAGS.preprocess_scale is not None or FLAGS.preprocess_offset is not None:
        preprocess = _preprocess
    result = convert(
        args[0], representative_data=data, mode=FLAGS.mode, input_type=FLAGS.input_type,
        output_type=FLAGS.output_type,
        num_calibration_samples=FLAGS.num_samples or data_lib.CALIBRATION_SAMPLES,
        preprocess=preprocess, image_size=_image_size(), progress=FLAGS.progress,
        sparse=FLAGS.sparse,
    )
    result.save(FLAGS.output, overwrite=FLAGS.overwrite)
    print(result.summary())
    print(f"wrote {FLAGS.output} ({result.size_bytes} bytes)")
    return 0


def cmd_validate(args: List[str]) -> int:

    if len(args) != 1:
        raise UsageError("validate takes one .tflite: tfcompress validate MODEL.tflite --data=DATA")
    if not FLAGS.data:
        raise UsageError("validate needs --data (an .npz with x/y arrays, an .npy, or an image folder)")
    model = inspector.load(args[0])  # read and verified once
    report = model.report
    shape = report.inputs[0].shape if report.inputs else None
    x, y = _load_data(FLAGS.data, want_labels=True, image_size=_image_size(), input_shape=shape)
    x = _preprocess(x)
    if FLAGS.num_samples:
        x = x[:FLAGS.num_samples]
        y = y[:FLAGS.num_samples] if y is not None else None
    if y is not None:
        y = y.reshape(-1) + FLAGS.label_offset
    thresholds = Thresholds(
        min_accuracy=FLAGS.min_accuracy, min_float_agreement=FLAGS.min_float_agreement,
        min_xnnpack_agreement=FLAGS.min_xnnpack_agreement,
        max_error_steps_p99=FLAGS.max_error_steps_p99,
        require_fully_integer=FLAGS.require_fully_integer, max_size_ratio=FLAGS.max_size_ratio,
        max_op_steps=FLAGS.max_op_steps,
    )
    result = validate(model, x, y=y, reference=FLAGS.reference, thresholds=thresholds,
                      num_threads=FLAGS.num_threads, per_op=FLAGS.per_op,
                      progress=FLAGS.progress and not FLAGS.json)
    if FLAGS.json_out:
        result.save(FLAGS.json_out, overwrite=FLAGS.overwrite)
    if FLAGS.json:
        print(result.to_json())
    else:
        print(result.summary())
    return 0 if result.passed else 1


def cmd_inspect(args: List[str]) -> int:

    if len(args) != 1:
        raise UsageError("inspect takes one .tflite: tfcompress inspect MODEL.tflite")
    model = inspector.load(args[0])  # read and verified once
    report = model.report
    if FLAGS.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary())
        # The XNNPACK interpreter is built in a child first (runtime.trial_run).
        print(runtime.delegation(model).describe())
    return 0


def _int_list(name: str, values) -> list:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UsageError(f"--{name} takes comma-separated integers. Received: {values}.") from None


def cmd_benchmark(args: List[str]) -> int:


    if not args:
        raise UsageError("benchmark takes one or more .tflite paths: "
                         "tfcompress benchmark A.tflite [B.tflite ...]")
    models = {}
    for path in args:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such model file. Received: {path!r}.")
        name, n = Path(path).stem, 2
        while name in models:
            name, n = f"{Path(path).stem}_{n}", n + 1
        models[name] = path
    outputs = {"json": FLAGS.json_out, "csv": FLAGS.csv_out, "png": FLAGS.plot_out}
    if FLAGS.output_dir:
        Path(FLAGS.output_dir).mkdir(parents=True, exist_ok=True)
        for ext in ("json", "csv", "png", "md"):
            outputs[ext] = outputs.get(ext) or os.path.join(FLAGS.output_dir, f"benchmark.{ext}")
    for path in filter(None, outputs.values()):
        if os.path.exists(path) and not FLAGS.overwrite:
            raise FileExistsError(f"Refusing to overwrite {path!r}; pass --overwrite.")
    threads = _int_list("threads", FLAGS.threads) if FLAGS.threads else [FLAGS.num_threads]
    cpus = _int_list("cpus", FLAGS.cpus) if FLAGS.cpus else None
    report = benchmark_models(models, kernels=FLAGS.kernels, num_threads=threads,
                              warmup=FLAGS.warmup, runs=FLAGS.runs, cpus=cpus,
                              memory=FLAGS.memory, progress=FLAGS.progress and not FLAGS.json)
    if FLAGS.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
    if outputs["json"]:
        report.save_json(outputs["json"], overwrite=FLAGS.overwrite)
    if outputs["csv"]:
        report.save_csv(outputs["csv"], overwrite=FLAGS.overwrite)
    if outputs["png"]:
        report.plot(outputs["png"], overwrite=FLAGS.overwrite)
    if outputs.get("md"):

        _io.atomic_write_bytes(outputs["md"], (report.table() + "\n").encode(),
                               overwrite=FLAGS.overwrite)
    written = [p for p in outputs.values() if p]
    if written and not FLAGS.json:
        print("wrote " + ", ".join(written))
    return 0


def _training_data(model_input_shape=None):
    """(x_train, y_train, x_test, y_test) from --data (an .npz) or --dataset."""


    if FLAGS.data:
        if not FLAGS.data.endswith(".npz"):
            raise UsageError("--data for compress/search is an .npz with x_train, y_train, "
                             f"x_test and y_test. Received: {FLAGS.data!r}.")

        if not os.path.isfile(FLAGS.data):
            raise FileNotFoundError(f"No such data file. Received: --data={FLAGS.data!r}.")
        with np.load(FLAGS.data, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.keys())
            if missing:
                raise UsageError(f"{FLAGS.data!r} lacks arrays {sorted(missing)}; it holds "
                                 f"{sorted(f.keys())}.")
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    ds = data_lib.load_dataset("mnist" if FLAGS.dataset == "auto" else FLAGS.dataset, download=False)
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test


def _load_keras(path: str):
    # TensorFlow boundary: Keras loads only for the commands that train.
    from tfcompress import _compat

    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model. Received: {path!r}.")
    if not path.endswith((".keras", ".h5")):
        raise UsageError(f"compress/search take a .keras or .h5 Keras model. Received: {path!r}.")
    return _compat.load_keras_model(path)


def _output_dir_or_fail():

    if not FLAGS.output_dir:
        raise UsageError("Pass --output_dir=DIR.")
    if os.path.exists(FLAGS.output_dir) and not FLAGS.overwrite:
        raise FileExistsError(f"Refusing to overwrite {FLAGS.output_dir!r}; pass --overwrite.")
    return FLAGS.output_dir


def cmd_compress(args: List[str]) -> int:
    # TensorFlow boundary (see cmd_convert).
    from tfcompress.compression import compress

    if len(args) != 1:
        raise UsageError("compress takes one Keras model: tfcompress compress MODEL.keras "
                         "--output_dir=DIR [--recipe=R.yaml]")
    out = _output_dir_or_fail()
    model = _load_keras(args[0])
    result = compress(model, _training_data(), recipe=FLAGS.recipe, output_dir=out,
                      overwrite=FLAGS.overwrite, resume=FLAGS.resume,
                      batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                      verbose=1 if FLAGS.progress else 0)
    print(result.table())
    print(f"Report: {out}/report.md")
    return 0 if result.validation is None or result.validation.passed else 1


def cmd_search(args: List[str]) -> int:
    # TensorFlow boundary (see cmd_convert).
    from tfcompress.recipe_search import search

    if len(args) != 1:
        raise UsageError("search takes one Keras model: tfcompress search MODEL.keras "
                         "--output_dir=DIR [--budget=0.01] [--objective=size]")
    out = _output_dir_or_fail()
    model = _load_keras(args[0])
    found = search(model, _training_data(), budget=FLAGS.budget, objective=FLAGS.objective,
                   epochs=FLAGS.search_epochs, batch_size=FLAGS.batch_size,
                   learning_rate=FLAGS.learning_rate, output_dir=out, overwrite=FLAGS.overwrite,
                   verbose=1 if FLAGS.progress else 0)
    print(found.table())
    print(f"Report: {out}/report.md")
    return 0 if found.chosen is not None else 1


def cmd_demo(args: List[str]) -> int:
    # TensorFlow boundary (see cmd_convert).
    from tfcompress.pipeline import run_demo

    if args:
        raise UsageError(f"demo takes no positional arguments. Received: {args}")
    demo = run_demo(dataset=FLAGS.dataset, epochs=FLAGS.epochs, recipe=FLAGS.recipe,
                    output_dir=FLAGS.output_dir, overwrite=FLAGS.overwrite,
                    verbose=1 if FLAGS.progress else 0)
    result = demo.result
    print()
    print(f"Results on {demo.dataset} (recipe: {result.recipe.name}):")
    print(demo.table())
    print(demo.verdict())
    if result.validation is not None and not result.validation.passed:
        print("Validation FAILED: " + "; ".join(result.validation.failures))
    if result.output_dir:
        out = result.output_dir
        print()
        print(f"Written to {out}/: model_int8.tflite (the compressed model), "
              "original_float.tflite, model.keras, test_data.npz, report.html, report.md.")
        print("Next: inspect, validate and benchmark the int8 file:")
        for command in demo.next_steps():
            print("  " + command)
    return 0


_HANDLERS = {"convert": cmd_convert, "validate": cmd_validate, "inspect": cmd_inspect,
             "benchmark": cmd_benchmark, "compress": cmd_compress, "search": cmd_search,
             "demo": cmd_demo}


def main(argv: List[str]) -> int:
    """Dispatches ``argv[1]`` to its command and maps errors to exit codes."""
    if len(argv) < 2 or argv[1] not in COMMANDS:
        got = argv[1] if len(argv) > 1 else "nothing"
        print(f"error: expected a command ({' | '.join(COMMANDS)}); received {got}. "
              "See --helpfull.", file=sys.stderr)
        return 2
    try:
        return _HANDLERS[argv[1]](argv[2:])
    except Exception as e:  # every error reaches the user as one line (--debug: the traceback)
        if FLAGS.debug:
            traceback.print_exc()
        return _report_error(argv[1], e)


def _report_error(command: str, e: Exception) -> int:
    """One line on standard error for ``e``; returns the exit code (2: bad input)."""
    if isinstance(e, ModuleNotFoundError):
        if e.name not in _NEEDS_TENSORFLOW:
            print(f"error: a module tfcompress needs is missing: {e}. Reinstall tfcompress.",
                  file=sys.stderr)
            return 2
        print(f"error: `tfcompress {command}` needs TensorFlow and Keras, which are not "
              f"installed here (no module {e.name!r}). Install them with "
              "`pip install 'tfcompress[tensorflow]'`; inspect, validate (with a .tflite "
              "reference) and benchmark work without them.", file=sys.stderr)
        return 2
    if isinstance(e, (UsageError, ValueError, TypeError, OSError)):
        # InvalidModelError and ConversionError are ValueErrors; OSError: files, folders.
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if isinstance(e, RuntimeError):  # LiteRT's allocate_tensors / invoke failures
        print(f"error: LiteRT could not run the model: {_one_line(e)}", file=sys.stderr)
        return 2
    print(f"error: unexpected {type(e).__name__}: {_one_line(e)} (run with --debug for the "
          "traceback, and please report it)", file=sys.stderr)
    return 2


def _one_line(e: Exception) -> str:
    # Notes (compress adds how to resume or clean up) belong to the message.
    text = " ".join(" ".join([str(e), *getattr(e, "__notes__", ())]).split())
    return text if len(text) <= 2000 else text[:2000] + " ..."


# What TensorFlow's C++ logging reads when it loads (level 3 hides the oneDNN, cuInit
# and cpu_feature_guard lines and the converter's SavedModel chatter). Set by the
# command-line process only, before any command imports TensorFlow; the library never
# changes the environment. A value the user set is kept.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}
# Warnings from these packages carry nothing a user of the command can act on
# (tf.function retracing, deprecations inside TensorFlow and Keras).
_QUIET_WARNING_MODULES = r"(tensorflow|keras|tf_keras|absl|google|h5py|ml_dtypes|optree)(\.|$)"


def _quiet_python() -> None:
    """Hides library warnings and TensorFlow's Python log below errors."""
    os.environ.update({k: v for k, v in QUIET_ENVIRONMENT.items() if k not in os.environ})
    warnings.filterwarnings("ignore", module=_QUIET_WARNING_MODULES)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("h5py").setLevel(logging.ERROR)
    # TensorFlow's SavedModel and converter code logs through absl (INFO lines per save).
    absl_logging.set_verbosity(absl_logging.ERROR)


class _NativeLog:
    """Sends what C and C++ code writes to file descriptor 2 into a temporary file.

    Some TensorFlow and LiteRT lines (cudart_stub, the converter's ``fully_quantize``,
    LiteRT's "Created TensorFlow Lite XNNPACK delegate") ignore TF_CPP_MIN_LOG_LEVEL.
    Python's ``sys.stderr`` (errors, warnings, progress) keeps the real standard error.
    The file is deleted after a successful command, and named after a failed one.
    """

    def __enter__(self) -> "_NativeLog":
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self._file = tempfile.NamedTemporaryFile(prefix="tfcompress-native-", suffix=".log",
                                                 delete=False)
        self.path = self._file.name
        os.dup2(self._file.fileno(), 2)
        self._old_stderr = sys.stderr
        sys.stderr = open(self._saved_fd, "w", buffering=1, closefd=False,
                          encoding=getattr(self._old_stderr, "encoding", None) or "utf-8",
                          errors="backslashreplace")
        self._repoint_log_handlers(self._old_stderr, sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        new = sys.stderr
        sys.stderr = self._old_stderr
        self._repoint_log_handlers(new, self._old_stderr)
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._file.close()

    def finish(self, exit_code: int) -> None:
        """Keeps the log (and says where it is) after a failure; deletes it otherwise."""
        if exit_code != 0 and os.path.getsize(self.path):
            print(f"(TensorFlow's and LiteRT's own log lines: {self.path}; --verbose shows "
                  "them as they come)", file=sys.stderr)
        else:
            os.unlink(self.path)

    @staticmethod
    def _repoint_log_handlers(old, new) -> None:
        # Python log handlers (absl's among them) hold the stream they were made with.
        handlers = list(logging.getLogger().handlers)
        handlers.append(absl_logging.get_absl_handler().python_handler)
        for h in handlers:
            if getattr(h, "stream", None) is old:
                h.stream = new


def _main_quietly(argv: List[str]) -> int:
    """``main``, quiet unless --verbose: runs before any command imports TensorFlow."""
    if FLAGS.verbose:
        return main(argv)
    _quiet_python()
    code = 2
    log = _NativeLog()
    with log:
        code = main(argv)
    log.finish(code)
    return code


def run(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point."""
    app.run(lambda a: sys.exit(_main_quietly(a)), argv=argv)


if __name__ == "__main__":
    run()
