"""Checks on the bundled qualitative prompt pool (data/bundled/qualitative_pool.jsonl).

The pool is the offline stand-in for SPEED-Bench's qualitative split: a semantic-diversity
selection keeps 8 rows per category from it, so every category needs enough rows, rows that
really differ from one another, and source-carrying prompts for RAG and summarization (a
question without its documents would measure nothing about acceptance on long contexts).
"""

from __future__ import annotations

import json
import unicodedata
from importlib import resources
from itertools import combinations
from typing import Any

import pytest

POOL_NAME = "qualitative_pool.jsonl"
CATEGORIES = (
    "coding", "humanities", "math", "multilingual", "qa", "rag", "reasoning", "roleplay", "stem",
    "summarization", "writing",
)
SCHEMA: dict[str, type] = {
    "question_id": str, "category": str, "sub_category": str, "turns": list, "source": str,
    "src_id": str, "difficulty": str, "multiturn": bool,
}
DIFFICULTIES = {"easy", "medium", "hard"}
SOURCE = "speedbench-bundled"
MIN_PER_CATEGORY = 12
SELECTED_PER_CATEGORY = 8  # what the semantic-diversity selection keeps
MIN_SOURCE_WORDS = 120
MIN_SOURCE_CJK_CHARS = 300
MIN_SCRIPTS = 6
NEAR_DUPLICATE_JACCARD = 0.6
SHINGLE = 5
CJK_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "HANGUL"}
REQUIRED_SCRIPTS = {"LATIN", "CJK", "CYRILLIC", "ARABIC", "DEVANAGARI", "HANGUL"}


def pool_text() -> str:
    """The pool file's text, found the way an installed plugin finds it (package data)."""
    ref = resources.files("pytest_speedbench.data").joinpath("bundled", POOL_NAME)
    return ref.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    parsed = []
    for lineno, line in enumerate(pool_text().splitlines(), 1):
        assert line.strip(), f"{POOL_NAME}:{lineno} is blank"
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as exc:  # pragma: no cover - message only
            pytest.fail(f"{POOL_NAME}:{lineno} is not valid JSON: {exc}")
    return parsed


