"""Shared fixtures: a tiny real tokenizer, a small prompt file, and fake engine servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib.request
import pytest

REPO = Path(__file__).resolve().parent.parent


def _preload_extensions() -> None:
    """Import torch and transformers (when installed) before any test runs.

    pytester's in-process runs restore sys.modules afterwards, dropping every module first
    imported inside them; a C extension such as torch cannot be imported a second time in one
    process ("SystemError: bad call flags", then a segfault in garbage collection). Loaded
    here, they are part of pytester's snapshot and are never dropped.
    """
    import importlib.util

    for name in ("torch", "transformers", "tokenizers", "matplotlib.pyplot", "pandas", "pyarrow"):
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            try:
                __import__(name)
            except Exception:  # a broken optional install must not stop the tests that need none
                pass


_preload_extensions()
FAKES = Path(__file__).resolve().parent / "fakes"
#: the shipped suite file, so plugin tests drive exactly what users run
SUITE = (REPO / "benchmarks" / "test_speedbench.py").read_text()

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (byte-level BPE) tokenizer with a chat template and a BOS, built in a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the quick brown fox jumps over the lazy dog", "speculative decoding drafts tokens"] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    out = tmp_path_factory.mktemp("tiny-tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six prompts in the SPEED-Bench schema over two categories, one of them two-turn."""
    rows = []
    for i in range(6):
        category = "coding" if i % 2 else "writing"
        turns = [f"prompt {i}: write about foxes and dogs number {i}"]
        if i == 1:
            turns.append("now make it shorter")
        rows.append({"question_id": f"t-{i}", "category": category, "sub_category": "x", "turns": turns,
                     "source": "tests", "src_id": f"t-{i}", "difficulty": "easy", "multiturn": len(turns) > 1})
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def speedbench_suite(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, prompts_file: Path) -> Callable[..., Callable[..., Any]]:
    """`speedbench_suite(*defaults)` -> `run(*args)`: the speedbench SUITE in pytester against SGLang (a fake
    server the test starts) on the tiny tokenizer and prompts file, quick settings plus `defaults`,
    then each call's `args`."""
    pytester.makepyfile(test_speedbench=SUITE)

    def make(*defaults: str) -> Callable[..., pytest.RunResult]:
        def run(*args: str) -> pytest.RunResult:
            return pytester.runpytest(
                "--engine=sglang", f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}",
                "--split=qualitative", "--warmup=0", "-p", "no:cacheprovider", "-W", "ignore::Warning",
                *defaults, *args,
            )

        return run

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeServer:
    url: str
    ground_truth: Path
    process: subprocess.Popen[bytes]

    def truth(self) -> list[dict]:
        if not self.ground_truth.exists():
            return []
        return [json.loads(line) for line in self.ground_truth.read_text().splitlines()]


@pytest.fixture
def fake_sglang(tmp_path: Path) -> Iterator[Callable[..., FakeServer]]:
    """Start fake SGLang servers (`fake_sglang('--coalesce', '2')`); all are killed afterwards."""
    servers: list[FakeServer] = []

    def start(*args: str) -> FakeServer:
        port = free_port()
        truth = tmp_path / f"truth-{port}.jsonl"
        proc = subprocess.Popen(
            [sys.executable, str(FAKES / "fake_sglang.py"), "--port", str(port), "--ground-truth", str(truth), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        server = FakeServer(f"http://127.0.0.1:{port}", truth, proc)
        servers.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # urllib, not httpx: pytester's in-process runs reset sys.modules, which breaks
            # httpx's exception mapping for modules imported inside those runs.
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=0.5) as resp:
                    if resp.status == 200:
                        return server
            except OSError:
                time.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError(f"fake SGLang server exited with code {proc.returncode}")
        raise RuntimeError("fake SGLang server did not start")

    yield start
    for server in servers:
        server.process.kill()
        server.process.wait(5)


def default_signals() -> None:
    """preexec_fn for harness children that a test signals: SIGINT and SIGTERM back to default.

    A background CI job starts with SIGINT ignored, and ignored dispositions survive exec; a
    Python child then never raises KeyboardInterrupt, so a test that sends it SIGINT would
    measure the job's inheritance instead of the plugin's behaviour.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _kill_group_or_pid(pid: int) -> None:
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass


def _pids_with_env_marker(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(entry.name) != os.getpid() \
                    and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def reap() -> Iterator[Callable[..., None]]:
    """Register victims (`reap(pid=...)` for a process and its group, `reap(marker=...)` for every
    process whose environment carries the marker) that are SIGKILLed at teardown, so a failed
    assertion cannot leave a server or its grandchild running for minutes."""
    pids: list[int] = []
    markers: list[str] = []

    def register(*, pid: int | None = None, marker: str | None = None) -> None:
        if pid is not None:
            pids.append(pid)
        if marker is not None:
            markers.append(marker)

    yield register
    for marker in markers:
        pids.extend(_pids_with_env_marker(marker))
    for pid in pids:
        _kill_group_or_pid(pid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The real SGLang tier takes minutes and its own venv: it runs only when asked for with
    `-m real_sglang` (tox -e sglang), never as part of the ordinary `tox -e py` run."""
    if "real_sglang" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the real SGLang tier runs with `tox -e sglang` (-m real_sglang)")
    for item in items:
        if item.get_closest_marker("real_sglang") is not None:
            item.add_marker(skip)
