"""One config's prompts prepared for a run: sampled, bucketed and tokenized once, kept compact.

Why one pass: the measured prompts and the warmup prompts (outside them) come from the same
ranking, so one read, one bucketing and one tokenization serve both; nothing is redone per
warmup count or per case. Why compact: a full throughput config is ~50M target tokens, which
as tuples of Python ints take ~2 GB and as int32 200 MB. Why cached: on a hit (same dataset
files, config, selection, tokenizer and template: `cache_key`) the ids are memory-mapped from
`data.prompt_cache` and nothing is read, bucketed or tokenized.

The first turn's text is dropped once it is tokenized; only multi-turn prompts keep their
texts, which later turns need to build the conversation.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_speedbench.data.prompt_cache import PromptCache

CACHE_VERSION = "prepared-1"
#: prompts bucketed and tokenized together: bounds the texts and id lists alive at once
CHUNK = 64
#: a progress line at most this often while preparing
EVERY_S = 10.0


@dataclass(frozen=True)
class Selection:
    """Which prompts of a config a run uses: what `load_prompts` is asked, plus the warmup."""

    num_prompts: int | None
    categories: tuple[str, ...] = ()
    seed: int = 0
    #: prompts outside the measured ones to prepare for warmup (0: warm up on measured ones)
    warmup: int = 0


@dataclass
class PreparedPrompts:
    """Prompts of one config: the measured ones first, then the warmup ones (outside them).

    Prompt i's first-turn ids are `ids[offsets[i]:offsets[i + 1]]` (int32; a view of the cache
    file on a hit). `turns` holds the texts of multi-turn prompts only, by index.
    """

    config: str
    prompt_ids: list[str]
    categories: list[str]
    ids: np.ndarray
    offsets: np.ndarray
    n_measured: int
    turns: dict[int, tuple[str, ...]] = field(default_factory=dict)
    from_cache: bool = False

    def first_ids(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @property
    def n_warmup(self) -> int:
        return len(self.prompt_ids) - self.n_measured

    def meta(self) -> dict[str, Any]:
        return {"config": self.config, "prompt_ids": self.prompt_ids, "categories": self.categories,
                "n_measured": self.n_measured, "turns": {str(k): list(v) for k, v in self.turns.items()}}

    @classmethod
    def from_cache_entry(cls, ids: np.ndarray, offsets: np.ndarray, meta: dict[str, Any]) -> PreparedPrompts:
        return cls(meta["config"], list(meta["prompt_ids"]), list(meta["categories"]), ids, offsets,
                   int(meta["n_measured"]), {int(k): tuple(v) for k, v in meta.get("turns", {}).items()},
                   from_cache=True)


def cache_key(identity: str, config: str, selection: Selection, encoder_fingerprint: str) -> str:
    """sha256 of everything that decides the prepared ids: the dataset's files (`identity`),
    config, selection, and the tokenizer + chat template (`PromptEncoder.fingerprint`)."""
    h = hashlib.sha256()
    for part in (CACHE_VERSION, identity, config, repr(selection), encoder_fingerprint):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:40]


class Ticker:
    """Says `text(done, total)` at most every `every` seconds (and not at all for short work)."""

    def __init__(self, say: Callable[[str], None] | None, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.every, self.clock = say, EVERY_S if every is None else every, clock
        self.started = self.last = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def __call__(self, text: Callable[[float], str]) -> None:
        now = self.clock()
        if self.say is not None and now - self.last >= self.every:
            self.last = now
            self.say(text(now - self.started))


def prepare(dataset: str, config: str, selection: Selection, encoder: Any, *,
            cache: PromptCache | None = None, say: Callable[[str], None] | None = None,
            workers: int | None = None) -> PreparedPrompts:
    """The config's prompts for `selection`, from the cache or prepared (and then cached).

    `say` receives progress lines ("throughput_32k: bucketing + tokenizing 512/1536 prompts,
    12 s") at most every EVERY_S, and one line when done. Bucketing runs on `workers` threads
    (default: every core) and the target tokenizer's batch encoder on its own.
    """
    from pytest_speedbench.data.loaders import dataset_identity

    ticker = Ticker(say)
    if cache is not None and cache.limit <= 0:  # SPEEDBENCH_CACHE_MAX=0: caching off
        cache = None
    identity = dataset_identity(dataset, config) if cache is not None else None
    key = cache_key(identity, config, selection, encoder.fingerprint) if identity is not None else None
    if key is not None and cache is not None:
        hit = cache.load(key)
        if hit is not None:
            if say is not None:
                say(f"{config}: {len(hit[2]['prompt_ids'])} prompts from the cache ({cache.root / key})")
            return PreparedPrompts.from_cache_entry(*hit)
    prepared, arrays = _prepare(dataset, config, selection, encoder, ticker, workers)
    hit = None
    if key is not None and cache is not None:
        path = cache.store(key, arrays, prepared.offsets, {**prepared.meta(), "dataset": dataset})
        # served from the file just written: its pages are the OS cache's, not a second copy
        hit = cache.load(key)
        if say is not None:
            say(f"{config}: {len(prepared.prompt_ids)} prompts prepared in {ticker.elapsed():.0f} s, "
                f"cached in {path.parent}")
    elif say is not None and ticker.elapsed() >= EVERY_S:
        say(f"{config}: {len(prepared.prompt_ids)} prompts prepared in {ticker.elapsed():.0f} s")
    if hit is not None:
        arrays.clear()
        prepared.ids, prepared.offsets = hit[0], hit[1]
    else:
        prepared.ids = np.concatenate(arrays) if arrays else prepared.ids
    return prepared


def _prepare(dataset: str, config: str, selection: Selection, encoder: Any, ticker: Ticker,
             workers: int | None) -> tuple[PreparedPrompts, list[np.ndarray]]:
    """The prompts without their ids, and the ids prompt by prompt (joined by the caller: into
    the cache file when caching, so the ids never exist twice in memory)."""
    from pytest_speedbench.data.bucketing import bucket_texts
    from pytest_speedbench.data.loaders import sample_prompts
    from pytest_speedbench.data.schema import bucket_tokens

    sampled = sample_prompts(dataset, config, categories=selection.categories,
                             num_prompts=selection.num_prompts, extra=selection.warmup, seed=selection.seed)
    total = sampled.total
    target = bucket_tokens(config)
    what = "bucketing + tokenizing" if target else "tokenizing"
    prompt_ids: list[str] = []
    categories: list[str] = []
    turns: dict[int, tuple[str, ...]] = {}
    arrays: list[np.ndarray] = []
    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
        start = 0
        for part in sampled.chunks(CHUNK):
            texts = [p.turns[0] for p in part]
            if target:
                texts = bucket_texts(texts, target, pool)
            arrays.extend(encoder.first_turn_arrays(texts))
            for i, (p, text) in enumerate(zip(part, texts), start):
                prompt_ids.append(p.question_id)
                categories.append(p.category)
                if len(p.turns) > 1:
                    turns[i] = (text, *p.turns[1:])
            start += len(part)
            ticker(lambda s, done=start: f"{config}: {what} {done}/{total} prompts, {s:.0f} s")
    n_measured = sampled.n_measured
    del sampled
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    empty = np.zeros(0, dtype=np.int32)
    return PreparedPrompts(config, prompt_ids, categories, empty, offsets, n_measured, turns), arrays

