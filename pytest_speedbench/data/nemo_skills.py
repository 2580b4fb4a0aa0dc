"""NeMo-Skills' SPEED-Bench layout: DIR/<config>.jsonl, one conversation per line with `messages`.

This is what `vllm bench serve --dataset-name speed_bench --dataset-path DIR` (and NeMo-Skills'
own SPEED-Bench preparation) read, where `speedbench prepare` otherwise writes
DIR/<config>/test.parquet. Each line keeps the dataset's columns (question_id, category,
sub_category, turns, source, src_id, difficulty, multiturn) and adds `messages`: the user turns
as chat messages ({"role": "user", "content": turn}); assistant turns are generated at run time.

Same prompts, same order: with `prompts` already selected as the suite selects them
(`loaders.load_prompts(..., num_prompts=N, seed=S)`: stratified per category, in the order the
suite sends them), the file holds exactly the suite's prompts in its order, so another tool that
reads the file front to back without shuffling sends what the suite sends.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the file name per config in the layout
FILE = "{config}.jsonl"


def nemo_skills_row(row: dict[str, Any]) -> dict[str, Any]:
    """A dataset row (schema columns) with NeMo-Skills' `messages` added."""
    turns = [str(t) for t in row.get("turns") or []]
    return {**row, "turns": turns, "messages": [{"role": "user", "content": t} for t in turns]}


def write_nemo_skills(rows: Sequence[dict[str, Any]], out: Path, config: str) -> Path:
    """Write `rows` (in order) as out/<config>.jsonl, atomically; returns the path."""
    path = out / FILE.format(config=config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(nemo_skills_row(row), ensure_ascii=False, default=_plain) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (parquet rows) as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
