"""Every ``tools/`` script is covered by the suite (issue "A layered house", item 7).

For each script (found by a glob, so a new tool is covered without editing this file):

* the ``tfcompress`` names it imports, and the attributes it reads on a tfcompress
  module alias (``tc.validate``, ``inspector.gzip_size``), exist on the real modules, and
  so do the names it uses from the helpers beside it (``tools/_common.py``) or in
  ``tests/`` (``zoo.py``): a renamed or moved library name fails here instead of in a
  benchmark run weeks later;
* every name a function reads resolves (``symtable``): a missing function-level import
  such as ``inspector`` in ``pruning_benchmark.two_four`` fails here;
* its flags parse and its module-level code runs (``--helpfull``, ``--only_check_args``);
* it runs to the end in its cheapest mode and writes sane JSON (``SMOKE``), or
  ``NOT_RUN`` says, with the measured time, why not.

The smoke runs are subprocesses (as a user runs the tools); the times beside each entry
were measured on the 2-core development VM, one run at a time. The whole file took
3.2 minutes there (with other work on the machine), nearly all of it the smoke runs.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import json
import math
import os
import subprocess
import symtable
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS_DIR = ROOT / "tools"
TOOLS = sorted(p.name for p in TOOLS_DIR.glob("*.py") if p.name != "_common.py")
# The static checks also read the shared helpers; only the tools are run.
SCRIPTS = TOOLS + ["_common.py"]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fraction(v) -> bool:
    return _finite(v) and 0.0 <= v <= 1.0


# -- what each smoke run checks in the JSON it writes ----------------------------------


def _check_compare(r, out):
    assert r["quick"] is True
    net = r["networks"]["mnist_cnn"]
    assert net["train_images"] == 1000
    rows = net["rows"]
    assert {"float", "plain PTQ", "tfcompress PTQ", "tfcompress QAT", "tfcompress prune + QAT",
            "tfcompress channels + QAT"} <= set(rows)
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        for k in ("accuracy", "accuracy_reference"):
            assert _fraction(row[k]), (name, k, row[k])
        assert row["size_bytes"] > 0 and row["gzip_bytes"] > 0, (name, row)
        assert row["p50_ms_1t"] > 0 and row["ratio_1t"] > 0, (name, row)
    assert rows["float"]["accuracy"] > 0.3  # one epoch on 1000 MNIST images: about 0.6
    assert rows["float"]["ratio_1t"] == 1.0
    # Sizes are deterministic: int8 about 0.26x the float file, channels + QAT smaller still.
    assert rows["tfcompress QAT"]["size_bytes"] < 0.5 * rows["float"]["size_bytes"]
    assert (rows["tfcompress channels + QAT"]["size_bytes"]
            < rows["tfcompress QAT"]["size_bytes"])
    assert abs(rows["tfcompress prune + QAT"]["sparsity"] - 0.75) < 0.02
    assert (out.with_name(out.stem + "_mnist_cnn.png")).stat().st_size > 0


def _check_distillation(r, out):
    assert r["params"]["student"] <= r["params"]["teacher"] / 4
    assert r["teacher_accuracy"] > 0.8  # the published ResNet-8 on the 1000 test images: 0.881
    g = r["gain"]
    assert g["seeds"] == 1 and len(g["runs"]) == 2, g
    assert {run["distilled"] for run in g["runs"]} == {False, True}
    for run in g["runs"]:  # one epoch on 1000 images is about chance: only the range
        assert _fraction(run["accuracy"]) and run["seconds"] > 0, run
    assert _fraction(g["plain_mean"]) and _fraction(g["distilled_mean"]), g
    assert _finite(g["gain_pp"]), g


def _check_inspect(r, out):
    cmds = r["commands"]
    assert len(cmds) == 4, sorted(cmds)  # inspect --json, inspect, validate, benchmark
    for name, c in cmds.items():
        assert c["exit_code"] == 0, (name, c)
        assert len(c["wall_s"]) == 1 and c["wall_s_median"] > 0, (name, c)
        assert _finite(c["peak_rss_mb_max"]) and c["peak_rss_mb_max"] > 0, (name, c)


def _check_latency(r, out):
    assert (r["runs"], r["warmup"]) == (5, 1)
    res = r["resnet8"]
    assert {row["model"] for row in res["rows"]} == {"float", "int8"}
    assert all(row["p50_ms"] > 0 and row["size_bytes"] > 0 for row in res["rows"]), res["rows"]
    assert set(res["int8_over_float"]) == {"xnnpack", "reference"}
    assert all(_finite(v) and v > 0 for v in res["int8_over_float"].values())
    assert _finite(res["same_file_paired_ratio"]) and res["same_file_paired_ratio"] > 0
    assert "compress" not in r
    assert set(r["targets"]) == {"resnet8_int8_over_float_reference",
                                 "resnet8_same_file_paired_ratio"}
    for t in r["targets"].values():  # met or not is a measurement, not a test
        assert _finite(t["value"]) and isinstance(t["met"], bool), t


def _check_lowrank(r, out):
    assert r["quick"] is True
    m = r["mlp"]
    # One epoch on 2000 images: about 0.83 (0.97 on all 60000); chance is 0.1.
    assert m["float_accuracy"] > 0.3, m["float_accuracy"]
    assert m["int8_original_accuracy"] > 0.3, m["int8_original_accuracy"]
    for variant in ("hidden", "all"):
        v = m[variant]
        assert 0 < v["dense_params_ratio"] < 0.5, v["dense_params_ratio"]
        assert v["params"][1] < v["params"][0] and v["macs"][1] < v["macs"][0], v
        assert v["int8_accuracy"] > 0.3, (variant, v["int8_accuracy"])  # 0.58 and 0.87
        assert m["int8_bytes"][variant] < m["int8_bytes"]["original"]
        assert m["latency_ratio"][variant] > 0


def _check_pruning(r, out):
    assert r["quick"] is True
    t = r["two_four"]
    assert t["ok"] is True, t
    assert len(t["checked_tensors"]) >= 2, t["checked_tensors"]
    assert all(ok for _, _, ok in t["checked_tensors"]), t["checked_tensors"]
    assert t["float_unpruned"] > 0.3 and t["int8_2_4"] > 0.3, t  # 2000 images: about 0.75


def _check_quantization(r, out):
    assert r["quick"] is True
    e = r["equivalence"]
    assert e["output_step"] > 0
    for k, v in e.items():
        if k.endswith("_within_2_steps") or k.startswith("top1_agreement"):
            assert v > 0.9, (k, v)  # PTQ is deterministic: 0.99 and more


def _check_spine(r, out):
    assert r["quick"] is True
    [row] = r["subsets"]
    assert row["subset"] == "0-499"
    for k in ("plain_acc_xnnpack", "plain_acc_reference", "ours_acc_xnnpack",
              "ours_acc_reference"):
        assert 0.8 < row[k] <= 1.0, (k, row[k])  # about 0.88
    assert row["ours_size"] > 0 and row["plain_size"] > 0
    assert set(r["latency_1_thread"]) == {
        "float (tfcompress, batch 1)", "float (published)", "int8 (tfcompress)",
        "int8 (plain converter)", "int8 (published)"}
    assert all(v > 0 for v in r["latency_1_thread"].values())
    assert 0 < r["ratios"]["size_int8_over_float_tfcompress"] < 0.5  # 0.306
    assert all(_finite(v) and v > 0 for v in r["ratios"].values()), r["ratios"]
    assert "XNNPACK took" in r["xnnpack"]["tfcompress_int8"]
    assert r["coral"]["top5"] >= 0.8, r["coral"]  # 20 sample images: 1.0


def _check_zoo(r, out):
    assert r["ops"] == ["float32", "int8"]
    cells = r["cells"]["regression_mlp"]
    assert set(cells) == {"float32", "int8"}, sorted(cells)
    assert cells["float32"]["status"] == "verified", cells["float32"]
    # A failed or refused int8 cell is a finding of the matrix, not a broken tool.
    assert cells["int8"]["status"] in ("verified", "failed", "refused"), cells["int8"]
    m = r["models"]["regression_mlp"]
    assert 0 < m["int8_over_float_size"] < 1, m
    assert m["latency"]["status"] == "verified", m["latency"]
    assert sum(r["summary"].values()) == 2, r["summary"]


def _check_fuzz(r, out):
    assert r["mutants"] == 20 and (r["crashes"], r["tracebacks"], r["hangs"]) == (0, 0, 0), r["bad"]
    assert set(r["runs_per_command"].values()) == {20}


def _check_kernel_rounding(r, out):
    (row,) = r["rows"]
    for path in ("xnnpack", "builtin"):
        assert row[path]["ops"] >= 2 and row[path]["outputs"] > 100, row
        assert 0.0 <= row[path]["fraction_off"] < 0.05 and row[path]["worst_steps"] <= 1, row


def _check_tfmot_port(r, out):
    assert r["summary"]["total"] == 2 and r["summary"]["passed"] == 2, r["tests"]


# tool -> (flags of its cheapest mode, check of the JSON it writes). The times were
# measured here, one tool at a time, on 2 cores (with other work on the machine); about
# 7 s of each is importing TensorFlow and most of the rest tracing and conversion.
# --smoke_train_images (tools/_common.py) keeps the first N training images of the data
# sets the tools load through _common, so a training part runs end to end in seconds.
SMOKE = {
    # 35-40 s (35 s with all 5000 --quick images); the full network list of --quick,
    # with tfmot, is the 8-minute run of WORKSPACE.md.
    "compare.py": (["--quick", "--models=mnist_cnn", "--notfmot", "--smoke_train_images=1000"],
                   _check_compare),
    # 21 s: one seed, one epoch, with and without distillation. prune_qat (1 epoch each,
    # 45 s) needs all 4000 images to reach its 50% on the 50-step pruning turn.
    "distillation_benchmark.py": (["--parts=gain", "--seeds=0", "--epochs=1",
                                   "--smoke_train_images=1000"], _check_distillation),
    # 5 s: 20 mutants of the data folder's files through the four check commands (the
    # project's own seed files need a TensorFlow conversion first; tests/test_fuzz.py).
    "fuzz_tflite.py": (["--mutants=20", "--seed_files=data", "--parts=mutants"], _check_fuzz),
    # 2 s: every command once (--quick runs only `inspect --json`, 0.5 s).
    "inspect_benchmark.py": (["--repeats=1"], _check_inspect),
    # 10 s: the zoo's regression MLP (three FULLY_CONNECTED ops) on 8 samples.
    "kernel_rounding.py": (["--models=regression_mlp"], _check_kernel_rounding),
    # 2 s, TensorFlow-free. The compress part (25 s with --runs=5) is the compress() call of
    # tests/test_compression.py on the same digits CNN, with the same recipe, re-timed.
    "latency_benchmark.py": (["--parts=resnet8", "--runs=5", "--warmup=1"], _check_latency),
    # 25 s (30 s with all 60000 images; --parts=resnet8 --quick took 90 s).
    "lowrank_benchmark.py": (["--quick", "--parts=mlp", "--smoke_train_images=2000"],
                             _check_lowrank),
    # 14 s (29 s with all images; the mnist / fashion parts also run tfmot, resnet8
    # fine-tunes 3 epochs).
    "pruning_benchmark.py": (["--quick", "--parts=two_four", "--smoke_train_images=2000"],
                             _check_pruning),
    # 21 s (delegation 48 s; ptq converts 12 models; qat and fashion train).
    "quantization_benchmark.py": (["--quick", "--parts=equivalence"], _check_quantization),
    # 19 s: one calibration subset (33 s with all three and --runs=5).
    "spine_benchmark.py": (["--quick", "--runs=5"], _check_spine),
    # 12 s: two ported tfmot tests (the full port, 200 tests, takes about 6 minutes).
    "tfmot_port_benchmark.py": (["--k=testPruneMiscObject or testPolynomialDecay_PrunesCorrectly"],
                                _check_tfmot_port),
    # 24 s: one small model, two cells (each its own child process), 5 latency rounds.
    "zoo_benchmark.py": (["--models=regression_mlp", "--ops=float32,int8", "--latency_runs=5"],
                         _check_zoo),
}

# tool -> why it has no smoke run here, with the measured time of its cheapest mode.
NOT_RUN = {
    "search_benchmark.py": (
        "its cheapest mode, `TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python "
        "tools/search_benchmark.py --quick --out=/tmp/search.json`, took 89 s (1.5 min) on "
        "2 cores, and 80 s with --smoke_train_images=500: search() fine-tunes, converts and "
        "times (300 rounds) each of three ResNet-8 candidates (QAT, channels 0.25 / 0.5), "
        "and tracing and conversion, not the images, dominate. "
        "search() itself runs in tests/test_recipe_search.py; here its names are resolved "
        "and its flags parsed."),
}


# -- static resolution of the library names a script uses ------------------------------


# Modules the tools import from beside them (tools/_common.py) or from tests/ (zoo.py).
LOCAL_DIRS = (TOOLS_DIR, ROOT / "tests")


def _local_file(module: str):
    for d in LOCAL_DIRS:
        if "." not in module and (d / f"{module}.py").is_file():
            return d / f"{module}.py"
    return None


def _is_ours(module: str) -> bool:
    return (module == "tfcompress" or module.startswith("tfcompress.")
            or _local_file(module) is not None)


def _bound_names(body) -> set:
    """Names a scope binds other than by import: its assignments, loop targets, defs."""
    names = set()
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue  # a nested scope
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        stack.extend(ast.iter_child_nodes(node))
    return names


def _imports(body):
    """The Import / ImportFrom nodes of a scope, not those of nested functions."""
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


class _References(ast.NodeVisitor):
    """Collects (line, what, binding, attribute) for each tfcompress / _common name used.

    A binding is ("module", dotted name) for ``import x [as y]`` or ("from", module, name)
    for ``from module import name [as y]``; attribute is None for the import itself.
    """

    def __init__(self):
        self.refs = []
        self.scopes = []

    def _enter(self, node, args=()):
        scope = {}
        for name in _bound_names(node.body) | set(args):
            scope[name] = None  # a local that shadows an outer alias
        for imp in _imports(node.body):
            if isinstance(imp, ast.Import):
                for a in imp.names:
                    if not _is_ours(a.name):
                        scope[a.asname or a.name.split(".")[0]] = None
                        continue
                    self.refs.append((imp.lineno, f"import {a.name}", ("module", a.name), None))
                    if a.asname:
                        scope[a.asname] = ("module", a.name)
                    else:
                        top = a.name.split(".")[0]
                        scope[top] = ("module", top)
            elif imp.level == 0 and imp.module and _is_ours(imp.module):
                for a in imp.names:
                    binding = ("from", imp.module, a.name)
                    self.refs.append((imp.lineno, f"from {imp.module} import {a.name}",
                                      binding, None))
                    scope[a.asname or a.name] = binding
            else:
                for a in imp.names:
                    scope[a.asname or a.name] = None
        self.scopes.append(scope)
        self.generic_visit(node)
        self.scopes.pop()

    def visit_Module(self, node):
        self._enter(node)

    def visit_FunctionDef(self, node):
        for d in node.decorator_list:
            self.visit(d)
        a = node.args
        args = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        args += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
        self._enter(node, args)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name):
            for scope in reversed(self.scopes):
                if node.value.id in scope:
                    binding = scope[node.value.id]
                    if binding is not None:
                        self.refs.append((node.lineno, f"{node.value.id}.{node.attr}", binding,
                                          node.attr))
                    break
        self.generic_visit(node)


def _load(binding):
    """The object a binding names (a module or any name), imported for real."""
    if binding[0] == "module":
        name = binding[1]
        path = _local_file(name)
        if path is None:
            return importlib.import_module(name)
        # Under a private name: the tools' sys.path entries are not this process's.
        private = f"_test_tools_local_{name}"
        if private not in sys.modules:
            spec = importlib.util.spec_from_file_location(private, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[private] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[private]
                raise
        return sys.modules[private]
    module = _load(("module", binding[1]))
    try:
        return getattr(module, binding[2])
    except AttributeError:
        # `from package import submodule` also works for a submodule not yet imported.
        return importlib.import_module(f"{binding[1]}.{binding[2]}")


def _references(script: str):
    tree = ast.parse((TOOLS_DIR / script).read_text(), filename=script)
    v = _References()
    v.visit(tree)
    return v.refs


def test_the_reference_collector_sees_aliases_function_imports_and_shadowing():
    source = """
