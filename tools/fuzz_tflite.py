"""A deterministic fuzzer of the check commands; writes JSON and a markdown table (issue 17).

Mutants of real `.tflite` files (the data folder's ResNet-8 float / int8 and Coral
MobileNetV2, and small int8 files written by ``tfcompress.convert``) go through every
TensorFlow-free CLI entry point: ``inspect``, ``inspect --json``, ``validate`` and
``benchmark`` (tiny run counts). Each mutant is a pure function of ``--seed`` and its
number, so a run repeats exactly and one case can be rebuilt alone (``--case=N``).

Mutations: bit flips (anywhere, or inside the flatbuffer's structure), byte
overwrites, vtable entries, offsets, vector lengths, tensor indices of ops and of the
subgraph's inputs / outputs, shape dimensions, scalar fields (types, buffer and opcode
indices, quantized dimension, ...), quantization scales and zero points, small constant
buffers (shape operands), splices, truncation, and random bytes behind a valid
identifier. One to three per mutant. The structure is found by walking the seed file's
tables with a small copy of the schema's field numbers (``SCHEMA``).

The CLI runs in forked worker processes that call ``tfcompress.cli.main`` in-process (no
Python start-up per case). A worker killed by a signal is a *crash*; an uncaught
exception, an exit code outside 0/1/2, a 1 from anything but ``validate``, or an error
line the CLI marks as unexpected is a *traceback*; a run longer than ``--timeout_s`` is a
*hang* (the worker is killed). Either way the worker is replaced and the mutant is kept
under ``--keep_dir``. Peak memory is the worker's VmHWM for each run (reset before it
through ``/proc/self/clear_refs``) and, for the child processes the runtime forks to try
a file first, the largest ``ru_maxrss`` of the worker's children.

The small int8 seed files are converted once, by a separate Python process that imports
TensorFlow (never this one: the workers fork from it), and cached in ``--seed_cache``.

``--parts=bad_inputs`` runs issue 17's list of bad command lines and files instead (each in
a fresh ``tfcompress`` process: exit code, the one error line, and whether anything was
left behind), including a second ``compress`` on an output a first one holds.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data nice -n 10 .venv/bin/python tools/fuzz_tflite.py \
        --mutants=10000 --parts=mutants --out=results/fuzz.json
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/fuzz_tflite.py \
        --parts=bad_inputs --out=results/bad_inputs.json
    .venv/bin/python tools/fuzz_tflite.py --case=1234 --keep_dir=/tmp/case  # one mutant
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

flags.DEFINE_string("out", "results/fuzz.json", "JSON output; a .md table is written beside it.")
flags.DEFINE_integer("seed", 0, "Random seed: mutant N is a function of (seed, N) only.")
flags.DEFINE_integer("mutants", 10000, "Number of mutants.")
flags.DEFINE_integer("first_case", 0, "Number of the first mutant (to split a run).")
flags.DEFINE_integer("case", None, "Rebuild and run only this mutant (writes it to --keep_dir).")
flags.DEFINE_integer("workers", 1, "Worker processes (one case at a time each).")
flags.DEFINE_float("timeout_s", 10.0, "A run that takes more CPU seconds than this (its own "
                   "and its children's) is a hang.")
flags.DEFINE_float("kill_after_s", 60.0, "A run still going after this many wall-clock seconds "
                   "is a hang too; its worker is killed. Wall time on a shared machine measures "
                   "the other processes as well, hence the CPU-time limit above.")
flags.DEFINE_list("commands", ["inspect", "inspect_json", "validate", "benchmark"],
                  "Entry points each mutant goes through.")
flags.DEFINE_list("seed_files", ["data", "project"],
                  "data: the data folder's .tflite files; project: small files written by "
                  "tfcompress.convert (converted once by a TensorFlow process, then cached).")
flags.DEFINE_string("seed_cache", os.path.join(tempfile.gettempdir(), "tfcompress_fuzz_seeds"),
                    "Folder for the converted project seed files.")
flags.DEFINE_list("parts", ["mutants", "bad_inputs"],
                  "mutants: the fuzzing; bad_inputs: issue 17's list of bad command lines and "
                  "files, one fresh `tfcompress` process each (converts the project seed files "
                  "first, about 3 minutes).")
flags.DEFINE_string("keep_dir", None, "Where the mutants that crash, hang or raise are "
                    "written (default: a folder beside --out).")
FLAGS = flags.FLAGS

# The CLI (its absl flags live in the same FLAGS) is imported here, before any fork, so
# that the workers inherit it loaded. It imports no TensorFlow.
from tfcompress import cli, inspector  # noqa: E402

DATA_SEEDS = {  # file -> weight (how often it is picked)
    "mlperf_tiny_resnet8_cifar10_int8.tflite": 4,
    "mlperf_tiny_resnet8_cifar10_float.tflite": 2,
    "coral_mobilenet_v2_1.0_224_quant.tflite": 1,  # 3.6 MB: each run costs 10x more
}
PROJECT_WEIGHT = 3

COMMAND_ARGS = {
    "inspect": lambda path, data: ["inspect", path],
    "inspect_json": lambda path, data: ["inspect", path, "--json"],
    "validate": lambda path, data: ["validate", path, f"--data={data}", "--noprogress"],
    "benchmark": lambda path, data: ["benchmark", path, "--runs=2", "--warmup=1", "--nomemory",
                                     "--noprogress"],
}

# -- the structure of a seed file ----------------------------------------------------------

# table -> {field number: (name, type)}; the TFLite schema's field order (schema.fbs).
# "idx": int32 tensor indices; "shape": int32 dimensions; "table:X" / "vec:table:X": nested.
SCHEMA = {
    "Model": {0: ("version", "u32"), 1: ("operator_codes", "vec:table:OperatorCode"),
              2: ("subgraphs", "vec:table:SubGraph"), 3: ("description", "str"),
              4: ("buffers", "vec:table:Buffer"), 5: ("metadata_buffer", "vec:i32"),
              6: ("metadata", "vec:table:Metadata"),
              7: ("signature_defs", "vec:table:SignatureDef")},
    "OperatorCode": {0: ("deprecated_builtin_code", "i8"), 1: ("custom_code", "str"),
                     2: ("version", "i32"), 3: ("builtin_code", "i32")},
    "SubGraph": {0: ("tensors", "vec:table:Tensor"), 1: ("inputs", "vec:idx"),
                 2: ("outputs", "vec:idx"), 3: ("operators", "vec:table:Operator"),
                 4: ("name", "str")},
    "Tensor": {0: ("shape", "vec:shape"), 1: ("type", "i8"), 2: ("buffer", "u32"),
               3: ("name", "str"), 4: ("quantization", "table:Quantization"),
               5: ("is_variable", "u8"), 6: ("sparsity", "table:Sparsity"),
               7: ("shape_signature", "vec:shape")},
    "Operator": {0: ("opcode_index", "u32"), 1: ("inputs", "vec:idx"), 2: ("outputs", "vec:idx"),
                 3: ("builtin_options_type", "u8"), 4: ("builtin_options", "table:Options"),
                 5: ("custom_options", "vec:u8"), 7: ("mutating_variable_inputs", "vec:u8"),
                 8: ("intermediates", "vec:idx")},
    "Buffer": {0: ("data", "vec:u8"), 1: ("offset", "u64"), 2: ("size", "u64")},
    "Quantization": {0: ("min", "vec:f32"), 1: ("max", "vec:f32"), 2: ("scale", "vec:f32"),
                     3: ("zero_point", "vec:i64"), 4: ("details_type", "u8"),
                     6: ("quantized_dimension", "i32")},
    "Sparsity": {0: ("traversal_order", "vec:i32"), 1: ("block_map", "vec:i32"),
                 2: ("dim_metadata", "vec:table:DimensionMetadata")},
    "DimensionMetadata": {0: ("format", "i8"), 1: ("dense_size", "i32"),
                          2: ("array_segments_type", "u8"), 3: ("array_segments", "table:IntVec"),
                          4: ("array_indices_type", "u8"), 5: ("array_indices", "table:IntVec")},
    "IntVec": {0: ("values", "vec:u8")},  # Int32Vector / Uint16Vector / Uint8Vector
    "SignatureDef": {0: ("inputs", "vec:table:TensorMap"), 1: ("outputs", "vec:table:TensorMap"),
                     2: ("signature_key", "str"), 4: ("subgraph_index", "u32")},
    "TensorMap": {0: ("name", "str"), 1: ("tensor_index", "u32")},
    "Metadata": {0: ("name", "str"), 1: ("buffer", "u32")},
    "Options": {},  # builtin options: fields of every kind, edited as 1-4 byte scalars
}
_SIZES = {"u8": 1, "i8": 1, "u16": 2, "i32": 4, "u32": 4, "f32": 4, "i64": 8, "u64": 8}
_ELEM = {"vec:u8": 1, "vec:i32": 4, "vec:idx": 4, "vec:shape": 4, "vec:f32": 4, "vec:i64": 8,
         "str": 1}


class Layout:
    """Positions of the tables, fields, offsets and vectors of one valid flatbuffer."""

    def __init__(self, buf: bytes):
        self.buf = buf
        self.tables: List[Tuple[int, int, int]] = []  # (table, vtable, vtable bytes)
        self.scalars: List[Tuple[int, int, str]] = []  # (position, size, field name)
        self.offsets: List[int] = []  # uoffset fields (to tables, vectors, strings)
        self.vectors: List[Tuple[int, int, int, str]] = []  # (length position, n, elem, name)
        self.indices: List[Tuple[int, int, int]] = []  # (element position, n tensors, subgraph)
        self.dims: List[int] = []  # positions of shape dimensions
        self.floats: List[int] = []  # quantization scales, min, max
        self.zero_points: List[int] = []
        self.small_data: List[Tuple[int, int]] = []  # (data position, bytes) of <= 64 bytes
        self._seen = set()
        self._n_tensors = 0
        self._visit(self._u32(0), "Model")
        self.structure = sorted({p for p, _, _ in self.scalars} | set(self.offsets)
                                | {p for p, _, _, _ in self.vectors}
                                | {v for _, v, _ in self.tables})

    def _u32(self, pos):
        return struct.unpack_from("<I", self.buf, pos)[0]

    def _visit(self, pos: int, kind: str) -> None:
        if pos in self._seen or not 0 <= pos <= len(self.buf) - 4:
            return
        self._seen.add(pos)
        vt = pos - struct.unpack_from("<i", self.buf, pos)[0]
        vt_len = struct.unpack_from("<H", self.buf, vt)[0]
        self.tables.append((pos, vt, vt_len))
        fields = SCHEMA.get(kind, {})
        if kind == "SubGraph":
            self._n_tensors = self._vector_length(pos, vt, vt_len, 0)
        for slot in range((vt_len - 4) // 2):
            off = struct.unpack_from("<H", self.buf, vt + 4 + 2 * slot)[0]
            if not off:
                continue
            fpos = pos + off
            name, ftype = fields.get(slot, (f"{kind}.{slot}", "u8" if kind == "Options" else "u32"))
            if ftype in _SIZES:
                self.scalars.append((fpos, _SIZES[ftype], f"{kind}.{name}"))
                continue
            self.offsets.append(fpos)
            target = fpos + self._u32(fpos)
            if ftype.startswith("table:"):
                self._visit(target, ftype[len("table:"):])
                continue
            n = self._u32(target)
            elem = 4 if ftype.startswith("vec:table:") else _ELEM.get(ftype, 1)
            self.vectors.append((target, n, elem, f"{kind}.{name}"))
            first = target + 4
            if ftype.startswith("vec:table:"):
                for i in range(n):
                    self.offsets.append(first + 4 * i)
                    self._visit(first + 4 * i + self._u32(first + 4 * i),
                                ftype[len("vec:table:"):])
            elif ftype == "vec:idx":
                self.indices += [(first + 4 * i, self._n_tensors, 0) for i in range(n)]
            elif ftype == "vec:shape":
                self.dims += [first + 4 * i for i in range(n)]
            elif ftype == "vec:f32":
                self.floats += [first + 4 * i for i in range(n)]
            elif ftype == "vec:i64":
                self.zero_points += [first + 8 * i for i in range(n)]
            elif ftype == "vec:u8" and name == "data" and 0 < n <= 64:
                self.small_data.append((first, n))

    def _vector_length(self, pos, vt, vt_len, slot) -> int:
        if 4 + 2 * slot >= vt_len:
            return 0
        off = struct.unpack_from("<H", self.buf, vt + 4 + 2 * slot)[0]
        if not off:
            return 0
        return self._u32(pos + off + self._u32(pos + off))


_INT32 = (0, 1, -1, 2, 3, 4, 7, 8, 15, 16, 255, 256, 65535, 65536, 2 ** 24, 2 ** 31 - 1,
          -(2 ** 31), -2, 2 ** 16 + 1)


def _put(buf: bytearray, pos: int, fmt: str, value) -> None:
    size = struct.calcsize(fmt)
    if 0 <= pos <= len(buf) - size:
        try:
            struct.pack_into(fmt, buf, pos, value)
        except struct.error:
            struct.pack_into(fmt, buf, pos, 0)


def _interesting(rng: random.Random, old: int) -> int:
    return rng.choice([rng.choice(_INT32), old + rng.choice((-1, 1, 2, -2, 4, -4)),
                       old * 2, old ^ (1 << rng.randrange(31)), rng.randrange(-1000, 100000)])


def _flip_bits(buf, rng, positions=None):
    for _ in range(rng.randint(1, 4)):
        pos = rng.choice(positions) + rng.randrange(4) if positions else rng.randrange(len(buf))
        if pos < len(buf):
            buf[pos] ^= 1 << rng.randrange(8)
    return "bit_flip" if positions is None else "struct_bit_flip"


def _mutate_once(buf: bytearray, lay: Layout, rng: random.Random, others) -> Tuple[bytearray, str]:
    kind = rng.choices(
        ["bit_flip", "struct_bit_flip", "byte_overwrite", "vtable", "offset", "length",
         "index", "shape", "scalar", "quant", "data", "splice", "truncate", "random_tail"],
        weights=[8, 12, 6, 9, 7, 6, 16, 9, 10, 7, 3, 3, 3, 2])[0]
    if kind == "bit_flip":
        _flip_bits(buf, rng)
    elif kind == "struct_bit_flip":
        _flip_bits(buf, rng, lay.structure)
    elif kind == "byte_overwrite":
        pos = rng.choice(lay.structure) if rng.random() < 0.7 else rng.randrange(len(buf))
        for i in range(rng.randint(1, 8)):
            if pos + i < len(buf):
                buf[pos + i] = rng.choice((0, 0xFF, 0x7F, 0x80, 1, rng.randrange(256)))
    elif kind == "vtable":
        table, vt, vt_len = rng.choice(lay.tables)
        slot = rng.randrange(max(1, vt_len // 2))
        old = struct.unpack_from("<H", buf, vt + 2 * slot)[0]
        _put(buf, vt + 2 * slot, "<H", rng.choice((0, 1, 2, 3, 4, old + 4, old - 4, old + 1,
                                                   0xFFFF, rng.randrange(0x10000))) & 0xFFFF)
    elif kind == "offset":
        pos = rng.choice(lay.offsets)
        old = struct.unpack_from("<I", buf, pos)[0]
        other = rng.choice(lay.tables)[0]
        _put(buf, pos, "<I", rng.choice((0, 1, 4, old + 4, old - 4, old + 8, other - pos,
                                         len(buf) - pos, 0xFFFFFFFF, 0x7FFFFFFF,
                                         rng.randrange(len(buf)))) & 0xFFFFFFFF)
    elif kind == "length":
        pos, n, _, _ = rng.choice(lay.vectors)
        _put(buf, pos, "<I", rng.choice((0, 1, n + 1, n - 1, n * 2, n + 1000, 0xFFFFFFFF,
                                         0x7FFFFFFF, 0x10000000)) & 0xFFFFFFFF)
    elif kind == "index" and lay.indices:
        pos, n, _ = rng.choice(lay.indices)
        old = struct.unpack_from("<i", buf, pos)[0]
        _put(buf, pos, "<i", rng.choice((-1, -1, -2, n, n + 1, rng.randrange(max(n, 1)),
                                         rng.randrange(max(n, 1)), old + 1, old - 1,
                                         2 ** 31 - 1, -(2 ** 31))))
    elif kind == "shape" and lay.dims:
        pos = rng.choice(lay.dims)
        old = struct.unpack_from("<i", buf, pos)[0]
        _put(buf, pos, "<i", _interesting(rng, old))
    elif kind == "scalar" and lay.scalars:
        pos, size, _ = rng.choice(lay.scalars)
        fmt = {1: "<b", 2: "<h", 4: "<i", 8: "<q"}[size]
        old = struct.unpack_from(fmt, buf, pos)[0]
        value = _interesting(rng, old)
        if size == 1:
            value = rng.choice((0, 1, -1, old + 1, old - 1, 127, -128, rng.randrange(-128, 128)))
        _put(buf, pos, fmt, value)
    elif kind == "quant" and (lay.floats or lay.zero_points):
        if lay.floats and (not lay.zero_points or rng.random() < 0.6):
            _put(buf, rng.choice(lay.floats), "<f", rng.choice(
                (0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e30, 1e-30, 1e-45, 3.0)))
        else:
            _put(buf, rng.choice(lay.zero_points), "<q", rng.choice(
                (-129, 128, 255, 256, 2 ** 31, -(2 ** 63), 2 ** 63 - 1, 1, -1)))
    elif kind == "data" and lay.small_data:
        pos, n = rng.choice(lay.small_data)
        at = pos + 4 * rng.randrange(max(1, n // 4))
        _put(buf, at, "<i", _interesting(rng, struct.unpack_from("<i", buf, at)[0]))
    elif kind == "splice":
        src = rng.choice(others)
        a = rng.randrange(len(src))
        chunk = src[a:a + rng.randint(4, 256)]
        at = rng.choice(lay.structure) if rng.random() < 0.7 else rng.randrange(len(buf))
        buf[at:at + len(chunk)] = chunk
    elif kind == "truncate":
        cut = rng.choice((rng.randrange(len(buf)), rng.randrange(64), len(buf) - rng.randrange(64)))
        buf = buf[:max(cut, 0)]
    elif kind == "random_tail":
        n = rng.choice((16, 64, 1024, rng.randrange(16, 20000)))
        tail = bytearray(rng.getrandbits(8) for _ in range(n))
        root = rng.choice((struct.unpack_from("<I", buf, 0)[0], rng.randrange(n), 8, 12))
        buf = bytearray(struct.pack("<I", root & 0xFFFFFFFF) + b"TFL3") + tail
    else:
        return _mutate_once(buf, lay, rng, others)
    return buf, kind


class Seeds:
    """The seed files, their layouts and per-seed validate data."""

    def __init__(self, files: Dict[str, bytes], work: Path):
        self.names = sorted(files)
        self.bytes = [files[n] for n in self.names]
        self.layouts = [Layout(b) for b in self.bytes]
        self.weights = [DATA_SEEDS.get(n, PROJECT_WEIGHT) for n in self.names]
        self.data = []
        for name, buf in zip(self.names, self.bytes):
            report = inspector.inspect(buf)
            t = report.inputs[0]
            rng = np.random.default_rng(0)
            shape = (1,) + tuple(t.shape[1:])
            if t.dtype in ("uint8", "int8"):
                x = rng.integers(0, 255, shape).astype(t.dtype if t.dtype == "uint8" else "float32")
            else:
                x = rng.random(shape).astype("float32")
            path = work / f"data_{Path(name).stem}.npz"
            np.savez(path, x=x, y=np.zeros(1, "int64"))
            self.data.append(str(path))

    def mutant(self, seed: int, case: int) -> Tuple[int, bytes, List[str]]:
        rng = random.Random(seed * 1_000_003 + case)
        s = rng.choices(range(len(self.names)), weights=self.weights)[0]
        buf, kinds = bytearray(self.bytes[s]), []
        for _ in range(rng.choices((1, 2, 3), weights=(6, 3, 1))[0]):
            buf, kind = _mutate_once(buf, self.layouts[s], rng, self.bytes)
            kinds.append(kind)
            if kind in ("truncate", "random_tail"):
                break
        return s, bytes(buf), kinds


# -- project seed files (converted by a TensorFlow process, cached) --------------------------

_PROJECT_SCRIPT = r'''
import os, sys
import numpy as np
import keras
from tfcompress import convert

out = sys.argv[1]
rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)
L = keras.layers

def cnn():
    i = keras.Input((8, 8, 1), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu")(i)
    y = L.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = L.Add()([x, y])
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(8, 1)(x)
    x = L.Reshape((128,))(x)
    return keras.Model(i, L.Dense(10, activation="softmax")(x))

def branches():
    i = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, padding="same")(i)
    b = L.Conv2D(4, 1)(i)
    x = L.Concatenate()([a, b])
    x = L.AveragePooling2D(2)(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(3)(x))

def mlp():
    i = keras.Input((16,))
    x = L.Dense(32, activation="tanh")(i)
    return keras.Model(i, L.Dense(4)(x))

def sparse_cnn():
    m = cnn()
    for layer in m.layers:
        if isinstance(layer, L.Conv2D) and layer.kernel.shape[-1] >= 8:
            w = layer.kernel.numpy()
            w[np.abs(w) < np.quantile(np.abs(w), 0.8)] = 0
            layer.kernel.assign(w)
    return m

keras.utils.set_random_seed(0)
model = cnn()
model.save(os.path.join(out, "cnn.keras"))
x = rng.random((64, 8, 8, 1)).astype("float32")
y = rng.integers(0, 10, 64)
np.savez(os.path.join(out, "train.npz"), x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])

for name, build, kw in [("cnn_int8", cnn, {}), ("branches_int8", branches, {}),
                        ("mlp_int8", mlp, {}), ("cnn_sparse_int8", sparse_cnn, {"sparse": True}),
                        ("mlp_float32", mlp, {"mode": "float32"})]:
    model = build()
    x = rng.random((32,) + tuple(model.input_shape[1:])).astype("float32")
    kw.setdefault("representative_data", x)
    r = convert(model, progress=False, **kw)
    r.save(os.path.join(out, name + ".tflite"), overwrite=True)
'''


def project_seeds(cache: Path) -> Dict[str, bytes]:
    key = hashlib.sha256(_PROJECT_SCRIPT.encode()).hexdigest()[:12]
    folder = cache / key
    if not (folder / "done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([sys.executable, "-c", _PROJECT_SCRIPT, str(folder)],
                              capture_output=True, text=True, env=env, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"Converting the project seed files failed:\n{proc.stderr[-3000:]}")
        (folder / "done").write_text("ok\n")
    return {f"project/{p.name}": p.read_bytes() for p in sorted(folder.glob("*.tflite"))}


def project_folder(cache: Path) -> Path:
    project_seeds(cache)
    return cache / hashlib.sha256(_PROJECT_SCRIPT.encode()).hexdigest()[:12]


# -- the bad-input table (issue 17's list), each row a fresh `tfcompress` process ------------

def _edited(buf: bytes, edit) -> bytes:
    """``buf`` with one edit made through the schema's object API."""
    import flatbuffers

    from tfcompress._compat_litert import tflite_schema as fb

    tree = fb.ModelT.InitFromObj(fb.Model.GetRootAs(buf, 0))
    edit(tree, tree.subgraphs[0], fb)
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _op(tree, graph, fb, name):
    code = getattr(fb.BuiltinOperator, name)
    return next(op for op in graph.operators
                if max(tree.operatorCodes[op.opcodeIndex].builtinCode,
                       tree.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode) == code)


