"""`speedbench predict RESULTS... --mix coding=0.5,writing=0.5 --isl 3000 --batch-size 4`: predicted speedup.

S = t_AR(isl, b) x AL(mix) / t_SD(isl, b) from the measured cases (maths and error band in
`analysis/predict.py`): step-latency lines over ISL per batch size, interpolated between
batch sizes, and the mix's weighted per-category AL. `--check` predicts every measured SD case
from the others (leave-one-out) and prints the error against its measured user-TPS speedup.
"""

from __future__ import annotations

import argparse
from typing import Any

from pytest_speedbench.commands import add_bootstrap_options, results_command
from pytest_speedbench.errors import UsageError
from pytest_speedbench.results.export import load_runs


def parse_mix(raw: str) -> dict[str, float]:
    """'coding=0.5,writing=0.5' -> {'coding': 0.5, 'writing': 0.5} (weights need not sum to 1)."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or weight < 0:
            raise UsageError(f"--mix: {part!r} is not CATEGORY=WEIGHT with a weight >= 0 "
                             "(e.g. --mix coding=0.5,writing=0.5)")
        mix[name.strip()] = mix.get(name.strip(), 0.0) + weight
    if not mix or sum(mix.values()) <= 0:
        raise UsageError(f"--mix {raw!r}: give at least one category with a positive weight")
    return mix


def _select(configs: list[Any], args: argparse.Namespace) -> list[Any]:
    for attr, label in (("engine", "--engine"), ("drafter", "--drafter"), ("draft_length", "--draft-length")):
        want = getattr(args, attr)
        if want is None:
            continue
        valid = sorted({getattr(c, attr) for c in configs})
        if want not in valid:
            raise UsageError(f"{label} {want}: not in these results; valid: {', '.join(map(str, valid))}")
        configs = [c for c in configs if getattr(c, attr) == want]
    return configs


def run(args: argparse.Namespace) -> int:
    from pytest_speedbench.analysis.predict import PredictionError, fit_inputs, leave_one_out, predict_from
    from pytest_speedbench.analysis import sweeps

    if args.isl is not None and args.isl <= 0:
        raise UsageError(f"--isl {args.isl}: give a positive prompt length in target tokens")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: give a batch size >= 1")
    if not args.check and (args.mix is None or args.isl is None or args.batch_size is None):
        raise UsageError("give --mix, --isl and --batch-size (or --check for the leave-one-out test)")
    configs = _select(sweeps.predict_configs(sweeps.entries(load_runs(args.results, args.storage))), args)
    if not configs:
        raise UsageError("no speculative case with a draft length and per-request rows in these results "
                         "(results written before per-request rows were saved cannot be used)")
    mix = parse_mix(args.mix) if args.mix else None
    for cfg in configs:
        ar = [o.point for o in cfg.observations if not o.speculative]
        sd = [o for o in cfg.observations if o.speculative]
        print(f"{cfg.title}: {len(ar)} AR and {len(sd)} SD cases"
              + (f"; skipped (no per-request rows): {', '.join(cfg.skipped)}" if cfg.skipped else "")
              + (f"; timing not trusted (rounds disagreed): {', '.join(cfg.unstable)}" if cfg.unstable else ""))
        if mix is not None:
            inputs = fit_inputs(cfg.observations)
            als = inputs.als_by_category
            unknown = [c for c in mix if c not in als]
            if unknown:
                raise UsageError(f"--mix: no measured AL for {', '.join(unknown)} ({cfg.title}); "
                                 f"valid categories: {', '.join(sorted(als)) or 'none'}")
            try:
                pred = predict_from(inputs, mix, args.isl, args.batch_size, n_boot=args.n_boot,
                                    seed=args.seed)
            except PredictionError as exc:
                raise UsageError(f"{cfg.title}: {exc}") from None
            band = pred.band or [float("nan")] * 2
            print(f"  predicted speedup at ISL {args.isl}, batch size {args.batch_size}: {pred.speedup:.3f} "
                  f"[95% band {band[0]:.3f}, {band[1]:.3f}]")
            print(f"  AL(mix) {pred.acceptance_length.value:.3f}, t_AR {pred.ar_step_latency.value * 1e3:.2f} ms, "
                  f"t_SD {pred.sd_step_latency.value * 1e3:.2f} ms")
            for note in pred.notes:
                print(f"  note: {note}")
        if args.check:
            print("  leave-one-out (each SD case predicted from the others; measured = user-TPS speedup):")
            for h in leave_one_out(cfg.observations, n_boot=args.n_boot, seed=args.seed):
                if h.prediction is None:
                    print(f"    {h.case}: measured {h.measured:.3f}, no prediction: {h.reason}")
                    continue
                band = h.prediction.band or [float("nan")] * 2
                inside = {True: "inside", False: "outside", None: "?"}[h.within_band]
                print(f"    {h.case}: predicted {h.prediction.speedup:.3f} [{band[0]:.3f}, {band[1]:.3f}], "
                      f"measured {h.measured:.3f}, error {h.error_pct:+.1f}% ({inside} the band)")
                for note in h.prediction.notes:
                    print(f"      note: {note}")
    return 0


def register(subparsers: Any) -> None:
    p = results_command(subparsers, "predict", description=__doc__.splitlines()[0], run=run,
                        help="predict the speedup for a category mix, ISL and batch size")
    p.add_argument("--mix", metavar="CAT=W,...", help="category weights, e.g. coding=0.5,writing=0.5")
    p.add_argument("--isl", type=int, help="input length in target tokens")
    p.add_argument("--batch-size", type=int, help="concurrent requests")
    p.add_argument("--engine", help="only this engine")
    p.add_argument("--drafter", help="only this drafter")
    p.add_argument("--draft-length", type=int, help="only this draft length")
    p.add_argument("--check", action="store_true", help="leave-one-out: predict each measured SD case from the others")
    add_bootstrap_options(p)
