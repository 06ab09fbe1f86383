"""README.md runs as written: every Python and shell block, on the shared data.

Blocks are found by their fence (```python, ```bash) and named ``"<section> [n]"``, the
n-th block of a section. They run in README order in one working folder, where the
files a block names (resnet8.h5, cifar10.npz, model.keras, calib.npz, ...) exist:
the shared ResNet-8 and a small CIFAR-10 subset, or a small CNN trained here on
scikit-learn's digits. Python blocks share one namespace (what a reader would have
typed so far); before each block, the names the README treats as the reader's own
(``model``, ``x``, ``y``, ``x_train``, ``calib``, ``teacher``, ...) are bound to the
small model and data again. ``epochs=N`` becomes ``epochs=1``, to stay cheap.

Shell lines are command synopses: ``[--flag=a|b]`` runs with its first choice, so
every documented flag name is parsed. ``tfcompress`` lines run in this process
(``cli.main``); those in ``PARSE_ONLY`` only have their flags parsed and their files
checked. Blocks that cannot run are in ``NOT_RUN`` with the reason; a README block
found in neither the README nor the lists fails the test, and so does a listed block
the README no longer has. tensorflow_model_optimization is never imported here.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

README = Path(__file__).resolve().parents[1] / "README.md"

# Blocks that do not run here, and why. Keep this short.
NOT_RUN = {
    "Set-up: two commands on a fresh clone [1]":
        "`make main` is the main job itself and `make test` runs this test",
    "Installing: with TensorFlow, or only the check tools [1]":
        "installs packages; the tests run in the installed environment",
}
# tfcompress commands whose flags are parsed and files checked, but which do not run.
PARSE_ONLY = {
    "search": "tries a dozen recipes (minutes); tests/test_recipe_search.py runs it",
    "demo": "is `make main` (minutes); tests/test_pipeline.py runs it",
    "compress": "trains like the README's compress() block, which runs; tests/test_cli.py "
                "runs the command",
}
# Python calls replaced by a check that the README's arguments bind to the signature.
SIGNATURE_ONLY = {
    "search": "tries a dozen recipes (minutes); tests/test_recipe_search.py runs it",
}

_FENCE = re.compile(r"^```(\w*)\s*$")


def readme_blocks(text: str):
    """``[(name, language, code)]`` for each fenced python or bash block, in order."""
    blocks, section, count, lines, lang = [], "", {}, None, None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if lines is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            elif m and m.group(1) in ("python", "bash", "sh", "shell", "console"):
                lines, lang = [], m.group(1)
            elif m:  # another language (json, yaml, text): skipped whole
                lines, lang = [], None
            continue
        if m and not m.group(1):
            if lang is not None:
                count[section] = count.get(section, 0) + 1
                code = "\n".join(lines)
                if lang == "console":  # commands follow "$ "; other lines are their output
                    code = "\n".join(l[2:] for l in lines if l.startswith("$ "))
                blocks.append((f"{section} [{count[section]}]",
                               "python" if lang == "python" else "bash", code))
            lines = None
            continue
        lines.append(line)
    return blocks


def shell_commands(code: str):
    """Each command of a shell block as argv, optional ``[...]`` parts expanded."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        # [--mode=int8|int16x8|...] -> --mode=int8; [--sparse] -> --sparse
        line = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split("|")[0], line)
        out.append(shlex.split(line))
    return out


def test_extractor_finds_blocks_and_expands_synopses():
    text = ("# T\n## A\n```python\nx = 1\n```\n```json\n{}\n```\n## B\n```bash\n"
            "tfcompress demo [--dataset=auto|digits] \\\n    --epochs=2   # two\n```\n")
    assert readme_blocks(text) == [("A [1]", "python", "x = 1"),
                                   ("B [1]", "bash", "tfcompress demo [--dataset=auto|digits]"
                                                     " \\\n    --epochs=2   # two")]
    assert shell_commands(readme_blocks(text)[1][2]) == [
        ["tfcompress", "demo", "--dataset=auto", "--epochs=2"]]
    console = "## C\n```console\n$ tfcompress inspect m.tflite\nsize: 10 bytes\n```\n"
    assert readme_blocks(console) == [("C [1]", "bash", "tfcompress inspect m.tflite")]


BLOCKS = readme_blocks(README.read_text())


def test_every_listed_block_is_still_in_the_readme():
    names = {name for name, _, _ in BLOCKS}
    assert set(NOT_RUN) <= names, sorted(set(NOT_RUN) - names)
    assert len(NOT_RUN) <= 5, "keep the list of README blocks that do not run short"


