"""One case's measurement: reset, warm up, measure in one or more passes, compute its metrics.

One flow for every case: a case alone is one pass on its engine; an SD case whose drafter=none
twin is in the matrix is measured in `--speedbench-rounds` rounds of two passes (AR, SD, AR, SD,
... over the same prompts), so slow drift of the machine cancels in the speedup
(metrics/rounds.py). Every pass starts with a reset of the engine's cross-request state: the
passes measure the same prompts again, which a drafter that learns across requests (SGLang
NGRAM) would replay; the warmup stays off the measured prompts for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.data.workload import WorkloadCache
from pytest_speedbench.engine_pool import EnginePool
from pytest_speedbench.engines.base import Engine, StateReset
from pytest_speedbench.measure.client import LoadSpec, Progress, run_load
from pytest_speedbench.measure.records import RunRecords
from pytest_speedbench.metrics import rounds, speedup
from pytest_speedbench.metrics.breakdowns import BreakdownInputs
from pytest_speedbench.metrics.per_request import mean_isl, per_request_rows
from pytest_speedbench.metrics.run import compute_run_metrics
from pytest_speedbench.results import fingerprint as fp
from pytest_speedbench.results.gates import junit_properties
from pytest_speedbench.settings.matrix import Case, EngineKey
from pytest_speedbench.settings.options import Settings, parse_slos


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
        return junit_properties(self.extra_info)

    def check(self) -> None:
        """Fail the calling test with every reason (gate breaks, failed requests)."""
        if self.failures:
            import pytest

            pytest.fail(f"{self.case.id}: " + "\n".join(self.failures), pytrace=False)


class CaseRunner:
    def __init__(self, settings: Settings, pool: EnginePool, workload: WorkloadCache,
                 cases: list[Case]) -> None:
        self.settings = settings
        self.pool = pool
        self.workload = workload
        self.cases = set(cases)
        #: cases still to run (the plugin narrows it to the selected ones); prompts of configs
        #: none of them uses are released
        self.pending: set[Case] = set(cases)
        self.slos = parse_slos(settings.goodput) if settings.goodput else None
        self._analysis: BreakdownInputs | None = None
        #: measure SD cases in rounds with their twins (off on xdist workers grouped per config,
        #: whose twins run elsewhere)
        self.interleave = True
        #: each measured case's run and metrics (an SD case run alone takes its twin's from here)
        self.runs: dict[Case, tuple[RunRecords, dict[str, Any]]] = {}
        #: called with (twin, SD case, the AR rounds' figures) to put them on the twin's entry
        self.on_twin_rounds: Callable[[Case, Case, dict[str, Any]], None] = lambda twin, case, figures: None
        pool.still_needed = self.twin_still_needed

    def interleaves(self, case: Case) -> bool:
        """An SD case is measured in rounds with its twin when the twin is in the matrix."""
        twin = case.twin() if case.is_speculative and self.interleave else None
        return twin is not None and twin in self.cases

    def twin_still_needed(self, key: EngineKey) -> bool:
        """Whether an SD case still to run interleaves with the engine `key` as its AR twin."""
        return any(self.interleaves(c) and c.twin().engine_key == key and c not in self.runs
                   for c in self.cases)

    def load_spec(self, case: Case) -> LoadSpec:
        s = self.settings
        return LoadSpec(case.batch_size, s.output_len, case.temperature, s.warmup, s.request_timeout, s.seed,
                        ignore_eos=s.ignore_eos, request_rate=case.request_rate, burstiness=s.burstiness)

    def draft_length(self, case: Case) -> int | None:
        return self.pool.config(case.engine_key).draft_length if case.is_speculative else None

    def measure(self, case: Case, engine: Engine, progress: Progress | None = None
                ) -> tuple[RunRecords, dict[str, Any]]:
        """The case's run (every SD pass) and its `extra_info` metrics."""
        items = self.workload.items(case.dataset_config)
        warm, warm_source = self.workload.warmup_items(case.dataset_config, self.settings.warmup)
        if progress is not None and hasattr(progress, "start"):
            progress.start()  # the case's time runs from its first request, not from preparing prompts
        twin = case.twin() if self.interleaves(case) else None
        sides = [(self.pool.acquire(twin.engine_key), "ar")] if twin is not None else []
        sides.append((engine, "sd"))
        count = self.settings.rounds if twin is not None else 1
        runs: dict[str, list[RunRecords]] = {"ar": [], "sd": []}
        resets: list[StateReset] = []
        for i in range(count):
            spec = self.load_spec(case) if i == 0 else replace(self.load_spec(case), warmup=0)  # warm after round 1
            for j, (eng, side) in enumerate(sides):
                reset = eng.reset_state()
                resets += [reset] if side == "sd" else []
                runs[side].append(run_load(eng, items, spec, self.workload.encoder,
                                           _pass_progress(progress, len(sides) * i + j, len(sides) * count), warm))
        run = rounds.merge_rounds(runs["sd"]) if twin is not None else runs["sd"][0]
        draft_length = self.draft_length(case)
        extra = self.metrics(run, draft_length)
        if twin is not None:
            ar_extra = self.metrics(rounds.merge_rounds(runs["ar"]), None)
            speedups, ar_user_tps = rounds.interleaved_speedups(runs["sd"], runs["ar"], extra, ar_extra,
                                                                seed=self.settings.seed, slos=self.slos)
            extra.update(speedups, speedup_baseline=twin.id)
            self.on_twin_rounds(twin, case, {
                "user_tps_mean_rounds": ar_user_tps, "output_tps_rounds": ar_extra["output_tps_rounds"],
                "user_tps": ar_extra["user_tps"], "tpot_s": ar_extra["tpot_s"], "output_tps": ar_extra["output_tps"]})
        else:
            extra.update(self.speedups_for(case, run, extra))
        extra.update(client=run.client_info, engine_counters=run.engine_counters,  # run-level deltas (vLLM)
                     engine_key=str(case.engine_key))
        lengths = {item.prompt_id: len(item.first_ids) for item in items}  # for `speedbench sweep|predict`
        extra["per_request"] = per_request_rows(run, lengths, draft_length=draft_length)
        extra["isl_mean"] = mean_isl(extra["per_request"])
        self._record_state(case, engine, extra, resets, warm, warm_source)
        if self.settings.repeat_check and case.is_speculative:
            extra["repeat_check"] = self.repeat_check(case, engine, items, extra)
        self.runs[case] = (run, extra)
        return run, extra

    def metrics(self, run: RunRecords, draft_length: int | None) -> dict[str, Any]:
        """The run's `extra_info` metrics (metrics/run.py) with the breakdowns and goodput."""
        return compute_run_metrics(run, draft_length=draft_length, seed=self.settings.seed,
                                   analysis=self.analysis_inputs(), slos=self.slos)

    def analysis_inputs(self) -> BreakdownInputs:
        """The reasoning marker and token ranks of the acceptance breakdowns, built once with the
        target tokenizer (data/reasoning.py, data/token_ranks.py)."""
        if self._analysis is None:
            from pytest_speedbench.data import reasoning, token_ranks

            tokenizer = getattr(self.workload.encoder, "tokenizer", None)
            if tokenizer is None:  # nothing to decode or rank with: the breakdowns say so
                self._analysis = BreakdownInputs()
                return self._analysis
            marker = reasoning.resolve_marker(self.settings.thinking_end, self.settings.model)
            ranks = token_ranks.corpus_ranks(tokenizer, self.settings.rank_corpus)
            self._analysis = BreakdownInputs(
                marker=marker, boundary=reasoning.boundary_finder(tokenizer, marker) if marker else None,
                ranks=ranks, rank_corpus=token_ranks.describe(self.settings.rank_corpus, ranks))
        return self._analysis

    def release_prompts(self, done: Case) -> None:
        """Let go of the prompts of configs that no case still to run uses (a full throughput
        config is hundreds of MB; --bucket defaults to all five)."""
        self.pending.discard(done)
        needed = {c.dataset_config for c in self.pending}
        needed |= {"throughput_" + c.removeprefix("random_") for c in needed if c.startswith("random_")}
        for config in self.workload.configs() - needed:
            self.workload.release(config)

    def fingerprint(self, case: Case, machine: dict[str, Any]) -> dict[str, str]:
        """Everything besides the code under test that changes this case's numbers
        (results/fingerprint.py): a gate refuses to compare cases whose fingerprints differ."""
        s, key = self.settings, case.engine_key
        config, info = self.pool.config(key), self.pool.info.get(str(key), {})
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
            hardware=fp.hardware(machine),
            **({"burstiness": s.burstiness} if case.request_rate is not None else {}),
            **({"goodput": ",".join(f"{k}:{v * 1e3:.10g}ms" for k, v in sorted(self.slos.items()))} if self.slos else {}),
        )

    def speedups_for(self, case: Case, run: RunRecords, extra: dict[str, Any]) -> dict[str, Any]:
        """Speedups over the twin measured earlier in the session (a case not run in rounds)."""
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

    def _record_state(self, case: Case, engine: Engine, extra: dict[str, Any], resets: list[StateReset],
                      warm: list[WorkItem], warm_source: str) -> None:
        """What was reset before the case (and each SD pass) and where its warmup came from, with
        any warning that earlier requests may have changed its acceptance."""
        extra["state_reset"] = resets[0].as_dict()
        if len(resets) > 1:
            extra["state_reset_rounds"] = [r.as_dict() for r in resets]
        extra["warmup_prompts"] = {"source": warm_source, "count": self.settings.warmup,
                                   "prompt_ids": sorted({i.prompt_id for i in warm or []})[: self.settings.warmup]}
        warnings = [resets[0].warning] if resets[0].warning else []
        stateful = case.drafter in getattr(engine, "cross_request_drafters", frozenset())
        if stateful and warm_source == "measured" and self.settings.warmup > 0:
            warnings.append(
                f"{case.engine} {case.drafter} keeps state across requests and the warmup used measured prompts "
                f"(--warmup-prompts=measured or no other prompts in the dataset): measured requests can replay "
                "the warmup's answers")
        warnings += [w for w in dict.fromkeys(r.warning for r in resets[1:] if r.warning) if w not in warnings]
        extra["warnings"] = warnings

    def repeat_check(self, case: Case, engine: Engine, items: list[WorkItem], extra: dict[str, Any]) -> dict[str, Any]:
        """Measure the same prompts again after a reset; the AL must stay inside the first pass's
        95% interval. Why: it is the direct test of drafter memory leaking between runs (without
        a reset, SGLang NGRAM's second pass replays the first and AL jumps far outside)."""
        reset = engine.reset_state()
        run2 = run_load(engine, items, replace(self.load_spec(case), warmup=0), self.workload.encoder)
        second = self.metrics(run2, self.draft_length(case))
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


def measured_failures(run: RunRecords, extra: dict[str, Any]) -> list[str]:
    """Why a measured case fails whatever its gate says: failed requests, a failed repeat check."""
    repeat = extra.get("repeat_check") or {}
    return request_failures(run) + ([repeat["reason"]] if repeat.get("verdict") == "fail" else [])


def request_failures(run: RunRecords) -> list[str]:
    """One reason naming how many measured requests failed and the first one's error."""
    failed = [r for r in run.measured if r.error]
    if not failed:
        return []
    first = failed[0]
    return [f"{len(failed)} of {len(run.measured)} requests failed; first: "
            f"{first.prompt_id} turn {first.turn}: {first.error}"]


def _pass_progress(progress: Progress | None, index: int, passes: int) -> Progress | None:
    """Progress over every pass of every round: pass `index` of `passes`."""
    if progress is None or passes == 1:
        return progress
    part = getattr(progress, "part", None)  # keeps a CaseProgress's token count across passes
    return part(index, passes) if part else lambda done, total: progress(index * total + done, passes * total)
