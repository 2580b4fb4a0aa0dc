"""Many machines: `--speedbench-shard=K/N` runs one part of the matrix; `--speedbench-plan` shows the parts.

Every shard of a GitHub Actions matrix, Slurm array or Kubernetes Indexed Job runs the same
command; each computes the same partition (settings/partition.py) and keeps its own cases,
deselecting the rest the way `-k` does. Each shard's results record the whole plan (every
shard's case ids), so `speedbench merge` can name what a shard that never reported would
have measured. An empty shard (fewer start groups than shards) passes and saves an empty
results file, so the merge knows it ran.

Each case's entry gets `duration_s` (from its test's setup, engine start included, to its
result) and `shard`; `--speedbench-plan` estimates shard times from the cost model calibrated
on a saved run's durations, and sums the saved durations when that run has the same cases.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import pytest

from pytest_speedbench.settings.matrix import Case
from pytest_speedbench.settings.partition import (
    BALANCE_FACTOR, CostModel, Group, Plan, ShardSpec, Workload, balance_bound, matrix_costs, partition, shard_from,
    start_groups,
)

CASE_FIXTURE = "speedbench_case"
#: shard counts `--speedbench-plan` shows when no --speedbench-shard names one
PLAN_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


def _engine_key(case: Case) -> str:
    return str(case.engine_key)


def grouping(session: Any, count: int, model: CostModel = CostModel()) -> tuple[str, list[Group]]:
    """(how, groups): whole engine instances or twin pairs, per --speedbench-shard-by (auto:
    whole instances when there are at least `count` of them, else pairs, so no shard is left
    idle that could measure); attached servers start nothing, so there it is always pairs."""
    s = session.settings
    cases = list(session.matrix.cases)
    load = Workload(s.num_prompts, len(s.category), s.output_len, s.rounds, s.warmup, s.repeat_check)
    costs = matrix_costs(cases, load, model)
    launched = not s.server_urls()

    def groups(whole: bool) -> list[Group]:
        return start_groups(cases, _engine_key, launched=launched, costs=costs, model=model,
                            whole_instances=whole)

    if launched and s.shard_by != "pair":
        whole = groups(True)
        if s.shard_by == "engine" or len(whole) >= count:
            return "engine", whole
    return "pair", groups(False)


def build_plan(session: Any, count: int, model: CostModel = CostModel()) -> Plan:
    """The partition of the session's matrix into `count` shards."""
    return partition(grouping(session, count, model)[1], count)


def clock(seconds: float) -> str:
    """3725 -> '1:02:05'."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# -- estimates from a saved run -------------------------------------------------------------------


def saved_durations(doc: Mapping[str, Any]) -> dict[str, float]:
    """case id -> duration_s of a results document's measured entries."""
    out = {}
    for entry in doc.get("benchmarks", []):
        duration = (entry.get("extra_info") or {}).get("duration_s")
        if entry.get("param") and isinstance(duration, (int, float)) and "error" not in entry["extra_info"]:
            out[entry["param"]] = float(duration)
    return out


def history(session: Any) -> tuple[str, dict[str, float]] | None:
    """(label, durations) of the run to estimate from: --speedbench-compare's baseline when
    given (the nightly flow keeps the merged run there), else the newest saved run in storage
    that shares a case with this matrix."""
    from pytest_speedbench.results.document import load_results

    ids = {c.id for c in session.matrix.cases}
    candidates: list[Any] = []
    if session.settings.compare:
        try:
            candidates.append(session.book.storage.resolve(session.settings.compare))
        except Exception:  # noqa: BLE001 - a missing baseline is reported by the gate, not here
            pass
    candidates += list(reversed(session.book.storage.runs()))[:20]
    for path in candidates:
        try:
            durations = saved_durations(load_results(path))
        except Exception:  # noqa: BLE001 - an unreadable old run only means no estimate
            continue
        if ids & set(durations):
            return str(path), durations
    return None


