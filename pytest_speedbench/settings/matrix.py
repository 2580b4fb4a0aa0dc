"""The benchmark matrix: cases, their ids, their engine instance and their autoregressive twin.

Pure functions only: the plugin turns the result into parametrized tests.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace

from pytest_speedbench.engines import get_spec

#: `random` is the control: random-token prompts with the lengths of the throughput bucket
#: (data/random_tokens.py), measured beside it with the same engine, batch size and draft length
SPLITS: tuple[str, ...] = ("qualitative", "throughput", "random")
BUCKETS: tuple[str, ...] = ("1k", "2k", "8k", "16k", "32k")


def bucket_tokens(bucket: str) -> int:
    """'8k' -> 8000: SPEED-Bench buckets count thousands of o200k_base tokens."""
    return int(bucket.rstrip("k")) * 1000


def format_temperature(t: float) -> str:
    return f"{t:g}"


@dataclass(frozen=True, repr=False)
class EngineKey:
    """One engine start: the engine, its drafter and, when the matrix sweeps draft lengths, the
    draft length. Cases with the same key share one running engine.

    Its text (`engine-drafter[-gN]`) names the engine's log folder and its facts in the results;
    it is never parsed back, so an engine name may itself contain '-' (`my-engine`).
    """

    engine: str
    drafter: str
    draft_length: int | None = None

    def __str__(self) -> str:
        gamma = "" if self.draft_length is None else f"-g{self.draft_length}"
        return f"{self.engine}-{self.drafter}{gamma}"

    #: pytest's setup plan and the fixture's param show the text (`speedbench_engine[hf-ngram-g2]`)
    __repr__ = __str__


def format_rate(rate: float) -> str:
    """8.0 -> '8', 0.5 -> '0.5', inf -> 'inf' (case ids and labels)."""
    return f"{rate:g}"


@dataclass(frozen=True)
class Case:
    engine: str
    drafter: str
    split: str
    bucket: str | None
    batch_size: int
    temperature: float
    #: set only when the matrix sweeps more than one draft length (then the id ends in -gN and
    #: params carry it); None for drafter=none, whose one case is the twin of every draft length
    draft_length: int | None = None
    #: open-loop load: requests per second (inf: all at once), with batch_size as the cap on
    #: requests in flight; None = closed loop, exactly batch_size in flight (ids gain -rR)
    request_rate: float | None = None

    @property
    def id(self) -> str:
        split = self.split if self.bucket is None else f"{self.split}-{self.bucket}"
        gamma = "" if self.draft_length is None else f"-g{self.draft_length}"
        rate = "" if self.request_rate is None else f"-r{format_rate(self.request_rate)}"
        return (f"{self.engine}-{self.drafter}-{split}-bs{self.batch_size}-t{format_temperature(self.temperature)}"
                f"{gamma}{rate}")

    @property
    def engine_key(self) -> EngineKey:
        """The engine instance this case runs on: one start per (engine, drafter, draft length)."""
        return EngineKey(self.engine, self.drafter, self.draft_length)

    @property
    def is_speculative(self) -> bool:
        return self.drafter != "none"

    @property
    def dataset_config(self) -> str:
        """The SPEED-Bench config name this case reads prompts from."""
        return self.split if self.bucket is None else f"{self.split}_{self.bucket}"

    def twin(self) -> Case:
        """The drafter=none case measured on the same engine, prompts and load."""
        return replace(self, drafter="none", draft_length=None)

    def params(self) -> dict[str, object]:
        params: dict[str, object] = {
            "engine": self.engine,
            "drafter": self.drafter,
            "split": self.split,
            "bucket": self.bucket,
            "batch_size": self.batch_size,
            "temperature": self.temperature,
        }
        if self.draft_length is not None:
            params["draft_length"] = self.draft_length
        if self.request_rate is not None:  # "inf" as text: JSON has no infinity
            params["request_rate"] = "inf" if math.isinf(self.request_rate) else self.request_rate
        return params


@dataclass(frozen=True)
class Matrix:
    cases: tuple[Case, ...]
    #: human-readable reasons for combinations that were not generated
    dropped: tuple[str, ...]


def expand(
    engines: Sequence[str],
    drafters: Sequence[str],
    splits: Sequence[str],
    buckets: Sequence[str],
    batch_sizes: Sequence[int],
    temperatures: Sequence[float],
    batch_sizes_for: dict[str, Sequence[int]] | None = None,
    buckets_explicit: bool = False,
    configs: Collection[str] | None = None,
    dataset: str = "the dataset",
    draft_lengths: Sequence[int] = (),
    request_rates: Sequence[float] = (),
) -> Matrix:
    """Every sensible combination, ordered so each engine instance's cases are contiguous
    and the drafter=none instance of an engine comes before its SD instances (so measured
    speedups can be computed in the same session).

    `configs`: the dataset configs the data can serve (None: unknown, keep everything); a split
    or bucket it lacks is not generated, and `dropped` says why.

    With more than one of `draft_lengths`, every SD drafter runs once per draft length (one
    engine instance each, ids ending in -gN); drafter=none runs once and is every one's twin.
    With one (or none), cases carry no draft length and ids are unchanged.

    `request_rates` (requests/s, inf = all at once) turn every case into open-loop ones, one
    per rate, with the batch size as the cap on requests in flight (ids end in -rR).
    """
    rates: list[float | None] = list(dict.fromkeys(request_rates)) or [None]
    batch_sizes_for = batch_sizes_for or {}
    gammas: list[int | None] = list(dict.fromkeys(draft_lengths)) if len(set(draft_lengths)) > 1 else [None]
    dropped: list[str] = []
    cases: list[Case] = []
    servable_splits, servable_buckets = _servable(splits, buckets, configs, dataset, dropped)
    for engine in engines:
        supported = get_spec(engine).drafters
        for drafter in _none_first(drafters):
            if drafter not in supported:
                dropped.append(
                    f"{engine}: drafter {drafter!r} not supported (supported: {', '.join(supported)})"
                )
                continue
            for gamma in gammas if drafter != "none" else [None]:
                for split in servable_splits:
                    split_buckets: list[str | None] = [None] if split == "qualitative" else list(servable_buckets)
                    for bucket in split_buckets:
                        for bs in batch_sizes_for.get(engine, batch_sizes):
                            for t in temperatures:
                                cases += [Case(engine, drafter, split, bucket, bs, t, gamma, r) for r in rates]
    if buckets_explicit and not {"throughput", "random"} & set(splits):
        dropped.append("buckets apply to the throughput split only; the qualitative split has none")
    return Matrix(tuple(dict.fromkeys(cases)), tuple(dict.fromkeys(dropped)))


def _servable(splits: Sequence[str], buckets: Sequence[str], configs: Collection[str] | None, dataset: str,
              dropped: list[str]) -> tuple[list[str], list[str]]:
    """The splits and buckets the dataset has, noting in `dropped` what it lacks."""
    if configs is None:
        return list(splits), list(buckets)
    kept_splits = []
    for split in splits:
        if split == "qualitative" and "qualitative" not in configs:
            dropped.append(f"split qualitative: dataset {dataset} has no qualitative config "
                           f"(it has: {', '.join(configs) or 'none'})")
        else:
            kept_splits.append(split)
    kept = [b for b in buckets if f"throughput_{b}" in configs]
    lacking = [b for b in buckets if b not in kept]
    bucketed = [s for s in kept_splits if s != "qualitative"]  # throughput, and random beside it
    if bucketed and lacking:
        have = [c.removeprefix("throughput_") for c in configs if c.startswith("throughput_")]
        dropped.append(f"throughput bucket(s) {', '.join(lacking)}: dataset {dataset} has no "
                       f"{', '.join('throughput_' + b for b in lacking)} config (buckets it has: "
                       f"{', '.join(have) or 'none'}; prepare the others with `speedbench prepare`)")
        if not kept:
            kept_splits = [s for s in kept_splits if s not in bucketed]
    return kept_splits, kept


def _none_first(drafters: Iterable[str]) -> list[str]:
    ordered = list(dict.fromkeys(drafters))
    return sorted(ordered, key=lambda d: d != "none")


def twin_of(case: Case, cases: Iterable[Case]) -> Case | None:
    """The selected drafter=none twin of an SD case, if the matrix has it."""
    if not case.is_speculative:
        return None
    twin = case.twin()
    return twin if twin in set(cases) else None
