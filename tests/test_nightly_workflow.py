"""docs/examples/nightly.yml, run step by step as GitHub Actions would, on a fake SGLang.

Four nights, each a fresh checkout per job, the shards' and the gate's artifacts kept between
them, and a stand-in `gh` that hands the gate job the last *successful* night's results, as
GitHub's does. The steps' own `run:` scripts are executed (read from the workflow, `${{ }}`
expressions filled in, `if:` conditions evaluated); only the engine is a fake: the workflow's
`--engine=sglang` launches tests/fakes/fake_sglang_launch.py ($SPEEDBENCH_SGLANG_CMD), and
PYTEST_ADDOPTS points the client at a small prompt file and tokenizer.

1. the first night has no baseline: it passes and records one;
2. a night whose engine does not start fails (its shards fail, and the gate names the cases);
3. a night whose acceptance regressed fails the gate;
4. an unchanged night passes against night 1 (nights 2 and 3 failed, so never became baselines).

The gate uses the workflow's acceptance-length rule only: the timing rules (speedup, TTFT) gate
wall-clock figures, which a shared 2-core test machine cannot hold steady (and are tested with
synthetic runs in tests/test_gates.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FAKES, REPO

WORKFLOW = REPO / "docs" / "examples" / "nightly.yml"
pytestmark = pytest.mark.slow

#: a stand-in `gh`: `run list` prints the last successful night's id, `run download` copies its
#: kept artifact (what the workflow's "Fetch the last successful nightly" step calls)
GH = r'''#!/usr/bin/env python3
import json, os, shutil, sys
from pathlib import Path
store = Path(os.environ["FAKE_GH_STORE"])
args = sys.argv[1:]
if args[:2] == ["run", "list"]:
    assert "--status" in args and args[args.index("--status") + 1] == "success", args
    ok = [n for n in json.loads((store / "nights.json").read_text()) if n["conclusion"] == "success"]
    print(ok[-1]["id"] if ok else "")
elif args[:2] == ["run", "download"]:
    run_id, name, out = args[2], args[args.index("--name") + 1], args[args.index("--dir") + 1]
    src = store / run_id / name
    if not src.is_dir():
        sys.exit(f"no artifact {name} in run {run_id}")
    shutil.copytree(src, out, dirs_exist_ok=True)
else:
    sys.exit(f"stand-in gh: unexpected {args}")
'''


@dataclass
class StepResult:
    name: str
    ran: bool
    code: int = 0
    output: str = ""


@dataclass
class Night:
    id: str
    steps: list[StepResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def conclusion(self) -> str:
        return "failure" if any(s.ran and s.code for s in self.steps) else "success"

    def step(self, name: str) -> StepResult:
        return next(s for s in self.steps if s.name == name)

    def failed(self, prefix: str) -> list[StepResult]:
        return [s for s in self.steps if s.name.startswith(prefix) and s.ran and s.code]


class Runner:
    """Runs the workflow's jobs for one night: shell steps executed, `uses:` steps emulated."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.workflow = yaml.safe_load(WORKFLOW.read_text())
        self.root = root
        self.store = root / "gh-store"  # the runs' kept artifacts, by run id
        self.store.mkdir()
        (self.store / "nights.json").write_text("[]")
        bindir = root / "bin"
        bindir.mkdir()
        (bindir / "gh").write_text(GH.replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))
        (bindir / "gh").chmod(0o755)
        self.env = {**os.environ, **{k: str(v) for k, v in self.workflow["env"].items()}, **env,
                    "PATH": os.pathsep.join([str(bindir), str(Path(sys.executable).parent), os.environ["PATH"]]),
                    "FAKE_GH_STORE": str(self.store)}

    def checkout(self, job: str) -> Path:
        """A fresh workspace, as actions/checkout gives each job: the suite's files."""
        work = self.root / "ws" / job
        shutil.rmtree(work, ignore_errors=True)
        (work / "benchmarks").mkdir(parents=True)
        for name in ("test_speedbench.py", "speedbench.yaml"):
            shutil.copy(REPO / "benchmarks" / name, work / "benchmarks" / name)
        return work

    def expand(self, text: str, shard: int | None) -> str:
        values = {"matrix.shard": str(shard), "inputs.strict": "false", "github.workflow": "speedbench-nightly",
                  "github.ref_name": "main", "github.token": "fake-token", "env.RESULTS_DIR": self.env["RESULTS_DIR"]}
        out = re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], text)
        assert "${{" not in out, out
        return out

    def condition(self, expr: str | None, night: Night, job_ok: bool, work: Path) -> bool:
        """The `if:` expressions the workflow uses (a new one fails here, so this test follows it)."""
        if expr is None:
            return job_ok
        known = {
            "always()": True,
            "steps.baseline.outputs.found == 'true'": job_ok and night.outputs.get("found") == "true",
            "always() && hashFiles('speedbench-results/nightly.json') != ''":
                (work / "speedbench-results" / "nightly.json").is_file(),
        }
        assert expr in known, f"nightly.yml has a new condition this test does not evaluate: {expr}"
        return known[expr]

    def run_job(self, night: Night, job_name: str, shard: int | None = None,
                extra_env: dict[str, str] | None = None) -> None:
        job = self.workflow["jobs"][job_name]
        label = f"{job_name}" + (f"[{shard}]" if shard else "")
        work = self.checkout(label)
        outputs = work.parent / f"{label}.outputs"
        outputs.write_text("")
        job_ok = True
        for step in job["steps"]:
            name = f"{label}: {step.get('name') or step.get('uses')}"
            if not self.condition(step.get("if"), night, job_ok, work):
                night.steps.append(StepResult(name, ran=False))
                continue
            if "uses" in step:
                result = self.uses(step, night, label, work)
            else:
                env = {**self.env, **{k: self.expand(str(v), shard) for k, v in step.get("env", {}).items()},
                       **(extra_env or {}), "GITHUB_OUTPUT": str(outputs), "GITHUB_STEP_SUMMARY": str(work / "summary.md")}
                script = self.expand(step["run"], shard)
                if "pip install" in script:  # the suite is installed already; the engine is the fake
                    result = StepResult(name, ran=True)
                else:
                    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=work, env=env,
                                          capture_output=True, text=True, timeout=600)
                    result = StepResult(name, True, proc.returncode, proc.stdout + proc.stderr)
            result.name = name
            night.steps.append(result)
            if step.get("id") == "baseline":
                night.outputs.update(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
            job_ok = job_ok and not result.code

    def uses(self, step: dict[str, Any], night: Night, label: str, work: Path) -> StepResult:
        action = step["uses"].split("@")[0]
        with_ = step.get("with", {})
        if action in ("actions/checkout", "actions/setup-python"):
            return StepResult("", True)
        if action == "actions/upload-artifact":
            name = self.expand(with_["name"], int(label.split("[")[1][:-1]) if "[" in label else None)
            src = work / self.expand(with_["path"], None)
            if src.is_dir():
                shutil.copytree(src, self.store / night.id / name, dirs_exist_ok=True)
            return StepResult("", True)
        if action == "actions/download-artifact":
            pattern = re.compile(with_["pattern"].replace("*", ".*") + "$")
            dest = work / with_["path"]
            dest.mkdir(parents=True, exist_ok=True)
            assert with_.get("merge-multiple") is True
            for art in sorted((self.store / night.id).glob("*")):
                if pattern.match(art.name):
                    shutil.copytree(art, dest, dirs_exist_ok=True)
            return StepResult("", True)
        raise AssertionError(f"nightly.yml uses an action this test does not emulate: {action}")

    def night(self, number: int, engine_env: dict[str, str]) -> Night:
        night = Night(str(1000 + number))
        shards = self.workflow["jobs"]["bench"]["strategy"]["matrix"]["shard"]
        with ThreadPoolExecutor(len(shards)) as pool:  # matrix jobs run at once, on their own runners
            list(pool.map(lambda shard: self.run_job(night, "bench", shard, engine_env), shards))
        self.run_job(night, "gate")  # needs: bench
        nights = json.loads((self.store / "nights.json").read_text())
        (self.store / "nights.json").write_text(json.dumps(nights + [{"id": night.id, "conclusion": night.conclusion}]))
        return night


def test_the_nightly_workflow_records_then_fails_a_dead_engine_and_a_regression_and_passes_an_unchanged_night(
        tmp_path: Path, tiny_tokenizer_dir: Path, prompts_file: Path, reap):
    addopts = [f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--num-prompts=3",
               "--output-len=32", "--warmup=0", "--speedbench-rounds=1",
               "-k", "qualitative"]  # the workflow's throughput buckets would only repeat the prompts file
    runner = Runner(tmp_path, {
        "PYTEST_ADDOPTS": shlex.join(addopts),
        "SPEEDBENCH_SGLANG_CMD": shlex.join([sys.executable, str(FAKES / "fake_sglang_launch.py")]),
        "FAKE_ENGINE_MARKER": "nightly-workflow-test",  # every fake server is killed at teardown
        "FAIL_RULES": "acceptance_length:-3%",
    })
    reap(marker="nightly-workflow-test")
    good = {"FAKE_ENGINE_ACCEPT": "0.8,0.6,0.4", "FAKE_ENGINE_STEP_MS": "1"}

    first = runner.night(1, good)
    assert first.conclusion == "success", _log(first)
    assert first.outputs["found"] == "false"  # no earlier nightly: records only
    assert not first.step("gate: Gate on the merged run").ran
    baseline = runner.store / first.id / "speedbench-results" / "nightly.json"
    merged = json.loads(baseline.read_text())
    assert merged["speedbench"]["run"]["status"] == "complete"
    # qualitative x {none, eagle3} x batch sizes 1, 4, 16, 64, over the 3 shards
    assert sorted(b["param"] for b in merged["benchmarks"]) == sorted(
        f"sglang-{d}-qualitative-bs{n}-t0" for d in ("none", "eagle3") for n in (1, 4, 16, 64))
    assert all("error" not in b["extra_info"] for b in merged["benchmarks"])

    dead = runner.night(2, {**good, "FAKE_ENGINE_MODE": "crash_start"})
    assert dead.conclusion == "failure"
    assert len(dead.failed("bench[")) == 3, _log(dead)  # every shard's engine failed to start
    gate = dead.step("gate: Gate on the merged run")
    assert gate.ran and gate.code != 0, _log(dead)
    compare = (runner.store / dead.id / "speedbench-results" / "compare.md").read_text()
    assert "failed" in compare and "sglang-eagle3-qualitative-bs1-t0" in compare, compare

    regressed = runner.night(3, {**good, "FAKE_ENGINE_ACCEPT": "0.3,0.2,0.1"})
    assert not regressed.failed("bench["), _log(regressed)  # the shards ran: the gate is what fails
    gate = regressed.step("gate: Gate on the merged run")
    assert gate.code == 1, _log(regressed)
    compare = (runner.store / regressed.id / "speedbench-results" / "compare.md").read_text()
    assert "acceptance_length" in compare and "FAIL" in compare, compare
    assert f"Baseline: run {first.id}" in _fetch_output(regressed)

    unchanged = runner.night(4, good)
    assert f"Baseline: run {first.id}" in _fetch_output(unchanged)  # nights 2 and 3 failed: never baselines
    assert unchanged.conclusion == "success", _log(unchanged)
    assert unchanged.step("gate: Gate on the merged run").code == 0


def _fetch_output(night: Night) -> str:
    return night.step("gate: Fetch the last successful nightly's results (the baseline)").output


def _log(night: Night) -> str:
    return "\n".join(f"--- {s.name}: {'ran' if s.ran else 'skipped'}, exit {s.code}\n{s.output[-3000:]}"
                     for s in night.steps if s.ran)
