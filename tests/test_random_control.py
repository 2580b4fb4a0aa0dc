"""The random-token control split: deterministic prompts from the target vocabulary, beside the real bucket."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_speedbench.data.random_tokens import random_token_prompts, vocabulary
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.settings.matrix import expand, twin_of
from pytest_speedbench.settings.options import build_settings
from pytest_speedbench.data.workload import WorkloadCache


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_vocabulary_leaves_out_special_tokens(tokenizer) -> None:
    vocab = vocabulary(tokenizer)
    assert len(vocab) == len(tokenizer) - len(set(tokenizer.all_special_ids))
    assert not set(tokenizer.all_special_ids) & set(vocab.tolist())


def test_prompts_are_deterministic_sized_and_drawn_from_the_vocabulary(tokenizer) -> None:
    vocab = vocabulary(tokenizer)
    a = random_token_prompts(vocab, [50, 70, 3000], bucket_tokens=1000, seed=1)
    assert a == random_token_prompts(vocab, [50, 70, 3000], bucket_tokens=1000, seed=1)
    assert [len(ids) for _, ids in a] == [50, 70, 3000]
    assert [pid for pid, _ in a] == ["random-1k-0000", "random-1k-0001", "random-1k-0002"]
    assert set(a[2][1]) <= set(vocab.tolist())
    assert len(set(a[2][1])) > 0.8 * len(vocab)  # 3000 uniform draws cover most of a 400-token vocab
    assert a[0][1] != random_token_prompts(vocab, [50], bucket_tokens=1000, seed=2)[0][1]
    assert a[0][1] != random_token_prompts(vocab, [50], bucket_tokens=2000, seed=1)[0][1]
    counts = np.bincount(np.asarray(a[2][1]) - vocab.min())
    assert counts.max() < 30  # uniform, not stuck on a few ids


def test_random_split_runs_beside_the_real_bucket_with_the_same_twin_rules() -> None:
    m = expand(["llamacpp"], ["none", "ngram"], ["throughput", "random"], ["1k"], [1], [0.0])
    ids = [c.id for c in m.cases]
    assert "llamacpp-ngram-random-1k-bs1-t0" in ids and "llamacpp-ngram-throughput-1k-bs1-t0" in ids
    rnd = next(c for c in m.cases if c.id == "llamacpp-ngram-random-1k-bs1-t0")
    assert rnd.dataset_config == "random_1k"
    assert twin_of(rnd, m.cases).id == "llamacpp-none-random-1k-bs1-t0"
    assert not m.dropped


def test_workload_matches_the_real_bucket_count_and_lengths(tokenizer) -> None:
    cache = WorkloadCache(build_settings({"profile": "none", "seed": "7"}))
    cache._encoder = type("Enc", (), {"tokenizer": tokenizer})()
    cache._items["throughput_1k"] = [WorkItem(f"p{i}", "mixed", ("text",), tuple(range(5 + i))) for i in range(4)]
    items = cache.items("random_1k")
    assert [len(i.first_ids) for i in items] == [5, 6, 7, 8]
    assert {i.category for i in items} == {"random"}
    assert cache.items("random_1k") is items  # cached
    assert not set(tokenizer.all_special_ids) & {t for i in items for t in i.first_ids}