import tfcompress as tc
import _common
from tfcompress.inspector import gzip_size as gz


def f(model):
    from tfcompress import inspector, recipe

    inspector.inspect(model)
    tc.convert(model)
    _common.plain_int8(model, None)
    return recipe.Recipe(), gz


def g(inspector):
    return inspector.whatever  # a parameter, not the module
"""
    v = _References()
    v.visit(ast.parse(source))
    found = {(what, binding) for _, what, binding, _ in v.refs}
    assert found == {
        ("import tfcompress", ("module", "tfcompress")),
        ("import _common", ("module", "_common")),
        ("from tfcompress.inspector import gzip_size",
         ("from", "tfcompress.inspector", "gzip_size")),
        ("from tfcompress import inspector", ("from", "tfcompress", "inspector")),
        ("from tfcompress import recipe", ("from", "tfcompress", "recipe")),
        ("inspector.inspect", ("from", "tfcompress", "inspector")),
        ("tc.convert", ("module", "tfcompress")),
        ("_common.plain_int8", ("module", "_common")),
        ("recipe.Recipe", ("from", "tfcompress", "recipe")),
    }, found


def test_every_tool_is_covered_by_smoke_or_not_run():
    assert TOOLS, f"no tools found in {TOOLS_DIR}"
    assert not set(SMOKE) & set(NOT_RUN), set(SMOKE) & set(NOT_RUN)
    assert set(SMOKE) | set(NOT_RUN) <= set(TOOLS), "entries for tools that do not exist: " + \
        str(sorted((set(SMOKE) | set(NOT_RUN)) - set(TOOLS)))
    missing = sorted(set(TOOLS) - set(SMOKE) - set(NOT_RUN))
    assert not missing, (f"{missing}: give each a smoke run in SMOKE or a reason, with the "
                         "measured time of its cheapest mode, in NOT_RUN")
    for tool, reason in NOT_RUN.items():
        assert isinstance(reason, str) and len(reason.strip()) > 20, (tool, reason)


@pytest.mark.parametrize("script", SCRIPTS)
def test_library_names_the_script_uses_exist(script):
    refs = _references(script)
    cache, missing = {}, []
    for line, what, binding, attr in refs:
        try:
            if binding not in cache:
                cache[binding] = _load(binding)
            if attr is not None:
                obj = cache[binding]
                # Attributes only on modules (tc.validate); not on classes and functions.
                if isinstance(obj, type(sys)) and not hasattr(obj, attr):
                    missing.append(f"{script}:{line}: {what}")
        except (ImportError, AttributeError) as e:
            missing.append(f"{script}:{line}: {what} ({type(e).__name__}: {e})")
    assert not missing, "names the script uses that the library lacks:\n" + "\n".join(missing)


MODULE_DUNDERS = {"__file__", "__name__", "__doc__", "__spec__", "__loader__", "__package__",
                  "__builtins__", "__annotations__", "__dict__", "__path__", "__cached__"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_name_the_script_reads_is_defined(script):
    source = (TOOLS_DIR / script).read_text()
    top = symtable.symtable(source, script, "exec")
    tables, stack = [], [top]
    while stack:
        t = stack.pop()
        tables.append(t)
        stack.extend(t.get_children())
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    defined |= {s.get_name() for t in tables for s in t.get_symbols()
                if s.is_declared_global() and s.is_assigned()}
    defined |= set(dir(builtins)) | MODULE_DUNDERS
    undefined = set()
    for t in tables:
        for s in t.get_symbols():
            if not s.is_referenced() or s.get_name() in defined:
                continue
            if t is top:
                if not (s.is_assigned() or s.is_imported()):
                    undefined.add((t.get_lineno(), "<module>", s.get_name()))
            elif s.is_global():
                undefined.add((t.get_lineno(), t.get_name(), s.get_name()))
    assert not undefined, "\n".join(f"{script}: {name}() (line {line}) reads undefined {n!r}"
                                    for line, name, n in sorted(undefined))


def _env(data_dir) -> dict:
    return dict(os.environ, TFCOMPRESS_DATA_DIR=str(data_dir), TF_CPP_MIN_LOG_LEVEL="2")


def _defined_flags(script: str) -> list:
    tree = ast.parse((TOOLS_DIR / script).read_text())
    names = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("DEFINE_") and node.args
                and isinstance(node.args[0], ast.Constant)):
            names.append(node.args[0].value)
    return names


@pytest.mark.parametrize("tool", TOOLS)
def test_flags_parse_and_module_code_runs(tool, data_dir):
    """``--helpfull`` lists the tool's flags; ``--only_check_args`` parses the smoke flags.

    absl exits 1 after printing ``--helpfull`` (by design); ``--only_check_args`` exits 0
    after parsing, before ``main`` runs.
    """
    script = str(TOOLS_DIR / tool)
    out = subprocess.run([sys.executable, script, "--helpfull"], capture_output=True, text=True,
                         timeout=120, env=_env(data_dir), cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    flags_defined = _defined_flags(tool)
    assert "out" in flags_defined, f"{tool} defines no --out flag"
    for name in flags_defined:
        assert f"--{name}:" in out.stdout or f"--[no]{name}:" in out.stdout, (name, out.stdout)
    args = SMOKE[tool][0] if tool in SMOKE else []
    out = subprocess.run([sys.executable, script, *args, "--only_check_args"],
                         capture_output=True, text=True, timeout=120, env=_env(data_dir),
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("tool", sorted(SMOKE))
def test_tool_smoke_run(tool, data_dir, tmp_path):
    args, check = SMOKE[tool]
    out_path = tmp_path / f"{Path(tool).stem}.json"
    proc = subprocess.run([sys.executable, str(TOOLS_DIR / tool), *args, f"--out={out_path}"],
                          capture_output=True, text=True, timeout=600, env=_env(data_dir),
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out_path.read_text())
    assert out_path.with_suffix(".md").read_text().strip()
    check(results, out_path)
