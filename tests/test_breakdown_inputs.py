"""The breakdowns' inputs built with the bundled tokenizer: frequency ranks from a corpus
(data/token_ranks.py) and the reasoning end marker (data/reasoning.py)."""

from __future__ import annotations

import pytest

from pytest_speedbench.data import reasoning, token_ranks
from pytest_speedbench.errors import UsageError


@pytest.fixture(scope="module")
def tokenizer():
    from pytest_speedbench.models import load_tokenizer

    return load_tokenizer(None)


def test_frequency_ranks_order_by_count_then_id():
    assert token_ranks.frequency_ranks([[5, 3, 3], [7, 5, 3]]) == {3: 1, 5: 2, 7: 3}


def test_bundled_corpus_ranks_common_tokens_first(tokenizer):
    ranks = token_ranks.corpus_ranks(tokenizer)
    the = tokenizer.encode(" the", add_special_tokens=False)[0]
    rare = tokenizer.encode(" photosynthesis", add_special_tokens=False)[0]
    assert ranks[the] <= 10
    assert ranks.get(rare, 10**9) > ranks[the]
    assert 1000 < len(ranks) < len(tokenizer)


def test_a_user_corpus_file(tmp_path, tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": " zebra zebra zebra apple"}\n{"turns": ["apple"]}\n')
    ranks = token_ranks.corpus_ranks(tokenizer, str(path))
    zebra = tokenizer.encode(" zebra", add_special_tokens=False)
    assert ranks[zebra[0]] == 1
    with pytest.raises(UsageError, match="nope.txt is not a file"):
        token_ranks.corpus_texts(str(tmp_path / "nope.txt"))


@pytest.mark.parametrize("setting, model, want", [
    ("auto", "Qwen/Qwen3-8B", "</think>"),
    ("auto", "openai/gpt-oss-20b", "<|channel|>final<|message|>"),
    ("auto", "mistralai/Magistral-Small", "[/THINK]"),
    ("auto", None, "</think>"),
    ("off", "Qwen/Qwen3-8B", None),
    ("<END>", None, "<END>"),
])
def test_marker_by_model_family(setting, model, want):
    assert reasoning.resolve_marker(setting, model) == want


def test_boundary_is_just_after_the_marker_however_it_is_tokenized(tokenizer):
    thinking = tokenizer.encode("Let me think. 2+2 is 4.</think>", add_special_tokens=False)
    answer = tokenizer.encode(" The answer is 4.", add_special_tokens=False)
    find = reasoning.boundary_finder(tokenizer, "</think>")
    assert find(thinking + answer) == len(thinking)
    assert find(answer) is None
