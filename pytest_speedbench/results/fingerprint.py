"""Settings fingerprint of a case: everything that changes its numbers besides the code under test.

Why: cases are paired with the baseline by their matrix params, which say nothing about the
output length, the prompts, the model or the machine. A run with 24 new tokens against one with
12 shows an AL "regression" that is a change of settings. Each measured case stores
`extra_info.settings_fingerprint` ({field: text}); a gate refuses to compare two cases whose
fingerprints differ, naming each field with both values, unless the change is accepted by name
(`--allow-change FIELD,...`, e.g. an engine upgrade: `engine_version`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from pytest_speedbench.errors import bad_value
from pytest_speedbench.settings.options import FINGERPRINT_FIELDS

#: every field, in the order messages list them (declared with the option that names them)
FIELDS: tuple[str, ...] = FINGERPRINT_FIELDS


def prompts_hash(items: Iterable[Any]) -> str:
    """sha256 (12 hex digits) over each prompt's id, every turn's text and the first turn's token ids,
    in order: equal exactly when the same prompts were sent as the same tokens."""
    h = hashlib.sha256()
    for item in items:
        h.update(str(item.prompt_id).encode() + b"\0")
        for turn in item.turns:
            h.update(str(turn).encode() + b"\0")
        h.update(",".join(str(i) for i in item.first_ids).encode() + b"\n")
    return h.hexdigest()[:12]


def dataset_identity(dataset: str, config: str, items: Collection[Any]) -> str:
    """'bundled qualitative: 4 prompts (coding, math, ...), sha256 1a2b3c4d5e6f'."""
    categories = sorted({str(getattr(i, "category", "")) for i in items})
    return (f"{dataset} {config}: {len(items)} prompt(s) ({', '.join(categories)}), "
            f"sha256 {prompts_hash(items)}")


def hardware(machine: Mapping[str, Any]) -> str:
    """'CPU: <brand> x N; GPU: 2 x NVIDIA H100 80GB HBM3' from a results document's machine_info."""
    cpu = machine.get("cpu") or {}
    gpus = [g.get("name") for g in machine.get("gpus") or [] if isinstance(g, Mapping)]
    gpu = "none"
    if gpus:
        gpu = "; ".join(f"{gpus.count(n)} x {n}" for n in dict.fromkeys(gpus))
    return f"CPU: {cpu.get('brand_raw') or machine.get('processor') or '?'} x {cpu.get('count') or '?'}; GPU: {gpu}"


def make(**fields: Any) -> dict[str, str]:
    """The fingerprint: FIELDS' values as text (None -> '-'), unknown names refused."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown fingerprint field(s): {', '.join(sorted(unknown))}")
    return {name: "-" if fields.get(name) is None else str(fields[name]) for name in FIELDS if name in fields}


def check_fields(names: Iterable[str], where: str) -> list[str]:
    """`names` when each is a fingerprint field; else a UsageError listing the valid ones."""
    out = []
    for name in names:
        if name not in FIELDS:
            raise bad_value(f"field in {where}", name, FIELDS)
        out.append(name)
    return out


def differences(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None,
                allowed: Collection[str] = ()) -> list[str]:
    """'field: baseline value -> current value' for each field that differs and is not allowed.

    A field present on one side only counts as a difference (a setting the other run did not
    record); two runs that both lack a fingerprint compare nothing here.
    """
    if not baseline or not current:
        return []
    out = []
    for name in FIELDS:
        if name in allowed or (name not in baseline and name not in current):
            continue
        b, c = baseline.get(name, "(not recorded)"), current.get(name, "(not recorded)")
        if b != c:
            out.append(f"{name}: {b} -> {c}")
    return out
