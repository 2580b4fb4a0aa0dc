"""Results entries -> the sweep's and the predictor's inputs, and their tables and plot.

Maths lives in `analysis.sweep` and `analysis.predict`; this module only reads saved benchmark
entries (params + extra_info, including the `per_request` rows) and renders.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pytest_speedbench.metrics.per_request import mean_isl
from pytest_speedbench.analysis.predict import LatencyPoint, Observation
from pytest_speedbench.analysis.sweep import BatchChoice, RunSide, choose_draft_length, overestimation_pct, prompt_totals
from pytest_speedbench.results.export import Run, case_id
from pytest_speedbench.settings.matrix import Case

#: the split whose prompts are random tokens (the control); never used to predict real workloads
CONTROL_SPLIT = "random"


@dataclass(frozen=True)
class Entry:
    """One measured benchmark entry: its case (the matrix's `Case`, rebuilt from the entry's
    params, with the draft length the run used) and its `extra_info`."""

    id: str
    case: Case
    info: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        """The case's fields (engine, drafter, split, bucket, batch_size, temperature, draft_length:
        the draft length the SD run used, None for drafter=none)."""
        return getattr(self.case, name)

    @property
    def workload(self) -> str:
        return self.case.split if not self.case.bucket else f"{self.case.split}-{self.case.bucket}"

    @property
    def rows(self) -> list[Mapping[str, Any]]:
        return list(self.info.get("per_request") or [])

    @property
    def unstable(self) -> str | None:
        """Why this case's speedup is not trusted (`extra_info.stability`), or None."""
        return unstable_reason(self.info)


def unstable_reason(info: Mapping[str, Any]) -> str | None:
    """'unstable: <reasons>' for an entry whose rounds disagreed or whose speedup is implausible."""
    stability = info.get("stability") or {}
    if stability.get("verdict") != "unstable":
        return None
    return "unstable: " + ("; ".join(str(r) for r in stability.get("reasons") or []) or "no reason recorded")


def entries(runs: Iterable[Run]) -> list[Entry]:
    """Measured entries of every run (errored cases skipped); a later run's case replaces an earlier one."""
    out: dict[Case, Entry] = {}
    for run in runs:
        for bench in run.doc.get("benchmarks", []):
            p, info = bench.get("params") or {}, bench.get("extra_info") or {}
            if info.get("error") or info.get("output_tps") is None:
                continue
            speculative = p.get("drafter") != "none"
            g = p.get("draft_length", info.get("draft_length")) if speculative else None
            case = Case(str(p.get("engine")), str(p.get("drafter")), str(p.get("split")), p.get("bucket"),
                        int(p.get("batch_size") or 1), float(p.get("temperature") or 0.0),
                        int(g) if g is not None else None)
            out[case] = Entry(case_id(bench), case, info)
    return list(out.values())


def run_side(e: Entry) -> RunSide:
    user = (e.info.get("user_tps") or {}).get("mean")
    return RunSide(float(e.info["output_tps"]), prompt_totals(e.rows), e.info.get("acceptance_length"), user,
                   e.info.get("speedup_output_tps"), e.info.get("speedup_user_tps"))


# --- sweep -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepGroup:
    """One (engine, drafter, workload, temperature): a choice per batch size."""

    engine: str
    drafter: str
    workload: str
    temperature: float
    choices: tuple[BatchChoice, ...]

    @property
    def title(self) -> str:
        return f"{self.engine} {self.drafter} {self.workload} t{self.temperature:g}"


def sweep(all_entries: Sequence[Entry], *, n_boot: int = 2000, seed: int = 0) -> list[SweepGroup]:
    """Group SD entries by (engine, drafter, workload, temperature) and choose per batch size."""
    ar = {(e.engine, e.workload, e.temperature, e.batch_size): e for e in all_entries if e.drafter == "none"}
    groups: dict[tuple[str, str, str, float], dict[int, dict[int, Entry]]] = {}
    for e in all_entries:
        if e.drafter == "none" or e.draft_length is None:
            continue
        groups.setdefault((e.engine, e.drafter, e.workload, e.temperature), {}).setdefault(e.batch_size, {})[
            e.draft_length] = e
    out = []
    for (engine, drafter, workload, temp), by_batch in sorted(groups.items()):
        choices = []
        for bs in sorted(by_batch):
            twin = ar.get((engine, workload, temp, bs))
            if twin is None:
                choices.append(BatchChoice(bs, (), None, None, notes=("no drafter=none run at this batch size",)))
                continue
            # an unstable case's speedup is not trusted: never the best draft length, and said so
            unstable = {g: e.unstable for g, e in by_batch[bs].items() if e.unstable}
            sides = {g: run_side(e) for g, e in by_batch[bs].items() if g not in unstable}
            choice = choose_draft_length(bs, run_side(twin), sides, n_boot=n_boot, seed=seed)
            if unstable:
                notes = tuple(f"draft length {g} left out of the choice, {why}" for g, why in sorted(unstable.items()))
                choice = replace(choice, notes=choice.notes + notes)
            choices.append(choice)
        out.append(SweepGroup(engine, drafter, workload, temp, tuple(choices)))
    return out


