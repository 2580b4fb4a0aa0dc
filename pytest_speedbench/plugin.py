"""pytest hooks and fixtures of pytest-speedbench; the logic lives in session.py and below."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_speedbench import hookspecs
from pytest_speedbench.settings.options import OPTIONS, add_option, build_settings
from pytest_speedbench.errors import EngineNotInstalled, SpeedbenchError, UsageError
from pytest_speedbench.progress import CaseProgress, Heartbeat, Terminal, minutes
from pytest_speedbench.settings.matrix import Case

if TYPE_CHECKING:  # imported when a session starts, after its inputs are checked (a typo exits fast)
    from pytest_speedbench.case_runner import CaseResult
    from pytest_speedbench.engines.base import Engine
    from pytest_speedbench.session import SpeedbenchSession

SESSION_KEY = pytest.StashKey["SpeedbenchSession"]()
CASE_FIXTURE = "speedbench_case"
ENGINE_FIXTURE = "speedbench_engine"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("speedbench", "speculative decoding benchmarks (pytest-speedbench)")
    for spec in OPTIONS:
        add_option(group.addoption, spec)
        parser.addini(spec.ini_name, spec.help)
    group.addoption("--no-chat-template", dest="speedbench_chat_template", action="store_const", const="false",
                    help="send the raw prompt text, without the tokenizer's chat template")


def _yaml_path(config: pytest.Config, explicit: str | None) -> Path | None:
    """--speedbench-config, else speedbench.yaml beside the first path argument or in rootdir."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UsageError(f"--speedbench-config: {explicit} does not exist")
        return path
    candidates = []
    for arg in config.args:
        p = Path(str(arg).split("::")[0])
        candidates.append(p if p.is_dir() else p.parent)
    candidates.append(Path(config.rootpath))
    for folder in candidates:
        if (folder / "speedbench.yaml").is_file():
            return folder / "speedbench.yaml"
    return None


def pytest_configure(config: pytest.Config) -> None:
    cli = {spec.name: config.getoption("speedbench_" + spec.name) for spec in OPTIONS}
    ini = {spec.name: config.getini(spec.ini_name) or None for spec in OPTIONS}
    try:
        settings = build_settings(cli, ini, _yaml_path(config, cli.get("config") or ini.get("config")))
        from pytest_speedbench.session import SpeedbenchSession

        session = SpeedbenchSession(settings, Path(config.rootpath))
        if "engine" in settings.explicit:
            for engine in settings.engine:
                session.pool.availability(engine)
        from pytest_speedbench.shards import install as install_shards  # --speedbench-shard, --speedbench-plan

        session.config = config
        install_shards(config, session)
    except UsageError as exc:
        raise pytest.UsageError(f"pytest-speedbench: {exc}") from None
    config.stash[SESSION_KEY] = session
    from pytest_speedbench.xdist import install  # GPU pinning, engine grouping, merged results under xdist

    install(config, session)


def _session(config: pytest.Config) -> SpeedbenchSession:
    return config.stash[SESSION_KEY]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The session header, only where speedbench is asked for (an option, a speedbench.yaml):
    another project's pytest run, with the plugin merely installed, hears nothing from it.
    Otherwise the lines come once speedbench cases are collected (pytest_collection_finish)."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None or not _asked_for(config, session):
        return []
    session.header_said = True
    return session.header_lines()


