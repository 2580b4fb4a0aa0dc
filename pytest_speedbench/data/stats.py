"""Dataset statistics for `speedbench data stats`: what a config holds before anything is run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pytest_speedbench.data.bucketing import o200k
from pytest_speedbench.data.placeholders import is_placeholder, placeholder_sources
from pytest_speedbench.data.schema import bucket_tokens, row_to_prompt


def _summary(values: Sequence[int]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {"min": int(arr.min()), "mean": round(float(arr.mean()), 1), "p50": round(float(np.percentile(arr, 50)), 1),
            "p90": round(float(np.percentile(arr, 90)), 1), "max": int(arr.max()), "total": int(arr.sum())}


def dataset_stats(rows: Sequence[Mapping[str, Any]], config: str, encoder: Any = None) -> dict[str, Any]:
    """Rows, categories, placeholders, o200k_base and (with an encoder) target-token lengths.

    Lengths are of first turns and skip placeholder rows, whose text is only a marker.
    `encoder` is a `PromptEncoder`; its lengths include the chat template.
    """
    real = [row_to_prompt(r) for r in rows if not is_placeholder(r)]
    firsts = [p.turns[0] for p in real]
    o200k_lens = [len(ids) for ids in o200k().encode_ordinary_batch(firsts)] if firsts else []
    target = bucket_tokens(config)
    out: dict[str, Any] = {
        "config": config,
        "rows": len(rows),
        "categories": dict(sorted(Counter(str(r.get("category") or "") for r in rows).items())),
        "multiturn": sum(len(p.turns) > 1 for p in real),
        "placeholders": {"rows": sum(placeholder_sources(rows).values()),
                         "sources": dict(placeholder_sources(rows).most_common())},
        "o200k_first_turn": _summary(o200k_lens),
    }
    if target:
        out["bucket_tokens"] = target
        out["off_bucket_rows"] = sum(n != target for n in o200k_lens)
    if encoder is not None:
        ids = encoder.encode_first_turns(real)
        out["target_first_turn"] = _summary([len(x) for x in ids])
        out["target_tokenizer"] = getattr(encoder.tokenizer, "name_or_path", "") or type(encoder.tokenizer).__name__
        out["chat_template"] = encoder.chat_template
    return out


def format_stats(stats: Mapping[str, Any]) -> str:
    """Human-readable lines for one config's stats."""
    lines = [f"{stats['config']}: {stats['rows']} rows, {stats['multiturn']} multi-turn"]
    lines.append("  categories: " + ", ".join(f"{c or '?'} {n}" for c, n in stats["categories"].items()))
    ph = stats["placeholders"]
    if ph["rows"]:
        lines.append(f"  placeholders: {ph['rows']} rows ("
                     + ", ".join(f"{s} {n}" for s, n in ph["sources"].items())
                     + ") - resolve with `speedbench prepare`")
    else:
        lines.append("  placeholders: none")
    for key, label in (("o200k_first_turn", "o200k_base tokens"), ("target_first_turn", "target tokens")):
        s = stats.get(key)
        if s:
            lines.append(f"  {label} (first turn): min {s['min']}, mean {s['mean']}, p50 {s['p50']:g}, "
                         f"p90 {s['p90']:g}, max {s['max']}, total {s['total']}")
    if "bucket_tokens" in stats:
        lines.append(f"  bucket: {stats['bucket_tokens']} o200k tokens; rows off bucket (bucketed at load): "
                     f"{stats['off_bucket_rows']}")
    if "target_tokenizer" in stats:
        lines.append(f"  target tokenizer: {stats['target_tokenizer']} (chat template "
                     f"{'on' if stats['chat_template'] else 'off'})")
    return "\n".join(lines)
