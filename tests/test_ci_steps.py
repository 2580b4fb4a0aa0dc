"""The CI step runner (.ci/steps.sh): a failed step fails the run, and the run's last lines say
what failed, with that step's own last lines, because a CI log is read from its tail."""

from __future__ import annotations

import subprocess
from pathlib import Path

STEPS = Path(__file__).resolve().parent.parent / ".ci" / "steps.sh"


def _run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"set -uo pipefail; source {STEPS}; {script}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                                            "STEP_TAIL_LINES": "3"})


def test_every_step_passing_passes(tmp_path: Path) -> None:
    done = _run("step one true; step two echo hello; finish", tmp_path)
    assert done.returncode == 0
    assert done.stdout.splitlines()[-1] == "CI passed"
    assert "::: CI step two: exit 0 after" in done.stdout and "hello" in done.stdout


def test_a_failed_step_is_repeated_at_the_tail_and_later_steps_still_run(tmp_path: Path) -> None:
    failing = "sh -c 'for i in 1 2 3 4 5; do echo line$i; done; echo the-cause >&2; exit 3'"
    done = _run(f"step early {failing}; step later echo still-ran; finish", tmp_path)
    assert done.returncode == 1
    assert "still-ran" in done.stdout  # a failure does not stop the run
    tail = done.stdout.splitlines()[-5:]
    assert tail == ["::: CI step early failed; its last 3 lines again:", "line4", "line5", "the-cause",
                    "CI failed: early (exit 3)"]


def test_pytest_collecting_nothing_fails_the_step(tmp_path: Path) -> None:
    done = _run("step empty sh -c 'exit 5'; finish", tmp_path)
    assert done.returncode == 1
    assert "pytest collected no tests (exit 5)" in done.stdout
    assert done.stdout.splitlines()[-1] == "CI failed: empty (exit 5)"


def test_steps_get_no_standard_input(tmp_path: Path) -> None:
    done = subprocess.run(["bash", "-c", f"source {STEPS}; step reads cat; finish"], input="typed\n",
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and "typed" not in done.stdout
