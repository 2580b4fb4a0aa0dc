"""`speedbench sweep` and `speedbench predict` on synthetic results files with per-request rows."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from pytest_speedbench.cli import main

CATS = {"qualitative": ("coding", "writing"), "throughput": ("low_entropy", "high_entropy"),
        "random": ("low_entropy", "high_entropy")}
AL = {"coding": 2.4, "writing": 1.5, "low_entropy": 2.6, "high_entropy": 1.3}
ISL = {None: 120, "1k": 1000, "2k": 2000}


def t_ar(isl: float, bs: int) -> float:
    return (0.010 + 3e-6 * isl) * (1 + 0.25 * (bs - 1))


def t_sd(isl: float, bs: int, g: int) -> float:
    """SD steps cost more per draft token, much more at batch size 4: best gamma falls with batch size."""
    return t_ar(isl, bs) * (1.05 + (0.04 if bs == 1 else 0.35) * g)


def al_of(cat: str, g: int, split: str) -> float:
    if split == "random":
        return 1.0 + (AL[cat] - 1.0) * 1.3 * (1 - 0.5 ** g) / 0.5  # inflated by trivial outputs
    return 1.0 + (AL[cat] - 1.0) * (1 - 0.5 ** g) / 0.5


def entry(split: str, bucket: str | None, bs: int, drafter: str, g: int | None, rng) -> dict:
    rows = []
    for i, cat in enumerate(c for c in CATS[split] for _ in range(8)):
        isl = ISL[bucket] + int(rng.integers(-20, 20))
        al = al_of(cat, g, split) * rng.normal(1, 0.03) if g else 1.0
        step = (t_sd(isl, bs, g) if g else t_ar(isl, bs)) * rng.normal(1, 0.02)
        steps = round(32 / al)
        decode = steps * step
        rows.append({"id": f"{split}-{i}", "cat": cat, "turn": 0, "isl": isl, "tokens": 33, "step_tokens": 32,
                     "e2e_s": decode + 0.05, "decode_s": decode, "steps": steps, "al": 32 / steps if g else 1.0})
    window = sum(r["e2e_s"] for r in rows) / bs
    info = {"per_request": rows, "isl_mean": float(np.mean([r["isl"] for r in rows])),
            "output_tps": sum(r["tokens"] for r in rows) / window,
            "user_tps": {"mean": float(np.mean([32 / r["decode_s"] for r in rows]))},
            "acceptance_length": float(np.mean([r["al"] for r in rows])), "draft_length": g or 0}
    params = {"engine": "llamacpp", "drafter": drafter, "split": split, "bucket": bucket, "batch_size": bs,
              "temperature": 0.0}
    if g:
        params["draft_length"] = g
    ws = split if bucket is None else f"{split}-{bucket}"
    cid = f"llamacpp-{drafter}-{ws}-bs{bs}-t0" + (f"-g{g}" if g else "")
    return {"name": f"test_speedbench[{cid}]", "param": cid, "params": params, "extra_info": info}


def add_speedups(benches: list[dict]) -> None:
    ar = {(b["params"]["split"], b["params"]["bucket"], b["params"]["batch_size"]): b for b in benches
          if b["params"]["drafter"] == "none"}
    for b in benches:
        p = b["params"]
        if p["drafter"] == "none":
            continue
        twin = ar[(p["split"], p["bucket"], p["batch_size"])]
        b["extra_info"]["speedup_output_tps"] = b["extra_info"]["output_tps"] / twin["extra_info"]["output_tps"]
        b["extra_info"]["speedup_user_tps"] = b["extra_info"]["user_tps"]["mean"] / twin["extra_info"]["user_tps"]["mean"]
        b["extra_info"]["speedup_baseline"] = twin["param"]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    benches = []
    for split, bucket in (("qualitative", None), ("throughput", "1k"), ("throughput", "2k"), ("random", "1k")):
        for bs in (1, 4):
            benches.append(entry(split, bucket, bs, "none", None, rng))
            for g in (1, 2, 3, 4) if (split, bucket) == ("throughput", "1k") else (2,):
                benches.append(entry(split, bucket, bs, "ngram", g, rng))
    add_speedups(benches)
    path = tmp_path / "0001_sweep.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sweep_picks_a_shorter_draft_at_the_larger_batch_size(capsys, results: Path) -> None:
    code, out, _ = run(capsys, "sweep", str(results), "--format", "csv", "--n-boot", "500")
    assert code == 0
    table = out.split("\n\n")[0]
    rows = [r for r in csv.DictReader(io.StringIO(table)) if r["workload"] == "throughput-1k"]
    best = {int(r["batch_size"]): int(r["draft_length"]) for r in rows if r["choice"] == "best"}
    assert best[1] > best[4]
    assert best[4] == 1
    for r in rows:
        assert float(r["ci95_lo"]) <= float(r["speedup_output_tps"]) <= float(r["ci95_hi"])
    assert {r["beats_runner_up"] for r in rows if r["choice"] == "best"} <= {"True", "False"}
    assert sorted({int(r["draft_length"]) for r in rows}) == [1, 2, 3, 4]


def test_sweep_text_markdown_plot_and_control(capsys, results: Path, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "sweep", str(results), "--n-boot", "300", "--plot", str(tmp_path / "figs"))
    assert code == 0
    assert "speedup (out TPS)" in out and "best" in out
    assert "random-token control vs the real bucket" in out
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert any("throughput-1k" in p.name for p in pngs)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    code, md, _ = run(capsys, "sweep", str(results), "--format", "markdown", "--n-boot", "300")
    assert md.startswith("| engine drafter workload |")


def test_control_reports_the_overestimation(capsys, results: Path) -> None:
    code, out, _ = run(capsys, "sweep", str(results), "--format", "csv", "--n-boot", "300")
    control = list(csv.DictReader(io.StringIO(out.split("\n\n")[-1].strip())))
    (bs1,) = [r for r in control if r["batch_size"] == "1"]
    expected = (float(bs1["al_random"]) - float(bs1["al_real"])) / float(bs1["al_real"]) * 100
    assert float(bs1["al_overestimation_pct"]) == pytest.approx(expected)
    assert float(bs1["al_overestimation_pct"]) > 10  # the synthetic control inflates AL by ~30%
    assert float(bs1["speedup_overestimation_pct"]) > 0


def test_sweep_usage_errors(capsys, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    code, _, err = run(capsys, "sweep", str(empty))
    assert code == 2 and "no speculative case with a draft length" in err
    code, _, err = run(capsys, "sweep", str(empty), "--n-boot", "10")
    assert code == 2 and "--n-boot 10" in err


def test_predict_interpolates_between_buckets(capsys, results: Path) -> None:
    code, out, _ = run(capsys, "predict", str(results), "--mix", "coding=0.5,writing=0.5", "--isl", "1500",
                       "--batch-size", "1", "--draft-length", "2", "--n-boot", "400")
    assert code == 0, out
    line = next(ln for ln in out.splitlines() if "predicted speedup" in ln)
    value = float(line.split(": ")[1].split()[0])
    al = np.mean([al_of("coding", 2, "qualitative"), al_of("writing", 2, "qualitative")])
    truth = t_ar(1500, 1) * al / t_sd(1500, 1, 2)
    assert value == pytest.approx(truth, rel=0.06)


def test_predict_check_reports_held_out_errors(capsys, results: Path) -> None:
    code, out, _ = run(capsys, "predict", str(results), "--check", "--draft-length", "2", "--n-boot", "300")
    assert code == 0
    held = [ln for ln in out.splitlines() if ln.startswith("    ") and "error" in ln]
    assert len(held) >= 4  # 3 workloads x 2 batch sizes minus those that cannot be fitted
    errors = [abs(float(ln.split("error ")[1].split("%")[0])) for ln in held]
    assert max(errors) < 15
    assert "random" not in out  # the control never feeds a prediction


@pytest.mark.parametrize("argv, message", [
    (["--mix", "math=1", "--isl", "1000", "--batch-size", "1"], "no measured AL for math"),
    (["--mix", "coding:1", "--isl", "1000", "--batch-size", "1"], "'coding:1' is not CATEGORY=WEIGHT"),
    (["--mix", "coding=1", "--isl", "1000", "--batch-size", "8"], "batch size 8 is outside the measured batch sizes 1, 4"),
    (["--mix", "coding=1", "--isl", "0", "--batch-size", "1"], "--isl 0"),
    (["--mix", "coding=1"], "give --mix, --isl and --batch-size"),
    (["--check", "--drafter", "eagle3"], "--drafter eagle3: not in these results; valid: ngram"),
])
def test_predict_usage_errors_name_the_bad_value(capsys, results: Path, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, "predict", str(results), "--draft-length", "2", *argv)
    assert code == 2 and message in err, err


def test_sweep_figure_has_one_line_per_batch_size_over_the_draft_lengths(results: Path) -> None:
    from pytest_speedbench.analysis import sweeps
    from pytest_speedbench.results.export import load_runs

    groups = sweeps.sweep(sweeps.entries(load_runs([str(results)])), n_boot=200)
    (grp,) = [g for g in groups if g.workload == "throughput-1k"]
    ax = sweeps.sweep_figure(grp).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["batch size 1", "batch size 4"]
    assert list(ax.get_xticks()) == [1, 2, 3, 4]


def test_an_unstable_case_is_never_the_best_draft_length_nor_a_fit_point(capsys, results: Path) -> None:
    """The sweep's best at bs 1 was a long draft; marked unstable, it is left out of the choice with
    the reason; predict keeps its ALs, uses its step latency only because no stable case shares its
    batch size (saying so), and leaves it out of the leave-one-out check, naming it."""
    code, out, _ = run(capsys, "sweep", str(results), "--format", "csv", "--n-boot", "300")
    table = out.split("\n\n")[0]
    best = next(int(r["draft_length"]) for r in csv.DictReader(io.StringIO(table))
                if r["workload"] == "throughput-1k" and r["batch_size"] == "1" and r["choice"] == "best")
    doc = json.loads(results.read_text())
    for b in doc["benchmarks"]:
        p = b["params"]
        if (p["split"], p["bucket"], p["batch_size"], p.get("draft_length")) == ("throughput", "1k", 1, best):
            b["extra_info"]["stability"] = {"verdict": "unstable", "reasons": ["rounds 1.61 and 0.23 disagree"]}
            unstable_case = b["param"]
    results.write_text(json.dumps(doc))
    code, out, _ = run(capsys, "sweep", str(results), "--format", "csv", "--n-boot", "300")
    assert code == 0
    table = out.split("\n\n")[0]
    rows = [r for r in csv.DictReader(io.StringIO(table)) if r["workload"] == "throughput-1k" and r["batch_size"] == "1"]
    assert best not in {int(r["draft_length"]) for r in rows}  # not a candidate at all
    code, out, _ = run(capsys, "sweep", str(results), "--n-boot", "300")
    assert (f"- {rows[0]['engine']} ngram throughput-1k t0 bs1: draft length {best} left out of the choice, unstable: "
            "rounds 1.61 and 0.23 disagree") in out.splitlines()
    code, out, err = run(capsys, "predict", str(results), "--mix", "low_entropy=1", "--isl", "1500",
                         "--batch-size", "1", "--draft-length", str(best), "--n-boot", "200")
    assert code == 0, err
    assert f"timing not trusted (rounds disagreed): {unstable_case} (unstable: rounds 1.61 and 0.23 disagree)" in out
    # the only SD case at batch size 1: its latency is used, said so; batch size 4 stays stable
    assert (f"note: SD step latency at batch size 1 from unstable case(s) only ({unstable_case}: unstable: rounds "
            "1.61 and 0.23 disagree): the band does not cover that noise") in out
    assert "batch size 4 from unstable" not in out
    code, out, _ = run(capsys, "predict", str(results), "--check", "--draft-length", str(best), "--n-boot", "200")
    (line,) = [ln for ln in out.splitlines() if ln.strip().startswith(f"{unstable_case}:")]
    assert "not checked, its measured speedup is not trusted (unstable: rounds 1.61 and 0.23 disagree)" in line


def test_predict_still_answers_when_every_sd_case_is_unstable(capsys, results: Path) -> None:
    """One noisy run (every SD case's rounds disagreed, as on a loaded 2-core machine) still gives a
    prediction: ALs do not depend on timing, the unstable step latencies are the only ones there
    are, and the output says the band does not cover that noise."""
    code, out, _ = run(capsys, "predict", str(results), "--mix", "coding=1", "--isl", "1500", "--batch-size", "1",
                       "--draft-length", "2", "--n-boot", "200")
    assert code == 0
    stable = float(out.split("predicted speedup at ISL 1500, batch size 1: ")[1].split()[0])
    doc = json.loads(results.read_text())
    for b in doc["benchmarks"]:
        if b["params"].get("drafter") != "none":
            b["extra_info"]["stability"] = {"verdict": "unstable", "reasons": ["rounds 1.26 and 1.60 disagree"]}
    results.write_text(json.dumps(doc))
    code, out, err = run(capsys, "predict", str(results), "--mix", "coding=1", "--isl", "1500", "--batch-size", "1",
                         "--draft-length", "2", "--n-boot", "200")
    assert code == 0, err
    assert float(out.split("predicted speedup at ISL 1500, batch size 1: ")[1].split()[0]) == pytest.approx(stable)
    assert "note: SD step latency at batch size 1 from unstable case(s) only (" in out
    assert "rounds 1.26 and 1.60 disagree): the band does not cover that noise" in out
    assert "AR step latency from unstable" not in out  # the AR side stayed stable