SWEEP_COLUMNS = ("engine", "drafter", "workload", "temperature", "batch_size", "draft_length", "acceptance_length",
                 "speedup_output_tps", "ci95_lo", "ci95_hi", "speedup_user_tps", "choice", "delta_vs_runner_up",
                 "delta_ci95_lo", "delta_ci95_hi", "p_value", "beats_runner_up", "n_prompts")


def sweep_rows(groups: Sequence[SweepGroup]) -> list[dict[str, Any]]:
    """One flat row per (group, batch size, draft length); the verdict sits on the best row."""
    rows = []
    for grp in groups:
        for ch in grp.choices:
            for pt in ch.points:
                best = pt.draft_length == ch.best
                choice = "best" if best else "runner-up" if pt.draft_length == ch.runner_up else ""
                rows.append({
                    "engine": grp.engine, "drafter": grp.drafter, "workload": grp.workload,
                    "temperature": grp.temperature, "batch_size": ch.batch_size, "draft_length": pt.draft_length,
                    "acceptance_length": pt.acceptance_length, "speedup_output_tps": pt.speedup,
                    "ci95_lo": pt.ci95[0] if pt.ci95 else None, "ci95_hi": pt.ci95[1] if pt.ci95 else None,
                    "speedup_user_tps": pt.user_tps_speedup, "choice": choice,
                    "delta_vs_runner_up": ch.delta if best else None,
                    "delta_ci95_lo": ch.delta_ci95[0] if best and ch.delta_ci95 else None,
                    "delta_ci95_hi": ch.delta_ci95[1] if best and ch.delta_ci95 else None,
                    "p_value": ch.p_value if best else None, "beats_runner_up": ch.beats if best else None,
                    "n_prompts": ch.n_prompts,
                })
    return rows


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(lo: Any, hi: Any) -> str:
    return "-" if lo is None or hi is None else f"[{lo:.2f}, {hi:.2f}]"


def sweep_table(groups: Sequence[SweepGroup], fmt: str = "text") -> str:
    """The sweep as an aligned text table, a markdown table or csv."""
    rows = sweep_rows(groups)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    head = ["engine drafter workload", "bs", "gamma", "AL", "speedup (out TPS)", "95% CI", "user TPS x",
            "choice", "best - runner-up [95% CI]", "p", "beats", "n"]
    body = []
    for r in rows:
        delta = "" if r["delta_vs_runner_up"] is None else (
            f"{r['delta_vs_runner_up']:+.3f} " + _interval(r["delta_ci95_lo"], r["delta_ci95_hi"]))
        body.append([f"{r['engine']} {r['drafter']} {r['workload']}", str(r["batch_size"]), str(r["draft_length"]),
                     _f(r["acceptance_length"]), _f(r["speedup_output_tps"], 3), _interval(r["ci95_lo"], r["ci95_hi"]),
                     _f(r["speedup_user_tps"], 3), r["choice"], delta,
                     "" if r["p_value"] is None else f"{r['p_value']:.3f}",
                     "" if r["choice"] != "best" else _f(r["beats_runner_up"]), str(r["n_prompts"])])
    notes = [f"- {g.title} bs{c.batch_size}: {n}" for g in groups for c in g.choices for n in c.notes]
    return _render(head, body, fmt) + ("\n" + "\n".join(notes) if notes else "")


def _render(head: Sequence[str], body: Sequence[Sequence[str]], fmt: str) -> str:
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    fmt_row = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt_row(head), fmt_row(["-" * w for w in widths]), *(fmt_row(r) for r in body)])


def sweep_figure(group: SweepGroup) -> Any:
    """Speedup (output TPS) against draft length, one line per batch size, 95% CIs as error bars."""
    from pytest_speedbench.results.report import _figure

    fig = _figure()
    ax = fig.add_subplot()
    for ch in group.choices:
        if not ch.points:
            continue
        xs = [p.draft_length for p in ch.points]
        ys = [p.speedup for p in ch.points]
        err = [[max(p.speedup - p.ci95[0], 0) if p.ci95 else 0 for p in ch.points],
               [max(p.ci95[1] - p.speedup, 0) if p.ci95 else 0 for p in ch.points]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"batch size {ch.batch_size}")
        best = ch.point(ch.best)
        if best is not None:
            ax.plot([best.draft_length], [best.speedup], marker="*", markersize=14, color="black", linestyle="none")
    ax.set_xticks(sorted({p.draft_length for ch in group.choices for p in ch.points}))
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("draft length (gamma)")
    ax.set_ylabel("speedup over drafter=none (output TPS)")
    ax.set_title(f"{group.title}: speedup vs draft length (* best)")
    ax.legend()
    return fig


