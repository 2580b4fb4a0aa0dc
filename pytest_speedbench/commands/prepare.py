"""`speedbench prepare`: write a prepared dataset directory, DIR/<config>/test.parquet.

`--layout nemo-skills` writes DIR/<config>.jsonl with chat `messages` instead (data/nemo_skills.py),
what `vllm bench serve --dataset-name speed_bench` reads; with `--num-prompts N` (and the run's
`--speedbench-seed` as `--seed`) it holds exactly the prompts a suite run with `--num-prompts=N`
sends, in the order it sends them.

Reads a source (the hub, local SPEED-Bench files, Spec-Bench/MT-bench questions or the bundled
mini set), resolves placeholder rows from their original sources where a resolver can reach
them, cuts throughput prompts to their exact bucket, and records provenance next to each file.
Exit status 1 when placeholders remain unresolved, so scripts notice.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pytest_speedbench.commands import command
from pytest_speedbench import __version__
from pytest_speedbench.errors import UsageError

SOURCE_HELP = ("hf (nvidia/SPEED-Bench on the hub, default), hf:NAME, bundled, a SPEED-Bench directory "
               "(DIR/<config>/*.parquet) or file, specbench:PATH, mtbench[:PATH]")


def register(sub: argparse._SubParsersAction) -> None:
    parser = command(sub, "prepare", help="resolve placeholders and write a prepared dataset directory", run=run,
                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (DIR/<config>/test.parquet)")
    parser.add_argument("--source", default="hf", help=SOURCE_HELP)
    parser.add_argument("--configs", default="all",
                        help="comma list of configs (qualitative, throughput_1k, ...) or all")
    parser.add_argument("--drop-unresolved", action="store_true",
                        help="leave rows that could not be resolved out of the prepared files")
    parser.add_argument("--layout", choices=LAYOUTS, default="parquet",
                        help="parquet: DIR/<config>/test.parquet (default); nemo-skills: DIR/<config>.jsonl with "
                             "chat messages, as `vllm bench serve --dataset-name speed_bench` reads")
    parser.add_argument("--num-prompts", type=int, default=None,
                        help="nemo-skills: only the prompts a suite run with --num-prompts=N sends, in its order")
    parser.add_argument("--seed", type=int, default=0,
                        help="nemo-skills with --num-prompts: the suite run's --speedbench-seed (default 0)")


LAYOUTS = ("parquet", "nemo-skills")


def _dataset_spec(source: str) -> str:
    return "hf:nvidia/SPEED-Bench" if source == "hf" else source


def _configs(raw: str, dataset: str) -> list[str]:
    from pytest_speedbench.data.loaders import bundled_configs, prepared_configs
    from pytest_speedbench.data.schema import CONFIGS, check_config

    if raw != "all":
        return [check_config(c.strip()) for c in raw.split(",") if c.strip()]
    if dataset == "bundled":
        return list(bundled_configs())
    if dataset == "mtbench" or dataset.startswith(("mtbench:", "specbench:")):
        return ["qualitative"]
    path = Path(dataset)
    if path.is_dir():
        found = list(prepared_configs(path))
        if not found:
            raise UsageError(f"{path} holds no <config>/*.parquet directories; configs: {', '.join(CONFIGS)}")
        return found
    if path.is_file():
        raise UsageError(f"{path} is a single file: name its config with --configs (one of {', '.join(CONFIGS)})")
    return list(CONFIGS)


def prepare_config(dataset: str, config: str, out: Path, *, drop_unresolved: bool = False) -> dict[str, Any]:
    """Prepare one config; returns its provenance record (also written as provenance.json)."""
    from pytest_speedbench.data.loaders import bucket_prompts, read_rows, write_parquet
    from pytest_speedbench.data.placeholders import is_placeholder, resolve_rows
    from pytest_speedbench.data.schema import bucket_tokens, row_to_prompt

    rows, resolution = resolve_rows(read_rows(dataset, config), config)
    dropped = 0
    if drop_unresolved:
        kept = [r for r in rows if not is_placeholder(r)]
        dropped, rows = len(rows) - len(kept), kept
    target = bucket_tokens(config)
    if target:  # store throughput prompts already exact; placeholders stay as they are
        ready = [i for i, r in enumerate(rows) if not is_placeholder(r)]
        bucketed = bucket_prompts([row_to_prompt(rows[i]) for i in ready], target)
        for i, p in zip(ready, bucketed):
            rows[i] = p.to_row()
    path = out / config / "test.parquet"
    write_parquet(rows, path)
    record = {
        "config": config, "dataset": dataset, "file": str(path), "rows": len(rows),
        "sources": dict(Counter(str(r.get("source") or "") for r in rows).most_common()),
        "placeholders": resolution.to_json(),
        "unresolved_rows_kept": sum(is_placeholder(r) for r in rows), "unresolved_rows_dropped": dropped,
        "bucket_tokens": target, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pytest_speedbench": __version__, "python": platform.python_version(),
    }
    (out / config / "provenance.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def prepare_nemo_skills(dataset: str, config: str, out: Path, *, num_prompts: int | None, seed: int) -> dict[str, Any]:
    """One config as out/<config>.jsonl (NeMo-Skills' layout): resolved rows only, throughput
    prompts cut to their bucket; with `num_prompts`, the suite's own selection and order."""
    from pytest_speedbench.data.loaders import bucket_prompts, read_rows, select_stratified
    from pytest_speedbench.data.nemo_skills import write_nemo_skills
    from pytest_speedbench.data.placeholders import is_placeholder, resolve_rows
    from pytest_speedbench.data.schema import bucket_tokens, row_to_prompt

    rows, _ = resolve_rows(read_rows(dataset, config), config)
    kept = [r for r in rows if not is_placeholder(r)]
    prompts = select_stratified([row_to_prompt(r) for r in kept], num_prompts, seed)  # as loaders.load_prompts
    target = bucket_tokens(config)
    prompts = bucket_prompts(prompts, target) if target else prompts
    path = write_nemo_skills([p.to_row() for p in prompts], out, config)
    return {"config": config, "file": str(path), "rows": len(prompts), "unresolved_left_out": len(rows) - len(kept)}


def run(args: argparse.Namespace) -> int:
    from pytest_speedbench.data.placeholders import Resolution

    dataset = _dataset_spec(args.source)
    status = 0
    if args.num_prompts is not None and args.layout != "nemo-skills":
        raise UsageError("--num-prompts selects prompts for --layout nemo-skills only (parquet keeps every row)")
    if args.layout == "nemo-skills":
        for config in _configs(args.configs, dataset):
            rec = prepare_nemo_skills(dataset, config, args.out, num_prompts=args.num_prompts, seed=args.seed)
            print(f"{config}: {rec['rows']} prompts -> {rec['file']}")
            if rec["unresolved_left_out"]:
                status = 1
                print(f"  left out {rec['unresolved_left_out']} rows that are still placeholders")
        return status
    for config in _configs(args.configs, dataset):
        rec = prepare_config(dataset, config, args.out, drop_unresolved=args.drop_unresolved)
        res = Resolution()
        res.resolved.update(rec["placeholders"]["resolved"])
        res.unresolved.update(rec["placeholders"]["unresolved"])
        res.reasons.update(rec["placeholders"]["reasons"])
        print(f"{config}: {rec['rows']} rows -> {rec['file']}")
        if res.resolved or res.unresolved:
            print("  " + res.summary().replace("\n", "\n  "))
        if rec["unresolved_rows_dropped"]:
            print(f"  dropped {rec['unresolved_rows_dropped']} unresolved rows (--drop-unresolved)")
        if rec["unresolved_rows_kept"]:
            status = 1
            print(f"  {rec['unresolved_rows_kept']} rows are still placeholders: loading {config} from "
                  f"{args.out} will refuse them until their sources are reachable "
                  "(or re-run with --drop-unresolved)")
    return status
