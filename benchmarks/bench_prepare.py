"""Preparation of a full SPEED-Bench throughput config against its floor, cold and cached, same run.

    python benchmarks/bench_prepare.py [--config throughput_8k] [--prompts 1536] [--dataset DIR]
                                       [--repeats 1] [--keep DIR]

Dataset: `--dataset DIR` (a prepared directory, e.g. from `speedbench prepare`), else a
synthetic one of the real shape written to a temporary folder: `--prompts` rows of the config
in its three entropy levels, first turns of about 1.15 x the bucket in o200k_base tokens (one in
ten at 0.9 x, so it needs padding), windows over the Python standard library's sources (about
3.5 characters per o200k token, like the published text), in `DIR/<config>/test.parquet`.

Phases, each in a fresh child process (so each has its own peak RSS and pays its own imports),
one after another in this run (the machine is shared: compare the ratios, not the seconds,
across runs):
- floor: read the config's first turns (pyarrow), o200k_base-encode them, encode the bucket's
  share of each with the target tokenizer (batch encoders on every core). Nothing cheaper can
  produce exact target ids: it is the work itself, with no selection, cutting, template or cache;
- cold: the suite's preparation with an empty cache (`WorkloadCache.items` + `warmup_items`,
  what a case does before its first request; the tokenizer load included, as in the floor);
- cached: the same again with the cache the cold phase filled.
Each phase prints its seconds and peak RSS (ru_maxrss of that process). The verdict lines check
the issue's targets: cold <= 1.3 x floor + 5 s, cached <= 0.2 x floor + 5 s, peak RSS under
900 MB (8k) or 1.5 GB (32k). Not collected by pytest (name bench_*.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_tokenization import corpus  # benchmarks/ is on sys.path when this script runs

LEVELS = ("low_entropy", "mixed", "high_entropy")
#: RSS targets of the issue, by bucket size in o200k tokens (MB = 10^6 bytes)
RSS_TARGET_MB = {8000: 900, 32000: 1500}


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


# -- dataset -------------------------------------------------------------------------------------

def write_dataset(root: Path, config: str, prompts: int, tokens: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    chars = int(tokens * 1.15 * 3.5)
    text = corpus(chars * 8)
    span = len(text) - chars
    rows: dict[str, list] = {k: [] for k in ("question_id", "category", "sub_category", "turns", "source",
                                             "src_id", "difficulty", "multiturn")}
    for i in range(prompts):
        start = (i * 7919 * 131) % span
        length = chars if i % 10 else int(tokens * 0.9 * 3.5)
        rows["question_id"].append(f"{config}-{i:05d}")
        rows["category"].append(LEVELS[i % len(LEVELS)])
        rows["sub_category"].append("synthetic")
        rows["turns"].append([f"Continue this code:\n\n{text[start:start + length]}"])
        rows["source"].append("python-stdlib")
        rows["src_id"].append(str(start))
        rows["difficulty"].append("")
        rows["multiturn"].append(False)
    path = root / config / "test.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return root


# -- phases (child processes) --------------------------------------------------------------------

def phase_floor(dataset: Path, config: str, tokens: int, tokenizer: str | None) -> dict:
    import pyarrow.parquet as pq

    from pytest_speedbench.data.bucketing import o200k

    started = time.perf_counter()
    enc = o200k()
    tok = _tokenizer(tokenizer)
    backend = tok.backend_tokenizer
    texts = pq.read_table(dataset / config / "test.parquet", columns=["turns"]).column("turns").to_pylist()
    n_target = 0
    for s in range(0, len(texts), 64):
        part = [t[0] for t in texts[s:s + 64]]
        counts = [len(ids) for ids in enc.encode_ordinary_batch(part)]
        # the bucket's share of each text, by characters: about what the exact cut keeps
        cut = [t[: int(len(t) * min(1.0, tokens / c))] for t, c in zip(part, counts)]
        n_target += sum(len(e.ids) for e in backend.encode_batch_fast(cut, add_special_tokens=False))
    return {"seconds": time.perf_counter() - started, "prompts": len(texts), "target_tokens": n_target}


def phase_suite(dataset: Path, config: str, tokenizer: str | None, num_prompts: int, warmup: int) -> dict:
    from pytest_speedbench.data.prompt_cache import PromptCache
    from pytest_speedbench.settings.options import build_settings
    from pytest_speedbench.data.workload import WorkloadCache

    settings = build_settings({"profile": "none", "dataset": str(dataset), "num_prompts": str(num_prompts),
                               "warmup": str(warmup), "tokenizer": tokenizer})
    started = time.perf_counter()
    cache = WorkloadCache(settings, PromptCache())  # as the session makes it: $SPEEDBENCH_CACHE/prompts
    items = cache.items(config)
    warm, source = cache.warmup_items(config, warmup)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "prompts": len(items), "warmup": len(warm), "warmup_source": source,
            "target_tokens": int(sum(len(i.first_ids) for i in items))}


def _tokenizer(spec: str | None):
    from pytest_speedbench.data.workload import _load_tokenizer

    return _load_tokenizer(spec)


def child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase")
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--config")
    ap.add_argument("--tokens", type=int)
    ap.add_argument("--tokenizer")
    ap.add_argument("--num-prompts", type=int)
    ap.add_argument("--warmup", type=int)
    a = ap.parse_args(argv)
    if a.phase == "floor":
        out = phase_floor(a.dataset, a.config, a.tokens, a.tokenizer)
    else:
        out = phase_suite(a.dataset, a.config, a.tokenizer, a.num_prompts, a.warmup)
    out["peak_rss_mb"] = maxrss_mb()
    print("RESULT " + json.dumps(out))
    return 0


def run_child(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"phase {args[0]} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="throughput_8k")
    ap.add_argument("--prompts", type=int, default=1536, help="rows of the synthetic config (all measured)")
    ap.add_argument("--dataset", type=Path, help="a prepared directory to read instead of a synthetic one")
    ap.add_argument("--tokenizer", default=None, help="target tokenizer (default: the bundled SmolLM2)")
    ap.add_argument("--num-prompts", type=int, default=None,
                    help="--num-prompts per entropy level (default: every row, prompts / 3)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="floor/cold/cached rounds; the best of each is kept")
    ap.add_argument("--keep", type=Path, help="write the synthetic dataset here and keep it")
    ap.add_argument("--phases", default="floor,cold,cached",
                    help="phases to run (comma list; e.g. cold,cached for peak RSS alone)")
    args = ap.parse_args(argv)

    from pytest_speedbench.data.schema import bucket_tokens

    tokens = bucket_tokens(args.config)
    if tokens is None:
        raise SystemExit(f"--config must be a throughput config, got {args.config}")
    num_prompts = args.num_prompts or max(1, args.prompts // len(LEVELS))
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        dataset = args.dataset
        if dataset is None:
            t = time.perf_counter()
            dataset = write_dataset(args.keep or Path(tmp) / "data", args.config, args.prompts, tokens)
            print(f"synthetic {args.config}: {args.prompts} rows written in {time.perf_counter() - t:.1f} s")
        common = ["--dataset", str(dataset), "--config", args.config, "--tokens", str(tokens)]
        if args.tokenizer:
            common += ["--tokenizer", args.tokenizer]
        suite = common + ["--num-prompts", str(num_prompts), "--warmup", str(args.warmup)]
        best: dict[str, dict] = {}
        for rep in range(args.repeats):
            env = {**os.environ, "SPEEDBENCH_CACHE": str(Path(tmp) / f"cache-{rep}")}
            for name, phase_args in (("floor", ["floor", *common]), ("cold", ["suite", *suite]),
                                     ("cached", ["suite", *suite])):
                if name not in args.phases.split(","):
                    continue
                result = run_child(phase_args, env)
                print(f"  rep {rep} {name:6s} {result['seconds']:7.1f} s  peak RSS {result['peak_rss_mb']:6.0f} MB  "
                      + ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("seconds", "peak_rss_mb")))
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = result
    first = best.get("cold") or best.get("cached") or best["floor"]
    print(f"{args.config}, {first['prompts']} prompts, {os.cpu_count()} cores, python {sys.version.split()[0]}"
          + (f"; warmup {first['warmup']} ({first['warmup_source']})" if "warmup" in first else ""))
    floor = best["floor"]["seconds"] if "floor" in best else None
    limits = {"cold": (1.3, 5.0), "cached": (0.2, 5.0)}
    for name in ("floor", "cold", "cached"):
        if name not in best:
            continue
        r = best[name]
        line = f"{name:6s} {r['seconds']:7.1f} s   peak RSS {r['peak_rss_mb']:5.0f} MB"
        if floor and name in limits:
            k, c = limits[name]
            verdict = "met" if r["seconds"] <= k * floor + c else "MISSED"
            line += f"   = {r['seconds'] / floor:.2f} x floor; target <= {k} x floor + {c:g} s = {k * floor + c:.1f} s: {verdict}"
        print(line)
    rss_target = RSS_TARGET_MB.get(tokens)
    suite_rss = [best[n]["peak_rss_mb"] for n in ("cold", "cached") if n in best]
    if rss_target and suite_rss:
        rss = max(suite_rss)
        print(f"suite peak RSS {rss:.0f} MB, target < {rss_target} MB: {'met' if rss < rss_target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
