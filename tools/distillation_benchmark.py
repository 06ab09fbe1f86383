"""Measures the distillation target on the CIFAR-10 subset; writes JSON and markdown.

Target (issue "Distillation and low-rank factorization"): teacher MLPerf Tiny ResNet-8
(88.1% on the 1000 test images); a student CNN with at most 1/4 of its parameters,
trained on the 4000-image subset for the same epochs with and without distillation,
3 seeds each: the mean gain of distillation is at least 2 pp (mean and spread reported).

Both kinds of student see the same new flips and shifts of every image each epoch
(per image). The distilled ones learn from the teacher's softened outputs only
(``--student_loss_weight=0``): the teacher was trained on all of CIFAR-10, and on
shifted images its answers carry more than the labels of 4000 images.

The teacher reads raw 0-255 pixels and the student [0, 1]: the teacher is wrapped with
``distillation.with_preprocessing(teacher, Rescaling(255))`` so both read one batch.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/distillation_benchmark.py \
        --out=results/distillation.json [--epochs=30] [--seeds=0,1,2]
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


def train(seed: int, distil: bool, teacher, data) -> dict:
    import keras

    from tfcompress import distillation

    x, y, xt, yt = data
    keras.utils.set_random_seed(seed)
    student = student_cnn()
    steps = int(np.ceil(len(x) / 64)) * FLAGS.epochs
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps))
    ce = keras.losses.SparseCategoricalCrossentropy()
    if distil:
        model = keras.distillation.Distiller(
            teacher=distillation.with_preprocessing(teacher, keras.layers.Rescaling(255.0)),
            student=student, student_loss_weight=FLAGS.student_loss_weight,
            distillation_losses=[distillation.SoftTargetDistillation(
                temperature=FLAGS.temperature, from_logits=False)])
        model.compile(optimizer=optimizer, loss=ce)
    else:
        model = student
        model.compile(optimizer=optimizer, loss=ce)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(FLAGS.epochs):
        model.fit(_common.augment(x, rng), y, batch_size=64, epochs=1, verbose=0)
    return {"seed": seed, "distilled": distil, "seconds": time.perf_counter() - t0,
            "accuracy": _common.keras_accuracy(student, xt, yt)}


def main(argv):
    del argv
    cifar, teacher = _common.cifar_and_resnet8()
    x, xt = cifar.x_train.astype("float32") / 255.0, cifar.x_test.astype("float32") / 255.0
    d = (x, cifar.y_train.astype("int64"), xt, cifar.y_test.astype("int64"))
    params = {"teacher": teacher.count_params(), "student": student_cnn().count_params()}
    assert params["student"] <= params["teacher"] / 4, params
    runs = []
    for seed in (int(s) for s in FLAGS.seeds):
        for distil in (False, True):
            runs.append(train(seed, distil, teacher, d))
            print(runs[-1], flush=True)
    plain = np.array([r["accuracy"] for r in runs if not r["distilled"]])
    kd = np.array([r["accuracy"] for r in runs if r["distilled"]])
    results = {
        "params": params, "epochs": FLAGS.epochs, "temperature": FLAGS.temperature,
        "student_loss_weight": FLAGS.student_loss_weight, "runs": runs,
        "teacher_accuracy": _common.keras_accuracy(teacher, cifar.x_test.astype("float32"),
                                                   cifar.y_test),
        "plain_mean": float(plain.mean()), "plain_std": float(plain.std()),
        "distilled_mean": float(kd.mean()), "distilled_std": float(kd.std()),
        "gain_pp": float(100 * (kd.mean() - plain.mean())),
    }
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    rows = [("teacher ResNet-8", f"{pct(results['teacher_accuracy'])} ({params['teacher']} params)"),
            ("student params", f"{params['student']} ({params['student'] / params['teacher']:.3f}x)"),
            (f"student, labels only ({len(plain)} seeds)",
             f"{pct(plain.mean())} +- {100 * plain.std():.2f} pp"),
            (f"student, distilled T={FLAGS.temperature} ({len(kd)} seeds)",
             f"{pct(kd.mean())} +- {100 * kd.std():.2f} pp"),
            ("mean gain", f"{results['gain_pp']:+.2f} pp")]
    _common.write_results(Path(FLAGS.out), results, _common.table(("measure", "value"), rows))


if __name__ == "__main__":
    app.run(main)