def script_of(ch: str) -> str | None:
    """The script of a letter, from its Unicode name's first word (LATIN, CYRILLIC, CJK...)."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else None


def cjk_chars(text: str) -> int:
    return sum(1 for ch in text if script_of(ch) in CJK_SCRIPTS)


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    """Character k-grams of the case- and space-normalized text; works for any script."""
    norm = " ".join(text.lower().split())
    return {norm[i:i + k] for i in range(max(1, len(norm) - k + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def test_pool_is_utf8_jsonl_with_rows(rows: list[dict[str, Any]]) -> None:
    assert len(rows) >= MIN_PER_CATEGORY * len(CATEGORIES)


def test_rows_have_exact_schema(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        qid = row.get("question_id")
        assert set(row) == set(SCHEMA), f"{qid}: keys {sorted(row)} != {sorted(SCHEMA)}"
        for key, typ in SCHEMA.items():
            got = type(row[key]).__name__
            assert type(row[key]) is typ, f"{qid}: {key} is {got}, want {typ.__name__}"
        assert row["turns"], f"{qid}: no turns"
        assert all(type(t) is str and t.strip() for t in row["turns"]), f"{qid}: bad turn"
        assert row["sub_category"].strip(), f"{qid}: empty sub_category"
        level = row["difficulty"]
        assert level in DIFFICULTIES, f"{qid}: difficulty {level!r} not in {sorted(DIFFICULTIES)}"
        assert row["source"] == SOURCE, f"{qid}: source {row['source']!r}, want {SOURCE!r}"
        assert row["src_id"] == qid, f"{qid}: src_id {row['src_id']!r} differs from question_id"


def test_question_ids_are_unique_and_name_their_category(rows: list[dict[str, Any]]) -> None:
    ids = [row["question_id"] for row in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"duplicate question_id: {dupes}"
    for row in rows:
        assert row["question_id"].startswith(f"sb-{row['category']}-"), row["question_id"]


def test_every_category_has_enough_varied_rows(rows: list[dict[str, Any]]) -> None:
    found = {row["category"] for row in rows}
    assert found == set(CATEGORIES), f"categories {sorted(found)} != {sorted(CATEGORIES)}"
    for cat in CATEGORIES:
        mine = [row for row in rows if row["category"] == cat]
        assert len(mine) >= MIN_PER_CATEGORY, f"{cat}: {len(mine)} rows < {MIN_PER_CATEGORY}"
        subs = {row["sub_category"] for row in mine}
        assert len(subs) >= SELECTED_PER_CATEGORY, f"{cat}: only {len(subs)} sub_categories"
        levels = {row["difficulty"] for row in mine}
        assert len(levels) >= 2, f"{cat}: a single difficulty {levels}"


def test_multiturn_flag_matches_turns(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        assert row["multiturn"] is (len(row["turns"]) > 1), row["question_id"]


def test_each_category_mixes_single_and_multi_turn(rows: list[dict[str, Any]]) -> None:
    for cat in CATEGORIES:
        flags = [row["multiturn"] for row in rows if row["category"] == cat]
        share = sum(flags) / len(flags)
        assert 0.15 <= share <= 0.4, f"{cat}: multi-turn share {share:.2f} outside 0.15..0.40"


@pytest.mark.parametrize("category", ["rag", "summarization"])
def test_source_carrying_prompts_are_long_enough(
    rows: list[dict[str, Any]], category: str
) -> None:
    for row in rows:
        if row["category"] != category:
            continue
        first = row["turns"][0]
        words, cjk = len(first.split()), cjk_chars(first)
        assert words > MIN_SOURCE_WORDS or cjk > MIN_SOURCE_CJK_CHARS, (
            f"{row['question_id']}: {words} words / {cjk} CJK chars; it must carry its source text "
            f"(> {MIN_SOURCE_WORDS} words or > {MIN_SOURCE_CJK_CHARS} CJK chars)"
        )


def test_multilingual_rows_cover_many_scripts(rows: list[dict[str, Any]]) -> None:
    scripts: set[str] = set()
    for row in rows:
        if row["category"] == "multilingual":
            row_scripts = {script_of(ch) for t in row["turns"] for ch in t} - {None}
            assert any(not ch.isascii() for t in row["turns"] for ch in t), (
                f"{row['question_id']}: plain ASCII text is not a multilingual prompt"
            )
            scripts |= row_scripts
    assert len(scripts) >= MIN_SCRIPTS, f"multilingual scripts {sorted(scripts)} < {MIN_SCRIPTS}"
    assert REQUIRED_SCRIPTS <= scripts, f"missing scripts {sorted(REQUIRED_SCRIPTS - scripts)}"


def test_no_duplicate_or_near_duplicate_turns(rows: list[dict[str, Any]]) -> None:
    texts = [(row["question_id"], t) for row in rows for t in row["turns"]]
    grams = [(qid, shingles(t)) for qid, t in texts]
    close = [
        (qa, qb, round(j, 2))
        for (qa, a), (qb, b) in combinations(grams, 2)
        if (j := jaccard(a, b)) >= NEAR_DUPLICATE_JACCARD
    ]
    assert not close, f"near-duplicate turns (Jaccard >= {NEAR_DUPLICATE_JACCARD}): {close}"


def test_near_duplicate_measure_catches_light_edits() -> None:
    """The threshold above is only meaningful if a lightly edited copy scores over it."""
    base = "Write a Python function that merges overlapping intervals, returned sorted."
    edited = "Write a python function that merges overlapping intervals, returned in sorted order."
    other = "Explain the causes of the seasons on Earth in simple terms."
    assert jaccard(shingles(base), shingles(edited)) >= NEAR_DUPLICATE_JACCARD
    assert jaccard(shingles(base), shingles(other)) < NEAR_DUPLICATE_JACCARD


def test_script_detection_names_scripts() -> None:
    assert script_of("a") == "LATIN"
    assert script_of("ж") == "CYRILLIC"
    assert script_of("語") == "CJK"
    assert script_of("ひ") == "HIRAGANA"
    assert script_of("한") == "HANGUL"
    assert script_of(",") is None
    assert cjk_chars("abc 日本語です") == 5
