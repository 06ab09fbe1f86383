"""The recipe-search target on ResNet-8; writes JSON, a markdown table and the search report.

Target (issue "One-command compression pipeline"): MLPerf Tiny ResNet-8 on the
CIFAR-10 subset with a 1 pp budget: the chosen recipe's int8 file at most 0.20x the
float .tflite size and at most 0.25x its XNNPACK latency, within the budget on the
1000 test images.

The search chooses on a validation split of the 4000 training images (10%); the test
images only give the reported numbers. Latency ratios come from one interleaved run
pinned to core 1.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/search_benchmark.py \
        --out=results/search.json [--epochs=6] [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

flags.DEFINE_string("out", "results/search.json", "JSON output; .md beside it, report in <out>_report/.")
flags.DEFINE_integer("epochs", 6, "Fine-tuning epochs per training step.")
flags.DEFINE_float("budget", 0.01, "Largest accuracy drop (fraction).")
flags.DEFINE_string("objective", "latency", "size | latency")
flags.DEFINE_float("learning_rate", 3e-4, "Learning rate of the pruning fine-tuning.")
flags.DEFINE_float("qat_learning_rate", 1e-5, "Learning rate of QAT.")
flags.DEFINE_float("alpha", 0.0, "Weight of the label loss; the rest is distillation at T=4.")
flags.DEFINE_string("augment", "flip_and_shift", "Augmentation of the fine-tuning images ('' for none).")
flags.DEFINE_bool("reconstruct", False, "Channel families remove channels at once and refit by least squares.")
flags.DEFINE_bool("quick", False, "One epoch, two channel ratios (a smoke run).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tfcompress as tc
    from tfcompress import recipe

    cifar, model = _common.cifar_and_resnet8()
    epochs = 1 if FLAGS.quick else FLAGS.epochs
    candidates = None
    if FLAGS.quick:
        q = recipe.Quantize(epochs=1)
        candidates = [[recipe.Recipe(quantize=q, name="qat")],
                      [recipe.Recipe(prune=recipe.Prune(kind="channels", sparsity=r, epochs=1),
                                     quantize=q, distill=recipe.Distill(), name=f"channels {r}")
                       for r in (0.25, 0.5)]]
    t0 = time.perf_counter()
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    found = tc.search(model, cifar, budget=FLAGS.budget, objective=FLAGS.objective,
                      epochs=epochs, candidates=candidates, runs=300, cpus=[1],
                      learning_rate=FLAGS.learning_rate, augment=FLAGS.augment or None,
                      candidate_options=None if FLAGS.quick else {
                          "qat_learning_rate": FLAGS.qat_learning_rate,
                          "reconstruct": FLAGS.reconstruct,
                          "distill": recipe.Distill(temperature=4.0, alpha=FLAGS.alpha)},
                      output_dir=out.with_name(out.stem + "_report"), overwrite=True)
    chosen = found.chosen_trial
    result = found.to_dict()
    result["seconds"] = time.perf_counter() - t0
    result["targets"] = {
        "size_ratio_max": 0.20, "latency_ratio_max": 0.25, "budget_pp": 100 * FLAGS.budget,
        "chosen": None if chosen is None else chosen["name"],
        "chosen_test_drop_pp": None if chosen is None else
        100 * (found.float_test_accuracy - chosen["test_accuracy"]),
        "met": chosen is not None and chosen["size_ratio"] <= 0.20
        and chosen["latency_ratio"] <= 0.25
        and found.float_test_accuracy - chosen["test_accuracy"] <= FLAGS.budget,
    }
    lines = [found.table(), "", f"targets: {result['targets']}",
             f"time: {result['seconds'] / 60:.1f} min, {epochs} epoch(s) per step"]
    _common.write_results(out, result, lines)


if __name__ == "__main__":
    app.run(main)