class Estimator:
    """Seconds per shard: the cost model x seconds per decode step (calibrated on the start
    groups whose every case the saved run has, else CostModel.step_s), and the sum of the saved
    durations when the saved run has every case of the shard."""

    def __init__(self, plan: Plan, saved: tuple[str, dict[str, float]] | None, model: CostModel = CostModel()):
        self.plan, self.model = plan, model
        self.source, self.durations = saved if saved else (None, {})
        known = [g for shard in plan.shards for g in shard if all(c.id in self.durations for c in g.cases)]
        cost = sum(g.cost for g in known)
        self.calibrated = cost > 0
        self.step_s = sum(self.durations[c.id] for g in known for c in g.cases) / cost if cost > 0 else model.step_s
        self.known = sum(len(g.cases) for g in known)

    def model_s(self, index: int) -> float:
        return self.plan.cost(index) * self.step_s

    def saved_s(self, index: int) -> float | None:
        ids = [c.id for c in self.plan.cases(index)]
        if not ids or not all(i in self.durations for i in ids):
            return None
        return sum(self.durations[i] for i in ids)

    def basis(self) -> str:
        if self.calibrated:
            return f"cost model calibrated on {self.known} case(s) of {self.source}: {self.step_s * 1000:.3g} ms/step"
        return (f"cost model, uncalibrated: {self.model.step_s * 1000:g} ms per decode step assumed (no saved run "
                "has a whole start group of this matrix)")


# -- what the terminal shows ------------------------------------------------------------------------


def shard_lines(plan: Plan, spec: ShardSpec, estimate: Estimator, how: str = "pair") -> list[str]:
    """The header of a shard: where K/N came from, its cases by start group, its time."""
    mine = plan.shards[spec.index - 1]
    total = sum(len(plan.cases(k)) for k in range(1, plan.count + 1))
    groups = sum(len(s) for s in plan.shards)
    saved = estimate.saved_s(spec.index)
    when = f"~{clock(estimate.model_s(spec.index))}" + (f" (saved run: {clock(saved)})" if saved is not None else "")
    lines = [f"speedbench: shard {spec.label} ({spec.source}): {len(plan.cases(spec.index))} of {total} case(s) in "
             f"{len(mine)} of {groups} start group(s) of {GROUPING_TEXT[how]}, estimated {when}; "
             f"plan {plan.fingerprint()}"]
    if not mine:
        lines.append(f"speedbench: shard {spec.label} has no case: the matrix has {groups} start group(s) for "
                     f"{plan.count} shards (a group never splits; --speedbench-shard-by=pair makes more, smaller "
                     "groups); it passes and saves an empty shard file")
    for group in mine:
        lines.append(f"speedbench:   group {group.name}: {', '.join(c.id for c in group.cases)}")
    return lines


def plan_lines(plan: Plan, estimate: Estimator) -> list[str]:
    """Every shard of one plan: cases, groups, estimated time."""
    lines = [f"speedbench: plan {plan.fingerprint()} for {plan.count} shard(s) ({estimate.basis()}):"]
    for k in range(1, plan.count + 1):
        saved = estimate.saved_s(k)
        lines.append(f"speedbench:   shard {k}/{plan.count}: {len(plan.cases(k))} case(s) in "
                     f"{len(plan.shards[k - 1])} group(s), ~{clock(estimate.model_s(k))}"
                     + (f", saved run: {clock(saved)}" if saved is not None else "")
                     + (f": {', '.join(c.id for c in plan.cases(k))}" if plan.cases(k) else ""))
    groups = [g for shard in plan.shards for g in shard]
    mean = sum(plan.cost(k) for k in range(1, plan.count + 1)) / plan.count
    bound = balance_bound(groups, plan.count) / mean if mean else 1.0
    lines.append(f"speedbench:   most expensive shard / mean = {plan.imbalance():.2f} (guaranteed <= {bound:.2f} for "
                 f"these groups: <= mean + largest group, <= {BALANCE_FACTOR:.2f} x the best partition)")
    return lines


SHORT = {"engine": "whole engine instances", "pair": "twin pairs"}
GROUPING_TEXT = {"engine": "whole engine instances (each server starts once in the fleet)",
                 "pair": "twin pairs (an AR case with its SD cases; each shard starts the servers it needs)"}