def save_sweep_figures(groups: Sequence[SweepGroup], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for g in groups:
        if not any(c.points for c in g.choices):
            continue
        name = f"sweep-{g.engine}-{g.drafter}-{g.workload}-t{g.temperature:g}.png".replace("/", "_")
        path = out / name
        sweep_figure(g).savefig(path)
        paths.append(path)
    return paths


# --- random-token control ----------------------------------------------------------------------


def control_rows(all_entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Real bucket vs its random-token control: same engine, drafter, gamma, batch size, temperature."""
    real = {(e.engine, e.drafter, e.bucket, e.batch_size, e.temperature, e.draft_length): e
            for e in all_entries if e.split == "throughput"}
    rows = []
    for e in all_entries:
        if e.split != CONTROL_SPLIT or e.drafter == "none":
            continue
        twin = real.get((e.engine, e.drafter, e.bucket, e.batch_size, e.temperature, e.draft_length))
        if twin is None:
            continue
        al_r, al_x = twin.info.get("acceptance_length"), e.info.get("acceptance_length")
        sp_r, sp_x = twin.info.get("speedup_output_tps"), e.info.get("speedup_output_tps")
        rows.append({
            "engine": e.engine, "drafter": e.drafter, "bucket": e.bucket, "batch_size": e.batch_size,
            "draft_length": e.draft_length, "al_real": al_r, "al_random": al_x,
            "al_overestimation_pct": overestimation_pct(al_r, al_x), "speedup_real": sp_r, "speedup_random": sp_x,
            "speedup_overestimation_pct": overestimation_pct(sp_r, sp_x),
            "user_speedup_real": twin.info.get("speedup_user_tps"),
            "user_speedup_random": e.info.get("speedup_user_tps"),
            "user_speedup_overestimation_pct": overestimation_pct(
                twin.info.get("speedup_user_tps"), e.info.get("speedup_user_tps")),
        })
    return rows


def control_table(rows: Sequence[Mapping[str, Any]], fmt: str = "text") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return buf.getvalue()
    head = ["engine drafter bucket", "bs", "gamma", "AL real", "AL random", "AL over %", "speedup real",
            "speedup random", "speedup over %", "user x real", "user x random", "user x over %"]
    pct = lambda v: "-" if v is None else f"{v:+.1f}"  # noqa: E731
    body = [[f"{r['engine']} {r['drafter']} {r['bucket']}", str(r["batch_size"]), _f(r["draft_length"]),
             _f(r["al_real"]), _f(r["al_random"]), pct(r["al_overestimation_pct"]), _f(r["speedup_real"], 3),
             _f(r["speedup_random"], 3), pct(r["speedup_overestimation_pct"]), _f(r["user_speedup_real"], 3),
             _f(r["user_speedup_random"], 3), pct(r["user_speedup_overestimation_pct"])] for r in rows]
    return _render(head, body, fmt)


# --- prediction inputs ---------------------------------------------------------------------------


def observation(e: Entry) -> Observation | None:
    """A predictor observation from an entry; None without per-request rows or ISL."""
    rows = e.rows
    isl = e.info.get("isl_mean") or mean_isl(rows)
    if not rows or isl is None:
        return None
    speculative = e.drafter != "none"
    lat = []
    for r in rows:
        decode, den = r.get("decode_s"), r.get("steps") if speculative else r.get("step_tokens")
        if decode is not None and den:
            lat.append(decode / den)
    if not lat:
        return None
    als: dict[str, list[float]] = {}
    if speculative:
        for r in rows:
            if r.get("al") is not None:
                als.setdefault(str(r.get("cat")), []).append(float(r["al"]))
    return Observation(
        e.id, speculative, LatencyPoint(float(isl), e.batch_size, tuple(lat)),
        {c: tuple(v) for c, v in als.items()},
        e.info.get("speedup_user_tps") if speculative else None,
        e.info.get("speedup_baseline") if speculative else None,
        e.unstable,  # its timing is not trusted: `analysis.predict.fit_inputs` decides what it may give
    )


@dataclass(frozen=True)
class PredictConfig:
    """One engine + drafter + draft length + temperature with its observations (AR ones included)."""

    engine: str
    drafter: str
    draft_length: int
    temperature: float
    observations: tuple[Observation, ...]
    skipped: tuple[str, ...]  # cases without per-request rows

    @property
    def unstable(self) -> tuple[str, ...]:
        """The cases whose timing is not trusted (their ALs still count)."""
        return tuple(f"{o.case} ({o.unstable})" for o in self.observations if o.unstable)

    @property
    def title(self) -> str:
        return f"{self.engine} {self.drafter} g{self.draft_length} t{self.temperature:g}"


def predict_configs(all_entries: Sequence[Entry]) -> list[PredictConfig]:
    """Observations per SD configuration; the random-token control is never used."""
    usable = [e for e in all_entries if e.split != CONTROL_SPLIT]
    out = []
    keys = sorted({(e.engine, e.drafter, e.draft_length, e.temperature) for e in usable
                   if e.drafter != "none" and e.draft_length is not None})
    for engine, drafter, g, temp in keys:
        members = [e for e in usable if e.engine == engine and e.temperature == temp
                   and (e.drafter == "none" or (e.drafter == drafter and e.draft_length == g))]
        obs, skipped = [], []
        for e in members:
            o = observation(e)
            (obs.append(o) if o is not None else skipped.append(e.id))
        out.append(PredictConfig(engine, drafter, g, temp, tuple(obs), tuple(skipped)))
    return out
