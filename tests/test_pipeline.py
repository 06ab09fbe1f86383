from tfcompress.pipeline import DEMO_RECIPE, run_demo


def test_demo_on_digits_runs_the_whole_pipeline(tmp_path):
    demo = run_demo(dataset="digits", epochs=3, output_dir=str(tmp_path / "demo"), verbose=0)
    r = demo.result
    assert demo.dataset == "digits" and r.recipe.name == DEMO_RECIPE["name"]
    assert [s["stage"] for s in r.stages] == ["original", "prune", "quantize"]
    assert r.validation.fully_integer and r.size_ratio < 0.3
    assert "| int8 .tflite |" in r.table()
    assert (tmp_path / "demo" / "report.md").exists()
