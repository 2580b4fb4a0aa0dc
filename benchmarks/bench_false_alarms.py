"""False alarms of the regression gate on an unchanged commit: run the demo N times, compare
every pair of runs (the earlier one as the baseline) with the documented default rules, count the
failures.

Not collected by pytest (no test_ prefix). Example (the goal is 0 false alarms of 10):

    python benchmarks/bench_false_alarms.py --runs 10 --out /tmp/false-alarms

Each run is `pytest benchmarks/ --speedbench-json=run-K.json`, started with the environment's
`pytest` script as `tox -e bench` starts it (the demo profile: bundled model and prompts, on CPU;
extra pytest arguments after `--`). Then, for every pair J < K,
`speedbench compare run-J.json run-K.json --fail RULES` (RULES = `gates.DEFAULT_RULES` unless
--rules is given); exit code 1 is a false alarm, since nothing changed between the runs. The
script prints each run's speedups with their intervals, each comparison's verdict line, and
`false alarms: F of P comparisons of N runs` (P = N(N-1)/2). A run whose case is marked
unstable counts as "unstable", not as an alarm: the gate said it could not judge, which is the
honest answer on a noisy machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from pytest_speedbench.results.gates import DEFAULT_RULES

ROOT = Path(__file__).resolve().parent.parent


def run_demo(path: Path, extra: list[str]) -> float:
    t0 = time.monotonic()
    # started as `tox -e bench` starts it (the environment's `pytest` script): on the 2-core machine
    # `python -m pytest` measured hf-ngram's speedup at 1.66-1.88 and the script at 1.27-1.45, so
    # runs meant for comparison with the main job's must be started the same way
    script = Path(sys.executable).with_name("pytest")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "pytest"]
    cmd = [*launcher, str(ROOT / "benchmarks"), f"--speedbench-json={path}", "-q", "-p", "no:cacheprovider", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if not path.exists():
        raise SystemExit(f"demo run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.monotonic() - t0


def speedup_lines(path: Path) -> list[str]:
    lines = []
    for bench in json.loads(path.read_text())["benchmarks"]:
        extra = bench["extra_info"]
        value, ci = extra.get("speedup_user_tps"), extra.get("speedup_user_tps_ci95")
        if value is None:
            continue
        stability = (extra.get("stability") or {}).get("verdict", "-")
        ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "[-]"
        lines.append(f"    {bench['param']}: AL {extra.get('acceptance_length') or 0:.2f}, user-TPS speedup "
                     f"{value:.2f} {ci_text}, rounds {extra.get('stability', {}).get('round_speedups_user_tps')}, "
                     f"{stability}")
    return lines


def compare(base: Path, run: Path, rules: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pytest_speedbench.cli", "compare", str(base), str(run), "--fail", rules]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1:] or [proc.stderr.strip()]
    return proc.returncode, last[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="demo runs (the first is the baseline)")
    parser.add_argument("--out", type=Path, default=Path("false-alarms"), help="folder for the run files")
    parser.add_argument("--rules", default=DEFAULT_RULES,  # argparse %-formats help texts
                        help=f"compare rules (default {DEFAULT_RULES.replace('%', '%%')})")
    parser.add_argument("--reuse", action="store_true", help="compare run files already in --out, run nothing")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments for each demo run (after --)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [args.out / f"run-{k + 1:02d}.json" for k in range(args.runs)]
    for path in paths:
        if not args.reuse:
            path.unlink(missing_ok=True)
            seconds = run_demo(path, args.pytest_args)
            print(f"{path.name}: {seconds:.0f} s", flush=True)
        for line in speedup_lines(path):
            print(line, flush=True)
    alarms = unstable = 0
    pairs = list(itertools.combinations(paths, 2))  # every earlier run as the baseline of every later one
    for base, run in pairs:
        code, verdict = compare(base, run, args.rules)
        alarms += code == 1
        unstable += "unstable" in verdict
        print(f"compare {base.name} {run.name}: exit {code}: {verdict}", flush=True)
    print(f"false alarms: {alarms} of {len(pairs)} comparisons of {len(paths)} runs (rules {args.rules}; "
          f"comparisons with an unstable case: {unstable})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
