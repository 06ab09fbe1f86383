"""Measures the low-rank targets on real data; writes JSON and a markdown table.

Targets (issue "Distillation and low-rank factorization"):
* an MNIST MLP (784-512-512-10) whose Dense layers are factored to at most 1/3 of
  their parameters loses at most 0.5 pp of test accuracy after one epoch of
  fine-tuning. Also reported: MACs, int8 size and XNNPACK latency (one pinned core)
  before and after, and the variant that factors the 512x10 head too;
* MLPerf Tiny ResNet-8, spatial SVD of its 3x3 convolutions giving at least 1.5x fewer
  MACs, each pair's second layer refitted by least squares on 500 training images,
  fine-tuned on the 4000-image CIFAR-10 subset (``compress()`` with distillation
  from the original and flip-and-shift augmentation): the accuracy drop on the 1000 test
  images (goal at most 1.5 pp) and the int8 XNNPACK latency against the unfactored
  int8 model (goal at most 0.75x), both reported.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/lowrank_benchmark.py \
        --out=results/lowrank.json [--quick] [--parts=mlp,resnet8]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

flags.DEFINE_string("out", "results/lowrank.json", "JSON output; a .md table beside it.")
flags.DEFINE_bool("quick", False, "Fewer epochs (a smoke run).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_list("parts", ["mlp", "resnet8"], "What to measure.")
flags.DEFINE_float("resnet_ratio", 0.6, "Share of each factored ResNet-8 kernel's parameters kept.")
flags.DEFINE_integer("resnet_epochs", 10, "Fine-tuning epochs of the factored ResNet-8.")
flags.DEFINE_float("resnet_lr", 3e-4, "Peak learning rate of the ResNet-8 fine-tuning.")
flags.DEFINE_bool("resnet_reconstruct", True, "Refit each pair's second layer by least squares "
                  "on 500 training images before fine-tuning.")
FLAGS = flags.FLAGS


def resnet8() -> dict:
    """Spatial SVD of ResNet-8's 3x3 convolutions after the input one, then compress()."""
    import tempfile

    import numpy as np

    import tfcompress as tc
    from tfcompress import benchmark, lowrank, post_training, recipe

    cifar, model = _common.cifar_and_resnet8()
    # The input convolution (3 channels in) has almost nothing to factor, and the 64x10
    # classifier is where every class is read out: both stay whole.
    layers = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"
              and tuple(layer.kernel_size) == (3, 3) and layer.kernel.shape[2] > 3]
    small = lowrank.factorize(model, ratio=FLAGS.resnet_ratio, layers=layers)
    macs = [lowrank.count_macs(model), lowrank.count_macs(small)]
    xt, yt = cifar.x_test.astype("float32"), cifar.y_test
    calib = cifar.x_train[:500].astype("float32")  # refit and PTQ calibration images
    one_shot = _common.keras_accuracy(small, xt, yt)
    if FLAGS.resnet_reconstruct:
        lowrank.reconstruct(small, model, calib)
    reconstructed = _common.keras_accuracy(small, xt, yt)
    epochs = 1 if FLAGS.quick else FLAGS.resnet_epochs
    plan = recipe.Recipe(
        lowrank=recipe.LowRank(ratio=FLAGS.resnet_ratio, layers=layers, epochs=epochs,
                               learning_rate=FLAGS.resnet_lr,
                               reconstruct=FLAGS.resnet_reconstruct),
        distill=recipe.Distill(temperature=4.0, alpha=0.0),
        quantize=recipe.Quantize(method="ptq"), benchmark=None, name="resnet8 spatial SVD")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = tc.compress(model, cifar, recipe=plan, output_dir=f"{tmp}/out", seed=FLAGS.seed,
                             augment="flip_and_shift", verbose=0)
    seconds = time.perf_counter() - t0
    unfactored = tc.convert(post_training.post_training_quantize(model, calib, progress=False),
                            progress=False).model_bytes
    files = {"unfactored": unfactored, "factored": result.tflite}
    stats = benchmark.measure_latency(files, runs=100 if FLAGS.quick else 500, cpus=[1])
    r = {
        "layers": layers, "ratio": FLAGS.resnet_ratio, "epochs": epochs, "lr": FLAGS.resnet_lr,
        "plans": [p.__dict__ for p in small.factor_plans],
        "params": [model.count_params(), small.count_params()],
        "macs": macs, "mac_reduction": macs[0] / macs[1],
        "float_accuracy": _common.keras_accuracy(model, xt, yt),
        "accuracy_one_shot": one_shot, "reconstruct": FLAGS.resnet_reconstruct,
        "accuracy_reconstructed": reconstructed,
        "stages": list(result.summary()["stages"]),
        "int8_unfactored": _common.int8_accuracy(unfactored, xt, yt),
        "int8_factored": _common.int8_accuracy(result.tflite, xt, yt),
        "int8_factored_reference": _common.int8_accuracy(result.tflite, xt, yt, xnnpack=False),
        "int8_bytes": {k: len(v) for k, v in files.items()},
        "latency_ms_p50": {k: v.p50_ms for k, v in stats.items()},
        "latency_ratio": benchmark.paired_ratio(stats["factored"], stats["unfactored"]),
        "seconds": seconds,
    }
    finetuned = [s for s in r["stages"] if s["stage"] == "lowrank"]
    r["float_factored_finetuned"] = finetuned[-1]["accuracy"] if finetuned else float(np.nan)
    r["drop_pp_float"] = 100 * (r["float_accuracy"] - r["float_factored_finetuned"])
    r["drop_pp_int8"] = 100 * (r["int8_unfactored"] - r["int8_factored"])
    print(r, flush=True)
    return r


