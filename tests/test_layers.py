"""The import rule: tfcompress's modules are layered along the pipeline.

    base ──> train-time ──> export ──> flow ──> face
      └────> check ─────────┘
(check is imported by export, flow and face; train-time by export, flow and face)

* Every module of the package belongs to exactly one layer (a new module must be placed).
* A module imports only modules of its own layer or of a layer it builds on
  (``ALLOWED``): no arrow runs back up. The one exception is listed in ``BOUNDARY``
  with its reason.
* The module-level import graph has no cycle, inside a layer or across layers.
* The check layer, and everything it imports at module level, never imports
  TensorFlow, Keras or train-time code, so `.tflite` files are read, run, validated
  and timed where TensorFlow is not installed.
* A function-level import names its reason in a comment on the line above, or is a
  boundary the test knows: optional dependencies and the TensorFlow-free boundary only.

Run ``python tests/test_layers.py`` to print the layers and the edges between them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tfcompress"

LAYERS = {
    "base": ("_compat", "_compat_litert", "_graph", "_io", "_progress", "_refit", "data",
             "layer_kinds", "recipe", "schedules"),
    "check": ("android", "benchmark", "inspector", "report", "rewrite", "runtime",
              "validation"),
    "train-time": ("channel_pruning", "default_8bit", "distillation", "lowrank",
                   "post_training", "pruning", "pruning_policy", "quantization", "quantizers"),
    "export": ("calibration", "converter"),
    "flow": ("compression", "recipe_search"),
    "face": ("cli", "pipeline"),
}
ALLOWED = {
    "base": {"base"},
    "check": {"base", "check"},
    "train-time": {"base", "train-time"},
    "export": {"base", "train-time", "check", "export"},
    "flow": {"base", "train-time", "check", "export", "flow"},
    "face": {"base", "train-time", "check", "export", "flow", "face"},
}
# (importer, imported): why the import goes against ALLOWED. Only inside a function.
BOUNDARY = {
    ("validation", "converter"): "a Keras or SavedModel reference is converted to a float "
                                 "`.tflite`; bytes and paths never load TensorFlow",
}
TENSORFLOW = {"tensorflow", "keras", "tf_keras", "tensorflow_model_optimization"}


def _module_files():
    return {p.stem: p for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def _layer_of(module: str) -> str:
    for layer, modules in LAYERS.items():
        if module in modules:
            return layer
    raise KeyError(module)


def _imports(path: Path):
    """(imported top-level name or tfcompress module, line, at module level?, reason?)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    # Imports guarded by a module-level try/if count as module-level.
    for node in tree.body:
        if isinstance(node, (ast.Try, ast.If)):
            top |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif node.module == "tfcompress" or (node.module or "").startswith("tfcompress."):
            if node.module == "tfcompress":
                names = [f"tfcompress.{a.name}" for a in node.names]
            else:
                names = [node.module]
        elif node.level == 0:
            names = [node.module]
        above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        reason = above.startswith("#") or "#" in lines[node.lineno - 1]
        for name in names:
            if name.startswith("tfcompress."):
                yield name.split(".")[1], node.lineno, id(node) in top, reason, True
            else:
                yield name.split(".")[0], node.lineno, id(node) in top, reason, False


def _graph():
    edges, external, problems = {}, {}, []
    for module, path in _module_files().items():
        edges[module], external[module] = set(), set()
        for name, line, at_top, reason, internal in _imports(path):
            if internal:
                edges[module].add((name, at_top, line, reason))
            elif at_top:
                external[module].add(name)
            if not at_top and not reason and not (internal and _is_boundary(module, name)):
                problems.append(f"{module}.py:{line}: a function-level import of {name!r} "
                                "without a reason comment on the line above")
    return edges, external, problems


def _is_boundary(importer: str, imported: str) -> bool:
    return (importer, imported) in BOUNDARY


def test_every_module_is_in_exactly_one_layer():
    placed = [m for modules in LAYERS.values() for m in modules]
    assert len(placed) == len(set(placed)), "a module is placed in two layers"
    assert sorted(placed) == sorted(_module_files()), (
        "modules and layers differ: unplaced "
        f"{sorted(set(_module_files()) - set(placed))}, missing "
        f"{sorted(set(placed) - set(_module_files()))}")


def test_no_import_runs_back_up_the_layers():
    edges, _, _ = _graph()
    wrong = []
    for module, imported in edges.items():
        for name, at_top, line, _reason in imported:
            if _layer_of(name) in ALLOWED[_layer_of(module)]:
                continue
            if not at_top and _is_boundary(module, name):
                continue
            wrong.append(f"{module}.py:{line} ({_layer_of(module)}) imports {name} "
                         f"({_layer_of(name)})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_module_level_imports_have_no_cycle():
    edges, _, _ = _graph()
    graph = {m: {n for n, at_top, _, _ in e if at_top and n != m} for m, e in edges.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_check_layer_never_loads_tensorflow_keras_or_training_code():
    edges, external, _ = _graph()
    for module in LAYERS["check"]:
        seen, todo = set(), [module]
        while todo:  # everything `import tfcompress.<module>` executes
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            todo += [n for n, at_top, _, _ in edges[m] if at_top]
        heavy = {m: sorted(external[m] & TENSORFLOW) for m in seen if external[m] & TENSORFLOW}
        assert not heavy, f"importing tfcompress.{module} imports TensorFlow/Keras via {heavy}"
        training = sorted(m for m in seen if _layer_of(m) in ("train-time", "export"))
        assert not training, f"tfcompress.{module} imports {training}"
    for module in LAYERS["check"]:  # in functions too, but for the listed boundary
        for name, line, at_top, _, internal in _imports(_module_files()[module]):
            if not internal and name in TENSORFLOW:
                raise AssertionError(f"{module}.py:{line} imports {name}")


def test_function_level_imports_say_why():
    _, _, problems = _graph()
    assert not problems, "\n".join(problems)


def test_the_package_init_imports_no_submodule_eagerly():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    eager = [n for n in tree.body if isinstance(n, ast.ImportFrom)
             and (n.module or "").startswith("tfcompress")]
    assert not eager, "tfcompress/__init__.py must import its submodules lazily"


def describe() -> str:
    """The layers, their modules and the layers each one imports (for the closing note)."""
    edges, external, _ = _graph()
    lines = []
    for layer, modules in LAYERS.items():
        used = sorted({_layer_of(n) for m in modules for n, at_top, *_ in edges[m]
                       if at_top or not _is_boundary(m, n)} - {layer})
        heavy = sorted({x for m in modules for x in external[m] & TENSORFLOW})
        lines.append(f"{layer:<10} {', '.join(modules)}")
        lines.append(f"{'':<10}   imports: {', '.join(used) or '-'}; "
                     f"TensorFlow/Keras at import: {', '.join(heavy) or 'none'}")
    lines += [f"boundary   {a} -> {b} (inside a function): {why}" for (a, b), why in BOUNDARY.items()]
    return "\n".join(lines)


def test_describe_lists_every_layer(capsys):
    text = describe()
    print(text)
    assert all(layer in text for layer in LAYERS)


if __name__ == "__main__":
    print(describe())
    sys.exit(0)
