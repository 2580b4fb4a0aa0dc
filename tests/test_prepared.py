"""Prepared prompts: one pass per config (measured + warmup), int32 ids, the on-disk cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pytest_speedbench.data import loaders
from pytest_speedbench.data.bucketing import count_tokens
from pytest_speedbench.data.prepared import Selection, prepare
from pytest_speedbench.data.prompt_cache import PromptCache, parse_size
from pytest_speedbench.data.tokenize import PromptEncoder
from pytest_speedbench.errors import UsageError
from pytest_speedbench.measure.client import request_ids
from pytest_speedbench.settings.options import build_settings
from pytest_speedbench.data.workload import WorkloadCache

LEVELS = ("low_entropy", "mixed", "high_entropy")


@pytest.fixture(scope="module")
def encoder(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return PromptEncoder(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))


def write_config(root, n=12, words=1400, config="throughput_1k"):
    """n rows over three levels: most longer than 1k o200k tokens, every fourth shorter (padded)."""
    rows = []
    for i in range(n):
        length = words if i % 4 else 300
        text = " ".join(f"w{(i * 31 + j) % 997}" for j in range(length))
        rows.append({"question_id": f"q-{i:03d}", "category": LEVELS[i % 3], "sub_category": "", "turns": [text],
                     "source": "tests", "src_id": str(i), "difficulty": "", "multiturn": False})
    loaders.write_parquet(rows, root / config / "test.parquet")
    return root


def old_path(dataset, config, num_prompts, warmup, encoder):
    """What the workload did before: load_prompts (measured), again with n + warmup (the
    warmup: the others, round-robin over categories), then encode_first_turns."""
    measured = loaders.load_prompts(str(dataset), config, num_prompts=num_prompts)
    ids = {p.question_id for p in measured}
    by_cat = {}
    for p in loaders.load_prompts(str(dataset), config, num_prompts=num_prompts + warmup):
        if p.question_id not in ids:
            by_cat.setdefault(p.category, []).append(p)
    picked, queues = [], list(by_cat.values())
    while len(picked) < warmup and any(queues):
        for q in queues:
            if q and len(picked) < warmup:
                picked.append(q.pop(0))
    prompts = measured + picked
    return [p.question_id for p in prompts], encoder.encode_first_turns(prompts), len(measured)


def test_one_pass_gives_the_same_prompts_warmup_and_ids_as_before(tmp_path, encoder):
    root = write_config(tmp_path)
    old_ids, old_tokens, n_measured = old_path(root, "throughput_1k", 2, 2, encoder)
    got = prepare(str(root), "throughput_1k", Selection(2, warmup=2), encoder)
    assert got.prompt_ids == old_ids and got.n_measured == n_measured == 6 and got.n_warmup == 2
    assert got.ids.dtype == np.int32
    assert [got.first_ids(i).tolist() for i in range(len(old_ids))] == old_tokens
    assert got.turns == {}  # single-turn texts are dropped once tokenized


def test_every_prompt_is_cut_to_the_bucket(tmp_path, encoder):
    root = write_config(tmp_path, n=6)
    got = prepare(str(root), "throughput_1k", Selection(None), encoder)
    texts = [encoder.decode(got.first_ids(i)) for i in range(len(got.prompt_ids))]
    user = [t.split("<|user|>", 1)[1].split("<|end|>", 1)[0] for t in texts]
    assert [count_tokens(u) for u in user] == [1000] * 6


def test_a_cache_hit_reads_nothing_and_maps_the_ids(tmp_path, encoder, monkeypatch):
    root = write_config(tmp_path)
    cache = PromptCache(tmp_path / "cache", limit=10**9)
    lines = []
    cold = prepare(str(root), "throughput_1k", Selection(3, warmup=1), encoder, cache=cache, say=lines.append)
    assert not cold.from_cache and "prepared" in lines[-1]

    def no_reading(*a, **k):
        raise AssertionError("a cache hit must not read, bucket or tokenize")

    monkeypatch.setattr(loaders, "sample_prompts", no_reading)
    monkeypatch.setattr(encoder, "first_turn_arrays", no_reading)
    hit = prepare(str(root), "throughput_1k", Selection(3, warmup=1), encoder, cache=cache, say=lines.append)
    assert hit.from_cache and isinstance(hit.ids, np.memmap) and "from the cache" in lines[-1]
    assert hit.prompt_ids == cold.prompt_ids and np.array_equal(hit.ids, cold.ids)
    assert np.array_equal(hit.offsets, cold.offsets) and hit.n_measured == cold.n_measured


def test_the_key_follows_files_selection_and_template(tmp_path, encoder, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    root = write_config(tmp_path)
    cache = PromptCache(tmp_path / "cache", limit=10**9)
    prepare(str(root), "throughput_1k", Selection(2), encoder, cache=cache)
    raw = PromptEncoder(AutoTokenizer.from_pretrained(tiny_tokenizer_dir), chat_template=False)
    assert not prepare(str(root), "throughput_1k", Selection(2), raw, cache=cache).from_cache
    assert not prepare(str(root), "throughput_1k", Selection(3), encoder, cache=cache).from_cache
    assert not prepare(str(root), "throughput_1k", Selection(2, seed=1), encoder, cache=cache).from_cache
    assert prepare(str(root), "throughput_1k", Selection(2), encoder, cache=cache).from_cache
    path = root / "throughput_1k" / "test.parquet"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was rewritten
    assert not prepare(str(root), "throughput_1k", Selection(2), encoder, cache=cache).from_cache
    assert len(cache.entries()) == 5


def test_least_recently_used_entries_are_evicted_past_the_limit(tmp_path):
    cache = PromptCache(tmp_path, limit=10**9)
    arrays = [np.arange(1000, dtype=np.int32)]
    offsets = np.array([0, 1000])
    for key in ("a", "b", "c"):
        cache.store(key, arrays, offsets, {"prompt_ids": ["p"]})
    size = max(e.bytes for e in cache.entries()) + 64  # meta.json lengths differ by a few bytes
    assert cache.load("a") is not None  # a is now the most recently used
    os.utime(cache.root / "b" / "meta.json", (1, 1))
    os.utime(cache.root / "c" / "meta.json", (2, 2))
    cache.limit = 2 * size
    cache.store("d", arrays, offsets, {"prompt_ids": ["p"]})
    assert sorted(e.key for e in cache.entries()) == ["a", "d"]
    assert [e.key for e in cache.clear()] and cache.entries() == []


def test_a_damaged_entry_is_a_miss(tmp_path):
    cache = PromptCache(tmp_path, limit=10**9)
    cache.store("k", [np.arange(10, dtype=np.int32)], np.array([0, 10]), {"prompt_ids": ["p"]})
    (tmp_path / "k" / "ids.npy").write_bytes(b"not numpy")
    assert cache.load("k") is None


def test_cache_size_spellings():
    assert parse_size("2G") == 2 * 10**9 and parse_size("500m") == 5 * 10**8 and parse_size("123") == 123
    with pytest.raises(UsageError, match="SPEEDBENCH_CACHE_MAX='lots' is not a size"):
        parse_size("lots")


def test_workload_items_are_int32_views_sent_as_python_ints(tmp_path, tiny_tokenizer_dir, prompts_file):
    settings = build_settings({"profile": "none", "dataset": str(prompts_file), "num_prompts": "2",
                               "tokenizer": str(tiny_tokenizer_dir), "warmup": "1"})
    work = WorkloadCache(settings, PromptCache(tmp_path, limit=10**9))
    items = work.items("qualitative")
    warm, source = work.warmup_items("qualitative", 1)
    assert source == "outside" and warm[0].prompt_id not in {i.prompt_id for i in items}
    assert all(i.first_ids.dtype == np.int32 for i in items)
    ids = request_ids(items[0].first_ids)
    assert type(ids) is list and all(type(t) is int for t in ids)
    two_turn = [i for i in items if len(i.turns) == 2]
    assert two_turn and two_turn[0].turns[1] == "now make it shorter"  # later turns keep their text
    work.release("qualitative")
    again = WorkloadCache(settings, PromptCache(tmp_path, limit=10**9)).items("qualitative")
    assert [i.prompt_id for i in again] == [i.prompt_id for i in items]


def test_placeholders_among_the_chosen_parquet_rows_are_refused(tmp_path, encoder):
    from pytest_speedbench.data.placeholders import PLACEHOLDER_MARKER

    root = write_config(tmp_path, n=3)
    rows = loaders.read_rows(str(root), "throughput_1k")
    rows[1]["turns"] = [PLACEHOLDER_MARKER + "\n\nx"]
    loaders.write_parquet(rows, root / "throughput_1k" / "test.parquet")
    with pytest.raises(UsageError, match="1 of 3 rows of .* are placeholders"):
        prepare(str(root), "throughput_1k", Selection(None), encoder)


def test_progress_lines_while_preparing(tmp_path, encoder, monkeypatch):
    import pytest_speedbench.data.prepared as prepared

    monkeypatch.setattr(prepared, "EVERY_S", 0.0)
    monkeypatch.setattr(prepared, "CHUNK", 4)
    root = write_config(tmp_path)
    lines = []
    prepare(str(root), "throughput_1k", Selection(None), encoder, say=lines.append)
    steps = [line for line in lines if "bucketing + tokenizing" in line]
    assert [s.split()[4] for s in steps] == ["4/12", "8/12", "12/12"]
    assert lines[-1].startswith("throughput_1k: 12 prompts prepared in")


def test_cache_command_lists_and_clears_only_prepared_prompts(tmp_path, encoder, monkeypatch, capsys):
    from pytest_speedbench.cli import main

    monkeypatch.setenv("SPEEDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPEEDBENCH_CACHE_MAX", "1G")
    other = tmp_path / "cache" / "models" / "keep.txt"  # a converted model shares the root
    other.parent.mkdir(parents=True)
    other.write_text("x")
    root = write_config(tmp_path / "data", n=6)
    prepare(str(root), "throughput_1k", Selection(1), encoder, cache=PromptCache())
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "1 entry" in out and "throughput_1k" in out and "3 prompts" in out and "of 1000.0 MB" in out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert PromptCache().entries() == [] and other.read_text() == "x"


def test_case_time_starts_at_the_first_request_not_while_preparing():
    from pytest_speedbench.progress import CaseProgress

    now, said = [0.0], []
    progress = CaseProgress(said.append, "case", every=10, clock=lambda: now[0])
    now[0] = 80.0  # preparing the prompts took 80 s
    progress.start()
    now[0] = 91.0
    progress(1, 4)
    assert len(said) == 1 and said[0].startswith("speedbench: case: 1/4 prompts done") and said[0].endswith(", 11 s")


def test_prompts_of_a_config_are_released_after_its_last_case():
    from types import SimpleNamespace

    from pytest_speedbench.case_runner import CaseRunner
    from pytest_speedbench.settings.matrix import expand

    m = expand(["llamacpp"], ["none"], ["throughput", "random"], ["1k", "2k"], [1], [0.0])
    held = {"throughput_1k", "throughput_2k", "random_1k", "random_2k"}
    work = SimpleNamespace(configs=lambda: set(held), release=held.discard)
    fake = SimpleNamespace(pending=set(m.cases), workload=work)
    by_id = {c.id: c for c in m.cases}
    CaseRunner.release_prompts(fake, by_id["llamacpp-none-throughput-1k-bs1-t0"])
    assert held == {"throughput_1k", "throughput_2k", "random_1k", "random_2k"}  # random_1k needs 1k
    CaseRunner.release_prompts(fake, by_id["llamacpp-none-random-1k-bs1-t0"])
    assert held == {"throughput_2k", "random_2k"}


def test_a_session_says_it_prepares_then_reads_the_cache(pytester, fake_sglang, tiny_tokenizer_dir, prompts_file,
                                                         monkeypatch):
    from conftest import SUITE

    monkeypatch.setenv("SPEEDBENCH_CACHE", str(pytester.path / "user-cache"))
    server = fake_sglang("--accept", "0.8", "--step-ms", "1")
    pytester.makepyfile(test_speedbench=SUITE)
    args = [f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--engine=sglang",
            f"--server-url={server.url}", "--drafter=none", "--warmup=1", "--output-len=4", "-p", "no:cacheprovider"]
    first = pytester.runpytest_subprocess(*args)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["speedbench: qualitative: * prompts prepared in * s, cached in *user-cache/prompts"])
    second = pytester.runpytest_subprocess(*args)
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["speedbench: qualitative: * prompts from the cache (*user-cache/prompts/*)"])
    assert not (pytester.path / ".speedbench" / "cache").exists()  # nothing cached in the results folder


def test_the_header_states_counts_capped_by_the_dataset(tmp_path):
    from pytest_speedbench.settings.profile import capped, prompt_lines

    root = write_config(tmp_path, n=12)  # 4 rows per entropy level
    counts = loaders.category_counts(str(root), "throughput_1k")
    assert counts == {"low_entropy": 4, "mixed": 4, "high_entropy": 4}
    settings = build_settings({"profile": "none", "dataset": str(root), "num_prompts": "6", "split": "throughput",
                               "bucket": "1k"})
    lines = prompt_lines(settings, ["1k"], {"throughput_1k": counts})
    assert "speedbench: prompts: throughput 1k; capped at what exists: 4 per entropy level, 12 prompts" in lines
    assert capped(4, counts) == "" and capped(3, None) == ""
    assert capped(5, {"a": 2, "b": 9}) == "; capped at what exists: 2-5 per category, 7 prompts"
    assert loaders.category_counts("hf:nvidia/SPEED-Bench", "throughput_1k") is None  # unknown offline: no claim
