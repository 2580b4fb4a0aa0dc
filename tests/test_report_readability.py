"""Readable plots: a distinct look per series, labels that do not overlap, an outlier that
does not flatten every real value (it is marked instead)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

from pytest_speedbench.results import report  # noqa: E402
from pytest_speedbench.results.export import load_runs, runs_dataframe  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "fixtures" / "results"
RUN_FILES = [RESULTS / n for n in ("0001_baseline.json", "0002_noise.json", "0003_regressed.json")]
OUTLIER_CASE = "sglang-eagle3-throughput-1k-bs4-t0"


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> list[Path]:
    """The three recorded runs, the second with one implausible speedup (16.6x where the
    others sit between 1.4 and 2.3), as seen in the field."""
    doc = json.loads(RUN_FILES[1].read_text())
    for bench in doc["benchmarks"]:
        if bench["param"] == OUTLIER_CASE:
            bench["extra_info"]["speedup_user_tps"] = 16.64
            bench["extra_info"]["speedup_user_tps_ci95"] = [11.19, 27.40]
    path = tmp_path_factory.mktemp("outlier") / "0002_outlier.json"
    path.write_text(json.dumps(doc))
    return [RUN_FILES[0], path, RUN_FILES[2]]


def test_series_styles_are_pairwise_distinct():
    labels = [f"engine{i} drafter{i}" for i in range(60)]
    styles = report.series_styles(labels)
    assert len({(s["color"], s["marker"]) for s in styles.values()}) == 60
    assert len({styles[label]["color"] for label in labels[:20]}) == 20
    assert report.series_styles(["a", "b", "a"]) == report.series_styles(["a", "b"])


def test_outlier_fence():
    values = [0.3, 0.5, 0.8, 1.0, 1.1, 1.3, 16.6]
    fence = report.outlier_fence(values)
    assert fence is not None and max(values[:-1]) < fence < 16.6
    assert report.outlier_fence([1.0, 20.0]) is None  # too few values to call one an outlier
    spread = [1.2, 2.0, 3.8, 2.6]  # real spread between drafters is no outlier
    assert max(spread) <= report.outlier_fence(spread)


def test_pareto_series_look_distinct_and_labels_do_not_overlap(three_runs):
    fig = report.plot_pareto(runs_dataframe(load_runs(three_runs)))
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 18  # 3 runs x 3 drafters x 2 workloads: more than matplotlib's 10 colours
    looks = {(line.get_color(), line.get_marker()) for line in lines}
    assert len(looks) == len(lines)
    assert len({line.get_color() for line in lines}) == len(lines)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert boxes, "batch sizes are annotated"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not report._boxes_overlap(a, b, pad=0.0), (a, b)
    legend = fig.legends[0].get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))  # the legend hides no data
    assert legend.x0 >= 0 and legend.x1 <= fig.bbox.width  # and is not cut at the edges


def test_speedup_outlier_is_marked_and_keeps_real_values_readable(three_runs):
    frame = runs_dataframe(load_runs(three_runs))
    fig = report.plot_speedup_vs_batch(frame)
    user = fig.axes[0]
    lo, hi = user.get_ylim()
    real = [v for v in frame["speedup_user_tps"].dropna() if v < 16]
    assert max(real) <= hi < 2 * max(real)  # the scale follows the real values, not 16.6
    assert lo <= min(real)
    marks = [line for line in user.get_lines() if line.get_marker() == "^" and line.get_linestyle() == "None"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 4 and marks[0].get_ydata()[0] <= hi
    assert any("16.6 off scale" in t.get_text() for t in user.texts)
    assert "outliers above" in fig._suptitle.get_text()


def test_no_outlier_keeps_the_plain_scale():
    frame = runs_dataframe(load_runs(RUN_FILES[:1]))
    fig = report.plot_speedup_vs_batch(frame)
    assert "outliers" not in fig._suptitle.get_text()
    assert not any("off scale" in t.get_text() for ax in fig.axes for t in ax.texts)


@pytest.mark.parametrize("name", ["al_histogram", "conditional_acceptance"])
def test_legends_sit_beside_the_data_not_on_it(three_runs, name):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = report.make_figures(runs_dataframe(load_runs(three_runs)))[name]
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert not box.overlaps(fig.axes[0].get_window_extent(renderer))
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
