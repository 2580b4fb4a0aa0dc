"""The scale-out examples: each passes the linter made for it (when installed: `tox -e lint-examples`
installs them from PyPI), and each runs the suite the way docs/scale-out.md says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def tool(name: str) -> str:
    """The linter's path: on PATH or beside this Python (a venv's bin); skip when absent."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("SPEEDBENCH_REQUIRE_LINTERS"):  # tox -e lint-examples: a missing linter fails
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed (tox -e lint-examples installs it)")
    return found


def lint(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_workflow_passes_actionlint():
    result = lint(tool("actionlint"), "-config-file", str(EXAMPLES / "actionlint.yaml"), str(EXAMPLES / "nightly.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_slurm_script_passes_shellcheck():
    result = lint(tool("shellcheck"), str(EXAMPLES / "slurm-shards.sh"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifest_passes_the_schema_check():
    result = lint(tool("kubernetes-validate"), "--strict", str(EXAMPLES / "k8s-indexed-job.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3, result.stdout


def test_the_linters_catch_a_broken_example(tmp_path):
    """The checks above can fail: a misspelt key fails each linter."""
    manifest = (EXAMPLES / "k8s-indexed-job.yaml").read_text().replace("completionMode:", "completionMod:")
    (tmp_path / "bad.yaml").write_text(manifest)
    assert lint(tool("kubernetes-validate"), "--strict", str(tmp_path / "bad.yaml")).returncode != 0
    workflow = (EXAMPLES / "nightly.yml").read_text().replace("needs: bench", "needs: benchmark")
    (tmp_path / "bad.yml").write_text(workflow)
    assert lint(tool("actionlint"), "-config-file", str(EXAMPLES / "actionlint.yaml"),
                str(tmp_path / "bad.yml")).returncode != 0
    script = (EXAMPLES / "slurm-shards.sh").read_text().replace('"$RESULTS/run.json"', "$RESULTS/run.json")
    (tmp_path / "bad.sh").write_text(script)
    assert lint(tool("shellcheck"), str(tmp_path / "bad.sh")).returncode != 0


# -- the examples agree with each other and with the plugin ----------------------------------------


def test_workflow_matrix_shard_count_and_merge_agree():
    flow = yaml.safe_load((EXAMPLES / "nightly.yml").read_text())
    shards = flow["jobs"]["bench"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, int(flow["env"]["SHARDS"]) + 1))
    bench = "\n".join(s.get("run", "") for s in flow["jobs"]["bench"]["steps"])
    assert '--speedbench-shard="${{ matrix.shard }}/$SHARDS"' in bench
    gate = flow["jobs"]["gate"]
    assert gate["needs"] == "bench" and gate["if"] == "always()"
    runs = "\n".join(s.get("run", "") for s in gate["steps"])
    assert "speedbench merge shards/shard-*.json -o" in runs and "--allow-missing" not in runs
    assert runs.index("speedbench merge") < runs.index("speedbench compare")


def test_kubernetes_shard_count_is_the_jobs_completions():
    docs = list(yaml.safe_load_all((EXAMPLES / "k8s-indexed-job.yaml").read_text()))
    job = next(d for d in docs if d["metadata"]["name"] == "speedbench-shards")
    assert job["spec"]["completionMode"] == "Indexed"
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["SPEEDBENCH_SHARD_COUNT"]) == job["spec"]["completions"]
    assert "--speedbench-shard=auto" in container["args"][0]
    merge = next(d for d in docs if d["metadata"]["name"] == "speedbench-merge")
    assert "speedbench merge /results/shard-*.json" in merge["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_slurm_script_submits_an_array_and_a_dependent_merge(tmp_path):
    """The script as written, with a stand-in `sbatch` that runs each array task and then the
    merge in turn, and a stand-in `pytest`/`speedbench` that log their arguments and environment."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    (bindir / "sbatch").write_text(f"""#!/bin/bash
# stand-in: --array=1-N runs the script N times with Slurm's array variables; else runs it once
array=""; script=""; exports=""
for a in "$@"; do
  case "$a" in --array=*) array="${{a#--array=}}";; --export=*) exports="${{a#--export=}}";; --*) ;; *) script="$a";; esac
done
set -a; IFS=, read -ra kv <<< "$exports"; for x in "${{kv[@]}}"; do [ "$x" != ALL ] && export "$x"; done; set +a
if [ -n "$array" ]; then
  n="${{array#1-}}"
  for i in $(seq 1 "$n"); do
    SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_COUNT=$n bash "$script" >> {log} 2>&1
  done
  echo 4242
else
  bash "$script" >> {log} 2>&1
  echo 4243
fi
""")
    (bindir / "pytest").write_text(f'#!/bin/bash\necho "pytest task=$SLURM_ARRAY_TASK_ID $*" >> {log}\n')
    (bindir / "speedbench").write_text(f'#!/bin/bash\necho "speedbench $*" >> {log}\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SPEEDBENCH_RESULTS": str(tmp_path / "r")}
    env.pop("SPEEDBENCH_STEP", None)
    result = subprocess.run(["bash", str(EXAMPLES / "slurm-shards.sh"), "3"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "submitted array 4242 (3 shards)" in result.stdout
    calls = log.read_text().splitlines()
    shards = [c for c in calls if c.startswith("pytest")]
    assert len(shards) == 3
    for k, call in enumerate(shards, 1):
        assert call.startswith(f"pytest task={k} benchmarks ")
        assert "--speedbench-shard=auto" in call and f"shard-{k}.json" in call
    merges = [c for c in calls if c.startswith("speedbench merge")]
    assert merges == [f"speedbench merge {tmp_path}/r/shard-*.json -o {tmp_path}/r/run.json"]
