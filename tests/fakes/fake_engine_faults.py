"""Behaviour shared by the fake engine launchers (fake_vllm, fake_trtllm, fake_sglang_launch).

The fakes must accept exactly the real CLI's flags, so everything a test wants to inject
travels in environment variables instead:

  FAKE_ENGINE_MODE         ok | crash_start | slow_start | hang_start | crash_midstream | hang_midstream
  FAKE_ENGINE_DELAY        seconds a slow start takes (default 1.0)
  FAKE_ENGINE_ACCEPT       conditional acceptance per draft position, e.g. "0.8,0.6,0.4"
  FAKE_ENGINE_SEED         seed of the acceptance draw (default 0)
  FAKE_ENGINE_STEP_MS      milliseconds per verification step (default 1)
  FAKE_ENGINE_VERSION      version the fake reports
  FAKE_ENGINE_ARGV_FILE    write the argv received (JSON) to this file at startup
  FAKE_ENGINE_GROUND_TRUTH append each request's emitted step sizes (JSON lines) to this file
  FAKE_ENGINE_WORKER       "1": fork a worker child, as real engines do (teardown must reach it)
  FAKE_ENGINE_IGNORE_SIGTERM "1": ignore SIGTERM (teardown must escalate to SIGKILL)
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("ok", "crash_start", "slow_start", "hang_start", "crash_midstream", "hang_midstream")


def log(*parts: object) -> None:
    print(*parts, flush=True)


@dataclass
class Faults:
    mode: str = "ok"
    delay: float = 1.0
    accept: list[float] = field(default_factory=lambda: [0.8, 0.6, 0.4])
    seed: int = 0
    step_ms: float = 1.0
    version: str | None = None
    ground_truth: Path | None = None
    worker: bool = False
    ignore_sigterm: bool = False

    @classmethod
    def from_env(cls) -> Faults:
        env = os.environ
        mode = env.get("FAKE_ENGINE_MODE", "ok")
        if mode not in MODES:
            raise SystemExit(f"FAKE_ENGINE_MODE={mode!r}; valid: {', '.join(MODES)}")
        accept = [float(x) for x in env.get("FAKE_ENGINE_ACCEPT", "0.8,0.6,0.4").split(",") if x]
        gt = env.get("FAKE_ENGINE_GROUND_TRUTH")
        return cls(
            mode=mode,
            delay=float(env.get("FAKE_ENGINE_DELAY", "1.0")),
            accept=accept,
            seed=int(env.get("FAKE_ENGINE_SEED", "0")),
            step_ms=float(env.get("FAKE_ENGINE_STEP_MS", "1")),
            version=env.get("FAKE_ENGINE_VERSION"),
            ground_truth=Path(gt) if gt else None,
            worker=env.get("FAKE_ENGINE_WORKER") == "1",
            ignore_sigterm=env.get("FAKE_ENGINE_IGNORE_SIGTERM") == "1",
        )

    def begin(self, argv: list[str], banner: str) -> None:
        """Record argv, set signal behaviour, fork the worker, and play the startup faults
        that happen before the server binds its port (crash, hang)."""
        path = os.environ.get("FAKE_ENGINE_ARGV_FILE")
        if path:
            Path(path).write_text(json.dumps(argv))
        log(banner)
        if self.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.worker:
            child = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(3600)"],
                stdin=subprocess.DEVNULL,
            )
            log(f"worker pid {child.pid}")
        if self.mode == "crash_start":
            log("Loading model weights ...")
            log("Traceback (most recent call last):")
            log("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB (fake)")
            sys.exit(1)
        if self.mode == "hang_start":
            log("Loading model weights ... (hangs)")
            while True:
                time.sleep(3600)

    def rng_for(self, prompt: list[int], index: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + hash(tuple(prompt)) % 1_000_000_007 + index)

    def record(self, entry: dict) -> None:
        if self.ground_truth is not None:
            with self.ground_truth.open("a") as f:
                f.write(json.dumps(entry) + "\n")


def draw_steps(rng: random.Random, accept: list[float], budget: int) -> list[int]:
    """Sizes (1 + accepted drafts) of the verification steps after the prefill token."""
    return draw_steps_with_overrun(rng, accept, budget)[0]


def draw_steps_with_overrun(rng: random.Random, accept: list[float], budget: int) -> tuple[list[int], int]:
    """Step sizes, and how many accepted drafts the last step had beyond the token budget.

    Real engines (SGLang 0.5.23, measured) count the last step's accepted drafts before the
    output is cut at max tokens, so their counters exceed the emitted tokens by this overrun.
    The draw consumes the generator exactly as `draw_steps` always did.
    """
    sizes = []
    overrun = 0
    while budget > 0:
        accepted = 0
        for p in accept:
            if rng.random() < p:
                accepted += 1
            else:
                break
        size = min(1 + accepted, budget)
        overrun = 1 + accepted - size
        sizes.append(size)
        budget -= size
    return sizes, overrun