def choice_lines(session: Any, saved: tuple[str, dict[str, float]] | None) -> list[str]:
    """Longest shard's estimated time for several N, to choose N."""
    cases = len(session.matrix.cases)
    pairs = len(partition(grouping_for(session, "pair")[1], 1).shards[0])
    lines = [f"speedbench: {cases} case(s), {pairs} twin pair group(s); longest shard per shard count "
             "(--speedbench-shard=K/N):"]
    for count in [n for n in PLAN_COUNTS if n <= max(1, pairs)]:
        how, groups = grouping(session, count)
        plan = partition(groups, count)
        estimate = Estimator(plan, saved)
        longest = max(range(1, count + 1), key=plan.cost)
        lines.append(f"speedbench:   N={count}: ~{clock(estimate.model_s(longest))} "
                     f"(mean ~{clock(sum(estimate.model_s(k) for k in range(1, count + 1)) / count)}; "
                     f"{len(groups)} group(s): {SHORT[how]})")
    lines.append(f"speedbench:   ({Estimator(build_plan(session, 1), saved).basis()})")
    return lines


def grouping_for(session: Any, how: str) -> tuple[str, list[Group]]:
    """The groups of one --speedbench-shard-by value, whatever the session's."""
    from dataclasses import replace

    class View:  # the session with another shard_by: grouping() reads only these
        settings = replace(session.settings, shard_by=how)
        matrix = session.matrix

    return grouping(View(), 1)


# -- the plugin object ----------------------------------------------------------------------------


def _case(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get(CASE_FIXTURE) if callspec else None
    return case if isinstance(case, Case) else None


class ShardSupport:
    """Registered by the speedbench plugin: selects this shard's cases, says so, records it."""

    def __init__(self, config: pytest.Config, session: Any, spec: ShardSpec | None) -> None:
        self.config, self.session, self.spec = config, session, spec
        self.how, groups = grouping(session, spec.count) if spec else ("pair", [])
        self.plan = partition(groups, spec.count) if spec else None
        self.started: dict[str, float] = {}
        if spec is not None and self.plan is not None:
            session.book.section["shard"] = {
                "index": spec.index, "count": spec.count, "source": spec.source,
                "plan": self.plan.as_dict(), "fingerprint": self.plan.fingerprint(), "grouping": self.how,
                "cost": {str(k): self.plan.cost(k) for k in range(1, spec.count + 1)},
                "matrix": [c.id for c in session.matrix.cases],
            }

    @property
    def showing_plan(self) -> bool:
        return bool(self.session.settings.plan) or bool(self.config.getoption("collectonly", False))

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if self.spec is None or self.plan is None:
            return []
        return shard_lines(self.plan, self.spec, Estimator(self.plan, history(self.session)), self.how)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if self.spec is None or self.plan is None:
            return
        mine = {c.id for c in self.plan.cases(self.spec.index)}
        kept, dropped = [], []
        for item in items:
            case = _case(item)
            (dropped if case is not None and case.id not in mine else kept).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not self.showing_plan or not (self.session.settings.plan or any(_case(i) for i in session.items)):
            return  # --collect-only of a project without speedbench cases: say nothing
        from pytest_speedbench.progress import Terminal

        saved = history(self.session)
        if self.plan is not None:
            lines = plan_lines(self.plan, Estimator(self.plan, saved))
        else:
            lines = choice_lines(self.session, saved)
        terminal = Terminal(self.config)
        for line in lines:
            terminal.line(line, always=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """--speedbench-plan: the plan is the whole output; nothing is measured."""
        return True if self.session.settings.plan else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if _case(item) is not None:
            self.started[item.nodeid] = time.monotonic()

    def pytest_speedbench_case_finished(self, config: Any, case: Any, entry: dict[str, Any]) -> None:
        started = self.started.get(entry.get("fullname", ""))
        extra = entry.setdefault("extra_info", {})
        if started is not None:
            extra["duration_s"] = time.monotonic() - started
        if self.spec is not None:
            extra["shard"] = self.spec.label

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """An empty shard is not a failure: it saves its (empty) results so the merge sees it."""
        if self.spec is None or self.plan is None or self.plan.cases(self.spec.index) or self.session.settings.plan:
            return
        if hasattr(self.config, "workerinput") or self.config.getoption("collectonly", False):
            return
        book = self.session.book
        book.save(book.document(self.config), empty=True)
        if session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK


def install(config: pytest.Config, session: Any, env: Mapping[str, str] | None = None) -> ShardSupport:
    """Read the shard (UsageError on a bad value) and register the plugin object."""
    spec = shard_from(session.settings.shard, os.environ if env is None else env)
    support = ShardSupport(config, session, spec)
    config.pluginmanager.register(support, "speedbench-shards")
    return support


