"""Prompt data: SPEED-Bench loaders, the bundled mini set, bucketing, pre-tokenization and selection."""
