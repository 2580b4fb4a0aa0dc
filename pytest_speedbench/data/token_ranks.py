"""Token frequency ranks for the acceptance-by-rarity breakdown (metrics/breakdowns.py).

A token's rank is its place in a frequency table counted over a corpus with the target
tokenizer: 1 = the most frequent token, ties broken by token id so ranks are deterministic;
tokens that never occur in the corpus have no rank (the `unseen` bucket). The corpus is either
the bundled qualitative texts (`bundled`: every turn of the bundled prompt set and its pool, about
25k SmolLM2 tokens, ~4k distinct: coarse, but shipped and identical everywhere) or a file the
user names (`--rank-corpus PATH`: plain text, or JSON lines whose `turns`, `text` or `messages`
hold the text), e.g. a sample of the drafter's training data, the corpus a vocabulary-pruned
drafter kept its most frequent tokens from.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_speedbench.errors import UsageError

BUNDLED = "bundled"
_BUNDLED_FILES = ("qualitative.jsonl", "qualitative_pool.jsonl")


def _row_texts(row: Any) -> Iterator[str]:
    if isinstance(row, str):
        yield row
    elif isinstance(row, dict):
        for key in ("turns", "text", "messages", "content"):
            if key in row:
                yield from _row_texts(row[key])
    elif isinstance(row, list):
        for item in row:
            yield from _row_texts(item)


def _jsonl_texts(path: Path) -> list[str]:
    texts: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts += list(_row_texts(json.loads(line)))
    return texts


def corpus_texts(source: str) -> list[str]:
    """The texts of `source`: 'bundled' or a path (.jsonl rows, else plain text)."""
    if source == BUNDLED:
        from pytest_speedbench.data.loaders import _bundled_dir

        return [t for name in _BUNDLED_FILES if (_bundled_dir() / name).is_file()
                for t in _jsonl_texts(_bundled_dir() / name)]
    path = Path(source).expanduser()
    if not path.is_file():
        raise UsageError(f"--rank-corpus: {source} is not a file (give 'bundled', a text file or a .jsonl file)")
    return _jsonl_texts(path) if path.suffix == ".jsonl" else [path.read_text(encoding="utf-8")]


def frequency_ranks(id_lists: Iterable[Sequence[int]]) -> dict[int, int]:
    """token id -> rank by count (1 = most frequent; equal counts ordered by token id)."""
    counts = Counter(i for ids in id_lists for i in ids)
    order = sorted(counts, key=lambda i: (-counts[i], i))
    return {token: rank for rank, token in enumerate(order, start=1)}


def corpus_ranks(tokenizer: Any, source: str = BUNDLED) -> dict[int, int]:
    """Frequency ranks of `source`'s texts under `tokenizer` (no special tokens added)."""
    texts = corpus_texts(source)
    if not texts:
        raise UsageError(f"--rank-corpus: {source} holds no text")
    return frequency_ranks(tokenizer(texts, add_special_tokens=False)["input_ids"])


def describe(source: str, ranks: dict[int, int]) -> str:
    """One line for the results: which corpus and how many distinct tokens it ranks."""
    name = "the bundled qualitative texts" if source == BUNDLED else source
    return f"{name}: {len(ranks)} distinct tokens ranked"
