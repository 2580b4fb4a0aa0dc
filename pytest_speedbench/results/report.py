"""Plots and a markdown/HTML page from one or more results files.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state machine, nothing global),
one function per plot, each taking the flat table from `export.runs_dataframe` and returning the
Figure (or None when the runs hold no data for it), so tests can inspect the plotted series.

Series are named from the axes that vary in the data: engine and drafter always, plus the run
label (several files), split/bucket and temperature when they take more than one value.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_speedbench.errors import UsageError
from pytest_speedbench.metrics import catalogue
from pytest_speedbench.results.export import Run, runs_dataframe

FIGURES: tuple[str, ...] = ("pareto", "al_by_category", "al_histogram", "conditional_acceptance", "speedup_vs_batch",
                             "goodput_vs_rate", "al_by_position", "al_by_position_by_category", "al_thinking_answer",
                             "accepted_share_by_rarity")
_AR_STYLE = {"linestyle": "--"}
_SD_STYLE = {"linestyle": "-"}
#: 20 hues told apart on screen and in print (tab10, then Set1/Dark2-like ones that differ from it)
PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#000080", "#b8860b", "#006400", "#ff1493", "#00ced1", "#8b0000", "#9acd32", "#4b0082",
    "#ff6347", "#2f4f4f",
)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")


def series_styles(labels: Sequence[str]) -> dict[str, dict[str, str]]:
    """A distinct (colour, marker) per series label, in first-seen order.

    Colour i = PALETTE[i mod 20] and marker i = MARKERS[i mod 12]: every colour differs up to 20
    series, and since lcm(20, 12) = 60, every (colour, marker) pair differs up to 60, so no two
    series of a figure look alike (matplotlib's default cycle repeats after 10 colours).
    """
    unique = list(dict.fromkeys(labels))
    return {label: {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)]}
            for i, label in enumerate(unique)}


def outlier_fence(values: Sequence[float]) -> float | None:
    """Upper fence above which a value is an outlier that would flatten the others.

    fence = max(2 m, m + 6 sigma), m = median, sigma = 1.4826 x median(|v - m|) (the MAD scaled
    to a normal's standard deviation). Robust to the outlier itself (unlike mean + k std) and,
    unlike Tukey's quartile fence, still works with a handful of points. None below 3 values.
    """
    import numpy as np

    arr = np.asarray([v for v in values if v == v], dtype=float)
    if arr.size < 3:
        return None
    m = float(np.median(arr))
    sigma = 1.4826 * float(np.median(np.abs(arr - m)))
    return max(2.0 * m, m + 6.0 * sigma)


def _legend_columns(labels: Sequence[str], width_in: float = 8.0) -> int:
    """Columns that fit a figure `width_in` inches wide: ~0.075 in per 8 pt character plus the
    handle, so a below-the-plot legend is never cut at the figure's edges."""
    longest = max((len(label) for label in labels), default=1)
    return max(1, min(len(labels), 4, int(width_in / (0.075 * longest + 0.6))))


def _boxes_overlap(a: Any, b: Any, pad: float = 1.0) -> bool:
    return not (a.x1 + pad < b.x0 or b.x1 + pad < a.x0 or a.y1 + pad < b.y0 or b.y1 + pad < a.y0)


def place_labels(fig: Any, ax: Any, items: Sequence[tuple[str, tuple[float, float], str]], fontsize: int = 7) -> int:
    """Annotate points without overlap: each label tries four offsets around its point and is
    dropped when all of them collide with a label already placed (the same information is
    readable from its neighbours). Returns how many were dropped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # final layout, so extents are where they will be drawn
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    dropped = 0
    for text, xy, color in items:
        for offset in ((4, 4), (4, -11), (-20, 4), (-20, -11)):
            ann = ax.annotate(text, xy, textcoords="offset points", xytext=offset, fontsize=fontsize, color=color)
            box = ann.get_window_extent(renderer)
            if not any(_boxes_overlap(box, other) for other in placed):
                placed.append(box)
                break
            ann.remove()
        else:
            dropped += 1
    return dropped


def _figure(width: float = 7.5, height: float = 4.8) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'pytest-speedbench[report]'") from None
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _workload(row: Mapping[str, Any]) -> str:
    bucket = row.get("bucket")
    return f"{row.get('split')}-{bucket}" if isinstance(bucket, str) and bucket else str(row.get("split"))


def _varies(frame: Any, column: str) -> bool:
    return column in frame and frame[column].astype(str).nunique() > 1


def _labeller(frame: Any, by_rate: bool = True):
    """A function row -> series label using the axes that vary in `frame` (batch size excluded;
    the request rate too when `by_rate` is False, for plots whose x axis it is)."""
    with_run = _varies(frame, "run")
    with_workload = frame.apply(_workload, axis=1).nunique() > 1 if len(frame) else False
    with_temp = _varies(frame, "temperature")
    with_rate = by_rate and _varies(frame, "request_rate")
    with_bs = not by_rate and _varies(frame, "batch_size")

    def label(row: Mapping[str, Any]) -> str:
        parts = [f"{row.get('engine')} {row.get('drafter')}"]
        if with_workload:
            parts.append(_workload(row))
        if with_temp:
            parts.append(f"t{row.get('temperature'):g}")
        if with_rate:
            parts.append(f"r{row.get('request_rate')}" if row.get("request_rate") is not None else "closed loop")
        if with_bs:
            parts.append(f"bs{row.get('batch_size')}")
        if with_run:
            parts.append(f"[{row.get('run')}]")
        return " ".join(parts)

    return label


def _with_series(frame: Any) -> Any:
    frame = frame.copy()
    frame["series"] = frame.apply(_labeller(frame), axis=1) if len(frame) else []
    return frame


def _num(frame: Any, column: str) -> Any:
    import pandas as pd

    return pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(float("nan"), index=frame.index)


def plot_pareto(frame: Any) -> Any | None:
    """Output TPS (system throughput) against user TPS (per-user speed), one point per batch size.

    Each line is one engine/drafter over batch sizes; AR (drafter none) dashed, SD solid, so the
    SD curve's shift up/right of its AR twin shows where speculation pays off.
    """
    data = frame.assign(x=_num(frame, "user_tps.mean"), y=_num(frame, "output_tps")).dropna(subset=["x", "y"])
    if data.empty:
        return None
    data = _with_series(data)
    styles = series_styles(list(data["series"]))
    fig = _figure(8.0, 5.6)
    ax = fig.add_subplot()
    labels: list[tuple[str, tuple[float, float], str]] = []
    for series, group in data.groupby("series", sort=False):
        group = group.sort_values("batch_size")
        style = _AR_STYLE if group["drafter"].iloc[0] == "none" else _SD_STYLE
        ax.plot(group["x"], group["y"], label=series, **style, **styles[series])
        labels += [(f"bs{row['batch_size']}", (row["x"], row["y"]), styles[series]["color"])
                   for _, row in group.iterrows()]
    ax.set_xlabel("user TPS (tokens/s per request, mean)")
    ax.set_ylabel("output TPS (tokens/s, all requests)")
    ax.set_title("Throughput vs per-user speed over batch sizes (SD solid, AR dashed)")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", ncols=_legend_columns(list(styles)), fontsize=8)
    place_labels(fig, ax, labels)
    return fig


def plot_al_by_category(frame: Any) -> Any | None:
    """Acceptance length per category, one bar per SD series, overall AL (with its 95% CI) first.

    One panel per workload (the qualitative split's 11 categories, a throughput bucket's entropy
    levels), each showing only the categories it has; values are means over batch sizes.
    """
    import numpy as np

    data = frame[frame["drafter"] != "none"] if "drafter" in frame else frame
    cat_cols = [c for c in data.columns if c.startswith("acceptance_length_by_category.")]
    if not cat_cols or data.empty:
        return None
    data = data.assign(workload=data.apply(_workload, axis=1))
    panels = [(w, g, [c for c in cat_cols if _num(g, c).notna().any()]) for w, g in data.groupby("workload", sort=False)]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    widest = max(len(cols) for _, _, cols in panels) + 1
    fig = _figure(max(7.5, 0.75 * widest * max(1, data["drafter"].nunique()) ** 0.5), 3.6 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (workload, group, cols) in zip(axes, panels):
        group = _with_series(group)
        labels = ["overall", *(c.split(".", 1)[1] for c in cols)]
        series = list(dict.fromkeys(group["series"]))
        styles = series_styles(series)
        x = np.arange(len(labels))
        width = 0.8 / len(series)
        for i, name in enumerate(series):
            rows = group[group["series"] == name]
            mean = _num(rows, "acceptance_length").mean()
            lo, hi = _num(rows, "acceptance_length_ci95_lo").mean(), _num(rows, "acceptance_length_ci95_hi").mean()
            heights = [mean, *(_num(rows, c).mean() for c in cols)]
            bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name,
                          color=styles[name]["color"])
            if np.isfinite(lo) and np.isfinite(hi) and np.isfinite(mean):
                ax.errorbar(bars[0].get_x() + width / 2, mean, yerr=[[max(0, mean - lo)], [max(0, hi - mean)]],
                            color="black", capsize=3, linewidth=1)
        ax.set_xticks(x, labels, rotation=30, ha="right")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_ylabel("acceptance length")
        ax.set_title(f"{workload}: acceptance length by category (overall with 95% CI)", fontsize=10)
        ax.legend(fontsize=7, ncols=2)
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def _series_histograms(frame: Any) -> dict[str, dict[int, float]]:
    """Summed step counts per accepted length for each SD series (counts add up across cases)."""
    hist_cols = sorted((c for c in frame.columns if c.startswith("al_histogram.")), key=lambda c: int(c.split(".")[1]))
    data = frame[frame["drafter"] != "none"] if "drafter" in frame else frame
    if not hist_cols or data.empty:
        return {}
    data = _with_series(data)
    out: dict[str, dict[int, float]] = {}
    for series, group in data.groupby("series", sort=False):
        counts = {int(c.split(".")[1]): float(_num(group, c).fillna(0).sum()) for c in hist_cols}
        if sum(counts.values()) > 0:
            out[series] = counts
    return out


def plot_al_histogram(frame: Any) -> Any | None:
    """Share of verification steps that produced k tokens, per SD series."""
    hists = _series_histograms(frame)
    if not hists:
        return None
    import numpy as np

    ks = sorted({k for h in hists.values() for k in h})
    x = np.arange(len(ks))
    width = 0.8 / len(hists)
    styles = series_styles(list(hists))
    fig = _figure()
    ax = fig.add_subplot()
    for i, (series, counts) in enumerate(hists.items()):
        total = sum(counts.values())
        ax.bar(x + (i - (len(hists) - 1) / 2) * width, [counts.get(k, 0) / total for k in ks], width, label=series,
               color=styles[series]["color"])
    ax.set_xticks(x, [str(k) for k in ks])
    ax.set_xlabel("tokens produced by a verification step (1 = no draft token accepted)")
    ax.set_ylabel("share of steps")
    ax.set_title("Acceptance length histogram")
    fig.legend(loc="outside lower center", ncols=_legend_columns(ax.get_legend_handles_labels()[1]), fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def conditional_rates(counts: Mapping[int, float]) -> list[float]:
    """P(L >= i+1 | L >= i) for draft positions i = 1..max(L)-1, from step counts by L."""
    top = max(counts)
    rates = []
    for i in range(1, top):
        reached = sum(v for k, v in counts.items() if k >= i)
        rates.append(sum(v for k, v in counts.items() if k >= i + 1) / reached if reached else float("nan"))
    return rates


def plot_conditional_acceptance(frame: Any) -> Any | None:
    """Conditional acceptance per draft position, per SD series.

    With one case per series the run's own `conditional_acceptance_rate` is drawn (it may come
    from engine counters); across several cases it is recomputed from the summed histogram.
    """
    data = frame[frame["drafter"] != "none"] if "drafter" in frame else frame
    rate_cols = sorted((c for c in data.columns if c.startswith("conditional_acceptance_rate.")),
                       key=lambda c: int(c.split(".")[1]))
    if data.empty or not rate_cols and not any(c.startswith("al_histogram.") for c in data.columns):
        return None
    hists = _series_histograms(data)
    data = _with_series(data)
    curves: dict[str, list[float]] = {}
    for series, group in data.groupby("series", sort=False):
        if len(group) == 1 and rate_cols:
            rates = [float(_num(group, c).iloc[0]) for c in rate_cols]
            rates = [r for r in rates if r == r]  # drop NaN positions this case lacks
        elif series in hists:
            rates = conditional_rates(hists[series])
        else:
            rates = [float(_num(group, c).mean()) for c in rate_cols]
        if rates:
            curves[series] = rates
    if not curves:
        return None
    styles = series_styles(list(curves))
    fig = _figure()
    ax = fig.add_subplot()
    for series, rates in curves.items():
        ax.plot(range(1, len(rates) + 1), rates, label=series, **styles[series])
    ax.set_xlabel("draft position i")
    ax.set_ylabel("P(token i accepted | tokens < i accepted)")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(range(1, max(len(r) for r in curves.values()) + 1))
    ax.set_title("Conditional acceptance rate per draft position")
    fig.legend(loc="outside lower center", ncols=_legend_columns(ax.get_legend_handles_labels()[1]), fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def plot_speedup_vs_batch(frame: Any) -> Any | None:
    """Measured speedups (user TPS, output TPS; 95% CI bars) and analytical speedup against batch size."""
    data = frame[frame["drafter"] != "none"] if "drafter" in frame else frame
    metrics = [m for m in catalogue.SPEEDUP_KEYS if m in data and _num(data, m).notna().any()]
    if data.empty or not metrics:
        return None
    data = _with_series(data)
    styles = series_styles(list(data["series"]))
    values = [float(v) for m in metrics for v in _num(data, m).dropna()]
    fence = outlier_fence(values)
    inliers = [v for v in values if fence is None or v <= fence]
    top = None
    if fence is not None and len(inliers) < len(values):
        ci_tops = [float(v) for m in metrics for v in _num(data, f"{m}_ci95_hi").dropna() if v <= fence]
        top = max(inliers + ci_tops + [1.0]) * 1.12
    fig = _figure(4.2 * len(metrics), 4.6)
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    unstable_seen = False
    for ax, metric in zip(axes, metrics):
        for series, group in data.groupby("series", sort=False):
            group = group.assign(y=_num(group, metric)).dropna(subset=["y"]).sort_values("batch_size")
            if group.empty:
                continue
            lo, hi = _num(group, f"{metric}_ci95_lo"), _num(group, f"{metric}_ci95_hi")
            if top is not None:  # bars of off-scale points would span the whole panel
                off = group["y"] > fence
                lo, hi = lo.where(~off), hi.where(~off)
            has_ci = lo.notna().any() and hi.notna().any()
            yerr = [(group["y"] - lo).clip(lower=0).fillna(0), (hi - group["y"]).clip(lower=0).fillna(0)] \
                if has_ci else None
            shown = group["y"].where(group["y"] <= fence) if top is not None else group["y"]
            ax.errorbar(group["batch_size"].astype(float), shown, yerr=yerr, capsize=3, label=series,
                        **styles[series])
            if "unstable" in group:  # hollow markers: speedups not trusted (rounds disagreed, implausible)
                bad = group["unstable"].fillna(False).astype(bool)
                if bad.any():
                    ax.plot(group["batch_size"][bad].astype(float), shown[bad], linestyle="none",
                            marker=styles[series].get("marker", "o"), markersize=9, markerfacecolor="white",
                            markeredgecolor=styles[series]["color"], markeredgewidth=1.5)
                    unstable_seen = True
            if top is not None:
                for _, row in group[group["y"] > fence].iterrows():
                    ax.plot([float(row["batch_size"])], [top * 0.96], marker="^", markersize=9, linestyle="none",
                            color=styles[series]["color"], markeredgecolor="black")
                    ax.annotate(f"{row['y']:.3g} off scale", (float(row["batch_size"]), top * 0.96),
                                textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7,
                                color=styles[series]["color"])
        ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
        ax.set_xscale("log", base=2)
        sizes = sorted({int(b) for b in data["batch_size"].dropna()})
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size (concurrent requests)")
        ax.set_title(metric.replace("_", " "))
        ax.grid(True, alpha=0.3)
    if top is not None:
        axes[0].set_ylim(0, top)
    axes[0].set_ylabel("speedup over autoregressive")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=_legend_columns(labels, 4.2 * len(metrics)),
               fontsize=8)
    title = "Speculative decoding speedup against batch size (95% CI bars)"
    if top is not None:
        title += f"\n(triangles: outliers above {fence:.3g}, off scale)"
    if unstable_seen:
        title += "\n(hollow markers: unstable cases, speedup not trusted)"
    fig.suptitle(title)
    return fig


def _breakdown_bars(frame: Any, key: str, ylabel: str, title: str, baseline: float | None) -> Any | None:
    """One bar per SD series and bin of the breakdown `key` (columns `key.<bin>`, bins in the
    order of the first case that has them); a series' value is its mean over batch sizes."""
    import numpy as np

    data = frame[frame["drafter"] != "none"] if "drafter" in frame else frame
    bins = list(dict.fromkeys(c.split(".", 1)[1] for c in data.columns if c.startswith(key + ".")))
    bins = [b for b in bins if _num(data, f"{key}.{b}").notna().any()]
    if not bins or data.empty:
        return None
    data = _with_series(data)
    series = list(dict.fromkeys(data["series"]))
    styles = series_styles(series)
    fig = _figure(max(7.5, 1.1 * len(bins) * max(1, len(series)) ** 0.5), 4.4)
    ax = fig.add_subplot()
    x = np.arange(len(bins))
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        rows = data[data["series"] == name]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [_num(rows, f"{key}.{b}").mean() for b in bins], width,
               label=name, color=styles[name]["color"])
    ax.set_xticks(x, bins)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncols=2)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def _rate_value(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def plot_goodput_vs_rate(frame: Any) -> Any | None:
    """Goodput (requests/s meeting every SLO) and its share against the scheduled request rate,
    AR dashed, SD solid; `inf` (all at once) is drawn right of the largest finite rate."""
    import numpy as np

    if "request_rate" not in frame:
        return None
    data = frame.assign(rate=frame["request_rate"].map(_rate_value), y=_num(frame, "goodput_rps"),
                        share=_num(frame, "goodput_fraction")).dropna(subset=["rate", "y"])
    if data.empty:
        return None
    finite = data.loc[np.isfinite(data["rate"]), "rate"]
    inf_at = float(finite.max()) * 2 if not finite.empty else 1.0
    data = data.assign(x=data["rate"].where(np.isfinite(data["rate"]), inf_at))
    data = data.assign(series=data.apply(_labeller(data, by_rate=False), axis=1))
    styles = series_styles(list(data["series"]))
    fig = _figure(9.0, 4.4)
    left, right = fig.subplots(1, 2)
    for series, group in data.groupby("series", sort=False):
        group = group.sort_values("x")
        style = _AR_STYLE if group["drafter"].iloc[0] == "none" else _SD_STYLE
        left.plot(group["x"], group["y"], label=series, **style, **styles[series])
        right.plot(group["x"], group["share"], label=series, **style, **styles[series])
    ticks = sorted(set(data["x"]))
    names = [("inf" if x == inf_at and not np.isfinite(data.loc[data["x"] == x, "rate"]).all() else f"{x:g}")
             for x in ticks]
    for ax, ylabel in ((left, "goodput (requests/s meeting every SLO)"), (right, "share of requests meeting every SLO")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, names)
        ax.minorticks_off()
        ax.set_xlabel("scheduled request rate (requests/s)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Goodput against request rate (SD solid, AR dashed)")
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower center",
               ncols=_legend_columns(list(styles)), fontsize=8)
    return fig


