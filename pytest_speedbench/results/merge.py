"""Shard results -> one run: what `speedbench merge` writes and the gate reads.

Why refuse so much: the merged file is what a nightly gates on, and a gate must never pass
what was not measured. So shards of different plans, commits or settings do not merge, a case
measured twice is an error (which one would the gate read?), and a shard that never reported
is an error naming its number and its cases. `allow_missing` writes the run anyway and records
the gap (`speedbench.shards.missing`), which `speedbench compare` then fails, naming the shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_speedbench.errors import SpeedbenchError, UsageError

#: resolved settings that may differ between the shards of one run (where each writes, which
#: shard it is); every other setting must be equal
PER_SHARD_SETTINGS = frozenset({"shard", "json", "storage", "autosave", "plan", "gpus", "compare"})


class MergeError(SpeedbenchError):
    """The shards do not make one run (missing shard, duplicate case, different plan/commit/settings)."""


@dataclass
class Shard:
    """One shard's results file."""

    path: str
    doc: Mapping[str, Any]

    @property
    def section(self) -> Mapping[str, Any]:
        return self.doc.get("speedbench", {}).get("shard") or {}

    @property
    def index(self) -> int:
        return int(self.section["index"])


@dataclass
class Merged:
    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _shards(docs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Shard]:
    shards = []
    for path, doc in docs:
        section = doc.get("speedbench", {}).get("shard")
        if not isinstance(section, Mapping) or "plan" not in section:
            raise UsageError(f"{path} is not a shard's results (no speedbench.shard section): merge joins the runs "
                             "of one --speedbench-shard=K/N matrix")
        shards.append(Shard(path, doc))
    return shards


def _same(shards: Sequence[Shard], what: str, value: Any) -> None:
    """Every shard has the first shard's `value(shard)`, else a MergeError naming both."""
    first = value(shards[0])
    for shard in shards[1:]:
        if value(shard) != first:
            raise MergeError(f"{shard.path} and {shards[0].path} differ in {what}: {value(shard)!r} vs {first!r}")


def settings_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Resolved settings that differ between two shards' `speedbench.config` (per-shard ones aside)."""
    keys = sorted((set(a) | set(b)) - PER_SHARD_SETTINGS)
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _check(shards: Sequence[Shard]) -> None:
    _same(shards, "shard count (N of K/N)", lambda s: int(s.section["count"]))
    _same(shards, "plan (the matrix or its costs differ: same command and options on every shard?)",
          lambda s: s.section.get("fingerprint"))
    _same(shards, "commit", lambda s: (s.doc.get("commit_info") or {}).get("id"))
    base = shards[0].doc.get("speedbench", {}).get("config") or {}
    for shard in shards[1:]:
        diff = settings_difference(base, shard.doc.get("speedbench", {}).get("config") or {})
        if diff:
            raise MergeError(f"{shard.path} and {shards[0].path} were run with different settings: {'; '.join(diff)}")


def _by_index(shards: Sequence[Shard], allow_duplicates: bool, notes: list[str]) -> dict[int, Shard]:
    """One file per shard index; a shard given twice (a retried job) is an error unless allowed,
    then the newer file wins."""
    chosen: dict[int, Shard] = {}
    count = int(shards[0].section["count"])
    for shard in shards:
        k = shard.index
        if k in chosen:
            older, newer = sorted((chosen[k], shard), key=lambda s: str(s.doc.get("datetime")))
            if not allow_duplicates:
                raise MergeError(f"shard {k}/{count} given twice: {chosen[k].path} and {shard.path} "
                                 "(--allow-duplicates keeps the newer)")
            notes.append(f"shard {k}/{count}: {older.path} replaced by the newer {newer.path}")
            chosen[k] = newer
        else:
            chosen[k] = shard
    return chosen


def merge_shards(docs: Sequence[tuple[str, Mapping[str, Any]]], *, allow_missing: bool = False,
                 allow_duplicates: bool = False) -> Merged:
    """One results document from shard documents ((path, document) pairs), cases in matrix order."""
    if not docs:
        raise UsageError("no shard results given")
    shards = _shards(docs)
    _check(shards)
    notes: list[str] = []
    chosen = _by_index(shards, allow_duplicates, notes)
    first = chosen[min(chosen)]
    count, plan = int(first.section["count"]), first.section["plan"]
    missing = [k for k in range(1, count + 1) if k not in chosen]
    for k in missing:
        cases = plan.get(str(k), [])
        text = (f"shard {k}/{count} missing: no results file for it (its {len(cases)} case(s): "
                f"{', '.join(cases) or 'none'})")
        if not allow_missing:
            raise MergeError(text + "; --allow-missing writes the run without it, and the gate then fails")
        notes.append(text)
    entries: dict[str, tuple[int, dict[str, Any]]] = {}
    for k, shard in sorted(chosen.items()):
        for entry in shard.doc.get("benchmarks", []):
            case = str(entry.get("param") or entry.get("fullname"))
            if case in entries:
                raise MergeError(f"case {case} is in shard {entries[case][0]}/{count} and in shard {k}/{count} "
                                 f"({shard.path}): the gate could read either")
            entries[case] = (k, entry)
    order = {case: i for i, case in enumerate(first.section.get("matrix") or [])}
    benchmarks = [e for _, (_, e) in sorted(entries.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))]
    return Merged(_document(chosen, first, count, missing, benchmarks), notes)


