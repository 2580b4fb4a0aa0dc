"""Subcommands of the `speedbench` console script: one module each, with `register(sub)`."""