def plot_al_by_position(frame: Any) -> Any | None:
    """AL (tokens per decode step) by the output position where each step starts: drift along the output."""
    return _breakdown_bars(frame, "al_by_position", "acceptance length",
                           "Acceptance length by output position (step's first token)", 1.0)


def plot_al_by_position_by_category(frame: Any) -> Any | None:
    """AL by output position within each category: one panel per SD series, categories on the x
    axis, one bar per position bin (columns `al_by_position_by_category.<category>/<bin>`)."""
    import numpy as np

    data = frame[frame["drafter"] != "none"] if "drafter" in frame else frame
    prefix = "al_by_position_by_category."
    cols = [c for c in data.columns if c.startswith(prefix) and _num(data, c).notna().any()]
    if not cols or data.empty:
        return None
    cats = list(dict.fromkeys(c[len(prefix):].split("/", 1)[0] for c in cols))
    bins = list(dict.fromkeys(c[len(prefix):].split("/", 1)[1] for c in cols))
    data = _with_series(data)
    series = list(dict.fromkeys(data["series"]))
    styles = series_styles(bins)
    fig = _figure(max(7.5, 0.9 * len(cats) * max(1, len(bins)) ** 0.5), 3.4 * len(series))
    axes = fig.subplots(len(series), 1, squeeze=False)[:, 0]
    x = np.arange(len(cats))
    width = 0.8 / len(bins)
    for ax, name in zip(axes, series):
        rows = data[data["series"] == name]
        for i, b in enumerate(bins):
            heights = [_num(rows, f"{prefix}{c}/{b}").mean() if f"{prefix}{c}/{b}" in rows else float("nan")
                       for c in cats]
            ax.bar(x + (i - (len(bins) - 1) / 2) * width, heights, width, label=f"positions {b}",
                   color=styles[b]["color"])
        ax.set_xticks(x, cats, rotation=30, ha="right")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_ylabel("acceptance length")
        ax.set_title(f"{name}: AL by output position per category", fontsize=10)
        ax.legend(fontsize=7, ncols=len(bins))
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_al_thinking_answer(frame: Any) -> Any | None:
    """AL of the reasoning part, the answer part, and outputs without the end marker."""
    return _breakdown_bars(frame, "al_thinking_answer", "acceptance length",
                           "Acceptance length: thinking vs answer (split at the reasoning end marker)", 1.0)