def mlp() -> dict:
    import keras

    import tfcompress as tc
    from tfcompress import benchmark, lowrank

    x, y, xt, yt = _common.load_images("mnist")
    x, xt = x.reshape(-1, 784), xt.reshape(-1, 784)
    keras.utils.set_random_seed(FLAGS.seed)
    inputs = keras.Input((784,))
    h = keras.layers.Dense(512, activation="relu", name="hidden_1")(inputs)
    h = keras.layers.Dense(512, activation="relu", name="hidden_2")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    epochs = 1 if FLAGS.quick else 5
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0)
    results = {"base_epochs": epochs, "float_accuracy": _common.keras_accuracy(model, xt, yt)}
    int8 = {"original": tc.convert(model, representative_data=x[:500], progress=False).model_bytes}
    for variant, layers in (("hidden", ["hidden_1", "hidden_2"]), ("all", None)):
        small = lowrank.factorize(model, ratio=1 / 3, layers=layers)
        factored_now = _common.keras_accuracy(small, xt, yt)
        small.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
        t0 = time.perf_counter()
        small.fit(x, y, batch_size=128, epochs=1, verbose=0)
        int8[variant] = tc.convert(small, representative_data=x[:500], progress=False).model_bytes
        results[variant] = {
            "plans": [p.__dict__ for p in small.factor_plans],
            "dense_params_ratio": sum(p.params_after for p in small.factor_plans)
            / sum(p.params_before for p in small.factor_plans),
            "params": [model.count_params(), small.count_params()],
            "macs": [lowrank.count_macs(model), lowrank.count_macs(small)],
            "accuracy_before_finetune": factored_now,
            "accuracy_after_1_epoch": _common.keras_accuracy(small, xt, yt),
            "finetune_seconds": time.perf_counter() - t0,
            "int8_accuracy": _common.int8_accuracy(int8[variant], xt, yt),
        }
        results[variant]["drop_pp"] = 100 * (results["float_accuracy"]
                                             - results[variant]["accuracy_after_1_epoch"])
    results["int8_original_accuracy"] = _common.int8_accuracy(int8["original"], xt, yt)
    stats = benchmark.measure_latency(int8, runs=2000, cpus=[1])
    results["latency_ms_p50"] = {k: v.p50_ms for k, v in stats.items()}
    results["latency_ratio"] = {k: benchmark.paired_ratio(stats[k], stats["original"])
                                for k in ("hidden", "all")}
    results["int8_bytes"] = {k: len(v) for k, v in int8.items()}
    return results


def main(argv):
    del argv
    results = {"quick": FLAGS.quick}
    for part in FLAGS.parts:
        results[part] = globals()[part]()
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    rows = []
    if "mlp" in results:
        m = results["mlp"]
        rows.append(("float MLP 784-512-512-10", pct(m["float_accuracy"])))
        for variant in ("hidden", "all"):
            r = m[variant]
            rows.append((f"factored ({variant}): Dense params kept", f"{r['dense_params_ratio']:.3f}"))
            rows.append((f"factored ({variant}): acc before / after 1 epoch",
                         f"{pct(r['accuracy_before_finetune'])} / "
                         f"{pct(r['accuracy_after_1_epoch'])} (drop {r['drop_pp']:.2f} pp)"))
            rows.append((f"factored ({variant}): MACs", f"{r['macs'][0]} -> {r['macs'][1]}"))
            rows.append((f"factored ({variant}): int8 XNNPACK latency ratio",
                         f"{m['latency_ratio'][variant]:.3f}x"))
    if "resnet8" in results:
        r = results["resnet8"]
        rows += [
            ("ResNet-8 spatial SVD: MACs", f"{r['macs'][0]} -> {r['macs'][1]} "
                                           f"({r['mac_reduction']:.2f}x fewer)"),
            ("ResNet-8 spatial SVD: params", f"{r['params'][0]} -> {r['params'][1]}"),
            ("ResNet-8 float: original / factored one-shot / least-squares refit / fine-tuned",
             f"{pct(r['float_accuracy'])} / {pct(r['accuracy_one_shot'])} / "
             f"{pct(r['accuracy_reconstructed']) if r['reconstruct'] else '-'} / "
             f"{pct(r['float_factored_finetuned'])} (drop {r['drop_pp_float']:.2f} pp)"),
            ("ResNet-8 int8 XNNPACK: unfactored / factored (reference)",
             f"{pct(r['int8_unfactored'])} / {pct(r['int8_factored'])} "
             f"({pct(r['int8_factored_reference'])}; drop {r['drop_pp_int8']:.2f} pp)"),
            ("ResNet-8 int8 XNNPACK latency, factored / unfactored (1 pinned core)",
             f"{r['latency_ratio']:.3f}x ({r['latency_ms_p50']['factored']:.4f} / "
             f"{r['latency_ms_p50']['unfactored']:.4f} ms)"),
            ("ResNet-8 int8 bytes: unfactored / factored",
             f"{r['int8_bytes']['unfactored']} / {r['int8_bytes']['factored']}"),
        ]
    _common.write_results(Path(FLAGS.out), results, _common.table(("measure", "value"), rows))


if __name__ == "__main__":
    app.run(main)
