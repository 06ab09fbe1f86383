import sys

import tfcompress


def test_public_names_are_pinned():
    assert sorted(tfcompress.__all__) == sorted([
        "ConversionError", "ConversionResult", "InvalidModelError", "Thresholds",
        "ValidationReport", "benchmark", "calibration", "convert", "converter", "data",
        "inspect", "inspector", "pipeline", "runtime", "validate", "validation",
        "channel_pruning", "distillation", "lowrank", "post_training", "pruning", "quantization", "schedules",
        "default_8bit", "pruning_policy", "quantizers",
        "CompressionResult", "Recipe", "SearchResult", "android", "compress", "compression",
        "recipe", "recipe_search", "report", "search",
    ])
    for name in tfcompress.__all__:
        assert hasattr(tfcompress, name)


def test_version_is_a_string():
    assert isinstance(tfcompress.__version__, str) and tfcompress.__version__


def test_import_does_not_switch_to_tf_keras():
    import sys

    import keras

    assert keras.__version__.startswith("3.")
    assert "tensorflow_model_optimization" not in sys.modules


def test_import_tfcompress_loads_no_tensorflow_until_a_keras_module_is_used():
    import subprocess

    code = ("import sys, tfcompress\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
            "tfcompress.inspect\n"
            "assert 'tensorflow' not in sys.modules\n"
            "tfcompress.quantization\n"
            "assert 'keras' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_saved_model_loads_in_a_fresh_process_after_import_keras_then_tfcompress(tmp_path):
    import subprocess

    import keras
    import numpy as np

    from tfcompress.channel_pruning import prune_channels
    from tfcompress.quantization import quantize_model

    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
    for name, wrapped in (("qat", quantize_model(model)), ("channels", prune_channels(model))):
        wrapped.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", wrapped.predict(x, verbose=0))
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, keras, tfcompress\n"
            "d = sys.argv[1]\n"
            "for name in ('qat', 'channels'):\n"
            "    m = keras.models.load_model(f'{d}/{name}.keras')\n"
            "    np.testing.assert_allclose(m.predict(np.load(f'{d}/x.npy'), verbose=0),\n"
            "                               np.load(f'{d}/{name}.npy'), rtol=1e-5, atol=1e-6)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