def plot_accepted_share_by_rarity(frame: Any) -> Any | None:
    """Share of emitted tokens produced by accepted drafts, by the token's frequency rank: a drafter
    that cannot propose rare tokens (pruned vocabulary) drops to 0 on the right."""
    return _breakdown_bars(frame, "accepted_share_by_rarity", "share of tokens from accepted drafts",
                           "Accepted-draft share by token rarity (frequency rank in the rank corpus)", None)


def make_figures(frame: Any) -> dict[str, Any]:
    """Every figure the data supports, by name (see FIGURES)."""
    builders = {
        "pareto": plot_pareto,
        "al_by_category": plot_al_by_category,
        "al_histogram": plot_al_histogram,
        "conditional_acceptance": plot_conditional_acceptance,
        "speedup_vs_batch": plot_speedup_vs_batch,
        "goodput_vs_rate": plot_goodput_vs_rate,
        "al_by_position": plot_al_by_position,
        "al_by_position_by_category": plot_al_by_position_by_category,
        "al_thinking_answer": plot_al_thinking_answer,
        "accepted_share_by_rarity": plot_accepted_share_by_rarity,
    }
    out = {}
    for name, build in builders.items():
        fig = build(frame)
        if fig is not None:
            out[name] = fig
    return out


# --------------------------------------------------------------------------- page

