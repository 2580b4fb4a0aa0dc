"""Session-level state of a speedbench run: matrix, engine configs, measured runs, results.

The plugin module only wires pytest hooks to this object; everything that decides or measures
lives here or below.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_speedbench.metrics import run as metrics
from pytest_speedbench.metrics.per_request import mean_isl, per_request_rows
from pytest_speedbench.metrics import speedup
from pytest_speedbench.metrics.breakdowns import BreakdownInputs
from pytest_speedbench.metrics.goodput import goodput
from pytest_speedbench.metrics.request import request_e2e
from pytest_speedbench.measure.client import LoadSpec, Progress, run_load
from pytest_speedbench.settings.options import Settings, parse_slos
from pytest_speedbench.engines import DRAFTERS, get_spec, parallel_args
from pytest_speedbench.engines.base import Engine, EngineConfig
from pytest_speedbench.engines.spec import engine_extra
from pytest_speedbench.errors import EngineNotInstalled, SpeedbenchError, UsageError
from pytest_speedbench.settings.matrix import Case, Matrix, expand
from pytest_speedbench.measure.records import RunRecords
from pytest_speedbench.data.prompt_cache import PromptCache
from pytest_speedbench.data.workload import WorkloadCache
from pytest_speedbench.results.record import RunRecord


@dataclass
class CaseResult:
    """What one test learned: its results entry and the reasons it must fail, if any."""

    case: Case
    entry: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def extra_info(self) -> dict[str, Any]:
        return self.entry["extra_info"]

    def junit_properties(self) -> list[tuple[str, str]]:
        from pytest_speedbench.results.gates import junit_properties

        return junit_properties(self.extra_info)

    def check(self) -> None:
        """Fail the calling test with every reason (gate breaks, failed requests)."""
        if self.failures:
            import pytest

            pytest.fail(f"{self.case.id}: " + "\n".join(self.failures), pytrace=False)


def build_matrix(settings: Settings) -> Matrix:
    from pytest_speedbench.data.loaders import available_configs

    engines = settings.engine
    drafters = list(settings.drafter)
    urls = settings.server_urls()
    per_drafter = {k: v for k, v in urls.items() if k != "*"}
    if per_drafter and "drafter" not in settings.explicit:
        drafters = list(per_drafter)
    return expand(
        engines,
        drafters,
        settings.split,
        settings.bucket,
        settings.batch_size,
        settings.temperature,
        {e: settings.batch_sizes_for(e) for e in engines},
        buckets_explicit="bucket" in settings.explicit,
        configs=available_configs(settings.dataset),
        dataset=settings.dataset,
        draft_lengths=settings.draft_length,
        request_rates=settings.request_rate,
    )


def check_server_urls(settings: Settings, matrix: Matrix) -> None:
    urls = settings.server_urls()
    if not urls:
        return
    drafters = sorted({c.drafter for c in matrix.cases}, key=DRAFTERS.index)
    if "*" in urls and len(urls) == 1 and len(drafters) > 1:
        raise UsageError(
            f"--server-url {urls['*']} attaches to one running server, which runs one drafter, but the "
            f"matrix has drafters {', '.join(drafters)}; pass --drafter=<one of them> or map each drafter "
            "to its server: --server-url=none=URL1,eagle3=URL2"
        )
    missing = [d for d in drafters if d not in urls and "*" not in urls]
    if missing:
        raise UsageError(
            f"--server-url has no server for drafter(s) {', '.join(missing)}; "
            f"given: {', '.join(k for k in urls)}"
        )


class SpeedbenchSession:
    def __init__(self, settings: Settings, rootdir: Path) -> None:
        self.settings = settings
        self.rootdir = rootdir
        self.matrix = build_matrix(settings)
        check_server_urls(settings, self.matrix)
        self.workdir = rootdir / settings.storage / "logs" / time.strftime("%Y%m%d-%H%M%S")
        self.workload = WorkloadCache(settings, PromptCache())
        #: cases still to run (the plugin narrows it to the selected ones); prompts of configs
        #: none of them uses are released
        self.pending: set[Case] = set(self.matrix.cases)
        self.entries: dict[str, dict[str, Any]] = {}
        self.runs: dict[Case, tuple[RunRecords, dict[str, Any]]] = {}
        self.engine_info: dict[str, dict[str, Any]] = {}
        #: running engines by key; an AR twin's stays up past its own cases while SD cases need it
        self.engines: dict[str, Engine] = {}
        #: measure SD cases in rounds with their twins (off on xdist workers grouped per config,
        #: whose twins run elsewhere)
        self.interleave = True
        self._availability: dict[str, str | None] = {}
        #: engines the session may prepare (build, convert) before the first test: not named by the user
        self.preparable: set[str] = set()
        self._prepared: set[str] = set()
        self.started = time.monotonic()
        self.first_result_s: float | None = None
        self.config: Any = None  # the pytest.Config, set by the plugin (hooks are called through it)
        self.record = RunRecord()
        self.record.section["name"] = settings.save
        #: whether the header lines were printed (pytest's header, or at collection)
        self.header_said = False
        #: case ids -k/-m/--deselect removed (pytest_deselected)
        self.deselected: list[str] = []
        self.book = ResultsBook(settings, rootdir, {"config": self.resolved_config(), "engines": self.engine_info,
                                                    "run": self.record.section})
        self._analysis: BreakdownInputs | None = None
        self.slos = parse_slos(settings.goodput) if settings.goodput else None
        self._init_gates()
        self.preflight()

    def preflight(self) -> None:
        """Catch bad paths before any engine starts: a nightly job should stop at second 0."""
        from pytest_speedbench.data.loaders import check_categories, check_dataset

        s = self.settings
        check_dataset(s.dataset)
        if any(c.split == "qualitative" for c in self.matrix.cases):
            check_categories(s.dataset, s.category)
        models = [("--tokenizer", s.tokenizer), ("--model", s.model), ("--draft-model", s.draft_model)]
        models += [(f"engines.{e}.{k}", v.get(k)) for e, v in s.per_engine.items() for k in ("model", "draft_model")]
        for flag, path in models:
            if isinstance(path, str) and path.startswith(("/", ".", "~")) and not Path(path).expanduser().exists():
                raise UsageError(f"{flag}: {path} does not exist (give a model folder, a GGUF file, a bundled model "
                                 "name or a hub id" + (", or layers:N" if "draft" in flag else "") + ")")
        corpus = s.rank_corpus
        if corpus != "bundled" and not Path(corpus).expanduser().is_file():
            raise UsageError(f"--rank-corpus: {corpus} is not a file (give 'bundled', a text file or a .jsonl file)")
        self.book.check_writable()

    def analysis_inputs(self) -> BreakdownInputs:
        """The reasoning marker and token ranks of the acceptance breakdowns, built once with the
        target tokenizer (data/reasoning.py, data/token_ranks.py)."""
        if self._analysis is None:
            from pytest_speedbench.data import reasoning, token_ranks

            encoder = self.workload.encoder
            tokenizer = getattr(encoder, "tokenizer", None)
            if tokenizer is None:  # nothing to decode or rank with: the breakdowns say so
                self._analysis = BreakdownInputs()
                return self._analysis
            marker = reasoning.resolve_marker(self.settings.thinking_end, self.settings.model)
            ranks = token_ranks.corpus_ranks(tokenizer, self.settings.rank_corpus)
            self._analysis = BreakdownInputs(
                marker=marker, boundary=reasoning.boundary_finder(tokenizer, marker) if marker else None,
                ranks=ranks, rank_corpus=token_ranks.describe(self.settings.rank_corpus, ranks))
        return self._analysis

    def _init_gates(self) -> None:
        from pytest_speedbench.results.gates import parse_thresholds, rules_from_settings

        s = self.settings
        self.rules = rules_from_settings(s.fail, s.sections)
        self.thresholds = parse_thresholds(s.sections)
        self.baseline: dict[str, Any] | None = None
        #: what --speedbench-compare resolved to (for `latest`: the runs it passed over, and why)
        self.baseline_lines: list[str] = []
        if s.compare:
            if s.compare == "latest":
                self.baseline_lines = self.book.storage.latest().lines("baseline latest")
            path = self.book.storage.resolve(s.compare)
            self.baseline = self.book.storage.load(path)
            self.record.section["baseline"] = str(path)
            if not self.baseline_lines:
                self.baseline_lines = [f"speedbench: baseline {s.compare} = {path}"]

    def header_lines(self) -> list[str]:
        """The session header: which profile, which prompts and how many per category."""
        from pytest_speedbench.settings.profile import profile_line, prompt_lines

        buckets = list(dict.fromkeys(c.bucket for c in self.matrix.cases if c.bucket))
        return [profile_line(self.settings, self.settings.yaml_file), *prompt_lines(self.settings, buckets, self.category_counts(buckets)),
                f"speedbench: {len(self.matrix.cases)} case(s) in the matrix"]

    def category_counts(self, buckets: list[str]) -> dict[str, dict[str, int] | None]:
        """Rows per category of the configs the header names, where cheap to know."""
        from pytest_speedbench.data.loaders import category_counts

        configs = (["qualitative"] if "qualitative" in self.settings.split else []) + \
            ([f"throughput_{b}" for b in buckets] if "throughput" in self.settings.split else [])
        return {c: category_counts(self.settings.dataset, c) for c in configs}

    def resolved_config(self) -> dict[str, Any]:
        from dataclasses import asdict

        data = asdict(self.settings)
        data["explicit"] = sorted(self.settings.explicit)
        data["from_profile"] = sorted(self.settings.from_profile)
        data["matrix_dropped"] = list(self.matrix.dropped)
        return data

    # -- engine instances ----------------------------------------------------------------
    @staticmethod
    def engine_key(case: Case) -> str:
        """engine-drafter, plus -gN when the case sweeps draft lengths: one engine start each."""
        gamma = "" if case.draft_length is None else f"-g{case.draft_length}"
        return f"{case.engine}-{case.drafter}{gamma}"

    def engine_config(self, key: str) -> EngineConfig:
        engine, _, rest = key.partition("-")
        drafter, _, gamma = rest.partition("-g")
        s = self.settings
        urls = s.server_urls()
        per_engine = s.per_engine.get(engine, {})
        extra_args = per_engine.get("engine_args") or []
        if isinstance(extra_args, str):
            extra_args = shlex.split(extra_args)
        args = tuple(str(a) for a in extra_args) + tuple(shlex.split(s.engine_args or ""))
        args = (parallel_args(engine, per_engine) if not urls else ()) + args  # tp/pp/multi-node flags
        sizes = [c.batch_size for c in self.matrix.cases if self.engine_key(c) == key]
        return EngineConfig(
            engine=engine,
            drafter=drafter,
            model=per_engine.get("model", s.model),
            draft_model=per_engine.get("draft_model", s.draft_model),
            draft_length=int(gamma) if gamma else int(per_engine.get("draft_length", s.draft_length[0])),
            max_batch_size=max(sizes, default=1),
            server_url=urls.get(drafter, urls.get("*")),
            engine_args=args,
            device=s.device,
            ready_timeout_s=s.ready_timeout,
            request_timeout_s=s.request_timeout,
            extra=engine_extra(get_spec(engine), per_engine),
        )

    def availability(self, engine: str) -> str | None:
        """None when the engine can run (maybe after preparing it), else the reason it cannot.

        An engine the user named must be ready: it raises (a usage error before anything
        starts). One from a profile or the defaults is prepared when it can be, else skipped.
        """
        if engine not in self._availability:
            from pytest_speedbench.engines.prepare import preparations_for

            reason = None
            configured = self.settings.per_engine.get(engine, {}).get("command")
            if not self.settings.server_urls() and not configured:
                try:
                    get_spec(engine).check_installed()
                except EngineNotInstalled as exc:
                    if "engine" in self.settings.explicit:
                        raise
                    if preparations_for(engine, self.engine_config(f"{engine}-none").model):
                        self.preparable.add(engine)
                    else:
                        reason = str(exc)
            self._availability[engine] = reason
        return self._availability[engine]

    def prepare(self, engines: list[str], say: Callable[[str], None], detailed: bool) -> None:
        """Build or convert, once and cached, what the engines about to start still need; an
        engine whose preparation fails is skipped with the reason (never one error per test).

        Called as each engine first starts, not before the first test: the demo's first result
        (hf) then comes before llama.cpp's build, not after it."""
        from pytest_speedbench.engines.prepare import preparations_for, run_preparations

        steps = []
        for engine in dict.fromkeys(engines):
            if self.settings.server_urls() or engine in self._prepared or self._availability.get(engine):
                continue
            self._prepared.add(engine)
            found = preparations_for(engine, self.engine_config(f"{engine}-none").model)
            if engine not in self.preparable:  # named or ready: only the cheap, transparent steps
                found = [step for step in found if not step.installs]
            steps += found
        for engine, reason in run_preparations(steps, say, detailed).items():
            self._availability[engine] = reason

    def nothing_to_measure(self, cases: list[Case]) -> str | None:
        """Why a run would measure nothing (no case, or every case skipped), else None."""
        if not cases:
            dropped = "; ".join(self.matrix.dropped) or "the options select no combination"
            return f"nothing to measure: the matrix is empty ({dropped})"
        reasons = [self.skip_reason(case) for case in cases]
        if all(reasons):
            unique = "; ".join(dict.fromkeys(r for r in reasons if r))
            return f"nothing to measure: every case is skipped ({unique})"
        return None

    def note_result(self) -> float | None:
        """Seconds from session start to this result, the first time only."""
        if self.first_result_s is not None:
            return None
        self.first_result_s = time.monotonic() - self.started
        return self.first_result_s

    def skip_reason(self, case: Case) -> str | None:
        reason = self.availability(case.engine)
        if reason:
            return f"{case.engine} is not available: {reason}"
        limit = get_spec(case.engine).max_concurrency
        if limit is not None and case.batch_size > limit and not self.settings.server_urls():
            return (
                f"{case.engine} serves {limit} request at a time; batch size {case.batch_size} would "
                "report misleading throughput"
            )
        return None

    def start_engine(self, key: str) -> Engine:
        from pytest_speedbench.engines import create_engine

        config = self.engine_config(key)
        reason = self._availability.get(config.engine)
        if reason:  # its preparation failed after collection
            raise EngineNotInstalled(reason)
        engine = create_engine(config, self.workdir / key)
        (self.workdir / key).mkdir(parents=True, exist_ok=True)
        engine.start()
        self.engine_info[key] = engine.info()
        return engine

    def acquire_engine(self, key: str) -> Engine:
        """The running engine for `key`, started on first use (by its fixture or by an SD case
        that measures its AR twin in rounds)."""
        if key not in self.engines:
            self.engines[key] = self.start_engine(key)
        return self.engines[key]

    def interleaves(self, case: Case) -> bool:
        """An SD case is measured in rounds with its twin when the twin is in the matrix."""
        twin = case.twin() if case.is_speculative and self.interleave else None
        return twin is not None and twin in set(self.matrix.cases)

    def release_engine(self, key: str) -> None:
        """Stop the engine when its fixture is done, unless an SD case still to run interleaves
        with it as its AR twin (then `stop_engines` stops it at the session's end)."""
        if any(self.interleaves(c) and self.engine_key(c.twin()) == key and c not in self.runs
               for c in self.matrix.cases):
            return
        engine = self.engines.pop(key, None)
        if engine is not None:
            engine.stop()

    def stop_engines(self) -> None:
        while self.engines:
            _, engine = self.engines.popitem()
            engine.stop()

    # -- measuring -------------------------------------------------------------------------
    def load_spec(self, case: Case) -> LoadSpec:
        s = self.settings
        return LoadSpec(case.batch_size, s.output_len, case.temperature, s.warmup, s.request_timeout, s.seed,
                        ignore_eos=s.ignore_eos, request_rate=case.request_rate, burstiness=s.burstiness)

    def measure(self, case: Case, engine: Engine, progress: Progress | None = None) -> tuple[RunRecords, dict[str, Any]]:
        """Reset the engine's cross-request state, warm up outside the measured prompts, measure.

        The reset comes first because a drafter that learns across requests (SGLang NGRAM)
        would otherwise replay an earlier case's answers; the warmup stays off the measured
        prompts for the same reason. What was reset is recorded with the case.
        """
        items = self.workload.items(case.dataset_config)
        draft_length = self.engine_config(self.engine_key(case)).draft_length if case.is_speculative else None
        warm, warm_source = self.workload.warmup_items(case.dataset_config, self.settings.warmup)
        if progress is not None and hasattr(progress, "start"):
            progress.start()  # the case's time runs from its first request, not from preparing prompts
        if self.interleaves(case):
            return self.measure_rounds(case, engine, items, draft_length, progress, warm, warm_source)
        reset = engine.reset_state()
        run = run_load(engine, items, self.load_spec(case), self.workload.encoder, progress, warm)
        extra = metrics.compute_run_metrics(run, draft_length=draft_length, seed=self.settings.seed,
                                            analysis=self.analysis_inputs(), slos=self.slos)
        extra.update(self.speedups_for(case, run, extra))
        extra["client"] = run.client_info
        extra["engine_counters"] = run.engine_counters  # run-level deltas (vLLM), for audit
        extra["engine_key"] = self.engine_key(case)
        self._add_request_rows(extra, run, items, draft_length)
        self._record_state(case, engine, extra, reset, warm, warm_source)
        if self.settings.repeat_check and case.is_speculative:
            extra["repeat_check"] = self.repeat_check(case, engine, items, extra)
        self.runs[case] = (run, extra)
        return run, extra

    @staticmethod
    def _add_request_rows(extra: dict[str, Any], run: RunRecords, items: Any, draft_length: int | None) -> None:
        """Per-request rows (every round's requests) and mean ISL, for `speedbench sweep|predict`."""
        lengths = {item.prompt_id: len(item.first_ids) for item in items}
        extra["per_request"] = per_request_rows(run, lengths, draft_length=draft_length)
        extra["isl_mean"] = mean_isl(extra["per_request"])

    def measure_rounds(self, case: Case, engine: Engine, items: Any, draft_length: int | None,
                       progress: Progress | None = None, warm: Any = None,
                       warm_source: str = "measured") -> tuple[RunRecords, dict[str, Any]]:
        """AR twin and SD case in turns (AR, SD, AR, SD, ...) over the same prompts, so slow drift
        of the machine cancels in the speedup; the speedup's interval covers rounds and prompts
        (paired by prompt), and the case is marked unstable when its speedup is implausible for
        its AL or its rounds disagree beyond their spread. The AR rounds' figures go to the twin's
        entry too. Both engines are reset before every pass: the rounds measure the same prompts
        again, which a drafter that learns across requests (SGLang NGRAM) would replay."""
        from pytest_speedbench.metrics import rounds as R

        twin = case.twin()
        ar_engine = self.acquire_engine(self.engine_key(twin))
        spec, seed = self.load_spec(case), self.settings.seed
        sd_runs: list[RunRecords] = []
        ar_runs: list[RunRecords] = []
        passes = 2 * self.settings.rounds

        def step(k: int) -> Progress | None:  # progress over every pass of every round
            if progress is None:
                return None
            part = getattr(progress, "part", None)  # keeps a CaseProgress's token count across passes
            return part(k, passes) if part else lambda done, total: progress(k * total + done, passes * total)

        resets: list[Any] = []
        for i in range(self.settings.rounds):
            this = spec if i == 0 else replace(spec, warmup=0)  # each engine is warm after round 1
            ar_engine.reset_state()
            ar_runs.append(run_load(ar_engine, items, this, self.workload.encoder, step(2 * i), warm))
            resets.append(engine.reset_state())
            sd_runs.append(run_load(engine, items, this, self.workload.encoder, step(2 * i + 1), warm))
        run, ar_run = merge_rounds(sd_runs), merge_rounds(ar_runs)
        extra = metrics.compute_run_metrics(run, draft_length=draft_length, seed=seed, analysis=self.analysis_inputs(), slos=self.slos)
        ar_extra = metrics.compute_run_metrics(ar_run, seed=seed, analysis=self.analysis_inputs(), slos=self.slos)
        for side, runs in ((extra, sd_runs), (ar_extra, ar_runs)):  # a window must not span the other side
            per_round = [metrics.output_tps([r for r in x.measured if r.ok]) for x in runs]
            side["output_tps_rounds"] = per_round
            side["output_tps"] = float(sum(v for v in per_round if v) / len(per_round)) if all(per_round) else None
            if self.slos:  # per pass too: a window spanning both sides' passes would halve it
                good = [goodput([r for r in x.measured if r.ok], self.slos)["goodput_rps"] for x in runs]
                side["goodput_rps_rounds"] = good
                side["goodput_rps"] = float(sum(good) / len(good)) if all(g is not None for g in good) else None
        speedups = speedup.compute_speedups(run, ar_run, extra, ar_extra, seed=seed)
        sd_tps, ar_tps, keys = R.paired_user_tps(sd_runs, ar_runs)
        if keys:
            speedups["speedup_user_tps"] = R.ratio_of_means(sd_tps, ar_tps)
            speedups["speedup_user_tps_ci95"] = R.paired_rounds_ci(sd_tps, ar_tps, seed=seed)
        out_rounds = [s / a for s, a in zip(extra["output_tps_rounds"], ar_extra["output_tps_rounds"]) if s and a]
        speedups["speedup_output_tps_rounds"] = out_rounds
        speedups["speedup_baseline"] = twin.id
        speedups["speedup_method"] = (f"interleaved: {self.settings.rounds} round(s) AR, SD over the same "
                                      f"{len(keys)} prompt turn(s); interval over rounds and prompts, paired")
        extra.update(speedups)
        extra["stability"] = R.assess_stability(speedups, extra.get("acceptance_length"),
                                                extra.get("acceptance_length_ci95"),
                                                sd_tps if keys else None, ar_tps if keys else None)
        extra["client"] = run.client_info
        extra["engine_counters"] = run.engine_counters
        extra["engine_key"] = self.engine_key(case)
        self._add_request_rows(extra, run, items, draft_length)
        self._record_state(case, engine, extra, resets[0], warm, warm_source, resets)
        if self.settings.repeat_check:
            extra["repeat_check"] = self.repeat_check(case, engine, items, extra)
        self.runs[case] = (run, extra)
        self._record_twin_rounds(twin, case, ar_extra, ar_tps.mean(axis=1).tolist() if keys else [])
        return run, extra

    def _record_twin_rounds(self, twin: Case, case: Case, ar_extra: dict[str, Any], user_tps: list[float]) -> None:
        """Put the AR rounds measured beside `case` on the twin's own entry (when it has one)."""
        figures = {"user_tps_mean_rounds": user_tps, "output_tps_rounds": ar_extra["output_tps_rounds"],
                   "user_tps": ar_extra["user_tps"], "tpot_s": ar_extra["tpot_s"], "output_tps": ar_extra["output_tps"]}
        for entry in self.book.entries.values():
            if entry.get("param") == twin.id and "error" not in entry["extra_info"]:
                entry["extra_info"].setdefault("interleaved_rounds", {})[case.id] = figures

    def _metrics(self, case: Case, run: RunRecords) -> dict[str, Any]:
        draft_length = self.engine_config(self.engine_key(case)).draft_length if case.is_speculative else None
        return metrics.compute_run_metrics(run, draft_length=draft_length, seed=self.settings.seed,
                                            analysis=self.analysis_inputs(), slos=self.slos)

    def _record_state(self, case: Case, engine: Engine, extra: dict[str, Any], reset: Any, warm: Any,
                      warm_source: str, resets: list[Any] | None = None) -> None:
        """What was reset before the case and where its warmup came from, with any warning."""
        extra["state_reset"] = reset.as_dict()
        if resets and len(resets) > 1:
            extra["state_reset_rounds"] = [r.as_dict() for r in resets]
        extra["warmup_prompts"] = {"source": warm_source, "count": self.settings.warmup,
                                   "prompt_ids": sorted({i.prompt_id for i in warm or []})[: self.settings.warmup]}
        warnings = self.state_warnings(case, engine, reset, warm_source)
        for r in (resets or [])[1:]:
            if r.warning and r.warning not in warnings:
                warnings.append(r.warning)
        extra["warnings"] = warnings

    def state_warnings(self, case: Case, engine: Engine, reset: Any, warm_source: str) -> list[str]:
        """Why this case's acceptance may carry earlier requests' memory (empty when it cannot)."""
        warnings = [reset.warning] if reset.warning else []
        stateful = case.drafter in getattr(engine, "cross_request_drafters", frozenset())
        if stateful and warm_source == "measured" and self.settings.warmup > 0:
            warnings.append(
                f"{case.engine} {case.drafter} keeps state across requests and the warmup used measured prompts "
                f"(--warmup-prompts=measured or no other prompts in the dataset): measured requests can replay "
                "the warmup's answers")
        return warnings

    def repeat_check(self, case: Case, engine: Engine, items: list[Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Measure the same prompts again after a reset; the AL must stay inside the first pass's
        95% interval. Why: it is the direct test of drafter memory leaking between runs (without
        a reset, SGLang NGRAM's second pass replays the first and AL jumps far outside)."""
        from dataclasses import replace

        reset = engine.reset_state()
        run2 = run_load(engine, items, replace(self.load_spec(case), warmup=0), self.workload.encoder)
        second = self._metrics(case, run2)
        first_al, ci = extra.get("acceptance_length"), extra.get("acceptance_length_ci95")
        second_al = second.get("acceptance_length")
        check: dict[str, Any] = {"first": first_al, "first_ci95": ci, "second": second_al,
                                 "second_ci95": second.get("acceptance_length_ci95"), "reset": reset.as_dict()}
        if first_al is None or second_al is None or not ci or ci[0] is None:
            check.update(verdict="skip", reason="no AL (or no interval) to compare")
        elif ci[0] - 1e-9 <= second_al <= ci[1] + 1e-9:
            check.update(verdict="pass", reason=f"second AL {second_al:.3f} inside [{ci[0]:.3f}, {ci[1]:.3f}]")
        else:
            check.update(verdict="fail", reason=(
                f"repeat check: AL moved from {first_al:.3f} to {second_al:.3f} on the same prompts, outside the first "
                f"pass's 95% interval [{ci[0]:.3f}, {ci[1]:.3f}]: the engine remembers earlier requests "
                f"(reset before the repeat: {reset.method}{'; ' + reset.warning if reset.warning else ''})"))
        return check

    def speedups_for(self, case: Case, run: RunRecords, extra: dict[str, Any]) -> dict[str, Any]:
        twin = case.twin() if case.is_speculative else None
        if twin is None or twin not in self.runs:
            out = speedup.empty_speedups()
            if twin is not None:
                out["speedup_note"] = f"no drafter=none twin measured ({twin.id})"
            return out
        twin_run, twin_extra = self.runs[twin]
        out = speedup.compute_speedups(run, twin_run, extra, twin_extra, seed=self.settings.seed)
        out["speedup_baseline"] = twin.id
        return out

    def release_prompts(self, done: Case) -> None:
        """Let go of the prompts of configs that no case still to run uses (a full throughput
        config is hundreds of MB; --bucket defaults to all five)."""
        self.pending.discard(done)
        needed = {c.dataset_config for c in self.pending}
        needed |= {"throughput_" + c.removeprefix("random_") for c in needed if c.startswith("random_")}
        for config in self.workload.configs() - needed:
            self.workload.release(config)

    def run_case(self, case: Case, engine: Engine, nodeid: str, name: str,
                 progress: Progress | None = None) -> CaseResult:
        """Measure, compute, gate and save one case; failures are recorded before raising."""
        try:
            run, extra = self.measure(case, engine, progress)
        except BaseException as exc:
            self.record_error(case, nodeid, name, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.release_prompts(case)
        from pytest_speedbench.results.gates import FINGERPRINT_KEY, evaluate, find_baseline

        extra[FINGERPRINT_KEY] = self.fingerprint(case)
        s = self.settings
        verdict = evaluate(
            case.params(), extra, thresholds=self.thresholds, rules=self.rules,
            baseline_extra_info=find_baseline(self.baseline, case.params(), name), strict=s.strict,
            allow_missing=s.allow_missing, allow_change=s.allow_change,
        )
        failures = self.request_failures(run) + [c.message for c in verdict.checks if c.failed]
        repeat = extra.get("repeat_check") or {}
        if repeat.get("verdict") == "fail":
            failures.append(repeat["reason"])
        gate = verdict.as_dict()
        if failures and gate["verdict"] != "fail":
            gate = {**gate, "verdict": "fail", "reasons": failures + gate["reasons"]}
        extra["gate"] = gate
        e2e = [request_e2e(r) for r in run.measured if r.ok]
        entry = self._entry(case, nodeid, name, [v for v in e2e if v is not None], extra)
        if self.config is not None:
            self.config.hook.pytest_speedbench_case_finished(config=self.config, case=case, entry=entry)
        self._store(entry)
        return CaseResult(case, entry, failures)

    def fingerprint(self, case: Case) -> dict[str, str]:
        """Everything besides the code under test that changes this case's numbers
        (results/fingerprint.py): a gate refuses to compare cases whose fingerprints differ."""
        from pytest_speedbench.results import fingerprint as fp

        s, key = self.settings, self.engine_key(case)
        config, info = self.engine_config(key), self.engine_info.get(key, {})
        version = info.get("version") or ", ".join(
            f"{k} {info[k]}" for k in ("transformers", "torch") if info.get(k)) or None
        items = self.workload.items(case.dataset_config)
        return fp.make(
            output_len=s.output_len, ignore_eos=self.load_spec(case).ignore_eos,
            dataset=fp.dataset_identity(s.dataset, case.dataset_config, items), num_prompts=s.num_prompts,
            model=config.model or "bundled default", engine=case.engine, engine_version=version,
            drafter=case.drafter, draft_length=config.draft_length if case.is_speculative else None,
            draft_model=config.draft_model if case.is_speculative else None,
            rounds=s.rounds if self.interleaves(case) else 1, temperature=case.temperature,
            hardware=fp.hardware(self.book.machine_info(self.config)),
        )

    def _entry(self, case: Case, nodeid: str, name: str, e2e: list[float], extra: dict[str, Any]) -> dict[str, Any]:
        from pytest_speedbench.results.document import benchmark_entry

        group = f"{case.engine}-{case.dataset_config}-bs{case.batch_size}-t{case.temperature:g}"
        options = {"output_len": self.settings.output_len, "ignore_eos": self.settings.ignore_eos,
                   "warmup": self.settings.warmup,
                   "num_prompts": self.settings.num_prompts, "dataset": self.settings.dataset}
        return benchmark_entry(name, nodeid, group, case.params(), e2e, extra, options, param=case.id)

    def has_entry(self, nodeid: str) -> bool:
        return nodeid in self.book.entries

    def record_error(self, case: Case, nodeid: str, name: str, reason: str) -> None:
        """Record a case that could not be measured, with its verdict and reason."""
        extra = {"gate": {"verdict": "fail", "reasons": [reason]}, "error": reason}
        self._store(self._entry(case, nodeid, name, [], extra))

    def _store(self, entry: dict[str, Any]) -> None:
        self.book.add(entry)
        document = self.book.document(self.config)
        if self.config is not None:
            self.config.hook.pytest_speedbench_results(config=self.config, document=document)
        self.book.save(document)

    def finish(self, interrupted: str | None) -> bool:
        """Record the run's final status and save; check the baseline's cases against this run
        when gating. True when the gate must fail the session: a baseline case went missing."""
        entries = list(self.book.entries.values())
        self.record.finish(entries, interrupted)
        missing = False
        if self.baseline is not None and self.rules:
            gaps = self.record.check_baseline(self.baseline, entries)
            missing = any(not g.allowed for g in gaps) and not self.settings.allow_missing
        try:
            self.book.save(self.book.document(self.config))
        except SpeedbenchError as exc:  # e.g. a full disk: the cases saved before stay whole
            self.record.section["save_error"] = str(exc)
        return missing

    def finish_lines(self) -> list[str]:
        """The run's status and, when gated, the baseline cases this run lacks."""
        section = self.record.section
        lines = [f"speedbench: run {section['status']}" + (f": {section['reason']}" if section.get("reason") else "")]
        if section.get("save_error"):
            lines.append(f"speedbench: the run's final status was not saved: {section['save_error']}")
        gaps = self.record.gaps
        failing = [g for g in gaps if not g.allowed]
        if failing:
            allowed = self.settings.allow_missing
            lines.append(f"speedbench: {'ALLOWED' if allowed else 'FAILED'}: {len(failing)} baseline case(s) "
                         f"missing from this run (missing means failed"
                         + ("; --speedbench-allow-missing accepts it)" if not allowed else ")"))
            lines += [f"  {g.message()}" for g in failing]
        left = [g for g in gaps if g.allowed]
        if left:
            lines.append(f"speedbench: not gated, {len(left)} baseline case(s) left out by the selection:")
            lines += [f"  {g.message()}" for g in left]
        return lines

    def summary_lines(self, verbose: bool = False) -> list[str]:
        from pytest_speedbench.results.table import render

        entries = list(self.book.entries.values())
        lines = render(entries, per_category=verbose)
        for entry in entries:
            extra = entry.get("extra_info", {})
            for warning in extra.get("warnings") or []:
                lines.append(f"WARNING {entry.get('param') or entry.get('name')}: {warning}")
            repeat = extra.get("repeat_check") or {}
            if repeat.get("verdict") in ("pass", "fail"):
                lines.append(f"repeat check {entry.get('param') or entry.get('name')}: {repeat['verdict']}: "
                             f"{repeat['reason']}")
        return lines

    @staticmethod
    def request_failures(run: RunRecords) -> list[str]:
        failed = [r for r in run.measured if r.error]
        if not failed:
            return []
        first = failed[0]
        return [
            f"{len(failed)} of {len(run.measured)} requests failed; first: "
            f"{first.prompt_id} turn {first.turn}: {first.error}"
        ]


def merge_rounds(runs: list[RunRecords]) -> RunRecords:
    """One RunRecords over every round: requests concatenated, run-level counters summed."""
    requests = [r for run in runs for r in run.requests]
    counters = None
    if any(run.engine_counters for run in runs):
        counters = {}
        for run in runs:
            for key, value in (run.engine_counters or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    counters[key] = counters.get(key, 0) + value
                elif isinstance(value, list):
                    prev = counters.get(key) or []
                    width = max(len(prev), len(value))
                    counters[key] = [(prev[i] if i < len(prev) else 0) + (value[i] if i < len(value) else 0)
                                     for i in range(width)]
    info = dict(runs[-1].client_info) if runs else {}
    info["rounds"] = len(runs)
    return RunRecords(requests, counters, info)


class ResultsBook:
    """Every case's entry, saved atomically after each case so nothing measured is lost."""

    def __init__(self, settings: Settings, rootdir: Path, section: dict[str, Any]) -> None:
        from pytest_speedbench.results.document import Storage

        self.settings = settings
        self.section = section
        self.entries: dict[str, dict[str, Any]] = {}
        self.paths: list[Path] = []
        self._json_path = Path(settings.json) if settings.json else None
        storage_root = Path(settings.storage)
        if not storage_root.is_absolute():
            storage_root = rootdir / storage_root
        self.storage = Storage(storage_root)
        self._autosave_path: Path | None = None
        self.enabled = True  # False on xdist workers: the controller writes the one file
        self._machine: dict[str, Any] | None = None
        self._commit: dict[str, Any] | None = None

    def check_writable(self) -> None:
        """Fail early when a results folder cannot be created or written.

        Autosave is on by default, and the plugin is loaded by every pytest run in an
        environment that has it: unless asked for by name, the autosave folder is checked
        without creating it (nothing appears in a project that runs no benchmark).
        """
        folders = [self._json_path.parent] if self._json_path is not None else []
        if self.settings.autosave and "autosave" in self.settings.explicit:
            folders.append(self.storage.folder)
        elif self.settings.autosave and not _creatable(self.storage.folder):
            raise UsageError(f"cannot write results to {self.storage.folder} (autosave is on by default; "
                             "--speedbench-storage=DIR picks another folder, --speedbench-autosave=off none)")
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".speedbench-write-check-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise UsageError(f"cannot write results to {folder}: {exc}") from None

    def add(self, entry: dict[str, Any]) -> None:
        self.entries[entry["fullname"]] = entry

    def machine_info(self, config: Any = None) -> dict[str, Any]:
        """The run's machine info (through the firstresult hook under pytest), gathered once."""
        if self._machine is None:
            self.document(config)
        return self._machine or {}

    def document(self, config: Any = None) -> dict[str, Any]:
        """The results document; under pytest (`config`) through the firstresult hooks, so a
        conftest can replace machine info, commit info or the document itself."""
        from pytest_speedbench.results.document import commit_info, machine_info, results_document

        entries = list(self.entries.values())
        if config is None:
            if self._machine is None:
                self._machine, self._commit = machine_info(), commit_info()
            return results_document(entries, self.section, machine=self._machine, commit=self._commit)
        hook = config.hook
        if self._machine is None:
            self._machine = hook.pytest_speedbench_machine_info(config=config)
            self._commit = hook.pytest_speedbench_commit_info(config=config)
        return hook.pytest_speedbench_results_document(config=config, entries=entries, section=self.section,
                                                       machine_info=self._machine, commit_info=self._commit)

    def save(self, document: dict[str, Any], empty: bool = False) -> list[Path]:
        """Write the document (`empty`: even without entries, as an empty shard does)."""
        from pytest_speedbench.results.document import write_atomic

        if not self.enabled or not (self.entries or empty):  # nothing measured (an xdist run of other tests)
            return []
        written = []
        if self._json_path is not None:
            written.append(write_atomic(self._json_path, document))
        if self.settings.autosave:
            if self._autosave_path is None:
                commit = (document.get("commit_info") or {}).get("id")
                self._autosave_path = self.storage.reserve(commit, name=self.settings.save)
            written.append(write_atomic(self._autosave_path, document))
        self.paths = written
        return written


def _creatable(folder: Path) -> bool:
    """Whether `folder` exists writable or could be made in its nearest existing parent."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False
