"""Prompts for a case: load the dataset config, pre-tokenize with the target tokenizer.

Loading and tokenizing are cached per session (one tokenizer, one encode per config), so the
time spent here never lands inside a measured window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.settings.options import Settings


@dataclass
class WorkloadCache:
    """Per-session cache of tokenizer and encoded prompts, keyed by dataset config."""

    settings: Settings
    cache_dir: Path | None = None
    _encoder: Any = None
    _items: dict[str, list[WorkItem]] = field(default_factory=dict)
    _warmup: dict[tuple[str, int], tuple[list[WorkItem], str]] = field(default_factory=dict)

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from pytest_speedbench.data.tokenize import PromptEncoder

            tokenizer = _load_tokenizer(self.settings.tokenizer or self.settings.model)
            self._encoder = PromptEncoder(
                tokenizer, chat_template=self.settings.chat_template, cache_dir=self.cache_dir
            )
        return self._encoder

    def items(self, dataset_config: str) -> list[WorkItem]:
        if dataset_config.startswith("random_") and dataset_config not in self._items:
            self._items[dataset_config] = self._random_items(dataset_config.removeprefix("random_"))
        if dataset_config not in self._items:
            prompts = self._load(dataset_config, self.settings.num_prompts)
            self._items[dataset_config] = self._encode(prompts)
        return self._items[dataset_config]

    def _random_items(self, bucket: str) -> list[WorkItem]:
        """The random-token control for `bucket`: the real bucket's count and target-token lengths."""
        from pytest_speedbench.data.random_tokens import CATEGORY, random_token_prompts, vocabulary
        from pytest_speedbench.settings.matrix import bucket_tokens

        real = self.items(f"throughput_{bucket}")
        lengths = [len(item.first_ids) for item in real]
        prompts = random_token_prompts(vocabulary(self.encoder.tokenizer), lengths,
                                       bucket_tokens=bucket_tokens(bucket), seed=self.settings.seed)
        return [WorkItem(pid, CATEGORY, (f"<{len(ids)} random tokens>",), ids) for pid, ids in prompts]

    def warmup_items(self, dataset_config: str, count: int) -> tuple[list[WorkItem], str]:
        """`count` warmup prompts and where they came from ("outside" or "measured").

        Why outside: a warmup request on a measured prompt teaches a cross-request drafter
        (SGLang NGRAM) that prompt's answer, and the measured request then replays it. The
        selection is nested (select_stratified), so asking for `num_prompts + count` per
        category returns the measured prompts plus others of the same categories; those others
        are the warmup, round-robin over categories. Falls back to measured prompts (and says
        so) when the dataset has no others, or when --warmup-prompts=measured.
        """
        if dataset_config.startswith("random_"):
            # the random-token control warms up like its real bucket: prompts that neither measures
            return self.warmup_items("throughput_" + dataset_config.removeprefix("random_"), count)
        key = (dataset_config, count)
        if key not in self._warmup:
            measured = self.items(dataset_config)
            chosen: list[WorkItem] = []
            if count > 0 and self.settings.warmup_prompts == "outside":
                ids = {i.prompt_id for i in measured}
                extra = [p for p in self._load(dataset_config, self.settings.num_prompts + count)
                         if p.question_id not in ids]
                by_cat: dict[str, list[Any]] = {}
                for prompt in extra:
                    by_cat.setdefault(prompt.category, []).append(prompt)
                queues = list(by_cat.values())
                picked = []
                while len(picked) < count and any(queues):
                    for queue in queues:
                        if queue and len(picked) < count:
                            picked.append(queue.pop(0))
                chosen = self._encode(picked)
            if chosen or count <= 0:
                self._warmup[key] = (chosen, "outside")
            else:
                self._warmup[key] = (measured, "measured")
        return self._warmup[key]

    def _load(self, dataset_config: str, num_prompts: int) -> list[Any]:
        from pytest_speedbench.data import load_prompts

        s = self.settings
        # --category names qualitative categories; throughput configs group by entropy level.
        categories = s.category if dataset_config == "qualitative" else ()
        return load_prompts(s.dataset, dataset_config, categories=categories, num_prompts=num_prompts, seed=s.seed)

    def _encode(self, prompts: list[Any]) -> list[WorkItem]:
        if not prompts:
            return []
        first_ids = self.encoder.encode_first_turns(prompts)
        return [WorkItem(p.question_id, p.category, tuple(p.turns), tuple(ids)) for p, ids in zip(prompts, first_ids)]


def _load_tokenizer(spec: str | None) -> Any:
    """A tokenizer-only folder (tokenizer files, no model config) loads directly."""
    path = Path(spec) if spec else None
    if path is not None and path.is_dir() and (path / "tokenizer_config.json").is_file() \
            and not (path / "config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from pytest_speedbench.models import load_tokenizer

    return load_tokenizer(spec)