def summary_columns() -> list[tuple[str, str]]:
    """(column, heading) of the page's summary table: run and case, the catalogue's report
    metrics, then the gate verdict."""
    metrics = [(path, spec.heading(path)) for spec in catalogue.metrics() for path in spec.paths(catalogue.REPORT)]
    return [("run", "run"), ("case", "case"), *metrics, ("unstable", "unstable"), ("gate.verdict", "gate")]


def _cell(row: Mapping[str, Any], column: str) -> str:
    from pytest_speedbench.results.gates import fmt

    value = row.get(column)
    if column == "unstable":  # the speedups of this row are not trusted
        return "UNSTABLE" if value is True else ""
    if value is None or value != value:  # None or NaN
        return "-"
    lo, hi = row.get(f"{column}_ci95_lo"), row.get(f"{column}_ci95_hi")
    if lo is not None and hi is not None and lo == lo and hi == hi:  # skip None and NaN
        return f"{fmt(float(value))} [{fmt(float(lo))}, {fmt(float(hi))}]"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt(float(value))
    return str(value)


def summary_rows(frame: Any) -> tuple[list[str], list[list[str]]]:
    columns = [(c, h) for c, h in summary_columns() if c in frame and (c != "run" or _varies(frame, "run"))]
    records = frame.to_dict("records")
    return [h for _, h in columns], [[_cell(r, c) for c, _ in columns] for r in records]