class _NoTfmot(importlib.abc.MetaPathFinder):
    """tensorflow_model_optimization must never load in this process (it pins tf_keras)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow_model_optimization":
            raise ImportError("README blocks must not import tensorflow_model_optimization in "
                              "the test process; list the block in NOT_RUN with the reason")
        return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir):
    """A folder with the files the README names, and the reader's small model and data."""
    # keras loads here, not at collection: the module's other tests stay TensorFlow-free.
    import keras

    from tfcompress import data as data_lib
    from tfcompress.pipeline import small_cnn  # noqa: F401 (the demo's CNN, for reference)

    root = tmp_path_factory.mktemp("readme")
    models = data_dir / "models"
    (root / "resnet8.h5").symlink_to(models / "mlperf_tiny_resnet8_cifar10.h5")
    for name in ("float.tflite", "a.tflite"):
        (root / name).symlink_to(models / "mlperf_tiny_resnet8_cifar10_float.tflite")
    for name in ("int8.tflite", "b.tflite"):
        (root / name).symlink_to(models / "mlperf_tiny_resnet8_cifar10_int8.tflite")
    with np.load(data_dir / "cifar10" / "cifar10_lossless_subset_convnetjs.npz") as f:
        np.savez(root / "cifar10.npz", x_train=f["x_train"][:200], y_train=f["y_train"][:200],
                 x_test=f["x_test"][:100], y_test=f["y_test"][:100])
    ds = data_lib.load_dataset("digits")
    keras.utils.set_random_seed(0)
    inputs = keras.Input(ds.input_shape)
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu", name="hidden_1")(h)
    h = keras.layers.Dense(32, activation="relu", name="hidden_2")(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h), name="reader_model")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    x_train, y_train = ds.x_train.astype("float32"), ds.y_train
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    model.save(root / "model.keras")
    model.save(root / "model.h5")
    np.savez(root / "calib.npz", x=ds.x_train[:100])
    # Labelled by the float model itself, so that the README's --min_accuracy=0.87 measures
    # how well the int8 file agrees with it, without training the reader's model for long.
    agreed = np.argmax(model.predict(ds.x_test.astype("float32"), verbose=0), -1)
    np.savez(root / "test.npz", x_test=ds.x_test, y_test=agreed)
    np.savez(root / "data.npz", x_train=ds.x_train[:300], y_train=ds.y_train[:300],
             x_test=ds.x_test[:100], y_test=ds.y_test[:100])
    (root / "recipe.yaml").write_text("quantize: {method: qat, epochs: 1}\nbenchmark: {runs: 20}\n")
    (root / "android_aarch64_benchmark_model").write_bytes(b"")  # --dry-run runs nothing
    (root / "R.yaml").write_text((root / "recipe.yaml").read_text())

    def student():
        i = keras.Input(ds.input_shape)
        s = keras.layers.Conv2D(4, 3, activation="relu")(i)
        return keras.Model(i, keras.layers.Dense(10)(keras.layers.Flatten()(s)), name="student")

    def readers_names():  # fresh copies: a block may change them
        return {"model": keras.models.clone_model(model), "x": x_train[:128], "y": y_train[:128],
                "x_train": x_train[:256], "y_train": y_train[:256], "x_test": ds.x_test[:100],
                "y_test": ds.y_test[:100], "x_val": ds.x_test[:64], "calib": x_train[:64],
                "teacher": model, "student": student()}

    return root, readers_names


@pytest.fixture(scope="module")
def namespace():
    return {"__name__": "__readme__"}


@contextlib.contextmanager
def _in(folder):
    previous = os.getcwd()
    os.chdir(folder)
    finder = _NoTfmot()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        os.chdir(previous)


def _signature_only(name, real):
    def check(*args, **kwargs):
        inspect.signature(real).bind(*args, **kwargs)  # a renamed argument fails here
        return None

    check.__name__ = name
    return check


def _run_python(code, workdir, namespace):
    import tfcompress as tc

    root, readers_names = workdir
    code = re.sub(r"\bepochs=\d+", "epochs=1", code)
    code = re.sub(r"([\"']runs[\"']: )\d+", r"\g<1>5", code)
    namespace.update(readers_names())
    with _in(root), _patched(tc):
        exec(compile(code, "README.md", "exec"), namespace)


@contextlib.contextmanager
def _patched(tc):
    real = {name: getattr(tc, name) for name in SIGNATURE_ONLY}
    import tfcompress

    for name, fn in real.items():
        setattr(tfcompress, name, _signature_only(name, fn))
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(tfcompress, name, fn)


def _run_shell(code, workdir):
    from tfcompress import cli

    root, _ = workdir
    for n, argv in enumerate(shell_commands(code)):
        out = root / f"out_{len(list(root.glob('out_*')))}_{n}"  # a new folder per command
        argv = [a.replace("=DIR", f"={out}") for a in argv]
        argv = [re.sub(r"^--runs=\d+$", "--runs=5", a) for a in argv]  # timing is not tested
        with _in(root):
            if argv[0] == "tfcompress":
                flags.FLAGS.unparse_flags()
                rest = flags.FLAGS(argv)  # an unknown flag fails here
                if rest[1] in PARSE_ONLY:
                    for path in rest[2:]:
                        assert os.path.exists(path), f"{argv}: no file {path!r}"
                    continue
                code_ = cli.main(rest)
                assert code_ == 0, f"{' '.join(argv)} exited {code_}"
            elif argv[0] == "python":  # a script path in the README is the repository's
                script = README.parent / argv[1]
                proc = subprocess.run([sys.executable, str(script)] + argv[2:],
                                      capture_output=True, text=True, timeout=120)
                assert proc.returncode == 0, f"{argv}: {proc.stderr[-2000:]}"
            else:
                pytest.fail(f"README runs {argv[0]!r}: teach tests/test_readme.py to run it, or "
                            "list the block in NOT_RUN with the reason")


@pytest.mark.parametrize("name,language,code", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_block_runs(name, language, code, workdir, namespace):
    if name in NOT_RUN:
        pytest.skip(NOT_RUN[name])
    if language == "python":
        _run_python(code, workdir, namespace)
    else:
        _run_shell(code, workdir)
    assert "tensorflow_model_optimization" not in sys.modules