def _asked_for(config: pytest.Config, session: SpeedbenchSession) -> bool:
    given = any(config.getoption("speedbench_" + spec.name) is not None for spec in OPTIONS)
    return given or bool(session.settings.yaml_file)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Say which combinations were left out and why, even under -q; a run that would measure
    nothing is a usage error."""
    speedbench = session.config.stash.get(SESSION_KEY, None)
    if speedbench is None or not _uses_speedbench(session.items):
        return
    terminal = Terminal(session.config)
    if not speedbench.header_said:
        speedbench.header_said = True
        for line in speedbench.header_lines():
            terminal.line(line)
    for reason in speedbench.matrix.dropped:
        terminal.line(f"speedbench: not generated: {reason}", always=True)
    for line in speedbench.baseline_lines:
        terminal.line(line, always=True)
    problem = speedbench.nothing_to_measure(_cases(session.items))
    if problem is not None:
        raise pytest.UsageError(f"pytest-speedbench: {problem}")
    option = session.config.option
    speedbench.record.select([c.id for c in _cases(session.items)], speedbench.deselected,
                             getattr(option, "keyword", None), getattr(option, "markexpr", None))
    if speedbench.record.deselected:
        terminal.line(f"speedbench: left out by the selection: {len(speedbench.record.deselected)} case(s): "
                      + ", ".join(speedbench.record.deselected), always=True)


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Remember the cases -k/-m/--deselect left out: the run records them, and a gate reports
    them as left out rather than missing."""
    cases = _cases(items)
    if cases:
        speedbench = items[0].config.stash.get(SESSION_KEY, None)
        if speedbench is not None:
            speedbench.deselected += [c.id for c in cases]


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Build the acceptance breakdowns' inputs (tokenizer, token ranks) before the first case,
    so their one-time cost never lands inside a case's timed setup."""
    speedbench = session.config.stash.get(SESSION_KEY, None)
    if speedbench is not None and not session.config.option.collectonly and _uses_speedbench(session.items):
        try:
            speedbench.runner.analysis_inputs()
        except Exception:  # noqa: BLE001  (a tokenizer that cannot load fails its cases, with the cause, as before)
            pass


def _cases(items: list[pytest.Item]) -> list[Case]:
    cases = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get(CASE_FIXTURE) if callspec else None
        if isinstance(case, Case):
            cases.append(case)
    return cases


def _uses_speedbench(items: list[pytest.Item]) -> bool:
    return any(CASE_FIXTURE in getattr(item, "fixturenames", ()) for item in items)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if CASE_FIXTURE not in metafunc.fixturenames:
        return
    session = _session(metafunc.config)
    params = []
    for case in session.matrix.cases:
        reason = session.pool.skip_reason(case)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(case, case.engine_key, id=case.id, marks=marks))
    metafunc.parametrize([CASE_FIXTURE, ENGINE_FIXTURE], params, indirect=[ENGINE_FIXTURE], scope="session")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each engine instance's cases together, none-drafter instances first."""
    session = _session(config)
    order = {case: i for i, case in enumerate(session.matrix.cases)}

    def key(item: pytest.Item) -> int:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get(CASE_FIXTURE) if callspec else None
        return order.get(case, -1)

    items.sort(key=key)
    session.runner.pending = {item.callspec.params[CASE_FIXTURE] for item in items
                       if CASE_FIXTURE in getattr(getattr(item, "callspec", None), "params", {})}


