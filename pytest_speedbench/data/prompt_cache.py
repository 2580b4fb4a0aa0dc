"""The on-disk cache of prepared prompts: token ids a later run memory-maps instead of redoing.

Why: a full SPEED-Bench throughput config costs tens of seconds to bucket and tokenize, every
run, while the GPU waits. An entry holds one config's prepared prompts for one selection and
one tokenizer + template, keyed by all of them (`prepared.cache_key`), so a hit skips reading,
bucketing and tokenization entirely.

Layout (root: `$SPEEDBENCH_CACHE/prompts`, default ~/.cache/speedbench/prompts; outside any
repository): one folder per entry, `<key>/` with `ids.npy` (every prompt's first-turn ids, int32,
back to back), `offsets.npy` (int64, prompt i is ids[offsets[i]:offsets[i+1]]) and `meta.json`
(prompt ids, categories, texts of multi-turn prompts, what the entry was made from). Entries are
written to a temporary folder and renamed into place, so a reader never sees half of one; the
arrays are plain .npy so a hit maps them (`np.load(mmap_mode="r")`) instead of reading them.

Bounded: after each store, least recently used entries (a hit touches meta.json) are removed
until the total is under `$SPEEDBENCH_CACHE_MAX` (bytes, or with a K/M/G suffix; default 2G,
enough for every bucket of the full throughput split at 1536 prompts twice over).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_speedbench.errors import UsageError

ENV_MAX = "SPEEDBENCH_CACHE_MAX"
DEFAULT_MAX = "2G"
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """'2G' -> 2_000_000_000, '500M', '123' (bytes); a UsageError naming the bad value otherwise."""
    raw = text.strip().upper().removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _UNITS else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{ENV_MAX}={text!r} is not a size; give bytes or a number with K, M, G or T (e.g. 2G)")
    return int(value * _UNITS[unit])


def default_root(env: Mapping[str, str] | None = None) -> Path:
    from pytest_speedbench.models import cache_root

    return cache_root(env) / "prompts"


def max_bytes(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return parse_size(env.get(ENV_MAX) or DEFAULT_MAX)


@dataclass
class Entry:
    """One cached config: its key, size on disk, last use and what it was made from."""

    key: str
    path: Path
    bytes: int
    used: float
    meta: dict[str, Any]


class PromptCache:
    """Prepared prompts on disk, size-bounded with least-recently-used eviction."""

    def __init__(self, root: Path | None = None, limit: int | None = None) -> None:
        self.root = root if root is not None else default_root()
        self.limit = limit if limit is not None else max_bytes()

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        """(ids memory-mapped, offsets, meta) of an entry, or None; a damaged entry is a miss."""
        path = self.root / key
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            if meta.get("key") != key:
                return None
            ids = np.load(path / "ids.npy", mmap_mode="r")
            offsets = np.load(path / "offsets.npy")
        except (OSError, ValueError, KeyError):
            return None
        if ids.dtype != np.int32 or len(offsets) != len(meta.get("prompt_ids", ())) + 1 \
                or (len(offsets) and int(offsets[-1]) != len(ids)):
            return None
        os.utime(path / "meta.json")  # recently used: evicted last
        return ids, offsets, meta

    def store(self, key: str, ids: Sequence[np.ndarray], offsets: np.ndarray, meta: Mapping[str, Any]) -> Path:
        """Write an entry atomically, then evict down to the limit (never the new entry).

        `ids` are the prompts' arrays, written back to back as one int32 .npy without first
        being joined in memory."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with open(tmp / "ids.npy", "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False,
                      "shape": (sum(len(a) for a in ids),)}
            np.lib.format.write_array_header_1_0(f, header)
            for a in ids:
                f.write(np.ascontiguousarray(a, dtype=np.int32).tobytes())
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        (tmp / "meta.json").write_text(json.dumps({**meta, "key": key, "created": time.time()}), encoding="utf-8")
        final = self.root / key
        try:
            os.replace(tmp, final)
        except OSError:  # another process stored the same entry first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        self.evict(keep=key)
        return final

    def entries(self) -> list[Entry]:
        """Complete entries, least recently used first."""
        out = []
        if not self.root.is_dir():
            return out
        for path in self.root.iterdir():
            meta_file = path / "meta.json"
            if path.name.startswith(".") or not meta_file.is_file():
                continue
            try:
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
                size = sum(f.stat().st_size for f in path.iterdir())
                used = meta_file.stat().st_mtime
            except (OSError, ValueError):
                continue
            out.append(Entry(path.name, path, size, used, meta))
        return sorted(out, key=lambda e: e.used)

    def evict(self, keep: str | None = None) -> list[Entry]:
        """Remove least recently used entries until the total fits the limit; returns them."""
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        removed = []
        for entry in entries:
            if total <= self.limit:
                break
            if entry.key == keep:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            total -= entry.bytes
            removed.append(entry)
        return removed

    def clear(self) -> list[Entry]:
        """Remove every entry (and stale temporary folders); returns the entries removed."""
        entries = self.entries()
        for entry in entries:
            shutil.rmtree(entry.path, ignore_errors=True)
        if self.root.is_dir():
            for path in self.root.glob(".*.tmp"):
                shutil.rmtree(path, ignore_errors=True)
        return entries
