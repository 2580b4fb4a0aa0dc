"""The real SGLang tier: SGLang 0.5.23 on this CPU-only machine, through the adapter's launch path.

Run with `tox -e sglang` (installs ../shared/sglang-cpu into a cached venv outside the repo,
then `pytest -m real_sglang`). SGLang's kernels are a pure-torch stand-in there, so nothing
here asserts a timing: wire format, counters, readiness, state between cases and teardown are
real and are what is checked. Each drafter's server starts once and serves batch sizes 1 and 4
over the same prompts (4 categories x 1 prompt, greedy, 32 tokens); the draft drafter is
STANDALONE with the target's first 24 of 30 layers (`layers:24`, greedy agreement ~0.36 per
token, so acceptance is neither 0 nor 1).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_speedbench.engines.lifecycle import process_group_members
from pytest_speedbench.models import cache_root
from pytest_speedbench.session import SpeedbenchSession
from pytest_speedbench.settings.matrix import EngineKey
from pytest_speedbench.settings.options import build_settings

pytestmark = [pytest.mark.real_engine, pytest.mark.real_sglang]

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPEEDBENCH_SHARED_DIR") or ROOT.parent / "shared") / "sglang-cpu"
VENV = Path(os.environ.get("SPEEDBENCH_SGLANG_VENV") or cache_root() / "venvs" / "sglang-0.5.23")
TIER_YAML = Path(__file__).with_name("sglang-cpu.yaml")
DRAFTERS = ("none", "ngram", "draft")
BATCH_SIZES = (1, 4)
DRAFT_LAYERS = 24


def _skip_reason() -> str | None:
    if not (VENV / "bin" / "python").exists():
        if not SHARED.is_dir():
            return (f"{SHARED} is absent (the SGLang CPU installer lives beside the repo on the project's "
                    "machines) and no SGLang venv exists")
        return f"no SGLang venv at {VENV}: run `tox -e sglang` (it installs one with {SHARED}/install.sh)"
    return None


@pytest.fixture(scope="module")
def tier_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    return tmp_path_factory.mktemp("sglang-real")


@pytest.fixture(scope="module")
def target_model() -> str:
    from pytest_speedbench.models import resolve_model

    return str(resolve_model(None).hf_dir)  # the bundled SmolLM2, converted once into the cache


@pytest.fixture(scope="module")
def runs(tier_root: Path, target_model: str) -> dict[str, dict[str, Any]]:
    """Every drafter at every batch size: one server per drafter, started and stopped here."""
    os.environ["SPEEDBENCH_SGLANG_CMD"] = f"{VENV}/bin/python -m sglang.launch_server"
    out: dict[str, dict[str, Any]] = {}
    try:
        for drafter in DRAFTERS:
            out[drafter] = _run_drafter(tier_root / drafter, drafter, target_model)
    finally:
        os.environ.pop("SPEEDBENCH_SGLANG_CMD", None)
    return out


def _run_drafter(root: Path, drafter: str, model: str) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    cli = {"engine": "sglang", "drafter": drafter, "batch_size": ",".join(map(str, BATCH_SIZES)),
           "model": model, "draft_model": f"layers:{DRAFT_LAYERS}", "category": "coding,math,qa,writing",
           "num_prompts": "1", "output_len": "32", "warmup": "1", "profile": "none",
           "ready_timeout": "900", "request_timeout": "600", "json": str(root / "results.json")}
    settings = build_settings(cli, {}, TIER_YAML)
    session = SpeedbenchSession(settings, root)
    key = EngineKey("sglang", drafter)
    engine = session.pool.start(key)
    pgid = engine._server.pid if engine._server is not None else None  # noqa: SLF001 - teardown check
    results: dict[int, Any] = {}
    try:
        for case in session.matrix.cases:
            result = session.run_case(case, engine, f"real::{case.id}", case.id)
            results[case.batch_size] = (case, result, session.runner.runs[case][0])
    finally:
        engine.stop()
    return {"engine_info": session.pool.info[str(key)], "results": results, "pgid": pgid,
            "port": engine.base_url.rsplit(":", 1)[-1]}


def _measured(run: Any) -> list[Any]:
    return [r for r in run.requests if not r.warmup]


def test_readiness_503_until_warm_then_200(runs: dict[str, dict[str, Any]]) -> None:
    """The adapter waited through "refused"/503 and started measuring only after a 200."""
    for drafter, data in runs.items():
        seen = data["engine_info"]["readiness"]
        assert seen[-1] == "200", (drafter, seen)
        assert seen[0] in ("refused", "503"), (drafter, seen)  # it was probed before it was ready
        assert data["engine_info"]["ready_s"] > 0


def test_server_info_facts_recorded(runs: dict[str, dict[str, Any]]) -> None:
    expected = {"none": None, "ngram": "NGRAM", "draft": "STANDALONE"}
    for drafter, data in runs.items():
        facts = data["engine_info"]["server_info"]
        assert facts["version"] == "0.5.23"
        assert facts["speculative_algorithm"] == expected[drafter]
        assert facts["attention_backend"]  # what ran (the shim's intel_amx here)
        if drafter != "none":
            assert facts["speculative_num_draft_tokens"] == 4
        if drafter == "draft":
            assert f"layers{DRAFT_LAYERS}" in facts["speculative_draft_model_path"]


def test_every_case_was_reset_with_flush_cache(runs: dict[str, dict[str, Any]]) -> None:
    for drafter, data in runs.items():
        for bs, (case, result, _) in data["results"].items():
            reset = result.extra_info["state_reset"]
            assert reset["method"] == "flush_cache" and reset["ok"], (case.id, reset)
            assert ("NGRAM corpus" in reset["cleared"]) == (drafter == "ngram")
            assert result.extra_info["warmup_prompts"]["source"] == "outside"
            assert not result.extra_info["warnings"], result.extra_info["warnings"]
            assert not result.failures, result.failures


def test_counters_agree_with_streamed_tokens_after_end_effect(runs: dict[str, dict[str, Any]]) -> None:
    """Per request: at most one stream event per verify step (the server may merge events when
    its output path falls behind, never split them), and verify steps + accepted drafts equal
    the tokens after the prefill token, or exceed them by at most gamma where the last step was
    cut at max_new_tokens (SGLang counts that step's accepted drafts before the cut; measured:
    a STANDALONE request with 20 steps + 14 accepted = 34 for 31 tokens)."""
    gamma = 3
    checked = 0
    for drafter in ("ngram", "draft"):
        for bs, (case, _, run) in runs[drafter]["results"].items():
            for r in _measured(run):
                c = r.counters
                assert c is not None and c["decode_steps"] > 0, (case.id, r.prompt_id)
                after_prefill = sum(r.chunk_tokens) - r.chunk_tokens[0]
                assert c["decode_steps"] >= len(r.chunk_tokens) - 1, (case.id, r.prompt_id, c, r.chunk_tokens)
                overrun = c["decode_steps"] + c["accepted"] - after_prefill
                assert 0 <= overrun <= gamma, (case.id, r.prompt_id, c, r.chunk_tokens)
                assert c["drafted"] == c["decode_steps"] * gamma  # proposed = verify count x (draft tokens - 1)
                checked += 1
    assert checked == 2 * len(BATCH_SIZES) * 4


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_greedy_output_identical_across_drafters_and_batch_sizes(runs: dict[str, dict[str, Any]]) -> None:
    """Lossless SD: greedy output does not depend on the drafter or the batch size. The tier runs
    bfloat16 (the CPU engine's attention path), where a verify pass over several tokens rounds
    differently from one-token decode, so a near-tie can flip one token and the text goes its
    own way from there (seen once in CI, 2026-12-07: ngram bs1, sb-coding-006, token 20 of 32).
    So: at most one prompt of four may diverge per (drafter, batch size), and not before token 8;
    a broken verify or a state leak between requests diverges early and everywhere."""
    outputs: dict[tuple[str, int], dict[str, list[int]]] = {}
    for drafter, data in runs.items():
        for bs, (case, _, run) in data["results"].items():
            outputs[(drafter, bs)] = {r.prompt_id: r.output_ids for r in _measured(run)}
    reference = outputs[("none", 1)]
    assert len(reference) == 4 and all(len(ids) == 32 for ids in reference.values())
    for key, got in outputs.items():
        assert set(got) == set(reference), key
        diverged = {pid: _common_prefix(ids, reference[pid]) for pid, ids in got.items() if ids != reference[pid]}
        assert len(diverged) <= 1 and all(at >= 8 for at in diverged.values()), \
            f"{key} differs from none at batch size 1 (prompt: first differing token): {diverged}"


def test_al_at_batch_size_4_equals_batch_size_1_within_interval(runs: dict[str, dict[str, Any]]) -> None:
    """The drafter-memory fix: without the reset, NGRAM at batch size 4 replays batch size 1's
    answers (measured on this server: AL 1.18 -> 3.91)."""
    for drafter in ("ngram", "draft"):
        res = runs[drafter]["results"]
        al1, ci1 = res[1][1].extra_info["acceptance_length"], res[1][1].extra_info["acceptance_length_ci95"]
        al4, ci4 = res[4][1].extra_info["acceptance_length"], res[4][1].extra_info["acceptance_length_ci95"]
        assert al1 > 1.0 and al4 > 1.0, (drafter, al1, al4)  # something was accepted
        assert ci1[0] - 1e-9 <= al4 <= ci1[1] + 1e-9 or ci4[0] - 1e-9 <= al1 <= ci4[1] + 1e-9, \
            (drafter, al1, ci1, al4, ci4)


def test_teardown_leaves_no_process(runs: dict[str, dict[str, Any]]) -> None:
    for drafter, data in runs.items():
        assert data["pgid"] is not None
        assert not process_group_members(data["pgid"]), (drafter, process_group_members(data["pgid"]))
        listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        assert f"--port {data['port']}" not in listing, (drafter, data["port"])
