"""Throughput of bucketing + pre-tokenization against raw encoders on the same text, same run.

    python benchmarks/bench_tokenization.py [--prompts 1536] [--tokens 32000] [--tokenizer SPEC]

Workload: `--prompts` texts of about 1.1 x `--tokens` o200k_base tokens (windows over the
Python standard library's sources, so every prompt must be cut to its bucket, the costly path;
`--exact` makes them exact first, like published SPEED-Bench rows). Phases, each timed:
- pipeline: `bucket_prompts` (exact o200k cut, verified) + `PromptEncoder.encode_first_turns`
  (chat template, target encode), no cache;
- raw tiktoken: `encode_ordinary_batch` of the input texts;
- raw tokenizer: the target tokenizer's batch encode of the bucketed texts, no template.
The ratio is (raw tiktoken + raw tokenizer time) / pipeline time, best of --repeats
alternating runs of each phase; the goal is >= 0.8. Peak RSS
is the process's high-water mark after the pipeline phase (run first), minus the mark before it.
Not collected by pytest (name bench_*.py); prints the figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from pytest_speedbench.data.bucketing import count_tokens_batch, o200k
from pytest_speedbench.data.loaders import bucket_prompts
from pytest_speedbench.data.schema import Prompt
from pytest_speedbench.data.tokenize import PromptEncoder


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus(min_chars: int) -> str:
    """Standard-library sources, sorted, concatenated until long enough (deterministic)."""
    root = Path(os.__file__).parent
    parts, size = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        size += len(text)
        if size >= min_chars:
            break
    return "\n".join(parts)


def workload(n: int, tokens: int) -> list[Prompt]:
    chars = int(tokens * 1.1 * 3.6)  # o200k averages ~3.5-4 chars per token on code
    text = corpus(chars * 4)
    step = max(1, (len(text) - chars) // max(n, 1))
    out = []
    for i in range(n):
        start = (i * step) % max(1, len(text) - chars)
        out.append(Prompt(f"bench-{i}", "low_entropy", "", (f"Continue this code:\n\n{text[start:start + chars]}",),
                          "python-stdlib", f"offset={start}", "", False))
    return out


def timed(fn, *args, **kw):
    t = time.perf_counter()
    result = fn(*args, **kw)
    return result, time.perf_counter() - t


def load_tokenizer(spec: str | None):
    if spec and Path(spec).is_dir() and (Path(spec) / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast
        return PreTrainedTokenizerFast.from_pretrained(spec)
    from pytest_speedbench.models import load_tokenizer as models_load
    return models_load(spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=1536)
    ap.add_argument("--tokens", type=int, default=32000)
    ap.add_argument("--tokenizer", default=None, help="target tokenizer (default: the bundled SmolLM2)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats; best time of each phase")
    ap.add_argument("--exact", action="store_true", help="inputs already exact (published-dataset case)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    enc = o200k()
    prompts = workload(args.prompts, args.tokens)
    if args.exact:
        prompts = bucket_prompts(prompts, args.tokens)
    print(f"setup {time.perf_counter() - t0:.1f}s; {len(prompts)} prompts x {args.tokens} o200k tokens, "
          f"tokenizer {getattr(tok, 'name_or_path', type(tok).__name__)}, cores {os.cpu_count()}")

    def pipeline() -> tuple[list[Prompt], int, float, float]:
        bucketed, t_b = timed(bucket_prompts, prompts, args.tokens)
        ids, t_e = timed(PromptEncoder(tok).encode_first_turns, bucketed)
        return bucketed, sum(map(len, ids)), t_b, t_e

    def raw_tiktoken() -> int:
        n = 0
        for s in range(0, len(prompts), 64):
            n += sum(map(len, enc.encode_ordinary_batch([p.turns[0] for p in prompts[s:s + 64]])))
        return n

    def raw_tokenizer(texts: list[str]) -> int:
        n, backend = 0, tok.backend_tokenizer
        for s in range(0, len(texts), 64):
            n += sum(len(e.ids) for e in backend.encode_batch_fast(texts[s:s + 64], add_special_tokens=False))
        return n

    # Phases alternate and each keeps its best time: the machine is shared, so a slow phase
    # usually means a neighbour, not the code. The first pipeline run goes first for peak RSS.
    best: dict[str, float] = {}
    rss_before = rss_after = 0.0
    for rep in range(args.repeats):
        rss_before = rss_before or maxrss_mib()
        bucketed, target_tokens, t_b, t_e = pipeline()
        rss_after = rss_after or maxrss_mib()
        texts = [p.turns[0] for p in bucketed]
        o200k_in, t_tk = timed(raw_tiktoken)
        raw_target, t_tok = timed(raw_tokenizer, texts)
        for key, value in (("bucket", t_b), ("encode", t_e), ("pipeline", t_b + t_e),
                           ("tiktoken", t_tk), ("tokenizer", t_tok), ("raw", t_tk + t_tok)):
            best[key] = min(best.get(key, value), value)
        print(f"  rep {rep}: pipeline {t_b + t_e:.2f} s, raw {t_tk + t_tok:.2f} s")
    counts = count_tokens_batch(texts)
    exact = all(c == args.tokens for c in counts)
    t_bucket, t_encode, t_pipeline = best["bucket"], best["encode"], best["pipeline"]
    t_tiktoken, t_tok, t_raw = best["tiktoken"], best["tokenizer"], best["raw"]

    def rate(n: float, t: float) -> str:
        return f"{n / t / 1e6:6.2f} M tok/s ({t:6.2f} s)"

    print(f"every bucketed prompt exactly {args.tokens} o200k tokens: {exact}")
    print(f"pipeline  bucket {rate(o200k_in, t_bucket)} + encode {rate(target_tokens, t_encode)}"
          f" = {rate(target_tokens, t_pipeline)} target tokens")
    print(f"raw       tiktoken {rate(o200k_in, t_tiktoken)} + tokenizer {rate(raw_target, t_tok)}"
          f" = {rate(raw_target, t_raw)} target tokens")
    print(f"ratio raw/pipeline time: {t_raw / t_pipeline:.2f}  (goal >= 0.8)")
    print("cached re-runs: see benchmarks/bench_prepare.py (a cache hit reads and tokenizes nothing)")
    print(f"peak RSS {rss_after:.0f} MiB (+{rss_after - rss_before:.0f} MiB during the pipeline); "
          f"python {sys.version.split()[0]}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
