"""`speedbench select`: pick K semantically diverse prompts per category from a candidate pool.

This is how a Qualitative-style split is built: embed every candidate, then per category run
greedy + local-search selection (`data.selection`) and write the chosen rows in the SPEED-Bench
schema. The printed table repeats the paper's ablation for this pool (mean pairwise cosine
similarity of random sampling, greedy only, and greedy + LSR), so a user sees what the
selection bought.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_speedbench.commands import command
from pytest_speedbench.data.embedders import DEFAULT_EMBEDDER, make_embedder
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "select", help="pick K semantically diverse prompts per category (greedy + local search)",
                run=run, description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, type=Path, help="candidate rows (.jsonl or .parquet, SPEED-Bench columns)")
    p.add_argument("--per-category", required=True, type=int, metavar="K", help="prompts to keep per category")
    p.add_argument("--out", required=True, type=Path, help="where to write the selected rows (.jsonl)")
    p.add_argument("--embeddings", type=Path, help="precomputed .npy embeddings, row i for input row i")
    p.add_argument(
        "--embedder",
        default=DEFAULT_EMBEDDER,
        help="minilm (default, offline), openai[:text-embedding-3-small|large], st:<model path or name>",
    )
    p.add_argument("--save-embeddings", type=Path, metavar="FILE.npy",
                   help="also save the input's embeddings, to rerun later with --embeddings")
    p.add_argument("--turns", choices=TURN_MODES, default="all", help="embed all turns joined (default) or the first")
    p.add_argument("--seed", type=int, default=0, help="seed of the greedy start and the random baseline")
    p.add_argument("--random-trials", type=int, default=5, help="random samples averaged for the baseline")
    p.add_argument("--json", action="store_true", help="print the ablation as JSON")


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


def run(args: argparse.Namespace) -> int:
    rows = read_candidates(args.input)
    if not rows:
        raise UsageError(f"input {str(args.input)!r} has no rows")
    if args.out.suffix != ".jsonl":
        raise bad_value("output format", args.out.suffix or str(args.out), (".jsonl",))
    embedder = make_embedder(args.embedder, embeddings=args.embeddings)
    started = time.perf_counter()
    vectors = embedder.embed([prompt_text(row, args.turns) for row in rows])
    embed_s = time.perf_counter() - started
    if args.save_embeddings is not None:
        if args.save_embeddings.suffix != ".npy":
            raise bad_value("embeddings output format", args.save_embeddings.suffix, (".npy",))
        args.save_embeddings.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.save_embeddings, np.asarray(vectors, dtype=np.float32))
    try:
        chosen, stats = select_per_category(
            rows, vectors, args.per_category, seed=args.seed, random_trials=args.random_trials
        )
    except ValueError as exc:  # bad embeddings (NaN, zero rows) surface as usage errors
        raise UsageError(str(exc)) from None
    select_s = time.perf_counter() - started - embed_s
    write_jsonl(args.out, chosen)
    if args.json:
        report = {
            "input": str(args.input),
            "output": str(args.out),
            "embedder": embedder.name,
            "turns": args.turns,
            "seed": args.seed,
            "per_category": args.per_category,
            "random_trials": args.random_trials,
            "embed_s": round(embed_s, 3),
            "select_s": round(select_s, 3),
            "categories": [asdict(s) for s in stats],
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"mean pairwise cosine similarity (lower = more diverse); embedder {embedder.name}, seed {args.seed}")
        print(format_table(stats, args.random_trials))
        print(
            f"wrote {len(chosen)} rows to {args.out} (embedding {embed_s:.1f} s, selection {select_s:.2f} s)",
            file=sys.stderr,
        )
    return 0
