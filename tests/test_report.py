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
