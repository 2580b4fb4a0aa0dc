"""Random-token prompts: the control that shows how random inputs distort SD measurements.

Serving benchmarks often measure throughput on random-token prompts (`vllm bench serve
--dataset-name random` draws ids uniformly from the vocabulary). SPEED-Bench shows these
overstate SD throughput: on random inputs a target either answers trivially (high AL) or
latches onto a topic (low AL), so speedups measured there do not transfer. The `random` split
reproduces such inputs next to each real throughput bucket so the difference is measured on the
user's own engine.

Generation (pure, deterministic): the vocabulary is every id of the target tokenizer except its
special tokens; prompt i of a bucket draws `lengths[i]` ids uniformly with replacement from it,
using numpy's PCG64 seeded with (seed, bucket tokens, i). Lengths are the real bucket's prompt
lengths in target tokens when that bucket is available (same count, same lengths), else the
bucket's nominal size. No chat template and no BOS: the ids go to the engine as they are, as the
peers' random datasets do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CATEGORY = "random"


def vocabulary(tokenizer: Any) -> np.ndarray:
    """Ids 0..len(tokenizer)-1 without the special ones (BOS, EOS, chat markers, padding)."""
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ids = np.arange(len(tokenizer), dtype=np.int64)
    return ids[~np.isin(ids, sorted(special))] if special else ids


def random_token_prompts(
    vocab: np.ndarray | Sequence[int], lengths: Sequence[int], *, bucket_tokens: int, seed: int = 0
) -> list[tuple[str, tuple[int, ...]]]:
    """(prompt id, token ids) per length; the same arguments always give the same prompts."""
    vocab = np.asarray(vocab, dtype=np.int64)
    if vocab.size == 0:
        raise ValueError("the tokenizer's vocabulary has no ordinary (non-special) token")
    out = []
    for i, n in enumerate(lengths):
        rng = np.random.default_rng([seed, bucket_tokens, i])
        ids = vocab[rng.integers(0, vocab.size, size=int(n))]
        out.append((f"random-{bucket_tokens // 1000}k-{i:04d}", tuple(int(t) for t in ids)))
    return out
