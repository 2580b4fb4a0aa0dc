"""`speedbench report` / `speedbench export`: plotted series match the results, files are written."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")

from pytest_speedbench.results import report  # noqa: E402
from pytest_speedbench.cli import main  # noqa: E402
from pytest_speedbench.results.export import load_runs, runs_dataframe  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "fixtures" / "results"
BASE = RESULTS / "0001_baseline.json"
REGRESSED = RESULTS / "0003_regressed.json"


def benches(path: Path) -> dict[str, dict]:
    return {b["param"]: b["extra_info"] for b in json.loads(path.read_text())["benchmarks"]}


@pytest.fixture(scope="module")
def frame():
    return runs_dataframe(load_runs([BASE]))


@pytest.fixture(scope="module")
def figures(frame):
    figs = report.make_figures(frame)
    yield figs


BREAKDOWNS = RESULTS.parent / "breakdowns" / "hf-none-ngram.json"  # real hf run (none, ngram) with the acceptance breakdowns
#: figures of analyses newer than the fixtures above (they hold no data for them)
BREAKDOWN_FIGURES = ("goodput_vs_rate", "al_by_position", "al_by_position_by_category", "al_thinking_answer",
                     "accepted_share_by_rarity")


def test_all_figures_built(figures):
    # results saved before the breakdowns existed plot everything else, without complaint
    assert list(figures) == [f for f in report.FIGURES if f not in BREAKDOWN_FIGURES]


def test_breakdown_figures_plot_the_saved_values():
    frame = runs_dataframe(load_runs([BREAKDOWNS]))
    figs = report.make_figures(frame)
    assert {"al_by_position", "accepted_share_by_rarity"} <= set(figs)
    assert "al_thinking_answer" not in figs  # no output had the marker: nothing to plot, never a zero bar
    sd = benches(BREAKDOWNS)["hf-ngram-qualitative-bs1-t0"]
    (ax,) = figs["accepted_share_by_rarity"].axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == list(sd["accepted_share_by_rarity"])
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx(list(sd["accepted_share_by_rarity"].values()))
    (ax,) = figs["al_by_position"].axes
    assert [p.get_height() for p in ax.patches] == pytest.approx(list(sd["al_by_position"].values()))


def test_pareto_series_follow_batch_sizes(figures):
    ax = figures["pareto"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {f"sglang {d} {w}" for d in ("none", "ngram", "eagle3")
                          for w in ("qualitative", "throughput-1k")}
    info = benches(BASE)
    line = lines["sglang eagle3 throughput-1k"]
    expected = [info[f"sglang-eagle3-throughput-1k-bs{bs}-t0"] for bs in (1, 4, 16, 64)]
    assert list(line.get_xdata()) == pytest.approx([e["user_tps"]["mean"] for e in expected])
    assert list(line.get_ydata()) == pytest.approx([e["output_tps"] for e in expected])
    assert lines["sglang none throughput-1k"].get_linestyle() == "--"  # AR dashed
    assert line.get_linestyle() == "-"
    assert sorted(t.get_text() for t in ax.texts if t.get_color() == line.get_color()) == [
        "bs1", "bs16", "bs4", "bs64"]


def test_al_by_category_bars(figures):
    axes = figures["al_by_category"].axes
    assert [ax.get_title().split(":")[0] for ax in axes] == ["qualitative", "throughput-1k"]
    qual = axes[0]
    ticks = [t.get_text() for t in qual.get_xticklabels()]
    assert ticks[0] == "overall" and len(ticks) == 12 and "coding" in ticks
    containers = {c.get_label(): c for c in qual.containers if hasattr(c, "patches")}
    assert set(containers) == {"sglang ngram", "sglang eagle3"}  # AR has no categories to show
    info = benches(BASE)["sglang-eagle3-qualitative-bs1-t0"]
    heights = [p.get_height() for p in containers["sglang eagle3"].patches]
    assert heights == pytest.approx([info["acceptance_length"], *(info["acceptance_length_by_category"][c]
                                                                  for c in ticks[1:])])
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["overall", "low_entropy", "mixed", "high_entropy"]


def test_al_histogram_shares_sum_to_one_and_match_counts(figures):
    ax = figures["al_histogram"].axes[0]
    containers = {c.get_label(): c for c in ax.containers}
    assert set(containers) == {"sglang ngram qualitative", "sglang eagle3 qualitative",
                               "sglang ngram throughput-1k", "sglang eagle3 throughput-1k"}
    hist = benches(BASE)["sglang-eagle3-qualitative-bs1-t0"]["al_histogram"]
    shares = [p.get_height() for p in containers["sglang eagle3 qualitative"].patches]
    total = sum(hist.values())
    assert shares == pytest.approx([hist.get(str(k), 0) / total for k in (1, 2, 3, 4)])
    assert sum(shares) == pytest.approx(1.0)


def test_conditional_acceptance_lines(figures):
    lines = {l.get_label(): l for l in figures["conditional_acceptance"].axes[0].get_lines()}
    info = benches(BASE)
    # one case: the run's own rates
    single = info["sglang-eagle3-qualitative-bs1-t0"]["conditional_acceptance_rate"]
    assert list(lines["sglang eagle3 qualitative"].get_ydata()) == pytest.approx(single)
    # several batch sizes: recomputed from the summed histogram
    summed: dict[int, int] = {}
    for bs in (1, 4, 16, 64):
        for k, n in info[f"sglang-ngram-throughput-1k-bs{bs}-t0"]["al_histogram"].items():
            summed[int(k)] = summed.get(int(k), 0) + n
    assert list(lines["sglang ngram throughput-1k"].get_ydata()) == pytest.approx(report.conditional_rates(summed))


def test_conditional_rates_from_histogram():
    # 100 steps: 50 accept nothing, 30 accept one draft token, 20 accept two
    assert report.conditional_rates({1: 50, 2: 30, 3: 20}) == pytest.approx([0.5, 0.4])
    assert report.conditional_rates({1: 10}) == []


def test_speedup_against_batch_size(figures):
    fig = figures["speedup_vs_batch"]
    assert [ax.get_title() for ax in fig.axes] == ["speedup user tps", "speedup output tps", "speedup analytical"]
    user = fig.axes[0]
    lines = {c.get_label(): c.lines[0] for c in user.containers}  # errorbar containers: (data line, caps, bars)
    info = benches(BASE)
    line = lines["sglang eagle3 throughput-1k"]
    assert list(line.get_xdata()) == [1, 4, 16, 64]
    assert list(line.get_ydata()) == pytest.approx(
        [info[f"sglang-eagle3-throughput-1k-bs{bs}-t0"]["speedup_user_tps"] for bs in (1, 4, 16, 64)])
    assert "sglang none throughput-1k" not in lines  # AR has no speedup
    # CI error bars drawn for user TPS speedup (the fixture carries its interval)
    assert any(c.has_yerr for c in user.containers)


def test_figures_skip_missing_data(frame):
    ar_only = frame[frame["drafter"] == "none"].dropna(axis=1, how="all")
    figs = report.make_figures(ar_only)
    assert list(figs) == ["pareto"]


def test_report_command_writes_pngs_and_pages(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(BASE), str(REGRESSED), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.name for p in out.iterdir())
    drawn = [n for n in report.FIGURES if n not in BREAKDOWN_FIGURES]
    assert names == sorted([f"{n}.png" for n in drawn] + ["report.md", "report.html"])
    assert sorted(Path(p).name for p in printed) == names
    import matplotlib.image as mpimg

    for name in drawn:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = mpimg.imread(png)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500
        assert pixels[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    md = (out / "report.md").read_text()
    assert all(f"![{n}]({n}.png)" in md for n in drawn)
    assert "| 0003_regressed | sglang-eagle3-qualitative-bs1-t0 | 2.30 [2.23, 2.38] |" in md
    html = (out / "report.html").read_text()
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(embedded) == len(drawn)
    assert base64.b64decode(embedded[0]) == (out / "pareto.png").read_bytes()
    # with two runs every series carries its run label
    pareto_labels = report.plot_pareto(runs_dataframe(load_runs([BASE, REGRESSED]))).axes[0].get_legend_handles_labels()[1]
    assert "sglang eagle3 throughput-1k [0003_regressed]" in pareto_labels


def test_report_html_only(tmp_path):
    assert main(["report", str(BASE), "--out", str(tmp_path), "--format", "html"]) == 0
    assert not (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trips_through_pandas(tmp_path, capsys, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    target = tmp_path / f"runs.{fmt}"
    assert main(["export", str(BASE), str(REGRESSED), f"--{fmt}", str(target)]) == 0
    assert "29 rows x" in capsys.readouterr().out
    frame = pd.read_csv(target) if fmt == "csv" else pd.read_parquet(target)
    assert len(frame) == 29
    row = frame[(frame["run"] == "0003_regressed") & (frame["case"] == "sglang-eagle3-qualitative-bs1-t0")].iloc[0]
    info = benches(REGRESSED)["sglang-eagle3-qualitative-bs1-t0"]
    assert row["acceptance_length"] == pytest.approx(info["acceptance_length"])
    assert row["acceptance_length_ci95_lo"] == pytest.approx(info["acceptance_length_ci95"][0])
    assert row["ttft_s.p99"] == pytest.approx(info["ttft_s"]["p99"])
    assert row["acceptance_length_by_category.coding"] == pytest.approx(info["acceptance_length_by_category"]["coding"])
    assert row["al_histogram.2"] == info["al_histogram"]["2"]
    assert row["conditional_acceptance_rate.1"] == pytest.approx(info["conditional_acceptance_rate"][0])
    assert row["commit"] == "c3d4e5f" and row["batch_size"] == 1 and row["drafter"] == "eagle3"
    assert row["gate.verdict"] == "skip"


def test_export_needs_a_target(capsys):
    assert main(["export", str(BASE)]) == 2
    assert "--csv FILE and/or --parquet FILE" in capsys.readouterr().err


def test_position_by_category_plot_has_a_panel_per_sd_series_and_a_bar_per_bin():
    rows = [{"engine": "vllm", "drafter": d, "split": "qualitative", "bucket": None, "batch_size": 1,
             "temperature": 0.0, "run": "r", "al_by_position_by_category.coding/0-63": 2.0 + i,
             "al_by_position_by_category.coding/64-255": 1.5 + i, "al_by_position_by_category.math/0-63": 1.2 + i}
            for i, d in enumerate(["ngram", "draft", "none"])]
    fig = report.plot_al_by_position_by_category(pd.DataFrame(rows))
    assert len(fig.axes) == 2  # ngram and draft; the AR case has no acceptance to break down
    heights = [p.get_height() for p in fig.axes[0].patches]
    # bins in order, categories along x: 0-63 (coding, math), then 64-255 (coding, math: none)
    assert heights[:3] == [2.0, 1.2, 1.5] and np.isnan(heights[3])
