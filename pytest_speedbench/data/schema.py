"""The SPEED-Bench row schema, shared by every loader, so the rest of the plugin sees one shape.

Every source (the hub, a prepared directory, plain parquet/jsonl files, Spec-Bench, MT-bench, the
bundled mini set) is turned into `Prompt` objects with SPEED-Bench's columns: question_id,
category, sub_category, turns, source, src_id, difficulty, multiturn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_speedbench.errors import UsageError, bad_value

#: Columns of the published dataset, in its order.
COLUMNS: tuple[str, ...] = (
    "question_id", "category", "sub_category", "turns", "source", "src_id", "difficulty", "multiturn",
)

QUALITATIVE_CATEGORIES: tuple[str, ...] = (
    "coding", "humanities", "math", "multilingual", "qa", "rag", "reasoning", "roleplay", "stem",
    "summarization", "writing",
)

#: Throughput configs group prompts by the entropy of the expected output.
ENTROPY_LEVELS: tuple[str, ...] = ("low_entropy", "mixed", "high_entropy")

BUCKETS: tuple[str, ...] = ("1k", "2k", "8k", "16k", "32k")
CONFIGS: tuple[str, ...] = ("qualitative",) + tuple(f"throughput_{b}" for b in BUCKETS)

_THROUGHPUT = re.compile(r"^throughput_(\d+)k$")


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: the turns are user messages; assistant turns come from the engine."""

    question_id: str
    category: str
    sub_category: str
    turns: tuple[str, ...]
    source: str
    src_id: str
    difficulty: str
    multiturn: bool

    def to_row(self) -> dict[str, Any]:
        """The dataset row (turns as a list), for writing parquet/jsonl."""
        return {
            "question_id": self.question_id, "category": self.category,
            "sub_category": self.sub_category, "turns": list(self.turns), "source": self.source,
            "src_id": self.src_id, "difficulty": self.difficulty, "multiturn": self.multiturn,
        }


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One conversation as the client sends it: its first turn pre-tokenized (by data/workload.py),
    later turns encoded at run time.

    `first_ids` is usually an int32 array (a view into the workload's ids, 4 bytes a token); it
    becomes a list of ints only as its request is built (`measure.client.request_ids`). A
    single-turn prompt's text is "" once tokenized: only later turns need text.
    """

    prompt_id: str
    category: str
    turns: tuple[str, ...]
    first_ids: Sequence[int]


def check_config(config: str) -> str:
    """Return `config` if it is a SPEED-Bench config name, else a UsageError naming the valid ones."""
    if config not in CONFIGS:
        raise bad_value("dataset config", config, CONFIGS)
    return config


def bucket_tokens(config: str) -> int | None:
    """Exact o200k_base prompt length of a throughput config (throughput_2k -> 2000); None otherwise."""
    m = _THROUGHPUT.match(config)
    return int(m.group(1)) * 1000 if m else None


def config_for_bucket(bucket: str) -> str:
    """`2k` -> `throughput_2k`, a UsageError for an unknown bucket."""
    if bucket not in BUCKETS:
        raise bad_value("throughput bucket", bucket, BUCKETS)
    return f"throughput_{bucket}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    return str(value)


def row_to_prompt(row: Mapping[str, Any], *, where: str = "dataset") -> Prompt:
    """Normalize one raw row (parquet, jsonl, hub) into a Prompt; missing optional fields become ''."""
    turns_raw = row.get("turns")
    if turns_raw is None and "prompt" in row:
        turns_raw = [row["prompt"]]
    if isinstance(turns_raw, str):
        turns_raw = [turns_raw]
    try:
        turns = tuple(str(t) for t in turns_raw)  # type: ignore[union-attr]
    except TypeError:
        raise UsageError(f"{where}: row {row.get('question_id')!r} has no 'turns' list") from None
    if not turns:
        raise UsageError(f"{where}: row {row.get('question_id')!r} has an empty 'turns' list")
    if "question_id" not in row or _text(row["question_id"]) == "":
        raise UsageError(f"{where}: a row has no 'question_id'; columns: {', '.join(COLUMNS)}")
    multiturn = row.get("multiturn")
    return Prompt(
        question_id=_text(row["question_id"]),
        category=_text(row.get("category")),
        sub_category=_text(row.get("sub_category")),
        turns=turns,
        source=_text(row.get("source")),
        src_id=_text(row.get("src_id")),
        difficulty=_text(row.get("difficulty")),
        multiturn=bool(multiturn) if multiturn is not None else len(turns) > 1,
    )
