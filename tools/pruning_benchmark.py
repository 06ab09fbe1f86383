"""Measures the pruning targets on real data; writes JSON and a markdown table.

Targets (issue "Pruning on Keras 3"):
* MNIST small CNN: 80% unstructured sparsity costs at most 0.3 pp of test accuracy,
  and the pruned int8 `.tflite` gzips to at most 0.35x the unpruned int8 `.tflite`;
* Fashion-MNIST, the same run with tfmot (own process, TF_USE_LEGACY_KERAS=1,
  tf_keras), same architecture, starting weights, schedule, epochs and seed: our
  accuracy at least tfmot's minus 0.1 pp, our training step time at most 1.1x tfmot's;
* MLPerf Tiny ResNet-8 with 50% of the channels removed and fine-tuned on the
  4000-image CIFAR-10 subset: int8 XNNPACK latency at most 0.6x the unpruned int8
  model; accuracy drop on the 1000 test images reported (goal: at most 2 pp);
* 2:4 sparsity survives conversion (checked on the `.tflite`).

Usage:
    .venv/bin/pip install -e ".[benchmark]"   # tfmot + tf-keras, for the baseline
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/pruning_benchmark.py \
        --out=results/pruning.json [--quick] [--parts=mnist,fashion,two_four,resnet8]
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

flags.DEFINE_string("out", "results/pruning.json", "JSON output; a .md table is written beside it.")
flags.DEFINE_bool("quick", False, "Fewer epochs (a smoke run, not the reported numbers).")
flags.DEFINE_list("parts", ["mnist", "fashion", "two_four", "resnet8"], "What to measure.")
flags.DEFINE_integer("seed", 0, "Random seed shared by our run and the tfmot run.")
flags.DEFINE_integer("runs", 300, "Timed rounds per model for latency.")
flags.DEFINE_float("temperature", 4.0, "Distillation temperature for the ResNet-8 fine-tuning.")
flags.DEFINE_integer("resnet_epochs", 30, "Fine-tuning epochs of the channel-pruned ResNet-8.")
flags.DEFINE_bool("mixup", True, "Distil on mixup blends of the training images too.")
FLAGS = flags.FLAGS

TFMOT_SCRIPT = _common.TFMOT_PREAMBLE + '''
schedule = tfmot.sparsity.keras.PolynomialDecay(**a["schedule"])
pruned = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule)
compile_model(keras, pruned, a["lr"])

timer = StepTimer()
pruned.fit(d["x_train"], d["y_train"], batch_size=a["batch_size"], epochs=a["epochs"],
           verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), timer])
stripped = tfmot.sparsity.keras.strip_pruning(pruned)
logits = stripped.predict(d["x_test"], batch_size=256, verbose=0)
np.savez(a["out_weights"], *stripped.get_weights())
kernels = [w for w in stripped.get_weights() if w.ndim > 1]
# The same fit without pruning: how much of the step is tf_keras itself.
plain = build(keras)
plain.set_weights(list(np.load(a["weights"]).values()))
compile_model(keras, plain, a["lr"])
plain_timer = StepTimer()
plain.fit(d["x_train"], d["y_train"], batch_size=a["batch_size"], epochs=a["epochs"],
          verbose=0, callbacks=[plain_timer])
print(json.dumps({
    "plain_step_ms": 1e3 * float(np.median(plain_timer.times[10:])),
    "accuracy": float(np.mean(np.argmax(logits, -1) == d["y_test"])),
    "step_ms": 1e3 * float(np.median(timer.times[10:])),
    "sparsity": float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels)),
    "tf_keras": tf_keras.__version__,
}))
'''


def _schedule(steps_per_epoch: int, epochs: int, final: float) -> dict:
    # Reach the final sparsity after two thirds of the fine-tuning; recompute masks
    # every 100 steps (tfmot's tutorial settings).
    return {"initial_sparsity": 0.0, "final_sparsity": final, "begin_step": 0,
            "end_step": max(1, int(steps_per_epoch * epochs * 2 / 3)), "frequency": 100}


def _int8(model, x_calib):
    import tfcompress as tc

    return tc.convert(model, representative_data=x_calib[:500], progress=False).model_bytes


def unstructured(name: str, *, with_tfmot: bool) -> dict:
    import keras

    from tfcompress import inspector, pruning

    build, compile_model = _common.arch()
    x, y, xt, yt = _common.load_images(name)
    base_epochs, prune_epochs = (1, 1) if FLAGS.quick else (4, 3)
    batch_size, lr = 128, 1e-3
    keras.utils.set_random_seed(FLAGS.seed)
    base = build(keras)
    compile_model(keras, base, lr)
    base.fit(x, y, batch_size=batch_size, epochs=base_epochs, verbose=0)
    base_weights = [w.copy() for w in base.get_weights()]
    steps = int(np.ceil(len(x) / batch_size))
    sched = _schedule(steps, prune_epochs, 0.8)

    keras.utils.set_random_seed(FLAGS.seed)
    # A copy: pruning wraps (and prunes) the layers it is given, as tfmot does, and `base`
    # stays the unpruned reference measured below.
    own = keras.models.clone_model(base)
    own.set_weights(base.get_weights())
    pruned = pruning.prune_low_magnitude(own, pruning_schedule=pruning.PolynomialDecay(**sched))
    compile_model(keras, pruned, lr)
    timer = _common.step_timer()
    pruned.fit(x, y, batch_size=batch_size, epochs=prune_epochs, verbose=0,
               callbacks=[pruning.UpdatePruningStep(), timer])
    stripped = pruning.strip_pruning(pruned)

    # The unpruned model trained for as many epochs in total, for an honest reference.
    longer = build(keras)
    longer.set_weights(base_weights)
    compile_model(keras, longer, lr)
    plain_timer = _common.step_timer()
    longer.fit(x, y, batch_size=batch_size, epochs=prune_epochs, verbose=0, callbacks=[plain_timer])

    base_int8, ours_int8 = _int8(base, x), _int8(stripped, x)
    r = {
        "dataset": name, "base_epochs": base_epochs, "prune_epochs": prune_epochs,
        "schedule": sched,
        "float_unpruned": _common.keras_accuracy(base, xt, yt),
        "float_unpruned_same_total_epochs": _common.keras_accuracy(longer, xt, yt),
        "float_pruned": _common.keras_accuracy(stripped, xt, yt),
        "int8_unpruned": _common.int8_accuracy(base_int8, xt, yt),
        "int8_pruned": _common.int8_accuracy(ours_int8, xt, yt),
        "sparsity": pruning.sparsity_report(stripped).total_sparsity,
        "tflite_zero_fraction": inspector.inspect(ours_int8).zero_weight_fraction,
        "int8_bytes_unpruned": len(base_int8), "int8_bytes_pruned": len(ours_int8),
        "int8_gzip_unpruned": inspector.gzip_size(base_int8),
        "int8_gzip_pruned": inspector.gzip_size(ours_int8),
        "step_ms": timer.median_ms(),
        "plain_step_ms": plain_timer.median_ms(),
    }
    r["gzip_ratio"] = r["int8_gzip_pruned"] / r["int8_gzip_unpruned"]
    r["gzip_ratio_random_sparse_kernels"] = _deflate_bound(base, 0.8, FLAGS.seed)
    r["drop_pp_float"] = 100 * (r["float_unpruned"] - r["float_pruned"])
    r["drop_pp_int8"] = 100 * (r["int8_unpruned"] - r["int8_pruned"])
    if with_tfmot:
        r["tfmot"] = _tfmot_run(x, y, xt, yt, base_weights, sched, prune_epochs, batch_size, lr)
        r["accuracy_minus_tfmot_pp"] = 100 * (r["float_pruned"] - r["tfmot"]["accuracy"])
        r["int8_accuracy_minus_tfmot_pp"] = 100 * (r["int8_pruned"] - r["tfmot"]["int8_accuracy"])
        r["step_time_over_tfmot"] = r["step_ms"] / r["tfmot"]["step_ms"]
        if "plain_step_ms" in r["tfmot"]:
            # Split the ratio: Keras 3 against tf_keras without pruning, and what each
            # pruning wrapper adds to its own framework's plain step.
            r["plain_step_keras3_over_tf_keras"] = r["plain_step_ms"] / r["tfmot"]["plain_step_ms"]
            r["pruning_overhead_ours"] = r["step_ms"] / r["plain_step_ms"]
            r["pruning_overhead_tfmot"] = r["tfmot"]["step_ms"] / r["tfmot"]["plain_step_ms"]
        if "int8_gzip" in r["tfmot"]:
            r["tfmot"]["gzip_ratio"] = r["tfmot"]["int8_gzip"] / r["int8_gzip_unpruned"]
    return r


def _deflate_bound(model, sparsity: float, seed: int) -> float:
    """gzip ratio of the model's int8 kernels with a random ``sparsity`` share zeroed.

    The kernels are quantized as TFLite does (symmetric, per output channel) and
    concatenated; only weights, no flatbuffer. Random positions compress at least as
    well as magnitude-pruned ones (whose survivors are the large values), so this is
    what DEFLATE can give for this model at this sparsity, whoever prunes it.
    """
    import gzip

    rng = np.random.default_rng(seed)
    dense = []
    for w in model.get_weights():
        if w.ndim < 2:
            continue
        flat = w.reshape(-1, w.shape[-1])
        scale = np.abs(flat).max(0, keepdims=True) / 127.0
        dense.append(np.round(flat / np.where(scale > 0, scale, 1)).astype(np.int8).ravel())
    dense = np.concatenate(dense)
    sparse = np.where(rng.random(dense.size) < sparsity, 0, dense).astype(np.int8)
    size = lambda a: len(gzip.compress(a.tobytes(), compresslevel=9, mtime=0))  # noqa: E731
    return size(sparse) / size(dense)


def _tfmot_run(x, y, xt, yt, weights, sched, epochs, batch_size, lr) -> dict:
    import keras

    try:
        import importlib.util

        if importlib.util.find_spec("tensorflow_model_optimization") is None:
            return {"error": "tensorflow-model-optimization not installed (pip install -e .[benchmark])"}
    except ImportError:  # pragma: no cover
        return {"error": "tfmot unavailable"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "data.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
        np.savez(tmp / "weights.npz", *weights)
        out = _common.run_isolated(TFMOT_SCRIPT, {
            "data": str(tmp / "data.npz"), "weights": str(tmp / "weights.npz"),
            "out_weights": str(tmp / "tfmot_weights.npz"), "seed": FLAGS.seed,
            "schedule": sched, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        }, legacy_keras=True)
        build, _ = _common.arch()
        model = build(keras)
        model.set_weights(list(np.load(tmp / "tfmot_weights.npz").values()))
    tfmot_int8 = _int8(model, x)
    out["int8_accuracy"] = _common.int8_accuracy(tfmot_int8, xt, yt)
    # The same converter on tfmot's pruned weights: is the gzip ratio a property of
    # our pruning or of DEFLATE on 80%-sparse int8 weights?
    from tfcompress import inspector

    out["int8_gzip"] = inspector.gzip_size(tfmot_int8)
    return out


def two_four() -> dict:
    import keras

    from tfcompress import inspector, pruning

    build, compile_model = _common.arch()
    x, y, xt, yt = _common.load_images("mnist")
    keras.utils.set_random_seed(FLAGS.seed)
    base = build(keras)
    compile_model(keras, base, 1e-3)
    base.fit(x, y, batch_size=128, epochs=1 if FLAGS.quick else 2, verbose=0)
    # 2:4 on the layers whose input channels are a multiple of 4 (not the first conv).
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for layer in base.layers:
        clone = type(layer).from_config(layer.get_config())
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.kernel.shape[-2] % 4 == 0:
            clone = pruning.prune_low_magnitude(
                clone, sparsity_m_by_n=(2, 4),
                # Batch k sees step k (1, 2, ...), as in tfmot: every step keeps the pattern.
                pruning_schedule=pruning.ConstantSparsity(0.5, begin_step=0, frequency=1))
        h = clone(h)
        (clone.layer if isinstance(clone, pruning.PruneLowMagnitude) else clone).set_weights(
            layer.get_weights())
    model = keras.Model(inputs, h)
    compile_model(keras, model, 1e-3)
    model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    stripped = pruning.strip_pruning(model)
    int8 = _int8(stripped, x)
    check = inspector.check_sparsity_m_by_n(int8, n=2, m=4)
    return {"checked_tensors": [list(t) for t in check.tensors], "ok": check.ok,
            "float_unpruned": _common.keras_accuracy(base, xt, yt),
            "int8_2_4": _common.int8_accuracy(int8, xt, yt)}


def resnet8() -> dict:
    import keras

    import tfcompress as tc
    from tfcompress import benchmark, channel_pruning, pruning

    cifar, original = _common.cifar_and_resnet8()
    x, y = cifar.x_train.astype("float32"), cifar.y_train.astype("int64")
    xt, yt = cifar.x_test.astype("float32"), cifar.y_test.astype("int64")
    epochs = 3 if FLAGS.quick else FLAGS.resnet_epochs
    prune_epochs = max(1, epochs // 3)
    batch_size = 32
    steps = int(np.ceil(len(x) / batch_size))
    keras.utils.set_random_seed(FLAGS.seed)
    frequency = max(1, steps // 2)
    schedule = pruning.PolynomialDecay(0.0, 0.5, begin_step=0, frequency=frequency,
                                       end_step=frequency * 2 * prune_epochs)
    model = channel_pruning.prune_channels(original, pruning_schedule=schedule, criterion="l2")
    lr = keras.optimizers.schedules.CosineDecay(5e-4, decay_steps=steps * epochs, alpha=0.02)
    alpha = 0.0 if FLAGS.mixup else 0.1
    model.compile(keras.optimizers.Adam(lr), loss=_common.distillation_loss(FLAGS.temperature, alpha))
    rng = np.random.default_rng(FLAGS.seed)
    callback = pruning.UpdatePruningStep()
    t0 = time.perf_counter()
    onehot = np.eye(10, dtype="float32")[y]
    for _ in range(epochs):
        xa = _common.augment(x, rng)
        if FLAGS.mixup:  # blends carry no single label: the teacher's answer is the target
            lam = rng.beta(0.4, 0.4, size=(len(xa), 1, 1, 1)).astype("float32")
            xa = lam * xa + (1 - lam) * xa[rng.permutation(len(xa))]
        # Hinton distillation from the unpruned network on the same augmented images.
        teacher = original.predict(xa, batch_size=256, verbose=0)
        model.fit(xa, np.concatenate([onehot, teacher], -1), batch_size=batch_size, epochs=1,
                  verbose=0, callbacks=[callback])
    train_s = time.perf_counter() - t0
    small = pruning.strip_pruning(model)
    base_int8 = tc.convert(original, representative_data=x[:500], progress=False).model_bytes
    small_int8 = tc.convert(small, representative_data=x[:500], progress=False).model_bytes
    lat = {}
    for threads in (1, 2):
        stats = benchmark.measure_latency({"unpruned": base_int8, "pruned": small_int8},
                                          runs=FLAGS.runs, num_threads=threads,
                                          cpus=[1] if threads == 1 else None)
        lat[threads] = {k: v.p50_ms for k, v in stats.items()}
    r = {
        "epochs": epochs, "prune_epochs": prune_epochs, "train_seconds": train_s,
        "distillation": {"temperature": FLAGS.temperature, "alpha_hard": alpha,
                         "mixup": FLAGS.mixup},
        "params_unpruned": original.count_params(), "params_pruned": small.count_params(),
        "filters": {l.name: l.filters for l in small.layers if hasattr(l, "filters")},
        "float_unpruned": _common.keras_accuracy(original, xt, yt),
        "float_pruned": _common.keras_accuracy(small, xt, yt),
        "int8_unpruned_xnnpack": _common.int8_accuracy(base_int8, xt, yt),
        "int8_pruned_xnnpack": _common.int8_accuracy(small_int8, xt, yt),
        "int8_pruned_reference": _common.int8_accuracy(small_int8, xt, yt, xnnpack=False),
        "int8_bytes": {"unpruned": len(base_int8), "pruned": len(small_int8)},
        "latency_ms_p50": lat,
        "latency_ratio_1_thread": lat[1]["pruned"] / lat[1]["unpruned"],
        "latency_ratio_2_threads": lat[2]["pruned"] / lat[2]["unpruned"],
    }
    r["drop_pp_int8"] = 100 * (r["int8_unpruned_xnnpack"] - r["int8_pruned_xnnpack"])
    return r


def main(argv):
    del argv
    results = {"quick": FLAGS.quick}
    t0 = time.perf_counter()
    if "mnist" in FLAGS.parts:
        results["mnist"] = unstructured("mnist", with_tfmot=False)
        print("mnist", results["mnist"])
    if "fashion" in FLAGS.parts:
        results["fashion"] = unstructured("fashion_mnist", with_tfmot=True)
        print("fashion", results["fashion"])
    if "two_four" in FLAGS.parts:
        results["two_four"] = two_four()
        print("two_four", results["two_four"])
    if "resnet8" in FLAGS.parts:
        results["resnet8"] = resnet8()
        print("resnet8", results["resnet8"])
    results["seconds"] = time.perf_counter() - t0

    rows = []
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    for key in ("mnist", "fashion"):
        if key in results:
            r = results[key]
            rows.append((f"{key}: 80% sparsity, float acc (unpruned -> pruned)",
                         f"{pct(r['float_unpruned'])} -> {pct(r['float_pruned'])} "
                         f"(drop {r['drop_pp_float']:.2f} pp)"))
            rows.append((f"{key}: int8 acc (unpruned -> pruned)",
                         f"{pct(r['int8_unpruned'])} -> {pct(r['int8_pruned'])}"))
            rows.append((f"{key}: unpruned trained as many epochs", pct(r["float_unpruned_same_total_epochs"])))
            rows.append((f"{key}: int8 gzip bytes (unpruned / pruned)",
                         f"{r['int8_gzip_unpruned']} / {r['int8_gzip_pruned']} = {r['gzip_ratio']:.3f}x"))
            if "gzip_ratio_random_sparse_kernels" in r:
                rows.append((f"{key}: gzip ratio of its int8 kernels alone, 80% zeroed at random",
                             f"{r['gzip_ratio_random_sparse_kernels']:.3f}x"))
            if "tfmot" in r and "error" not in r["tfmot"]:
                rows.append((f"{key}: tfmot float / int8 acc", f"{pct(r['tfmot']['accuracy'])} / "
                             f"{pct(r['tfmot']['int8_accuracy'])}"))
                rows.append((f"{key}: ours - tfmot (float, int8)",
                             f"{r['accuracy_minus_tfmot_pp']:+.2f} pp, {r['int8_accuracy_minus_tfmot_pp']:+.2f} pp"))
                rows.append((f"{key}: tfmot's pruned int8 gzip ratio (same converter)",
                             f"{r['tfmot'].get('gzip_ratio', float('nan')):.3f}x"))
                rows.append((f"{key}: step ms (ours / tfmot)",
                             f"{r['step_ms']:.2f} / {r['tfmot']['step_ms']:.2f} = {r['step_time_over_tfmot']:.3f}x"))
                if "plain_step_keras3_over_tf_keras" in r:
                    rows.append((f"{key}: unpruned step ms (Keras 3 / tf_keras)",
                                 f"{r['plain_step_ms']:.2f} / {r['tfmot']['plain_step_ms']:.2f} = "
                                 f"{r['plain_step_keras3_over_tf_keras']:.3f}x"))
                    rows.append((f"{key}: pruned / unpruned step (ours / tfmot)",
                                 f"{r['pruning_overhead_ours']:.3f}x / {r['pruning_overhead_tfmot']:.3f}x"))
            elif "tfmot" in r:
                rows.append((f"{key}: tfmot", r["tfmot"]["error"]))
    if "two_four" in results:
        r = results["two_four"]
        rows.append(("2:4 kept in the int8 .tflite", f"{r['ok']} ({len(r['checked_tensors'])} weights)"))
        rows.append(("2:4 int8 acc (dense float was)", f"{pct(r['int8_2_4'])} ({pct(r['float_unpruned'])})"))
    if "resnet8" in results:
        r = results["resnet8"]
        rows.append(("resnet8: params (unpruned -> 50% channels)",
                     f"{r['params_unpruned']} -> {r['params_pruned']}"))
        rows.append(("resnet8: int8 acc XNNPACK (unpruned -> pruned)",
                     f"{pct(r['int8_unpruned_xnnpack'])} -> {pct(r['int8_pruned_xnnpack'])} "
                     f"(drop {r['drop_pp_int8']:.2f} pp)"))
        rows.append(("resnet8: int8 XNNPACK latency ratio (1 / 2 threads)",
                     f"{r['latency_ratio_1_thread']:.3f}x / {r['latency_ratio_2_threads']:.3f}x"))
    _common.write_results(Path(FLAGS.out), results, _common.table(("measure", "value"), rows))


if __name__ == "__main__":
    app.run(main)
