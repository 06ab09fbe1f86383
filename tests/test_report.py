"""Tables, CSV, the Pareto front and the plots shared by benchmarks and reports."""

import pytest

from tfcompress import report


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10, 0.90), (5, 0.85), (5, 0.80), (20, 0.90), (30, 0.95), (1, 0.10)]
    assert report.pareto_front(pts) == [5, 1, 0, 4]
    assert report.pareto_front([(1, 1), (1, 1)]) == [0, 1]  # ties dominate nothing


def test_csv_and_markdown():
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert report.csv_text(rows) == "a,b\n1,x\n2,y\n"
    assert report.csv_text([]) == ""
    assert report.markdown_table(("a",), [(1,)]).splitlines() == ["| a |", "|---|", "| 1 |"]


def test_plots_are_pngs_and_refuse_to_overwrite(tmp_path):
    p = report.tradeoff_plot(tmp_path / "t.png", [(1, 0.5), (2, 0.9), (3, 0.8)], ["a", "b", "c"],
                             xlabel="size (KB)", ylabel="accuracy (%)", title="t", chosen=1,
                             reference=(4, 0.92), budget=0.85)
    assert p.read_bytes()[:4] == b"\x89PNG"
    b = report.bar_chart(tmp_path / "b.png", ["m1", "m2"], {"s": [1.0, float("nan")]},
                         xlabel="ms", title="b")
    assert b.stat().st_size > 1000
    with pytest.raises(FileExistsError):
        report.tradeoff_plot(tmp_path / "t.png", [(1, 1)], ["a"], xlabel="x", ylabel="y", title="t")


def test_html_report_is_self_contained_and_matches_the_markdown(tmp_path):
    png = report.dot_chart(tmp_path / "acc.png", ["original", "int8 file"], [99.44, 99.17],
                           xlabel="top-1 (%)", title="accuracy")
    doc = report.Document("Compression report: <demo>")
    doc.paragraph("The int8 file is `small`.")
    doc.markdown_table(report.markdown_table(("stage", "top-1"), [("original", "99.44%")]))
    doc.image(png, "accuracy after each stage")
    doc.code('{"a": 1}', "json")
    md = doc.save(tmp_path)
    assert md.name == "report.md" and "![accuracy after each stage](acc.png)" in md.read_text()
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "&lt;demo&gt;" in page
    assert "<code>small</code>" in page and "<td>99.44%</td>" in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page  # embedded, not linked
    assert "acc.png" not in page and "http" not in page.replace("http-equiv", "")
    with pytest.raises(FileExistsError):
        doc.save(tmp_path)
    doc.save(tmp_path, overwrite=True)


def _xlim_at_save(monkeypatch):
    captured = []
    real = report._save
    monkeypatch.setattr(report, "_save", lambda fig, *a: captured.append(fig.axes[0].get_xlim())
                        or real(fig, *a))
    return captured


def test_dot_chart_axis_is_scaled_to_the_values(tmp_path, monkeypatch):
    captured = _xlim_at_save(monkeypatch)
    report.dot_chart(tmp_path / "d.png", ["a", "b"], [99.17, 99.44], xlabel="%", title="t")
    (lo, hi), = captured
    assert 98.5 < lo < 99.17 and 99.44 < hi < 100  # not 0-100: a 0.3-point gap stays visible


def test_bar_chart_axis_follows_small_values(tmp_path, monkeypatch):
    """Sparsity below 1% is drawn on a 0-1% axis, not on 0-100%."""
    captured = _xlim_at_save(monkeypatch)
    report.bar_chart(tmp_path / "s.png", ["conv1", "conv2"], {"zero weights (%)": [0.4, 0.9]},
                     xlabel="%", title="sparsity")
    assert captured[0][1] < 1.5


@pytest.mark.parametrize("tensor,known,expected", [
    ("small_cnn_1/small_cnn_1/quant_conv1_1/convolution;x/y", ["conv1", "quant_conv1"], "conv1"),
    ("small_cnn_1/small_cnn_1/conv3_1/convolution", ["conv3"], "conv3"),
    ("model/quant_conv1_1_1/Relu", ["conv1", "conv1_1"], "conv1_1"),  # a user's own "_1"
    ("functional_1/dense_3_1/MatMul", [], "dense_3"),
    ("serving_default_x:0", ["conv1"], "serving_default_x:0"),
])
def test_user_layer_name_maps_tflite_tensors_to_keras_layers(tensor, known, expected):
    assert report.user_layer_name(tensor, known) == expected


def test_latency_text_says_when_a_difference_is_within_noise():
    lat = {"float_ms": 0.0125, "int8_ms": 0.0123, "ratio": 0.99, "runs": 5000, "num_threads": 1,
           "ratio_ci95": (0.985, 0.995), "noise_ratio": 0.98, "noise_ci95": (0.975, 0.985),
           "within_noise": True}
    text = report.latency_text(lat)
    assert "12.3 us against 12.5 us" in text and "within noise" in text and "5000" in text
