"""Prompts for a case: the dataset config prepared (sampled, bucketed, pre-tokenized) once.

Preparation is kept per session (one tokenizer, one pass per config) and on disk across
sessions (data/prompt_cache.py), so the time spent here never lands inside a measured window
and a repeated run does none of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pytest_speedbench.data.prepared import PreparedPrompts
from pytest_speedbench.data.prompt_cache import PromptCache
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.settings.options import Settings


@dataclass
class WorkloadCache:
    """Per-session prompts by dataset config, prepared once (data/prepared.py) and released
    when the session says a config's last case is done.

    `cache` is the on-disk cache of prepared prompts (None: prepare every session); `say`
    receives the preparation's progress lines.
    """

    settings: Settings
    cache: PromptCache | None = None
    say: Callable[[str], None] | None = None
    _encoder: Any = None
    _prepared: dict[str, PreparedPrompts] = field(default_factory=dict)
    _items: dict[str, list[WorkItem]] = field(default_factory=dict)

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from pytest_speedbench.data.tokenize import PromptEncoder

            tokenizer = _load_tokenizer(self.settings.tokenizer or self.settings.model)
            self._encoder = PromptEncoder(tokenizer, chat_template=self.settings.chat_template)
        return self._encoder

    def _warmup_outside(self) -> int:
        s = self.settings
        return s.warmup if s.warmup_prompts == "outside" and s.warmup > 0 else 0

    def prepared(self, dataset_config: str) -> PreparedPrompts:
        """The config's measured prompts and the warmup prompts outside them, prepared in one pass."""
        if dataset_config not in self._prepared:
            from pytest_speedbench.data.prepared import Selection, prepare

            s = self.settings
            # --category names qualitative categories; throughput configs group by entropy level.
            categories = tuple(s.category) if dataset_config == "qualitative" else ()
            selection = Selection(s.num_prompts, categories, s.seed, self._warmup_outside())
            self._prepared[dataset_config] = prepare(s.dataset, dataset_config, selection, self.encoder,
                                                     cache=self.cache, say=self.say)
        return self._prepared[dataset_config]

    def items(self, dataset_config: str) -> list[WorkItem]:
        if dataset_config not in self._items:
            if dataset_config.startswith("random_"):
                self._items[dataset_config] = self._random_items(dataset_config.removeprefix("random_"))
            else:
                p = self.prepared(dataset_config)
                self._items[dataset_config] = _work_items(p, range(p.n_measured))
        return self._items[dataset_config]

    def configs(self) -> set[str]:
        """The configs whose prompts are held now."""
        return set(self._prepared) | set(self._items)

    def release(self, dataset_config: str) -> None:
        """Forget a config whose last case is done (its ids, and the mapping of its cache file)."""
        self._items.pop(dataset_config, None)
        self._prepared.pop(dataset_config, None)

    def _random_items(self, bucket: str) -> list[WorkItem]:
        """The random-token control for `bucket`: the real bucket's count and target-token lengths."""
        from pytest_speedbench.data.random_tokens import CATEGORY, random_token_prompts, vocabulary
        from pytest_speedbench.settings.matrix import bucket_tokens

        real = self.items(f"throughput_{bucket}")
        lengths = [len(item.first_ids) for item in real]
        prompts = random_token_prompts(vocabulary(self.encoder.tokenizer), lengths,
                                       bucket_tokens=bucket_tokens(bucket), seed=self.settings.seed)
        return [WorkItem(pid, CATEGORY, (f"<{len(ids)} random tokens>",), np.asarray(ids, dtype=np.int32))
                for pid, ids in prompts]

    def warmup_items(self, dataset_config: str, count: int) -> tuple[list[WorkItem], str]:
        """`count` warmup prompts and where they came from ("outside" or "measured").

        Why outside: a warmup request on a measured prompt teaches a cross-request drafter
        (SGLang NGRAM) that prompt's answer, and the measured request then replays it. The
        selection is nested (select_stratified), so the next prompts of each category's ranking
        are the warmup, round-robin over categories; they were prepared in the same pass as the
        measured ones. Falls back to measured prompts (and says so) when the dataset has no
        others, or when --warmup-prompts=measured.
        """
        if dataset_config.startswith("random_"):
            # the random-token control warms up like its real bucket: prompts that neither measures
            return self.warmup_items("throughput_" + dataset_config.removeprefix("random_"), count)
        measured = self.items(dataset_config)
        if count <= 0:
            return [], "outside"
        if self.settings.warmup_prompts == "outside":
            p = self.prepared(dataset_config)
            chosen = _work_items(p, range(p.n_measured, min(len(p.prompt_ids), p.n_measured + count)))
            if chosen:
                return chosen, "outside"
        return measured, "measured"


def _work_items(p: PreparedPrompts, indices: range) -> list[WorkItem]:
    """WorkItems over the prepared ids (views, no copies). A single-turn prompt's text is gone
    once tokenized: its turns are ("",), the first turn being sent as ids."""
    return [WorkItem(p.prompt_ids[i], p.categories[i], p.turns.get(i, ("",)), p.first_ids(i)) for i in indices]


def _load_tokenizer(spec: str | None) -> Any:
    """A tokenizer-only folder (tokenizer files, no model config) loads directly."""
    path = Path(spec) if spec else None
    if path is not None and path.is_dir() and (path / "tokenizer_config.json").is_file() \
            and not (path / "config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from pytest_speedbench.models import load_tokenizer

    return load_tokenizer(spec)
