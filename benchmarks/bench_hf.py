"""Figures for the hf engine: AL per category, decode ms/token with and without SD, harness overhead.

Not collected by pytest (no test_ prefix). Example (CPU, one thread, 2 prompts per category):

    python benchmarks/bench_hf.py --per-category 2 --output-len 64 --threads 1

For each drafter (none, ngram, draft) it starts HFEngine, sends the bundled qualitative
prompts (chat template applied by the target's tokenizer) one at a time, stamps every chunk
with time.perf_counter() inside on_chunk, and reports:
- AL per category (mean of request ALs, (N - L_0) / (n - 1)) and pooled;
- decode ms/token per request, (t_last - t_0) / (N - L_0), median over requests;
- harness overhead: the engine's E2E time for drafter none against a bare
  `model.generate(...)` of the same prompt and length with no streamer (ratio of medians;
  1.00 = the harness adds nothing). On CUDA both sides are synchronized.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from pytest_speedbench.engines.base import EngineConfig, SamplingParams
from pytest_speedbench.engines.hf import HFEngine
from pytest_speedbench.models import load_tokenizer

PROMPTS = Path(__file__).resolve().parent.parent / "pytest_speedbench" / "data" / "bundled" / "qualitative.jsonl"


def load_prompts(per_category: int) -> list[dict]:
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    taken: dict[str, int] = defaultdict(int)
    out = []
    for row in rows:
        if taken[row["category"]] < per_category:
            taken[row["category"]] += 1
            out.append(row)
    return out


def encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def run_one(engine: HFEngine, ids: list[int], sampling: SamplingParams) -> dict:
    times: list[float] = []
    sizes: list[int] = []

    def on_chunk(new: list[int]) -> None:
        times.append(time.perf_counter())
        sizes.append(len(new))

    t_send = time.perf_counter()
    counters = engine.generate(ids, sampling, on_chunk)
    decoded = sum(sizes) - sizes[0]
    return {
        "al": decoded / (len(sizes) - 1) if len(sizes) > 1 else float("nan"),
        "decoded": decoded,
        "steps": len(sizes) - 1,
        "ms_per_token": 1000 * (times[-1] - times[0]) / decoded if decoded else float("nan"),
        "e2e_s": times[-1] - t_send,
        "counters": counters,
    }


def bare_generate_s(engine: HFEngine, ids: list[int], n: int) -> float:
    """A bare model.generate loop: no streamer, no harness."""
    import torch

    cuda = engine.device.startswith("cuda")
    x = torch.tensor([ids], device=engine.device)
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        engine.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--draft-length", type=int, default=3)
    ap.add_argument("--draft-model", default=None, help="path or layers:N (default: the engine's early-exit default)")
    ap.add_argument("--drafters", default="none,ngram,draft")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    tokenizer = load_tokenizer(None)
    prompts = load_prompts(args.per_category)
    encoded = [encode(tokenizer, p["turns"][0]) for p in prompts]
    sampling = SamplingParams(0.0, args.output_len)
    extra = (("threads", args.threads),) if args.threads else ()
    summary: dict[str, dict] = {}
    for drafter in args.drafters.split(","):
        config = EngineConfig(
            "hf", drafter, draft_model=args.draft_model if drafter == "draft" else None,
            draft_length=args.draft_length, device=args.device, extra=extra,
        )
        engine = HFEngine(config, Path(tempfile.mkdtemp(prefix="bench-hf-")))
        engine.start()
        run_one(engine, encoded[0], SamplingParams(0.0, 8))  # warmup
        results = [run_one(engine, ids, sampling) for ids in encoded]
        by_cat: dict[str, list[float]] = defaultdict(list)
        for p, r in zip(prompts, results):
            by_cat[p["category"]].append(r["al"])
        row = {
            "info": engine.info(),
            "al_by_category": {c: statistics.mean(v) for c, v in sorted(by_cat.items())},
            "al_mean": statistics.mean(r["al"] for r in results),
            "al_pooled": sum(r["decoded"] for r in results) / sum(r["steps"] for r in results),
            "ms_per_token_p50": statistics.median(r["ms_per_token"] for r in results),
        }
        if drafter == "none":
            bare = [bare_generate_s(engine, ids, args.output_len) for ids in encoded]
            row["harness_overhead"] = statistics.median(r["e2e_s"] for r in results) / statistics.median(bare)
        summary[drafter] = row
        engine.stop()

    info = summary[next(iter(summary))]["info"]
    print(f"# hf engine: {info['device']} {info['dtype']}, transformers {info['transformers']}, torch {info['torch']}")
    print(f"# {len(prompts)} prompts, output {args.output_len} tokens, greedy, draft length {args.draft_length}")
    cats = sorted({c for row in summary.values() for c in row["al_by_category"]})
    print("drafter  " + " ".join(f"{c[:8]:>8}" for c in cats) + "    AL  pooled  ms/tok  speedup")
    base = summary.get("none", {}).get("ms_per_token_p50")
    for drafter, row in summary.items():
        al = " ".join(f"{row['al_by_category'].get(c, float('nan')):8.2f}" for c in cats)
        speed = f"{base / row['ms_per_token_p50']:.2f}x" if base else "-"
        name = drafter if drafter != "draft" else f"draft({row['info'].get('draft_model')})"
        print(f"{name:8} {al} {row['al_mean']:5.2f} {row['al_pooled']:7.2f} {row['ms_per_token_p50']:7.1f}  {speed}")
    if "none" in summary:
        print(f"harness overhead (engine E2E / bare model.generate, medians): {summary['none']['harness_overhead']:.3f}")


if __name__ == "__main__":
    main()