@dataclass
class Report:
    out_dir: Path
    figures: dict[str, Path] = field(default_factory=dict)
    pages: list[Path] = field(default_factory=list)


_TITLES = {
    "pareto": "Output TPS against user TPS (Pareto curve over batch sizes)",
    "al_by_category": "Acceptance length by category",
    "al_histogram": "Acceptance length histogram",
    "conditional_acceptance": "Conditional acceptance per draft position",
    "speedup_vs_batch": "Speedup against batch size",
    "goodput_vs_rate": "Goodput against request rate",
    "al_by_position": "Acceptance length by output position",
    "al_by_position_by_category": "Acceptance length by output position, per category",
    "al_thinking_answer": "Acceptance length: thinking vs answer",
    "accepted_share_by_rarity": "Accepted-draft share by token rarity",
}


def _markdown(runs: Sequence[Run], figures: Mapping[str, Path], headers: list[str], body: list[list[str]]) -> str:
    lines = ["# speedbench report", ""]
    for run in runs:
        commit = run.doc.get("commit_info") or {}
        lines.append(f"- `{run.label}`: {run.doc.get('datetime', '?')}, commit {commit.get('id', '?')}"
                     f"{' (dirty)' if commit.get('dirty') else ''}, {len(run.doc.get('benchmarks', []))} cases")
    lines += ["", "## Summary", "", "| " + " | ".join(headers) + " |",
              "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    from pytest_speedbench.results.table import category_rows

    for run in runs:
        rows = category_rows(list(run.doc.get("benchmarks") or []))
        if rows:
            lines += ["", f"## Acceptance length per category: `{run.label}`", "",
                      "| " + " | ".join(rows[0]) + " |", "|" + "|".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    for name, path in figures.items():
        lines += ["", f"## {_TITLES[name]}", "", f"![{name}]({path.name})"]
    return "\n".join(lines) + "\n"


def _html(runs: Sequence[Run], figures: Mapping[str, Path], headers: list[str], body: list[list[str]]) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>speedbench report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:nth-child(-n+2){text-align:left}"
             "img{max-width:100%}.fail{color:#b00}</style></head><body><h1>speedbench report</h1><ul>"]
    for run in runs:
        commit = run.doc.get("commit_info") or {}
        parts.append(f"<li><code>{esc(run.label)}</code>: {esc(str(run.doc.get('datetime', '?')))}, "
                     f"commit {esc(str(commit.get('id', '?')))}</li>")
    parts.append("</ul><h2>Summary</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
    for row in body:
        cls = " class='fail'" if "fail" in row else ""
        parts.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    parts.append("</table>")
    for name, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f"<h2>{esc(_TITLES[name])}</h2><img alt='{name}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def build_report(runs: Sequence[Run], out_dir: str | Path, formats: Sequence[str] = ("md", "html")) -> Report:
    """Write `<name>.png` for every supported figure plus report.md / report.html into `out_dir`.

    The HTML page embeds the images (one self-contained file for a CI artifact); the markdown
    page links the PNGs next to it.
    """
    bad = [f for f in formats if f not in ("md", "html")]
    if bad:
        raise UsageError(f"unknown report format {bad[0]!r}; valid formats: md, html")
    frame = runs_dataframe(runs)
    if frame.empty:
        raise UsageError("the results files hold no benchmarks to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    for name, fig in make_figures(frame).items():
        path = out / f"{name}.png"
        fig.savefig(path)
        report.figures[name] = path
    headers, body = summary_rows(frame)
    if "md" in formats:
        page = out / "report.md"
        page.write_text(_markdown(runs, report.figures, headers, body), encoding="utf-8")
        report.pages.append(page)
    if "html" in formats:
        page = out / "report.html"
        page.write_text(_html(runs, report.figures, headers, body), encoding="utf-8")
        report.pages.append(page)
    return report
