"""Prompt data: SPEED-Bench loaders, the bundled mini set, bucketing, pre-tokenization and selection.

Public API used by the plugin: `Prompt`, `load_prompts` (and `read_rows` for tools that must
see placeholder rows as they are). Pre-tokenization lives in `data.tokenize.PromptEncoder`,
which imports transformers-facing code only when used.
"""

from __future__ import annotations

from pytest_speedbench.data.loaders import load_prompts, read_rows
from pytest_speedbench.data.schema import BUCKETS, CONFIGS, ENTROPY_LEVELS, QUALITATIVE_CATEGORIES, Prompt

__all__ = [
    "BUCKETS", "CONFIGS", "ENTROPY_LEVELS", "QUALITATIVE_CATEGORIES", "Prompt", "load_prompts", "read_rows",
]
