import json

from tfcompress.pipeline import run_quickstart


def test_quickstart_on_digits_writes_models_and_table(tmp_path):
    result = run_quickstart(dataset="digits", epochs=2, output_dir=str(tmp_path), verbose=0)
    assert {p.name for p in tmp_path.iterdir()} == {"float.tflite", "int8.tflite", "validation.json",
                                                    "results.json"}
    float_row, int8_row, _ = result.rows
    assert int8_row["size_bytes"] < 0.5 * float_row["size_bytes"]
    assert int8_row["accuracy"] >= float_row["accuracy"] - 0.03
    assert result.validation.fully_integer
    assert "| int8 .tflite (XNNPACK) |" in result.table()
    assert json.loads((tmp_path / "results.json").read_text())["dataset"] == "digits"
