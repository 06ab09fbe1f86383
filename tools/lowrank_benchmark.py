"""Measures the low-rank target on real MNIST; writes JSON and a markdown table.

Target (issue "Distillation and low-rank factorization"): an MNIST MLP
(784-512-512-10) whose Dense layers are factored to at most 1/3 of their parameters
loses at most 0.5 pp of test accuracy after one epoch of fine-tuning. Also reported:
MACs, int8 size and XNNPACK latency (one pinned core) before and after, and the
variant that factors the 512x10 head too.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/lowrank_benchmark.py \
        --out=results/lowrank.json [--quick]
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
FLAGS = flags.FLAGS


def main(argv):
    del argv
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
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    rows = [("float MLP 784-512-512-10", pct(results["float_accuracy"]))]
    for variant in ("hidden", "all"):
        r = results[variant]
        rows.append((f"factored ({variant}): Dense params kept", f"{r['dense_params_ratio']:.3f}"))
        rows.append((f"factored ({variant}): acc before / after 1 epoch",
                     f"{pct(r['accuracy_before_finetune'])} / {pct(r['accuracy_after_1_epoch'])} "
                     f"(drop {r['drop_pp']:.2f} pp)"))
        rows.append((f"factored ({variant}): MACs", f"{r['macs'][0]} -> {r['macs'][1]}"))
        rows.append((f"factored ({variant}): int8 XNNPACK latency ratio",
                     f"{results['latency_ratio'][variant]:.3f}x"))
    _common.write_results(Path(FLAGS.out), results, _common.table(("measure", "value"), rows))


if __name__ == "__main__":
    app.run(main)
