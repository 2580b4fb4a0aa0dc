"""The session: its matrix, engines, results, and one case's flow (measure -> gates -> save).

The plugin module only wires pytest hooks to this object. The engines live in the pool
(engine_pool.py), a case's measurement in the case runner (case_runner.py), the results in the
book (results/book.py); the session holds them and records each case's entry as it finishes.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_speedbench.data.loaders import available_configs, category_counts, check_categories, check_dataset
from pytest_speedbench.engines import DRAFTERS
from pytest_speedbench.errors import SpeedbenchError, UsageError
from pytest_speedbench.results.record import RunRecord
from pytest_speedbench.settings.matrix import Case, Matrix, expand
from pytest_speedbench.settings.options import Settings
from pytest_speedbench.settings.profile import profile_line, prompt_lines

if TYPE_CHECKING:  # the runner, pool and their clients are imported once the inputs are checked
    from pytest_speedbench.case_runner import CaseResult
    from pytest_speedbench.engines.base import Engine
    from pytest_speedbench.measure.client import Progress


def build_matrix(settings: Settings) -> Matrix:
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
        self.started = time.monotonic()
        self.first_result_s: float | None = None
        self.config: Any = None  # the pytest.Config, set by the plugin (hooks are called through it)
        self.check_inputs()  # a typo stops the run before the engine and client code is even imported
        from pytest_speedbench.case_runner import CaseRunner
        from pytest_speedbench.data.prompt_cache import PromptCache
        from pytest_speedbench.data.workload import WorkloadCache
        from pytest_speedbench.engine_pool import EnginePool
        from pytest_speedbench.results.book import ResultsBook
        from pytest_speedbench.results.gates import parse_thresholds, rules_from_settings

        workdir = rootdir / settings.storage / "logs" / time.strftime("%Y%m%d-%H%M%S")
        self.pool = EnginePool(settings, self.matrix, workdir)
        self.workload = WorkloadCache(settings, PromptCache())
        self.runner = CaseRunner(settings, self.pool, self.workload, self.matrix.cases)
        self.runner.on_twin_rounds = self._record_twin_rounds
        self.record = RunRecord()
        self.record.section["name"] = settings.save
        #: whether the header lines were printed (pytest's header, or at collection)
        self.header_said = False
        #: case ids -k/-m/--deselect removed (pytest_deselected)
        self.deselected: list[str] = []
        self.book = ResultsBook(settings, rootdir, {"config": self.resolved_config(), "engines": self.pool.info,
                                                    "run": self.record.section})
        self.rules = rules_from_settings(settings.fail, settings.sections)
        self.thresholds = parse_thresholds(settings.sections)
        self.baseline: dict[str, Any] | None = None
        #: what --speedbench-compare resolved to (for `latest`: the runs it passed over, and why)
        self.baseline_lines: list[str] = []
        if settings.compare:
            self._load_baseline(settings.compare)
        self.book.check_writable()  # a nightly job stops at second 0, not after the first case

    def _load_baseline(self, compare: str) -> None:
        if compare == "latest":
            self.baseline_lines = self.book.storage.latest().lines("baseline latest")
        path = self.book.storage.resolve(compare)
        self.baseline = self.book.storage.load(path)
        self.record.section["baseline"] = str(path)
        if not self.baseline_lines:
            self.baseline_lines = [f"speedbench: baseline {compare} = {path}"]

    def check_inputs(self) -> None:
        """The dataset, categories, model paths and rank corpus exist (cheap: no engine code)."""
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
        if s.rank_corpus != "bundled" and not Path(s.rank_corpus).expanduser().is_file():
            raise UsageError(f"--rank-corpus: {s.rank_corpus} is not a file (give 'bundled', a text file or a .jsonl file)")

    def header_lines(self) -> list[str]:
        """The session header: which profile, which prompts and how many per category."""
        s = self.settings
        buckets = list(dict.fromkeys(c.bucket for c in self.matrix.cases if c.bucket))
        configs = ["qualitative"] * ("qualitative" in s.split) + [f"throughput_{b}" for b in buckets] * ("throughput" in s.split)
        counts = {c: category_counts(s.dataset, c) for c in configs}  # rows per category, where cheap to know
        return [profile_line(s, s.yaml_file), *prompt_lines(s, buckets, counts),
                f"speedbench: {len(self.matrix.cases)} case(s) in the matrix"]

    def resolved_config(self) -> dict[str, Any]:
        data = asdict(self.settings)
        data["explicit"] = sorted(self.settings.explicit)
        data["from_profile"] = sorted(self.settings.from_profile)
        data["matrix_dropped"] = list(self.matrix.dropped)
        return data

    def nothing_to_measure(self, cases: list[Case]) -> str | None:
        """Why a run would measure nothing (no case, or every case skipped), else None."""
        if not cases:
            dropped = "; ".join(self.matrix.dropped) or "the options select no combination"
            return f"nothing to measure: the matrix is empty ({dropped})"
        reasons = [self.pool.skip_reason(case) for case in cases]
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

    def run_case(self, case: Case, engine: Engine, nodeid: str, name: str,
                 progress: Progress | None = None) -> CaseResult:
        """Measure, compute, gate and save one case; failures are recorded before raising."""
        from pytest_speedbench.case_runner import CaseResult, measured_failures
        from pytest_speedbench.metrics.request import request_e2e
        from pytest_speedbench.results.gates import FINGERPRINT_KEY, evaluate, find_baseline

        try:
            run, extra = self.runner.measure(case, engine, progress)
        except BaseException as exc:
            self.record_error(case, nodeid, name, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.runner.release_prompts(case)
        extra[FINGERPRINT_KEY] = self.runner.fingerprint(case, self.book.machine_info(self.config))
        s = self.settings
        verdict = evaluate(
            case.params(), extra, thresholds=self.thresholds, rules=self.rules,
            baseline_extra_info=find_baseline(self.baseline, case.params(), name), strict=s.strict,
            allow_missing=s.allow_missing, allow_change=s.allow_change,
        )
        failures, extra["gate"] = verdict.failing(measured_failures(run, extra))
        e2e = [request_e2e(r) for r in run.measured if r.ok]
        entry = self._entry(case, nodeid, name, [v for v in e2e if v is not None], extra)
        if self.config is not None:
            self.config.hook.pytest_speedbench_case_finished(config=self.config, case=case, entry=entry)
        self._store(entry)
        return CaseResult(case, entry, failures)

    def _entry(self, case: Case, nodeid: str, name: str, e2e: list[float], extra: dict[str, Any]) -> dict[str, Any]:
        group = f"{case.engine}-{case.dataset_config}-bs{case.batch_size}-t{case.temperature:g}"
        options = {"output_len": self.settings.output_len, "ignore_eos": self.settings.ignore_eos,
                   "warmup": self.settings.warmup,
                   "num_prompts": self.settings.num_prompts, "dataset": self.settings.dataset}
        from pytest_speedbench.results.document import benchmark_entry

        return benchmark_entry(name, nodeid, group, case.params(), e2e, extra, options, param=case.id)

    def _record_twin_rounds(self, twin: Case, case: Case, figures: dict[str, Any]) -> None:
        """Put the AR rounds measured beside `case` on the twin's own entry (when it has one)."""
        for entry in self.book.entries.values():
            if entry.get("param") == twin.id and "error" not in entry["extra_info"]:
                entry["extra_info"].setdefault("interleaved_rounds", {})[case.id] = figures

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
        return self.record.lines(self.settings.allow_missing)

    def summary_lines(self, verbose: bool = False) -> list[str]:
        from pytest_speedbench.results.table import summary_lines

        return summary_lines(list(self.book.entries.values()), per_category=verbose)
