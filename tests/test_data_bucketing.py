"""Throughput buckets: offline o200k_base and exact token counts after cut or padding."""

from __future__ import annotations

import hashlib
import random

import pytest

from pytest_speedbench.data import bucketing
from pytest_speedbench.data.bucketing import (
    O200K_URL, PADDING, count_tokens, ensure_o200k_offline, o200k, pad_or_truncate,
)

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def test_cache_is_seeded_where_tiktoken_looks(tmp_path, monkeypatch) -> None:
    import tiktoken.load

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    path = ensure_o200k_offline()
    assert path == tmp_path / hashlib.sha1(O200K_URL.encode()).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == O200K_SHA256

    def no_network(url: str) -> bytes:
        raise AssertionError(f"tiktoken tried to fetch {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    ranks = tiktoken.load.load_tiktoken_bpe(O200K_URL, expected_hash=O200K_SHA256)
    assert len(ranks) > 199_000
    assert ensure_o200k_offline() == path  # second call: already there, nothing rewritten


def test_disabled_cache_is_reported_not_written(monkeypatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert bucketing.tiktoken_cache_dir() is None
    assert ensure_o200k_offline() is None


LONG = " ".join(f"word{i} and some prose, with punctuation; numbers {i * 37}." for i in range(800))


@pytest.mark.parametrize("target", [1, 7, 100, 999, 1000, 2000])
def test_truncation_is_exact_and_keeps_the_beginning(target: int) -> None:
    out = pad_or_truncate(LONG, target)
    assert count_tokens(out) == target
    assert LONG.startswith(out)


@pytest.mark.parametrize("target", [50, 1000, 2000])
def test_short_text_is_padded_with_speedbench_padding(target: int) -> None:
    text = "Summarize this short note."
    out = pad_or_truncate(text, target)
    assert count_tokens(out) == target
    assert out.startswith(text + PADDING)


def test_exact_text_is_returned_unchanged() -> None:
    text = pad_or_truncate(LONG, 321)
    assert pad_or_truncate(text, 321) is text


def test_awkward_text_is_still_exact() -> None:
    """Cuts inside whitespace runs, multi-byte characters and emoji re-merge; the count must not drift."""
    rng = random.Random(7)
    alphabet = list("ab \n\t  ..,;") + ["日本語", "é", "😀", "\u200b", "  \n\n"]
    text = "".join(rng.choice(alphabet) for _ in range(3000))
    enc = o200k()
    for target in rng.sample(range(1, count_tokens(text, enc)), 40):
        assert count_tokens(pad_or_truncate(text, target, enc), enc) == target


def test_fill_fallback_is_exact() -> None:
    enc = o200k()
    ids = enc.encode_ordinary(LONG)
    out = bucketing._cut_and_fill(ids, 500, enc)
    assert count_tokens(out, enc) == 500


def test_nonpositive_target_is_rejected() -> None:
    with pytest.raises(ValueError):
        pad_or_truncate("x", 0)


def test_split_point_count_equals_full_reencode() -> None:
    """The tail-only count must agree with re-encoding the whole prefix, on code and on prose."""
    import inspect
    import json as json_module

    enc = o200k()
    rng = random.Random(3)
    texts = [inspect.getsource(json_module.decoder) * 3, LONG.replace(". ", ".\n") + "\n/x\n y\n\tz\n"]
    for text in texts:
        ids = enc.encode_ordinary(text)
        for n in rng.sample(range(2, len(ids)), 60):
            out, got = bucketing._prefix(ids, n, enc)
            assert out == enc.decode(ids[:n])
            assert got == len(enc.encode_ordinary(out))
    assert bucketing.split_point(enc.encode_ordinary("no newline here at all"), 5, enc) is None