@pytest.fixture(scope="session")
def speedbench_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The running engine instance for one (engine, drafter) configuration; started once.
    An engine that turns out not to be installed skips its cases with the reason."""
    session, terminal, key = _session(request.config), Terminal(request.config), request.param
    try:
        # first build or convert, once and cached, what this engine still needs, saying so
        session.pool.prepare([key.engine], lambda text: terminal.line(text, always=True), detailed=not terminal.quiet)
        engine = session.pool.acquire(key)
    except EngineNotInstalled as exc:
        pytest.skip(f"{key.engine} is not available: {exc}")
    try:
        yield engine
    finally:
        session.pool.release(key)


@pytest.fixture
def speedbench_run(request: pytest.FixtureRequest, speedbench_case: Case, speedbench_engine: Engine) -> CaseResult:
    """Measure this case against the engine and return its result; call `.check()` to gate."""
    session = _session(request.config)
    terminal = Terminal(request.config)
    session.workload.say = lambda text: terminal.line(f"speedbench: {text}")  # preparation progress
    progress = CaseProgress(terminal.line, speedbench_case.id)
    with Heartbeat(progress):  # a line every 10 s, also before the first prompt finishes
        result = session.run_case(speedbench_case, speedbench_engine, request.node.nodeid, request.node.name,
                                  progress=progress)
    request.node.user_properties.extend(result.junit_properties())
    first = session.note_result()
    if first is not None:
        terminal.line(f"speedbench: first result after {minutes(first)} (since the session started)")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """A case that errored before measuring (engine start, dataset) is still recorded."""
    report = yield
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get(CASE_FIXTURE) if callspec else None
    session = item.config.stash.get(SESSION_KEY, None)
    if case is not None and session is not None:
        if report.failed and report.when in ("setup", "call") and not session.has_entry(item.nodeid):
            session.record_error(case, item.nodeid, item.name, _failure_reason(call, report))
        if report.failed and _own_error(call) and not _wants_traceback(item.config):
            report.longrepr = f"{case.id}: {_failure_reason(call, report)}"  # the cause, not 90 lines of frames
        if report.skipped and report.when == "setup":
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            session.record.skip(case.id, reason.removeprefix("Skipped: "))
    return report


def _own_error(call: pytest.CallInfo[None]) -> bool:
    """An error raised on purpose by the suite (engine unreachable, crashed, bad stream): its
    message says everything; the traceback would only bury it."""
    return call.excinfo is not None and isinstance(call.excinfo.value, SpeedbenchError)


def _wants_traceback(config: pytest.Config) -> bool:
    return config.get_verbosity() > 0 or getattr(config.option, "tbstyle", "auto") == "long"


def _failure_reason(call: pytest.CallInfo[None], report: pytest.TestReport) -> str:
    """The exception's own message (with an engine's log tail), not the traceback's last line."""
    if call.excinfo is not None:
        return f"{call.excinfo.typename}: {call.excinfo.value}".strip()
    return str(report.longrepr).strip().splitlines()[-1]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop AR twins kept up for interleaved rounds (and anything else still running); record how
    the run ended; fail the session when a gated baseline case went missing."""
    speedbench = session.config.stash.get(SESSION_KEY, None)
    if speedbench is None:
        return
    speedbench.pool.stop_all()
    if exitstatus == pytest.ExitCode.USAGE_ERROR or not speedbench.book.entries:
        return
    if speedbench.finish(_interruption(session, exitstatus)) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _interruption(session: pytest.Session, exitstatus: int) -> str | None:
    """Why the session stopped before its end, or None when it ran every selected test."""
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "interrupted (Ctrl-C, SIGTERM or pytest.exit)"
    stop = session.shouldstop or session.shouldfail
    return str(stop) if stop else None


@pytest.hookimpl(trylast=True)
def pytest_speedbench_machine_info(config: pytest.Config) -> dict[str, Any]:
    from pytest_speedbench.results.document import machine_info

    return machine_info()


@pytest.hookimpl(trylast=True)
def pytest_speedbench_commit_info(config: pytest.Config) -> dict[str, Any]:
    from pytest_speedbench.results.document import commit_info

    return commit_info()


@pytest.hookimpl(trylast=True)
def pytest_speedbench_results_document(
    config: pytest.Config, entries: list[dict[str, Any]], section: dict[str, Any],
    machine_info: dict[str, Any], commit_info: dict[str, Any],
) -> dict[str, Any]:
    from pytest_speedbench.results.document import results_document

    return results_document(entries, section, machine=machine_info, commit=commit_info)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is None or not session.book.entries:
        return
    tr = terminalreporter
    tr.write_sep("-", "speedbench summary")
    for line in session.summary_lines(verbose=config.get_verbosity() > 0):
        tr.write_line(line)
    if session.first_result_s is not None:
        tr.write_line(f"speedbench: first result after {minutes(session.first_result_s)}, "
                      f"{len(session.book.entries)} case(s) in {minutes(time.monotonic() - session.started)}")
    for line in session.finish_lines():
        tr.write_line(line)
    for path in session.book.paths:
        tr.write_line(f"speedbench results saved to {path}")
