"""Measures the distillation target on the CIFAR-10 subset; writes JSON and markdown.

Target (issue "Distillation and low-rank factorization"): teacher MLPerf Tiny ResNet-8
(88.1% on the 1000 test images); a student CNN with at most 1/4 of its parameters,
trained on the 4000-image subset for the same epochs with and without distillation,
3 seeds each: the mean gain of distillation is at least 2 pp (mean and spread reported);
the distilled student, pruned to 50% and QAT-trained (both distilled) in the same run,
converts to a fully-int8 `.tflite` within 1 pp of its float accuracy.

Both kinds of student see the same new flips and shifts of every image each epoch
(per image). The distilled ones learn from the teacher's softened outputs only
(``--student_loss_weight=0``): the teacher was trained on all of CIFAR-10, and on
shifted images its answers carry more than the labels of 4000 images.

The teacher reads raw 0-255 pixels and the student [0, 1]: the teacher is wrapped with
``distillation.with_preprocessing(teacher, Rescaling(255))`` so both read one batch.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/distillation_benchmark.py \
        --out=results/distillation.json [--epochs=30] [--seeds=0,1,2] [--parts=gain,prune_qat]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

flags.DEFINE_string("out", "results/distillation.json", "JSON output; a .md table beside it.")
flags.DEFINE_integer("epochs", 30, "Training epochs of every student.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each trains one student of each kind.")
flags.DEFINE_float("temperature", 4.0, "Distillation temperature.")
flags.DEFINE_list("parts", ["gain", "prune_qat"], "gain: with / without distillation over the "
                  "seeds; prune_qat: a distilled student pruned to 50% and QAT-trained, to int8.")
flags.DEFINE_integer("prune_epochs", 10, "Distilled pruning epochs of prune_qat.")
flags.DEFINE_integer("qat_epochs", 3, "Distilled QAT epochs of prune_qat.")
flags.DEFINE_float("student_loss_weight", 0.0, "Weight of the label loss (1 - it for the teacher).")
FLAGS = flags.FLAGS


def student_cnn():
    import keras

    L = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters, stride in ((16, 1), (32, 2), (64, 1), (64, 2), (128, 1)):
        x = L.SeparableConv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x) \
            if filters != 16 else L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = L.ReLU()(L.BatchNormalization()(x))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10, activation="softmax")(x), name="student")


def _fit(student, teacher, data, *, epochs: int, lr: float, seed: int, distil: bool = True,
         callbacks=()):
    """``epochs`` of new flips and shifts, cosine-decayed Adam; distilled or on labels."""
    import keras

    from tfcompress import distillation

    x, y = data[0], data[1]
    steps = int(np.ceil(len(x) / 64)) * epochs
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(lr, steps))
    ce = keras.losses.SparseCategoricalCrossentropy()
    model = student
    if distil:
        model = keras.distillation.Distiller(
            teacher=distillation.with_preprocessing(teacher, keras.layers.Rescaling(255.0)),
            student=student, student_loss_weight=FLAGS.student_loss_weight,
            distillation_losses=[distillation.SoftTargetDistillation(
                temperature=FLAGS.temperature, from_logits=False)])
    model.compile(optimizer=optimizer, loss=ce)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.fit(_common.augment(x, rng), y, batch_size=64, epochs=1, verbose=0,
                  callbacks=list(callbacks))


def train(seed: int, distil: bool, teacher, data) -> dict:
    import keras

    keras.utils.set_random_seed(seed)
    student = student_cnn()
    t0 = time.perf_counter()
    _fit(student, teacher, data, epochs=FLAGS.epochs, lr=3e-3, seed=seed, distil=distil)
    return {"seed": seed, "distilled": distil, "seconds": time.perf_counter() - t0,
            "accuracy": _common.keras_accuracy(student, data[2], data[3]), "student": student}


def prune_qat(teacher, data) -> dict:
    """A distilled student, then 50% pruning and QAT, both distilled, then int8."""
    import keras

    import tfcompress as tc
    from tfcompress import inspector, pruning, quantization

    seed = int(FLAGS.seeds[0])
    kd = train(seed, True, teacher, data)
    student = kd.pop("student")
    epochs = FLAGS.prune_epochs
    steps = int(np.ceil(len(data[0]) / 64)) * epochs
    keras.utils.set_random_seed(seed)
    # 50% reached on a pruning turn two thirds of the way in; masks recomputed every 50 steps.
    end = max(50, int(steps * 2 / 3) // 50 * 50)
    pruned = pruning.prune_low_magnitude(student, pruning_schedule=pruning.PolynomialDecay(
        0.0, 0.5, begin_step=0, end_step=end, frequency=50))
    _fit(pruned, teacher, data, epochs=epochs, lr=1e-3, seed=seed + 1,
         callbacks=[pruning.UpdatePruningStep()])
    stripped = pruning.strip_pruning(pruned)
    qat = quantization.quantize_model(stripped)
    _fit(qat, teacher, data, epochs=FLAGS.qat_epochs, lr=1e-4, seed=seed + 2,
         callbacks=[quantization.FreezeBatchNormStatistics(0)])
    int8 = tc.convert(qat, progress=False).model_bytes
    info = inspector.inspect(int8)
    xt, yt = data[2], data[3]
    r = {"seed": seed, "distilled_float": kd["accuracy"],
         "pruned_float": _common.keras_accuracy(stripped, xt, yt),
         "sparsity": pruning.sparsity_report(stripped).total_sparsity,
         "qat_keras": _common.keras_accuracy(qat, xt, yt),
         "int8_xnnpack": _common.int8_accuracy(int8, xt, yt),
         "int8_reference": _common.int8_accuracy(int8, xt, yt, xnnpack=False),
         "non_integer_tensors": [t.name for t in info.non_integer_tensors()],
         "int8_zero_weight_fraction": info.zero_weight_fraction,
         "prune_epochs": epochs, "qat_epochs": FLAGS.qat_epochs}
    r["int8_drop_pp"] = 100 * (r["distilled_float"] - r["int8_xnnpack"])
    print(r, flush=True)
    return r


def gain(teacher, data) -> dict:
    runs = []
    for seed in (int(s) for s in FLAGS.seeds):
        for distil in (False, True):
            runs.append(train(seed, distil, teacher, data))
            runs[-1].pop("student")
            print(runs[-1], flush=True)
    plain = np.array([r["accuracy"] for r in runs if not r["distilled"]])
    kd = np.array([r["accuracy"] for r in runs if r["distilled"]])
    return {"runs": runs, "plain_mean": float(plain.mean()), "plain_std": float(plain.std()),
            "distilled_mean": float(kd.mean()), "distilled_std": float(kd.std()),
            "gain_pp": float(100 * (kd.mean() - plain.mean())), "seeds": len(plain)}


def main(argv):
    del argv
    cifar, teacher = _common.cifar_and_resnet8()
    x, xt = cifar.x_train.astype("float32") / 255.0, cifar.x_test.astype("float32") / 255.0
    d = (x, cifar.y_train.astype("int64"), xt, cifar.y_test.astype("int64"))
    params = {"teacher": teacher.count_params(), "student": student_cnn().count_params()}
    assert params["student"] <= params["teacher"] / 4, params
    results = {
        "params": params, "epochs": FLAGS.epochs, "temperature": FLAGS.temperature,
        "student_loss_weight": FLAGS.student_loss_weight,
        "teacher_accuracy": _common.keras_accuracy(teacher, cifar.x_test.astype("float32"),
                                                   cifar.y_test)}
    for part in FLAGS.parts:
        results[part] = globals()[part](teacher, d)
    _common.write_results(Path(FLAGS.out), results, _common.table(("measure", "value"),
                                                                  table_rows(results)))


def table_rows(results: dict) -> list:
    """The markdown rows of ``results`` (also to re-render a saved JSON)."""
    params = results["params"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    rows = [("teacher ResNet-8", f"{pct(results['teacher_accuracy'])} ({params['teacher']} params)"),
            ("student params", f"{params['student']} ({params['student'] / params['teacher']:.3f}x)")]
    if "gain" in results:
        g = results["gain"]
        rows += [(f"student, labels only ({g['seeds']} seeds)",
                  f"{pct(g['plain_mean'])} +- {100 * g['plain_std']:.2f} pp"),
                 (f"student, distilled T={results['temperature']} ({g['seeds']} seeds)",
                  f"{pct(g['distilled_mean'])} +- {100 * g['distilled_std']:.2f} pp"),
                 ("mean gain", f"{g['gain_pp']:+.2f} pp")]
    if "prune_qat" in results:
        r = results["prune_qat"]
        rows += [("distilled student (seed {seed}) float".format(**r), pct(r["distilled_float"])),
                 (f"+ 50% pruning, distilled ({r['prune_epochs']} epochs): float, sparsity",
                  f"{pct(r['pruned_float'])}, {r['sparsity']:.3f}"),
                 (f"+ QAT, distilled ({r['qat_epochs']} epochs): Keras QAT model", pct(r["qat_keras"])),
                 ("its int8 .tflite: XNNPACK / reference",
                  f"{pct(r['int8_xnnpack'])} / {pct(r['int8_reference'])} "
                  f"({100 * (r['int8_xnnpack'] - r['qat_keras']):+.2f} pp from the Keras model, "
                  f"{-r['int8_drop_pp']:+.2f} pp from the unpruned distilled student; "
                  f"non-integer tensors: {len(r['non_integer_tensors'])}, "
                  f"zero weights {r['int8_zero_weight_fraction']:.2f})")]
    return rows


if __name__ == "__main__":
    app.run(main)
