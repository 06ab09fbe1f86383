import tfcompress


def test_public_names_are_pinned():
    assert sorted(tfcompress.__all__) == sorted([
        "ConversionError", "ConversionResult", "InvalidModelError", "Thresholds",
        "ValidationReport", "benchmark", "calibration", "convert", "converter", "data",
        "inspect", "inspector", "pipeline", "runtime", "validate", "validation",
        "channel_pruning", "distillation", "lowrank", "post_training", "pruning", "quantization", "schedules",
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