def _set(holder, attr, index, value):
    values = np.array(getattr(holder, attr))
    values[index] = value
    setattr(holder, attr, values)


def bad_input_cases(work: Path, project: Path) -> List[Tuple[str, List[str], Optional[str]]]:
    """(what, CLI arguments, what must not be left behind) for each row; writes the inputs."""
    models = _common.data_dir().resolve() / "models"
    int8 = str(models / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    coral = str(models / "coral_mobilenet_v2_1.0_224_quant.tflite")
    cnn_tflite, keras_model = str(project / "cnn_int8.tflite"), str(project / "cnn.keras")
    train = str(project / "train.npz")
    rng = np.random.default_rng(0)
    w = lambda name: str(work / name)  # noqa: E731
    calib = rng.random((16, 8, 8, 1)).astype("float32")
    bad = calib.copy()
    bad[3, 2, 2, 0] = np.inf
    np.save(w("inf.npy"), bad)
    bad[3, 2, 2, 0] = np.nan
    np.save(w("nan.npy"), bad)
    np.save(w("calib.npy"), calib)
    np.savez(w("cifar.npz"), x=rng.integers(0, 255, (4, 32, 32, 3)).astype("float32"),
             y=np.zeros(4, "int64"))
    np.savez(w("wrong_shape.npz"), x=rng.random((20, 5, 5, 1)).astype("float32"),
             y=np.zeros(20, "int64"))
    for name, y in (("label_1000", [1000, 0]), ("label_minus3", [-3, 0]), ("label_2_7", [2.7, 0])):
        np.savez(w(name + ".npz"), x=calib[:2], y=np.array(y))
    np.save(w("pickled.npy"), np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with np.load(train) as f:
        arrays = dict(f)
    np.savez(w("train_bad_labels.npz"), **dict(arrays, y_train=arrays["y_train"] + 50))
    recipes = {
        "broken.yaml": "prune: {sparsity: [0.5\n",
        "tag.yaml": "prune: !!python/object/apply:os.system ['touch PWNED']\n",
        "nan.yaml": "quantize:\n  learning_rate: .nan\n",
        "epochs_true.yaml": "quantize:\n  epochs: true\n",
        "runs_minus5.yaml": "benchmark: {runs: -5}\n",
    }
    for name, text in recipes.items():
        (work / name).write_text(text)
    (work / "a_file").write_text("not a folder")
    os.mkfifo(w("fifo.tflite"))
    with open(w("sparse_4gib.tflite"), "wb") as f:
        f.truncate(4 * 2 ** 30)
    buf = Path(int8).read_bytes()
    edits = {
        "flipped_shape.tflite": lambda t, g, fb: _set(g.tensors[int(g.inputs[0])], "shape", 1,
                                                      33554448),
        "shared_100k.tflite": lambda t, g, fb: setattr(g, "outputs",
                                                       np.full(100_000, g.outputs[0], np.int32)),
        "conv_filter_minus1.tflite": lambda t, g, fb: _set(_op(t, g, fb, "CONV_2D"), "inputs", 1, -1),
        "fc_weights_minus1.tflite": lambda t, g, fb: _set(_op(t, g, fb, "FULLY_CONNECTED"),
                                                          "inputs", 1, -1),
        "add_input_minus1.tflite": lambda t, g, fb: _set(_op(t, g, fb, "ADD"), "inputs", 0, -1),
        "reshape_shape_other_constant.tflite": lambda t, g, fb: _set(
            _op(t, g, fb, "RESHAPE"), "inputs", 1, _op(t, g, fb, "CONV_2D").inputs[1]),
        "output_into_constant.tflite": lambda t, g, fb: _set(
            _op(t, g, fb, "CONV_2D"), "outputs", 0, _op(t, g, fb, "CONV_2D").inputs[1]),
        "scales_without_zero_points.tflite": lambda t, g, fb: setattr(
            g.tensors[_op(t, g, fb, "CONV_2D").inputs[1]].quantization, "zeroPoint", []),
    }
    for name, edit in edits.items():
        (work / name).write_bytes(_edited(buf, edit))
    zeroed = bytearray(buf)
    zeroed[0:4] = bytes(4)  # the root table offset
    (work / "zeroed_offset.tflite").write_bytes(bytes(zeroed))
    (work / "random_behind_identifier.tflite").write_bytes(
        struct.pack("<I", 28) + b"TFL3" + bytes(rng.integers(0, 256, 4000, dtype=np.uint8)))
    (work / "truncated.tflite").write_bytes(buf[:len(buf) // 2])
    out = lambda name: w(name)  # noqa: E731
    return [
        ("calibration data with one +inf", ["convert", keras_model, f"--data={w('inf.npy')}",
                                            f"--output={out('o1.tflite')}"], "o1.tflite"),
        ("NaN calibration data", ["convert", keras_model, f"--data={w('nan.npy')}",
                                  f"--output={out('o2.tflite')}"], "o2.tflite"),
        ("convert --output=. --overwrite", ["convert", keras_model, f"--data={w('calib.npy')}",
                                            "--output=.", "--overwrite"], None),
        ("convert --mode=int3", ["convert", keras_model, "--mode=int3",
                                 f"--output={out('o3.tflite')}"], "o3.tflite"),
        ("benchmark --cpus=99", ["benchmark", int8, "--cpus=99", "--runs=2"], None),
        ("benchmark --runs=0", ["benchmark", int8, "--runs=0"], None),
        ("validate --num_threads=0", ["validate", int8, f"--data={w('cifar.npz')}",
                                                "--num_threads=0"], None),
        ("validate --reference with a mismatched model",
         ["validate", int8, f"--data={w('cifar.npz')}", f"--reference={coral}"], None),
        ("validate: inputs 20x5x5x1 for an 8x8 model",
         ["validate", cnn_tflite, f"--data={w('wrong_shape.npz')}"], None),
        ("validate: label 1000", ["validate", cnn_tflite, f"--data={w('label_1000.npz')}"], None),
        ("validate: label -3", ["validate", cnn_tflite, f"--data={w('label_minus3.npz')}"], None),
        ("validate: label 2.7", ["validate", cnn_tflite, f"--data={w('label_2_7.npz')}"], None),
        ("validate: pickled object array", ["validate", cnn_tflite,
                                            f"--data={w('pickled.npy')}"], None),
        ("compress --output_dir=FILE/sub", ["compress", keras_model, f"--data={train}",
                                            f"--output_dir={w('a_file')}/sub"], None),
        ("compress: malformed YAML recipe", ["compress", keras_model, f"--data={train}",
                                             f"--recipe={w('broken.yaml')}",
                                             f"--output_dir={out('c1')}"], "c1.partial"),
        ("compress: YAML python tag", ["compress", keras_model, f"--data={train}",
                                       f"--recipe={w('tag.yaml')}", f"--output_dir={out('c2')}"],
         "PWNED"),
        ("compress: learning_rate: .nan in the recipe",
         ["compress", keras_model, f"--data={train}", f"--recipe={w('nan.yaml')}",
          f"--output_dir={out('c3')}"], "c3.partial"),
        ("compress --learning_rate=nan", ["compress", keras_model, f"--data={train}",
                                          "--learning_rate=nan", f"--output_dir={out('c4')}"],
         "c4.partial"),
        ("compress: epochs: true", ["compress", keras_model, f"--data={train}",
                                    f"--recipe={w('epochs_true.yaml')}",
                                    f"--output_dir={out('c5')}"], "c5.partial"),
        ("compress: benchmark: {runs: -5}", ["compress", keras_model, f"--data={train}",
                                             f"--recipe={w('runs_minus5.yaml')}",
                                             f"--output_dir={out('c6')}"], "c6.partial"),
        ("compress: training labels out of range", ["compress", keras_model,
                                                    f"--data={w('train_bad_labels.npz')}",
                                                    f"--output_dir={out('c7')}"], "c7.partial"),
        ("inspect a FIFO", ["inspect", w("fifo.tflite")], None),
        ("inspect /dev/zero", ["inspect", "/dev/zero"], None),
        ("inspect a 4 GiB sparse file", ["inspect", w("sparse_4gib.tflite")], None),
        ("inspect a directory", ["inspect", str(work)], None),
        ("inspect a missing file", ["inspect", w("missing.tflite")], None),
        ("one flipped bit: a shape 16 -> 33,554,448", ["inspect", w("flipped_shape.tflite")],
         None),
        ("100,000 entries sharing one tensor", ["inspect", "--json", w("shared_100k.tflite")],
         None),
        ("CONV_2D filter input -1", ["validate", w("conv_filter_minus1.tflite"),
                                     f"--data={w('cifar.npz')}"], None),
        ("FULLY_CONNECTED weights input -1", ["benchmark", w("fc_weights_minus1.tflite"),
                                              "--runs=2"], None),
        ("ADD input -1", ["inspect", w("add_input_minus1.tflite")], None),
        ("RESHAPE shape input pointing at another constant",
         ["inspect", w("reshape_shape_other_constant.tflite")], None),
        ("op output redirected to a constant", ["inspect", w("output_into_constant.tflite")],
         None),
        ("scales with an empty zero-point list", ["inspect", w("scales_without_zero_points.tflite")],
         None),
        ("zeroed root table offset", ["inspect", w("zeroed_offset.tflite")], None),
        ("random bytes behind a valid identifier", ["inspect", w("random_behind_identifier.tflite")],
         None),
        ("truncated file", ["benchmark", w("truncated.tflite")], None),
    ]


def run_bad_inputs(work: Path, project: Path) -> List[dict]:
    rows = []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for what, args, left in bad_input_cases(work, project):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tfcompress.cli", *args, "--noprogress"],
                              capture_output=True, text=True, timeout=600, cwd=work, env=env)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        rows.append({
            "what": what, "command": "tfcompress " + " ".join(
                a.replace(str(work) + "/", "").replace(str(project) + "/", "")
                .replace(str(_common.data_dir().resolve() / "models") + "/", "") for a in args),
            "exit": proc.returncode, "message": errors[0] if errors else "",
            "one_line": len(errors) == 1 and "Traceback" not in proc.stderr,
            "left_behind": bool(left) and (work / left).exists(),
            "seconds": time.perf_counter() - start,
        })
        print(f"{rows[-1]['exit']} {what}: {rows[-1]['message'][:150]}", flush=True)
    rows.append(_two_runs_on_one_output(work, project, env))
    return rows


def _two_runs_on_one_output(work: Path, project: Path, env) -> dict:
    """A second compress on an output a first one is working on (the first is then killed)."""
    (work / "long.yaml").write_text("quantize: {epochs: 500}\nbenchmark: null\n")
    args = ["compress", str(project / "cnn.keras"), f"--data={project / 'train.npz'}",
            f"--recipe={work / 'long.yaml'}", f"--output_dir={work / 'shared_out'}",
            "--noprogress"]
    first = subprocess.Popen([sys.executable, "-m", "tfcompress.cli", *args], cwd=work, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = work / "shared_out.partial.lock"
        deadline = time.monotonic() + 300
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tfcompress.cli", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        first.kill()
        first.wait()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    return {"what": f"two compress runs on one output (the first is pid {first.pid})",
            "command": "tfcompress " + " ".join(a.replace(str(work) + "/", "")
                                                .replace(str(project) + "/", "") for a in args),
            "exit": proc.returncode, "message": errors[0] if errors else "",
            "one_line": len(errors) == 1 and "Traceback" not in proc.stderr,
            "left_behind": False, "seconds": time.perf_counter() - start}


# -- workers ---------------------------------------------------------------------------------

def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def run_cli(argv: List[str]) -> Tuple[int, str, str]:
    """``tfcompress ARGV`` in this process: (exit code, stdout, stderr)."""
    FLAGS.unparse_flags()
    args = FLAGS(["tfcompress"] + argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()


def classify(command: str, code, err: str) -> str:
    """ok / threshold / refused, or traceback for anything that is not a clean outcome."""
    if code == 0:
        return "ok"
    if code == 1 and command == "validate":
        return "threshold"
    lines = [line for line in err.splitlines() if line.strip()]
    if (code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            and "unexpected" not in lines[0] and "Traceback" not in err):
        return "refused"
    return "traceback"


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the trial runs)."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _worker(conn, seeds: "Seeds", seed: int, tmp: str, cpu_limit: float) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # LiteRT's C++ log lines; the CLI's Python output is captured
    os.dup2(devnull, 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    path = os.path.join(tmp, f"mutant_{os.getpid()}.tflite")
    current = None
    while True:
        job = conn.recv()
        if job is None:
            return
        case, command = job
        if current != case:
            s, buf, kinds = seeds.mutant(seed, case)
            with open(path, "wb") as f:
                f.write(buf)
            current = case
        _reset_peak()
        start, cpu = time.perf_counter(), _cpu_seconds()
        try:
            code, _, err = run_cli(COMMAND_ARGS[command](path, seeds.data[s]))
            outcome = classify(command, code, err)
        except BaseException:  # an exception the CLI let through: what the fuzzer looks for
            code, err, outcome = None, traceback.format_exc(), "traceback"
        cpu = _cpu_seconds() - cpu
        if cpu > cpu_limit and outcome not in ("traceback",):
            outcome, err = "hang", f"{cpu:.1f} CPU seconds (exit {code}): {err}"
        conn.send({
            "case": case, "command": command, "outcome": outcome, "exit": code,
            "seconds": time.perf_counter() - start, "cpu_seconds": cpu, "peak_kib": _vm("VmHWM"),
            "children_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            "seed_file": seeds.names[s], "mutations": kinds,
            "message": (err.strip().splitlines() or [""])[-1][:300] if outcome != "ok" else "",
            "traceback": err[-3000:] if outcome == "traceback" else None,
        })


class Pool:
    """Forked workers, each running one (case, command) at a time; replaced when they die."""

    def __init__(self, n: int, seeds: Seeds, seed: int, tmp: str, timeout: float,
                 cpu_limit: float):
        self.seeds, self.seed, self.tmp, self.timeout = seeds, seed, tmp, timeout
        self.cpu_limit = cpu_limit
        self.ctx = multiprocessing.get_context("fork")
        self.slots = [self._start() for _ in range(n)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, daemon=True,
                                args=(child, self.seeds, self.seed, self.tmp, self.cpu_limit))
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "job": None, "since": 0.0}

    def run(self, jobs, on_result) -> None:
        jobs = collections.deque(jobs)
        while jobs or any(s["job"] is not None for s in self.slots):
            for i, slot in enumerate(self.slots):
                if slot["job"] is None and jobs:
                    slot["job"], slot["since"] = jobs.popleft(), time.monotonic()
                    slot["conn"].send(slot["job"])
            busy = [s for s in self.slots if s["job"] is not None]
            ready = multiprocessing.connection.wait(
                [s["conn"] for s in busy] + [s["proc"].sentinel for s in busy], timeout=0.2)
            now = time.monotonic()
            for i, slot in enumerate(self.slots):
                if slot["job"] is None:
                    continue
                if slot["conn"] in ready:
                    try:
                        on_result(slot["conn"].recv())
                        slot["job"] = None
                        continue
                    except (EOFError, OSError):
                        pass
                died = not slot["proc"].is_alive()
                hung = now - slot["since"] > self.timeout
                if died or hung:
                    if hung and not died:
                        slot["proc"].kill()
                    slot["proc"].join()
                    case, command = slot["job"]
                    s, _, kinds = self.seeds.mutant(self.seed, case)
                    code = slot["proc"].exitcode
                    on_result({
                        "case": case, "command": command, "exit": code,
                        "outcome": "hang" if hung and not died else (
                            "crash" if code is not None and code < 0 else "traceback"),
                        "seconds": now - slot["since"], "cpu_seconds": None, "peak_kib": None,
                        "children_peak_kib": None, "seed_file": self.seeds.names[s],
                        "mutations": kinds, "traceback": None,
                        "message": (f"killed by {signal.Signals(-code).name}"
                                    if code is not None and code < 0 and not hung else
                                    f"no answer within {self.timeout:g} s (wall)" if hung else
                                    f"worker exited with {code}"),
                    })
                    slot["conn"].close()
                    self.slots[i] = self._start()

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(OSError, BrokenPipeError):
                slot["conn"].send(None)
        for slot in self.slots:
            slot["proc"].join(timeout=5)
            if slot["proc"].is_alive():
                slot["proc"].kill()


# -- the run ---------------------------------------------------------------------------------

BAD = ("crash", "traceback", "hang")


def _reason(message: str) -> str:
    """The kind of a refusal: its message without numbers, names and paths."""
    text = re.sub(r"'[^']*'|\([^)]*\)|\[[^\]]*\]|-?\d[\d.e+-]*", "#", message)
    return text.split(". Received")[0].split("; ")[0][:90]


def fuzz(seeds: Seeds, *, seed: int, cases, commands, workers: int, timeout: float,
         kill_after: float, tmp: str, keep_dir: Path, progress: bool = True) -> dict:
    counts = {c: collections.Counter() for c in commands}
    peak = {c: 0 for c in commands}
    children_peak = 0
    slowest = {c: (0.0, None) for c in commands}
    most_cpu = {c: (0.0, None) for c in commands}
    bad, accepted = [], collections.Counter()
    reasons = {c: collections.Counter() for c in commands}  # what the refusals said
    examples = {}  # reason -> (case, the whole line)
    seconds = collections.defaultdict(float)
    cpu_seconds = collections.defaultdict(float)
    done = [0]
    total = len(cases) * len(commands)
    start = time.perf_counter()

    def on_result(r):
        nonlocal children_peak
        c = r["command"]
        counts[c][r["outcome"]] += 1
        seconds[c] += r["seconds"]
        cpu_seconds[c] += r["cpu_seconds"] or 0.0
        if r["peak_kib"]:
            peak[c] = max(peak[c], r["peak_kib"])
        if r["children_peak_kib"]:
            children_peak = max(children_peak, r["children_peak_kib"])
        if r["seconds"] > slowest[c][0]:
            slowest[c] = (r["seconds"], r["case"])
        if (r["cpu_seconds"] or 0) > most_cpu[c][0]:
            most_cpu[c] = (r["cpu_seconds"], r["case"])
        if r["outcome"] == "refused":
            reasons[c][_reason(r["message"])] += 1
            examples.setdefault(_reason(r["message"]), (r["case"], r["message"]))
        if r["outcome"] == "ok" and c == "inspect_json":
            accepted[r["seed_file"]] += 1
        if r["outcome"] in BAD:
            keep_dir.mkdir(parents=True, exist_ok=True)
            _, buf, _ = seeds.mutant(seed, r["case"])
            name = f"case{r['case']}_{c}_{r['outcome']}.tflite"
            (keep_dir / name).write_bytes(buf)
            bad.append(dict(r, file=str(keep_dir / name)))
        done[0] += 1
        if progress and done[0] % 500 == 0:
            rate = done[0] / (time.perf_counter() - start)
            print(f"{done[0]}/{total} runs, {rate:.1f}/s, bad so far: {len(bad)}", flush=True)

    pool = Pool(workers, seeds, seed, tmp, kill_after, timeout)
    try:
        pool.run([(case, c) for case in cases for c in commands], on_result)
    finally:
        pool.close()
    return {
        "seed": seed, "cases": [cases[0], cases[-1] + 1] if cases else [], "mutants": len(cases),
        "commands": list(commands), "workers": workers, "cpu_limit_s": timeout,
        "kill_after_s": kill_after,
        "wall_s": time.perf_counter() - start,
        "seed_files": {n: len(b) for n, b in zip(seeds.names, seeds.bytes)},
        "counts": {c: dict(counts[c]) for c in commands},
        "runs_per_command": {c: sum(counts[c].values()) for c in commands},
        "seconds_per_command": dict(seconds),
        "cpu_seconds_per_command": dict(cpu_seconds),
        "slowest_s": {c: {"seconds": s, "case": k} for c, (s, k) in slowest.items()},
        "most_cpu_s": {c: {"seconds": s, "case": k} for c, (s, k) in most_cpu.items()},
        "peak_rss_mib": {c: v / 1024 for c, v in peak.items()},
        "children_peak_rss_mib": children_peak / 1024,
        "accepted_by_inspector_per_seed": dict(accepted),
        "refusal_reasons": {c: dict(reasons[c].most_common()) for c in commands},
        "refusal_examples": {k: {"case": v[0], "message": v[1]} for k, v in examples.items()},
        "crashes": sum(counts[c]["crash"] for c in commands),
        "tracebacks": sum(counts[c]["traceback"] for c in commands),
        "hangs": sum(counts[c]["hang"] for c in commands),
        "bad": sorted(bad, key=lambda r: (r["case"], r["command"])),
    }


def main(argv):
    del argv
    out = Path(FLAGS.out)
    keep_dir = Path(FLAGS.keep_dir) if FLAGS.keep_dir else out.with_name(out.stem + "_cases")
    unknown = set(FLAGS.commands) - set(COMMAND_ARGS)
    if unknown:
        raise app.UsageError(f"Unknown --commands {sorted(unknown)}; allowed: {sorted(COMMAND_ARGS)}")
    files = {}
    if "data" in FLAGS.seed_files:
        models = _common.data_dir() / "models"
        files.update({n: (models / n).read_bytes() for n in DATA_SEEDS})
    if "project" in FLAGS.seed_files:
        files.update(project_seeds(Path(FLAGS.seed_cache)))
    if not files:
        raise app.UsageError("--seed_files must name data and / or project.")
    if "bad_inputs" in FLAGS.parts:
        bad_rows = bad_input_table(out)
    else:
        bad_rows = None
    if "mutants" not in FLAGS.parts:
        return
    seed, timeout, commands = FLAGS.seed, FLAGS.timeout_s, list(FLAGS.commands)
    cases = ([FLAGS.case] if FLAGS.case is not None
             else list(range(FLAGS.first_case, FLAGS.first_case + FLAGS.mutants)))
    with tempfile.TemporaryDirectory(prefix="fuzz_tflite_") as tmp:
        seeds = Seeds(files, Path(tmp))
        if FLAGS.case is not None:
            keep_dir.mkdir(parents=True, exist_ok=True)
            s, buf, kinds = seeds.mutant(seed, FLAGS.case)
            (keep_dir / f"case{FLAGS.case}.tflite").write_bytes(buf)
            print(f"case {FLAGS.case}: {seeds.names[s]} with {kinds} -> "
                  f"{keep_dir / f'case{FLAGS.case}.tflite'}")
        results = fuzz(seeds, seed=seed, cases=cases, commands=commands, workers=FLAGS.workers,
                       timeout=timeout, kill_after=FLAGS.kill_after_s, tmp=tmp,
                       keep_dir=keep_dir)
    rows = [(c, results["runs_per_command"][c],
             *(results["counts"][c].get(k, 0) for k in ("ok", "threshold", "refused", *BAD)),
             f"{results['slowest_s'][c]['seconds']:.2f}",
             f"{results['most_cpu_s'][c]['seconds']:.2f}", f"{results['peak_rss_mib'][c]:.0f}")
            for c in commands]
    lines = [f"Fuzzing: {results['mutants']} mutants (seed {seed}) of {len(files)} files, "
             f"{results['wall_s']:.0f} s with {FLAGS.workers} worker(s) "
             f"({sum(results['cpu_seconds_per_command'].values()):.0f} CPU s in the runs); "
             "children's peak RSS "
             f"{results['children_peak_rss_mib']:.0f} MiB.", ""]
    lines += _common.table(["command", "runs", "ok", "exit 1", "refused (exit 2)", "crash",
                            "traceback", "hang", "slowest s (wall)", "most CPU s",
                            "peak RSS MiB"], rows)
    for r in results["bad"][:20]:
        lines.append(f"- case {r['case']} {r['command']}: {r['outcome']} ({r['seed_file']}, "
                     f"{'+'.join(r['mutations'])}): {r['message']}")
    if bad_rows is not None:
        results["bad_inputs"] = bad_rows
        lines += ["", "Bad inputs (one fresh process each):", ""] + _bad_input_lines(bad_rows)
    _common.write_results(out, results, lines)


def _bad_input_lines(rows) -> List[str]:
    return _common.table(
        ["input", "command", "exit", "one line", "message"],
        [(r["what"], f"`{r['command']}`", r["exit"], "yes" if r["one_line"] else "NO",
          r["message"].replace("|", "/")[:300] + (" (LEFT FILES BEHIND)" if r["left_behind"]
                                                  else "")) for r in rows])


def bad_input_table(out: Path) -> List[dict]:
    project = project_folder(Path(FLAGS.seed_cache))
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as tmp:
        rows = run_bad_inputs(Path(tmp), project)
    if "mutants" not in FLAGS.parts:
        _common.write_results(out, {"bad_inputs": rows}, _bad_input_lines(rows))
    return rows


if __name__ == "__main__":
    app.run(main)
