"""Building a Qualitative-style split from a candidate pool: read candidates, pick K semantically
diverse prompts per category (greedy + local search, `data.selection`), write the chosen rows in
the SPEED-Bench schema, and the ablation table (mean pairwise cosine similarity of random
sampling, greedy only, and greedy + LSR). `speedbench select` is the command.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_speedbench.data.selection import mean_pairwise_similarity, normalize_rows, random_select, select_diverse
from pytest_speedbench.errors import UsageError, bad_value

#: SPEED-Bench's columns, in order; output rows carry exactly these.
SCHEMA = ("question_id", "category", "sub_category", "turns", "source", "src_id", "difficulty", "multiturn")
REQUIRED = ("question_id", "category", "turns")
INPUT_SUFFIXES = (".jsonl", ".parquet")
TURN_MODES = ("all", "first")


@dataclass(frozen=True)
class CategoryStats:
    """One line of the ablation table: mean pairwise cosine similarity of each method."""

    category: str
    candidates: int
    selected: int
    random_mean: float  # mean over `random_trials` uniform samples
    random_std: float
    greedy: float
    greedy_lsr: float
    swaps: int


def read_candidates(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .parquet file, checked for the columns selection needs."""
    if path.suffix not in INPUT_SUFFIXES:
        raise bad_value("input format", path.suffix or str(path), INPUT_SUFFIXES)
    if not path.is_file():
        raise UsageError(f"input file not found: {str(path)!r}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"
        missing = [col for col in REQUIRED if col not in row]
        if missing:
            raise UsageError(f"{where} lacks column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise UsageError(f"{where}: 'turns' must be a non-empty list of strings, got {turns!r:.80}")
        qid = str(row["question_id"])
        if qid in seen:
            raise UsageError(f"{where}: duplicate question_id {qid!r}")
        seen.add(qid)
    return rows


def prompt_text(row: dict[str, Any], turns: str = "all") -> str:
    """The text that stands for a prompt: all user turns joined by blank lines, or the first.

    All turns by default: a multi-turn prompt's later turns are part of what the drafter sees,
    so two conversations with the same opener but different follow-ups are different prompts.
    """
    if turns not in TURN_MODES:
        raise bad_value("turns mode", turns, TURN_MODES)
    return row["turns"][0] if turns == "first" else "\n\n".join(row["turns"])


def to_schema(row: dict[str, Any]) -> dict[str, Any]:
    """A row with exactly SPEED-Bench's columns; absent optional ones are filled, not invented:
    empty strings, and multiturn from the number of turns."""
    out = {col: row.get(col, "") for col in SCHEMA}
    out["question_id"] = str(row["question_id"])
    out["turns"] = list(row["turns"])
    out["multiturn"] = bool(row["multiturn"]) if "multiturn" in row else len(row["turns"]) > 1
    return out


def _category_rng(seed: int, category: str, stream: int) -> np.random.Generator:
    """Independent, reproducible stream per (seed, category, purpose): adding or removing a
    category never changes another category's selection."""
    return np.random.default_rng([seed, zlib.crc32(category.encode("utf-8")), stream])


def select_per_category(
    rows: list[dict[str, Any]],
    vectors: np.ndarray,
    per_category: int,
    *,
    seed: int = 0,
    random_trials: int = 5,
) -> tuple[list[dict[str, Any]], list[CategoryStats]]:
    """Select `per_category` rows from each category; return them (categories sorted, input
    order within a category) and one ablation line per category."""
    if per_category < 1:
        raise UsageError(f"--per-category must be at least 1, got {per_category}")
    if random_trials < 1:
        raise UsageError(f"--random-trials must be at least 1, got {random_trials}")
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(str(row["category"]), []).append(i)
    short = {cat: len(idx) for cat, idx in groups.items() if len(idx) < per_category}
    if short:
        listed = ", ".join(f"{cat} ({n})" for cat, n in sorted(short.items()))
        raise UsageError(f"--per-category {per_category} exceeds the candidates of: {listed}")
    X = normalize_rows(vectors)
    chosen: list[dict[str, Any]] = []
    stats: list[CategoryStats] = []
    for cat in sorted(groups):
        members = np.asarray(groups[cat], dtype=np.intp)
        Xc = X[members]
        result = select_diverse(Xc, per_category, seed=_category_rng(seed, cat, 0), normalize=False)
        randoms = [
            mean_pairwise_similarity(Xc, random_select(len(members), per_category, _category_rng(seed, cat, 1 + t)))
            for t in range(random_trials)
        ]
        stats.append(
            CategoryStats(
                category=cat,
                candidates=len(members),
                selected=per_category,
                random_mean=float(np.mean(randoms)),
                random_std=float(np.std(randoms)),
                greedy=mean_pairwise_similarity(Xc, result.greedy_indices),
                greedy_lsr=mean_pairwise_similarity(Xc, result.indices),
                swaps=result.swaps,
            )
        )
        chosen.extend(to_schema(rows[i]) for i in members[result.indices])
    return chosen, stats


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write atomically (temp file + rename), so a failed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_table(stats: list[CategoryStats], random_trials: int) -> str:
    """The ablation as a markdown table (it is pasted into docs as is)."""
    lines = [
        f"| category | candidates | k | random (mean of {random_trials}) | greedy | greedy + LSR | swaps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in stats:
        lines.append(
            f"| {s.category} | {s.candidates} | {s.selected} | {s.random_mean:.4f} ± {s.random_std:.4f} "
            f"| {s.greedy:.4f} | {s.greedy_lsr:.4f} | {s.swaps} |"
        )
    if len(stats) > 1:
        mean = lambda attr: float(np.mean([getattr(s, attr) for s in stats]))  # noqa: E731
        lines.append(
            f"| **mean** | {sum(s.candidates for s in stats)} | {sum(s.selected for s in stats)} "
            f"| {mean('random_mean'):.4f} | {mean('greedy'):.4f} | {mean('greedy_lsr'):.4f} "
            f"| {sum(s.swaps for s in stats)} |"
        )
    return "\n".join(lines)
