"""The comparison suite: tfcompress against the plain converter and tfmot, per model.

Models: a small MNIST CNN, the MLPerf Tiny ResNet-8 (CIFAR-10 subset), and a
MobileNetV2 (alpha 0.35, 32x32 input) trained briefly on the CIFAR-10 subset (its
accuracy stays at chance, 10%, even after 15 epochs: it is there for size and latency).

Rows: float; plain TFLiteConverter PTQ; tfcompress PTQ; tfcompress QAT;
tfcompress prune (unstructured) + QAT; tfcompress channel pruning + QAT; tfmot QAT;
tfmot pruning + PTQ; tfmot pruning + prune-preserving QAT. tfmot runs in its own
process with TF_USE_LEGACY_KERAS=1 and tf-keras (pip install -e ".[benchmark]"); tfmot
has no PTQ of its own (its PTQ is the TFLite converter, the "plain PTQ" row).

Columns: int8 top-1 on XNNPACK (float row: the float .tflite), size, gzip size, XNNPACK
latency with 1 (pinned to core 1) and 2 threads, its ratio to float (median of the
per-round ratios, every model of one network interleaved in the same run, at least 50
invocations each), conversion time, training step time.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/compare.py \
        --out=results/compare.json [--quick] [--models=mnist_cnn,resnet8,mobilenetv2]

--quick (5000 MNIST / 2000 CIFAR / 500 MobileNetV2 training images, 100 calibration
images, one epoch per stage, 100 timed runs, no tfmot rows for MobileNetV2) finishes in
under 10 minutes on 2 cores; the full mode (more data and epochs, 300 timed runs) takes about
25 minutes (24.9 measured). Writes JSON, a markdown table and one PNG per network.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

flags.DEFINE_string("out", "results/compare.json", "JSON output; .md and .png beside it.")
flags.DEFINE_bool("quick", False, "Small subsets and one epoch per stage (under 10 minutes).")
flags.DEFINE_list("models", ["mnist_cnn", "resnet8", "mobilenetv2"], "Networks to compare.")
flags.DEFINE_bool("tfmot", True, "Also run the tfmot baselines (own process).")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS

# The tfmot side: QAT, pruning + PTQ, and pruning + prune-preserving QAT, from the same
# float weights, data, epochs, learning rate and schedule as ours.
TFMOT_SCRIPT = _common.ARCH + _common.TFMOT_HEADER + '''
def base():
    if a["source"] == "h5":
        return keras.models.load_model(a["h5"], compile=False)
    if a["source"] == "mobilenetv2":
        m = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=10)
    else:
        m = build(keras)
    m.set_weights(list(np.load(a["weights"]).values()))
    return m
def compile_(m):
    m.compile(keras.optimizers.Adam(a["lr"]),
              keras.losses.SparseCategoricalCrossentropy(from_logits=a["from_logits"]))
''' + _common.TFMOT_STEP_TIMER + '''
def fit(m, callbacks=()):
    t = StepTimer()
    m.fit(d["x"], d["y"], batch_size=a["batch_size"], epochs=a["epochs"], verbose=0,
          callbacks=list(callbacks) + [t])
    return 1e3 * float(np.median(t.times[5:] or t.times))
def convert(m, calibrate):
    c = tf.lite.TFLiteConverter.from_keras_model(m)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    if calibrate:
        c.representative_dataset = lambda: ([d["calib"][i:i + 1]] for i in range(len(d["calib"])))
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = tf.int8
    c.inference_output_type = tf.int8
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        buf = c.convert()
    return buf, time.perf_counter() - t0
out = {}
def row(name, fn):
    keras.utils.set_random_seed(a["seed"])
    try:
        buf, conv_s, step_ms = fn()
        open(f"{a['dir']}/{name}.tflite", "wb").write(buf)
        out[name] = {"conversion_s": conv_s, "step_ms": step_ms}
    except Exception as e:  # a baseline that fails is a result too
        out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
def qat():
    q = tfmot.quantization.keras.quantize_model(base()); compile_(q)
    step = fit(q)
    return convert(q, False) + (step,)
def pruned():
    s = tfmot.sparsity.keras.PolynomialDecay(**a["schedule"])
    p = tfmot.sparsity.keras.prune_low_magnitude(base(), pruning_schedule=s); compile_(p)
    step = fit(p, [tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(p), step
def prune_ptq():
    p, step = pruned()
    return convert(p, True) + (step,)
def prune_pqat():
    p, step = pruned()
    annotated = tfmot.quantization.keras.quantize_annotate_model(p)
    q = tfmot.quantization.keras.quantize_apply(
        annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    compile_(q)
    step2 = fit(q)
    return convert(q, False) + (step + step2,)
row("tfmot QAT", qat)
row("tfmot prune + PTQ", prune_ptq)
row("tfmot prune + PQAT", prune_pqat)
print(json.dumps(out))
'''


def _network(name: str):
    """(float model, x_train, y_train, x_test, y_test, from_logits, tfmot source args)."""
    import keras

    from tfcompress import data

    quick = FLAGS.quick
    keras.utils.set_random_seed(FLAGS.seed)
    if name == "mnist_cnn":
        x, y, xt, yt = _common.load_images("mnist")
        n_train, n_test = (5000, 2000) if quick else (20000, 10000)
        x, y, xt, yt = x[:n_train], y[:n_train], xt[:n_test], yt[:n_test]
        build, compile_model = _common.arch()
        model = build(keras)
        compile_model(keras, model, 1e-3)
        model.fit(x, y, batch_size=128, epochs=1 if quick else 3, verbose=0)
        return model, x, y, xt, yt, True, {"source": "arch"}
    cifar = data.load_dataset("cifar10", data_dir=_common.data_dir(), fallback=False)
    n_train = 2000 if quick else len(cifar.x_train)
    x, y = cifar.x_train[:n_train].astype("float32"), cifar.y_train[:n_train].astype("int64")
    xt, yt = cifar.x_test.astype("float32"), cifar.y_test.astype("int64")
    if name == "resnet8":
        return (keras.models.load_model(_common.resnet8_h5(), compile=False), x, y, xt, yt,
                False, {"source": "h5", "h5": str(_common.resnet8_h5())})
    if name == "mobilenetv2":
        if quick:  # its conversions and calibration dominate; keep its training tiny
            x, y = x[:500], y[:500]
        x, xt = x / 127.5 - 1.0, xt / 127.5 - 1.0  # MobileNetV2's input range
        model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                               weights=None, classes=10)
        model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=64, epochs=1 if quick else 15, verbose=0)
        return model, x, y, xt, yt, False, {"source": "mobilenetv2"}
    raise ValueError(f"Unknown network {name!r}. Allowed: mnist_cnn, resnet8, mobilenetv2.")


def _fit(model, x, y, *, from_logits, epochs, lr, callbacks=()):
    import keras

    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    timer = _common.step_timer()
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=list(callbacks) + [timer])
    return timer.median_ms(skip=5)


def _timed_convert(model, **kw):
    import tfcompress as tc

    t0 = time.perf_counter()
    buf = tc.convert(model, progress=False, **kw).model_bytes
    return buf, time.perf_counter() - t0


def compare(name: str) -> dict:
    import keras

    from tfcompress import benchmark, channel_pruning, inspector, post_training, pruning, quantization

    model, x, y, xt, yt, from_logits, source = _network(name)
    calib = x[:100 if FLAGS.quick else 500]
    epochs = 1 if FLAGS.quick else 3
    lr = 1e-4 if name != "mnist_cnn" else 3e-4
    steps = int(np.ceil(len(x) / 32)) * epochs
    schedule = dict(initial_sparsity=0.0, final_sparsity=0.75, begin_step=0,
                    end_step=max(1, int(steps * 2 / 3)), frequency=max(1, steps // 20))
    rows, files = {}, {}

    def add(row_name, buf, conv_s, step_ms=None, **extra):
        files[row_name] = buf
        rows[row_name] = dict({"conversion_s": conv_s, "step_ms": step_ms}, **extra)
        print(f"  {name}: {row_name} done")

    add("float", *_timed_convert(model, mode="float32"),
        keras_accuracy=_common.keras_accuracy(model, xt, yt))
    t0 = time.perf_counter()
    add("plain PTQ", _common.plain_int8(model, calib), time.perf_counter() - t0)
    t0 = time.perf_counter()
    ptq = post_training.post_training_quantize(model, calib, progress=False)
    add("tfcompress PTQ", *_timed_convert(ptq), calibration_s=time.perf_counter() - t0)

    fit_args = dict(from_logits=from_logits, epochs=epochs, lr=lr)

    def qat_from(float_model):
        """Calibrated ranges, then QAT with frozen BatchNorm statistics."""
        q = post_training.post_training_quantize(float_model, calib, progress=False)
        return q, _fit(q, x, y, callbacks=[quantization.FreezeBatchNormStatistics(0)],
                       **fit_args)

    def prune_then_qat(wrapped):
        """Fine-tunes a pruning model, strips it, then QAT: (qat, stripped, step ms)."""
        step = _fit(wrapped, x, y, callbacks=[pruning.UpdatePruningStep()], **fit_args)
        stripped = pruning.strip_pruning(wrapped)
        q, qat_step = qat_from(stripped)
        return q, stripped, step + qat_step

    keras.utils.set_random_seed(FLAGS.seed)
    qat, step = qat_from(model)
    add("tfcompress QAT", *_timed_convert(qat), step)

    keras.utils.set_random_seed(FLAGS.seed)
    # A copy: pruning wraps (and prunes) the layers it is given, as tfmot does, and the
    # channel rows below start from the unpruned network.
    own = keras.models.clone_model(model)
    own.set_weights(model.get_weights())
    q, stripped, step = prune_then_qat(pruning.prune_low_magnitude(
        own, pruning_schedule=pruning.PolynomialDecay(**schedule)))
    add("tfcompress prune + QAT", *_timed_convert(q), step,
        sparsity=pruning.sparsity_report(stripped).total_sparsity)

    keras.utils.set_random_seed(FLAGS.seed)
    ch_schedule = pruning.PolynomialDecay(0.0, 0.5 if name != "mobilenetv2" else 0.25,
                                          begin_step=0, end_step=schedule["end_step"],
                                          frequency=schedule["frequency"])
    try:
        q, small, step = prune_then_qat(
            channel_pruning.prune_channels(model, pruning_schedule=ch_schedule))
        add("tfcompress channels + QAT", *_timed_convert(q), step,
            params_ratio=small.count_params() / model.count_params())
    except ValueError as e:
        rows["tfcompress channels + QAT"] = {"error": str(e)[:300]}

    if FLAGS.tfmot and FLAGS.quick and name == "mobilenetv2":
        rows.update({n: {"error": "not run in --quick (about 5 more minutes): run the full mode"}
                     for n in TFMOT_ROWS})
    elif FLAGS.tfmot:
        rows.update(_tfmot(model, x, y, calib, source, from_logits, epochs, lr, schedule, files))

    # Accuracy, size, and latency of every file of this network, interleaved in one run.
    for row_name, buf in files.items():
        r = rows[row_name]
        r["accuracy"] = _common.int8_accuracy(buf, xt, yt)
        r["accuracy_reference"] = _common.int8_accuracy(buf, xt, yt, xnnpack=False)
        r["size_bytes"], r["gzip_bytes"] = len(buf), inspector.gzip_size(buf)
    runs = 100 if FLAGS.quick else 300
    for threads, cpus in ((1, [1]), (2, None)):
        stats = benchmark.measure_latency(files, runs=runs, num_threads=threads, cpus=cpus)
        for row_name, s in stats.items():
            rows[row_name][f"p50_ms_{threads}t"] = s.p50_ms
            rows[row_name][f"ratio_{threads}t"] = benchmark.paired_ratio(s, stats["float"])
    return {"network": name, "train_images": len(x), "test_images": len(xt),
            "epochs_per_stage": epochs, "lr": lr, "schedule": schedule, "runs": runs,
            "rows": rows}


TFMOT_ROWS = ("tfmot QAT", "tfmot prune + PTQ", "tfmot prune + PQAT")


def _tfmot(model, x, y, calib, source, from_logits, epochs, lr, schedule, files) -> dict:
    import importlib.util

    names = TFMOT_ROWS
    if importlib.util.find_spec("tensorflow_model_optimization") is None:
        return {n: {"error": "not run: pip install -e '.[benchmark]' for tfmot"} for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/data.npz", x=x, y=y, calib=calib)
        np.savez(f"{tmp}/weights.npz", *model.get_weights())
        args = dict(source, data=f"{tmp}/data.npz", weights=f"{tmp}/weights.npz", dir=tmp,
                    seed=FLAGS.seed, lr=lr, epochs=epochs, batch_size=32,
                    from_logits=from_logits, schedule=schedule)
        try:
            out = _common.run_isolated(TFMOT_SCRIPT, args, legacy_keras=True)
        except RuntimeError as e:
            return {n: {"error": str(e)[-300:]} for n in names}
        for n, r in out.items():
            if "error" not in r:
                files[n] = Path(f"{tmp}/{n}.tflite").read_bytes()
                print(f"  tfmot: {n} done")
    return out


COLUMNS = ("row", "top-1 XNNPACK", "top-1 ref", "size KB", "gzip KB", "p50 1t ms", "x float 1t",
           "p50 2t ms", "x float 2t", "convert s", "step ms")


def _table(result: dict) -> list:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"### {result['network']} ({result['train_images']} train / "
             f"{result['test_images']} test images, {result['epochs_per_stage']} epoch(s) per "
             f"stage, {result['runs']} interleaved runs)", ""]
    body = []
    for name, r in result["rows"].items():
        if "error" in r:
            body.append((name, f"not available: {r['error'][:120]}") + ("",) * (len(COLUMNS) - 2))
            continue
        body.append((name, f(100 * r["accuracy"], ".2f"), f(100 * r["accuracy_reference"], ".2f"),
                     f(r["size_bytes"] / 1024, ".1f"), f(r["gzip_bytes"] / 1024, ".1f"),
                     f(r["p50_ms_1t"], ".4f"), f(r["ratio_1t"], ".3f"), f(r["p50_ms_2t"], ".4f"),
                     f(r["ratio_2t"], ".3f"), f(r["conversion_s"], ".2f"), f(r["step_ms"], ".1f")))
    return lines + _common.table(COLUMNS, body) + [""]


def _plot(result: dict, path: Path) -> None:
    from tfcompress.report import tradeoff_plot

    ok = [(n, r) for n, r in result["rows"].items() if "error" not in r]
    float_row = result["rows"]["float"]
    tradeoff_plot(path, [(r["ratio_1t"], 100 * r["accuracy"]) for _, r in ok], [n for n, _ in ok],
                  xlabel="XNNPACK latency, 1 thread, relative to the float .tflite (same run)",
                  ylabel="top-1 accuracy on the test images (%)",
                  title=f"{result['network']}: accuracy vs latency",
                  reference=(1.0, 100 * float_row["accuracy"]), overwrite=True)


def main(argv):
    del argv
    results, lines = {"quick": FLAGS.quick, "networks": {}}, []
    t0 = time.perf_counter()
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in FLAGS.models:
        print(f"{name}...")
        r = compare(name)
        results["networks"][name] = r
        lines += _table(r)
        _plot(r, out.with_name(f"{out.stem}_{name}.png"))
    results["seconds"] = time.perf_counter() - t0
    lines.append(f"Total time: {results['seconds'] / 60:.1f} min"
                 f"{' (--quick)' if FLAGS.quick else ''}.")
    _common.write_results(out, results, lines)


if __name__ == "__main__":
    app.run(main)
