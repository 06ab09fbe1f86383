"""Measures the spine's targets on real data; writes JSON and a markdown table.

Targets (issue "The spine"):
* MLPerf Tiny ResNet-8 converted with 500 CIFAR-10 train images, subsets 0-499,
  500-999 and 2000-2499: int8 top-1 on the 1000 test images for tfcompress and
  for a plain TFLiteConverter call on the same subset (ours never below);
* int8 size at most 0.31x float; XNNPACK 1-thread latency at most 0.35x float
  (interleaved, median of >= 50 invocations);
* ops XNNPACK leaves to the builtin kernels, ours and the published file's;
* conversion wall time at most 1.2x a plain TFLiteConverter call;
* the Coral MobileNetV2 top-5 on the 20 sample images.

Usage:
    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python tools/spine_benchmark.py \
        --out=results/spine.json [--quick] [--runs=1000]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

flags.DEFINE_string("out", "results/spine.json", "JSON output; a .md table is written beside it.")
flags.DEFINE_integer("runs", 1000, "Timed rounds per model for latency.")
flags.DEFINE_integer("pin_cpu", 1, "Core to pin the latency measurement to; -1 to not pin.")
flags.DEFINE_bool("quick", False, "The first calibration subset only (a smoke run, not the "
                  "reported numbers).")
FLAGS = flags.FLAGS

SUBSETS = ((0, 500), (500, 1000), (2000, 2500))


def main(argv):
    del argv
    import keras

    import tfcompress as tc
    from tfcompress import benchmark, data, runtime

    root = Path(os.environ.get("TFCOMPRESS_DATA_DIR", "../shared/data"))
    h5 = root / "models" / "mlperf_tiny_resnet8_cifar10.h5"
    cifar = data.load_dataset("cifar10", data_dir=root, fallback=False)
    x_test, y_test = cifar.x_test.astype("float32"), cifar.y_test
    model = keras.models.load_model(h5, compile=False)
    results = {"quick": FLAGS.quick, "subsets": []}

    for start, stop in (SUBSETS[:1] if FLAGS.quick else SUBSETS):
        calib = cifar.x_train[start:stop]
        t0 = time.perf_counter()
        plain = _common.plain_int8(model, calib)
        plain_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = tc.convert(model, representative_data=calib, progress=False)
        ours_s = time.perf_counter() - t0
        row = {
            "subset": f"{start}-{stop - 1}",
            "plain_acc_xnnpack": _common.int8_accuracy(plain, x_test, y_test, xnnpack=True),
            "plain_acc_reference": _common.int8_accuracy(plain, x_test, y_test, xnnpack=False),
            "ours_acc_xnnpack": _common.int8_accuracy(ours.model_bytes, x_test, y_test, xnnpack=True),
            "ours_acc_reference": _common.int8_accuracy(ours.model_bytes, x_test, y_test, xnnpack=False),
            "plain_convert_s": plain_s,
            "ours_convert_s": ours_s,
            "ours_size": ours.size_bytes,
            "plain_size": len(plain),
        }
        results["subsets"].append(row)
        print(row)
        if start == 0:
            ours0, plain0 = ours, plain

    float_ours = tc.convert(model, mode="float32", progress=False).model_bytes
    published_float = (root / "models" / "mlperf_tiny_resnet8_cifar10_float.tflite").read_bytes()
    published_int8 = (root / "models" / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes()
    latency = benchmark.measure_latency({
        "float (tfcompress, batch 1)": float_ours,
        "float (published)": published_float,
        "int8 (tfcompress)": ours0.model_bytes,
        "int8 (plain converter)": plain0,
        "int8 (published)": published_int8,
    }, runs=FLAGS.runs, num_threads=1, cpus=[FLAGS.pin_cpu] if FLAGS.pin_cpu >= 0 else None)
    results["latency_1_thread"] = {k: v.p50_ms for k, v in latency.items()}
    results["size"] = {"float_tfcompress": len(float_ours), "float_published": len(published_float),
                       "int8_tfcompress": ours0.size_bytes}
    results["ratios"] = {
        "size_int8_over_float_tfcompress": ours0.size_bytes / len(float_ours),
        "size_int8_over_float_published": ours0.size_bytes / len(published_float),
        "latency_int8_over_float_tfcompress":
            latency["int8 (tfcompress)"].p50_ms / latency["float (tfcompress, batch 1)"].p50_ms,
        "latency_int8_over_float_published":
            latency["int8 (tfcompress)"].p50_ms / latency["float (published)"].p50_ms,
        # Median of per-round ratios: robust to load that comes and goes during the run.
        "latency_int8_over_float_tfcompress_paired": benchmark.paired_ratio(
            latency["int8 (tfcompress)"], latency["float (tfcompress, batch 1)"]),
        "latency_int8_over_float_published_paired": benchmark.paired_ratio(
            latency["int8 (tfcompress)"], latency["float (published)"]),
        "convert_time_ours_over_plain": float(np.median(
            [r["ours_convert_s"] / r["plain_convert_s"] for r in results["subsets"]])),
    }
    results["xnnpack"] = {
        "tfcompress_int8": runtime.delegation(ours0.model_bytes).describe(),
        "published_int8": runtime.delegation(published_int8).describe(),
    }
    x, y, _ = data.load_image_folder(root / "samples" / "imagenet_foolbox", size=(224, 224),
                                     label_regex=r"_(\d+)\.\w+$")
    coral = tc.validate(root / "models" / "coral_mobilenet_v2_1.0_224_quant.tflite", x, y=y + 1,
                        per_layer=False, progress=False)
    results["coral"] = {"top1": coral.xnnpack.accuracy, "top5": coral.xnnpack.top5_accuracy,
                        "top5_reference": coral.reference.top5_accuracy}

    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    lines = ["| subset | plain int8 (XNNPACK / ref) | tfcompress int8 (XNNPACK / ref) | convert s (plain / ours) |",
             "|---|---|---|---|"]
    for r in results["subsets"]:
        lines.append(f"| {r['subset']} | {100 * r['plain_acc_xnnpack']:.1f}% / {100 * r['plain_acc_reference']:.1f}% "
                     f"| {100 * r['ours_acc_xnnpack']:.1f}% / {100 * r['ours_acc_reference']:.1f}% "
                     f"| {r['plain_convert_s']:.2f} / {r['ours_convert_s']:.2f} |")
    lines += ["", "| model | XNNPACK 1-thread p50 (ms) |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in results["latency_1_thread"].items()]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in results["ratios"].items()]
    lines += ["", f"XNNPACK, tfcompress int8: {results['xnnpack']['tfcompress_int8']}",
              f"XNNPACK, published int8: {results['xnnpack']['published_int8']}",
              f"Coral MobileNetV2 on 20 images: top-1 {results['coral']['top1']:.2f}, "
              f"top-5 {results['coral']['top5']:.2f}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