def _document(chosen: Mapping[int, Shard], first: Shard, count: int, missing: list[int],
              benchmarks: list[dict[str, Any]]) -> dict[str, Any]:
    section = {k: v for k, v in first.doc.get("speedbench", {}).items() if k != "shard"}
    engines: dict[str, Any] = {}
    for shard in chosen.values():
        engines.update(shard.doc.get("speedbench", {}).get("engines") or {})
    plan = first.section["plan"]
    section["engines"] = engines
    section["shards"] = {
        "count": count,
        "plan": plan,
        "fingerprint": first.section.get("fingerprint"),
        "merged": sorted(chosen),
        "missing": missing,
        "missing_cases": {str(k): plan.get(str(k), []) for k in missing},
        "runs": [{"index": k, "file": s.path, "source": s.section.get("source"), "datetime": s.doc.get("datetime"),
                  "node": (s.doc.get("machine_info") or {}).get("node"),
                  "gpus": (s.doc.get("machine_info") or {}).get("gpus"), "cases": len(s.doc.get("benchmarks", []))}
                 for k, s in sorted(chosen.items())],
    }
    run = _run_section(chosen, plan, count, missing)
    if run is not None:
        section["run"] = run
    commit = dict(first.doc.get("commit_info") or {})
    commit["dirty"] = any((s.doc.get("commit_info") or {}).get("dirty") for s in chosen.values())
    return {
        "machine_info": first.doc.get("machine_info"),
        "commit_info": commit,
        "benchmarks": benchmarks,
        "datetime": max(str(s.doc.get("datetime")) for s in chosen.values()),
        "version": first.doc.get("version"),
        "speedbench": section,
    }


#: run statuses from best to worst (results/status.py's values): the merged run takes the worst
_STATUS_ORDER = ("complete", "failed", "interrupted", "running")


def _run_section(chosen: Mapping[int, Shard], plan: Mapping[str, list[str]], count: int,
                 missing: list[int]) -> dict[str, Any] | None:
    """The merged run's status and selection (`speedbench.run`), from the shards' own.

    A shard's selection deselects every other shard's cases; in the merged run a case counts as
    deliberately left out only when its own shard deselected it (-k/-m), so the cases of a
    missing shard stay missing and the gate fails them.
    """
    runs = {k: (s.doc.get("speedbench") or {}).get("run") for k, s in chosen.items()}
    runs = {k: r for k, r in runs.items() if isinstance(r, Mapping)}
    if not runs:
        return None
    out = dict(runs[min(runs)])
    worst = max(runs.items(), key=lambda kv: (_STATUS_ORDER.index(kv[1].get("status"))
                                              if kv[1].get("status") in _STATUS_ORDER else len(_STATUS_ORDER)))
    out["status"], out["reason"] = worst[1].get("status"), worst[1].get("reason") or ""
    if worst[1].get("status") != "complete" and worst[1].get("reason"):
        out["reason"] = f"shard {worst[0]}/{count}: {worst[1].get('reason')}"
    if missing:
        out["status"] = "interrupted"
        out["reason"] = "; ".join(f"shard {k}/{count} missing" for k in missing)
    selected: list[str] = []
    deselected: list[str] = []
    for k, r in sorted(runs.items()):
        selection = r.get("selection") or {}
        own = set(plan.get(str(k), []))
        selected += [c for c in selection.get("selected") or [] if c not in selected]
        deselected += [c for c in selection.get("deselected") or [] if c in own and c not in deselected]
    first = runs[min(runs)].get("selection") or {}
    out["selection"] = {**first, "selected": selected, "deselected": [c for c in deselected if c not in selected]}
    return out


def missing_shards(doc: Mapping[str, Any]) -> list[str]:
    """What a merged run lacks, one line per missing shard (empty for a whole run)."""
    shards = doc.get("speedbench", {}).get("shards") or {}
    count = shards.get("count")
    lines = []
    for k in shards.get("missing") or []:
        cases = (shards.get("missing_cases") or {}).get(str(k)) or []
        lines.append(f"shard {k}/{count} missing: {len(cases)} case(s) not measured ({', '.join(cases) or 'none'})")
    return lines
