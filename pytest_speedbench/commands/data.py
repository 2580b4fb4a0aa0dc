"""`speedbench data stats`: rows, categories, placeholders and token lengths of a dataset config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pytest_speedbench.commands import command
from pytest_speedbench.data.schema import CONFIGS
from pytest_speedbench.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="inspect benchmark datasets", description=__doc__)
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    stats = command(data_sub, "stats", help="rows, categories, placeholders, o200k and target-token lengths",
                    run=run_stats)
    stats.add_argument("--dataset", default="bundled",
                       help="bundled, hf:NAME, a prepared DIR, a .parquet/.jsonl file, specbench:PATH, mtbench[:PATH]")
    stats.add_argument("--config", default="qualitative",
                       help=f"comma list of configs, or all ({', '.join(CONFIGS)})")
    stats.add_argument("--tokenizer", default="none",
                       help="target tokenizer for target-token lengths: 'default' (the bundled model's), "
                            "a local path or hub id, or 'none' (default) to skip")
    stats.add_argument("--chat-template", choices=("on", "off"), default="on",
                       help="count target tokens with the chat template applied (default on)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")


def _tokenizer_only_dir(spec: str) -> bool:
    path = Path(spec)
    return path.is_dir() and any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def load_tokenizer(spec: str) -> Any:
    """The target tokenizer: models.load_tokenizer for model specs, transformers for a tokenizer folder."""
    if spec == "none":
        return None
    try:
        from pytest_speedbench.models import load_tokenizer as models_load
    except ImportError:
        models_load = None
    if models_load is not None and not _tokenizer_only_dir(spec):
        return models_load(None if spec == "default" else spec)
    if spec == "default":
        raise UsageError("no default tokenizer is available in this installation; pass --tokenizer PATH")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UsageError("target-token counts need transformers: pip install transformers") from None
    try:
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load tokenizer {spec!r}: {exc}") from None


def _configs(raw: str, dataset: str) -> list[str]:
    if raw == "all":
        from pytest_speedbench.data.loaders import bundled_configs, prepared_configs

        if dataset == "bundled":
            return list(bundled_configs())
        if Path(dataset).is_dir():
            return list(prepared_configs(Path(dataset)))
        return list(CONFIGS)
    return [c.strip() for c in raw.split(",") if c.strip()]


def run_stats(args: argparse.Namespace) -> int:
    from pytest_speedbench.data.loaders import read_rows
    from pytest_speedbench.data.stats import dataset_stats, format_stats

    tokenizer = load_tokenizer(args.tokenizer)
    encoder = None
    if tokenizer is not None:
        from pytest_speedbench.data.tokenize import PromptEncoder

        encoder = PromptEncoder(tokenizer, chat_template=args.chat_template == "on")
    results = [dataset_stats(read_rows(args.dataset, c), c, encoder) for c in _configs(args.config, args.dataset)]
    if args.json:
        print(json.dumps({"dataset": args.dataset, "configs": results}, indent=2))
    else:
        print(f"dataset: {args.dataset}")
        for r in results:
            print(format_stats(r))
    return 0
