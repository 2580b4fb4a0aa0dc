"""Many GPUs: pytest-xdist workers pinned to GPUs, engine configurations kept on one worker.

A nightly matrix runs many engine configurations; each launched server should start once and
each GPU of the host should be busy. With `pytest -n N`:

- the controller hands every worker a slice of the GPU list (`--speedbench-gpus`, else the
  outer CUDA_VISIBLE_DEVICES, else the GPUs nvidia-smi sees); the worker exports it as its
  own CUDA_VISIBLE_DEVICES, which every engine process it launches (and an in-process engine)
  inherits;
- scheduling is a `LoadScopeScheduling` whose scope is the engine (default: all drafters of
  one engine, so each SD case meets its drafter=none twin on the same worker and its speedups
  can be computed) or the engine configuration (`SPEEDBENCH_XDIST_GROUP=config`: more
  parallelism, no cross-worker speedups). We do not rely on `--dist loadgroup`, which is
  broken with the pytest/xdist versions this project supports (pytest-xdist issue 1386);
- workers keep their results in memory and send them through `workeroutput`; the controller
  merges them and writes the one results file of the session.

Tensor/pipeline/data parallel and multi-node settings live in speedbench.yaml's `engines:`
section (`tensor_parallel`, `pipeline_parallel`, `data_parallel`, `nnodes`, `node_rank`,
`dist_init_addr`); `engines.parallel_args` turns them into each engine's own flags, the result entry
records them, and a launched case that needs more GPUs than its worker has is skipped with
that reason.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from pytest_speedbench.engines.spec import gpus_needed, parallel_settings
from pytest_speedbench.errors import UsageError

WORKER_INPUT_KEY = "speedbench_gpus"
WORKER_OUTPUT_KEY = "speedbench_entries"
GROUP_ENV = "SPEEDBENCH_XDIST_GROUP"
GROUP_MODES = ("engine", "config")
#: dist modes we replace with engine grouping (loadgroup included: see the module docstring)
GROUPED_DIST_MODES = ("load", "loadscope", "loadgroup")

# -- GPU lists ----------------------------------------------------------------------------------


def gpu_list(explicit: str | None, env: Mapping[str, str] | None = None) -> list[str] | None:
    """GPUs this session may use: --speedbench-gpus, else CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    env = os.environ if env is None else env
    raw = explicit if explicit else env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None and raw.strip() != "":
        gpus = [g.strip() for g in raw.split(",") if g.strip()]
        if explicit and env.get("CUDA_VISIBLE_DEVICES"):
            outer = [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
            outside = [g for g in gpus if g not in outer]
            if outside:
                raise UsageError(
                    f"--speedbench-gpus={explicit}: GPU(s) {', '.join(outside)} are outside "
                    f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}; valid GPUs: {', '.join(outer)}"
                )
        return gpus
    if raw is not None:  # CUDA_VISIBLE_DEVICES="" hides every GPU
        return []
    from pytest_speedbench.engines.gpu import memory_used_mib

    used = memory_used_mib()
    return [str(i) for i in sorted(used)] if used else None


def worker_gpus(gpus: Sequence[str], workers: int, index: int) -> list[str]:
    """Worker `index`'s slice: GPUs split evenly; with more workers than GPUs, shared round-robin."""
    if not gpus:
        return []
    if workers <= len(gpus):
        per = len(gpus) // workers
        return list(gpus[index * per : (index + 1) * per])
    return [gpus[index % len(gpus)]]


def worker_index(node_id: str) -> int:
    match = re.fullmatch(r"gw(\d+)", node_id)
    if match is None:
        raise ValueError(f"unexpected xdist worker id {node_id!r}")
    return int(match.group(1))


# -- grouping --------------------------------------------------------------------------------


def group_mode(env: Mapping[str, str] | None = None) -> str:
    mode = (os.environ if env is None else env).get(GROUP_ENV, "engine") or "engine"
    if mode not in GROUP_MODES:
        raise UsageError(f"{GROUP_ENV}={mode!r} is not a grouping; valid values: {', '.join(GROUP_MODES)}")
    return mode


def scope_map(cases: Sequence[Any], mode: str) -> dict[str, str]:
    """case id -> scheduling scope (engine, or engine-drafter)."""
    return {c.id: (c.engine if mode == "engine" else str(replace(c.engine_key, draft_length=None))) for c in cases}


def scope_of(nodeid: str, scopes: Mapping[str, str]) -> str:
    """The scope of a test id: its speedbench case's engine group, else the id itself."""
    params = nodeid[nodeid.find("[") + 1 : nodeid.rfind("]")] if "[" in nodeid else ""
    best = ""
    for case_id in scopes:
        if len(case_id) > len(best) and re.search(rf"(^|-){re.escape(case_id)}($|-)", params):
            best = case_id
    return f"speedbench:{scopes[best]}" if best else nodeid


def make_scheduler_class() -> type:
    from xdist.scheduler import LoadScopeScheduling

    class EngineGroupScheduling(LoadScopeScheduling):
        """LoadScope whose scope is a speedbench engine group: one worker per group."""

        scopes: dict[str, str] = {}

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid, self.scopes)

    return EngineGroupScheduling


# -- the plugin object ------------------------------------------------------------------------


class XdistSupport:
    """Registered by the speedbench plugin; active on the controller, on workers, and alone."""

    def __init__(self, config: pytest.Config, session: Any) -> None:
        self.config = config
        self.session = session
        self.is_worker = hasattr(config, "workerinput")
        self.gpus: list[str] | None = None
        if self.is_worker:
            assigned = config.workerinput.get(WORKER_INPUT_KEY)  # type: ignore[attr-defined]
            if assigned is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = assigned
                self.gpus = [g for g in assigned.split(",") if g]
            elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
                self.gpus = gpu_list(None)
            session.book.enabled = False  # the controller writes the session's one file
            if group_mode() == "config":  # twins live on other workers: no interleaved rounds here
                session.runner.interleave = False
        else:
            self.gpus = gpu_list(session.settings.gpus)
            if session.settings.gpus and not self._distributed():
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus or [])

    def _distributed(self) -> bool:
        return bool(getattr(self.config.option, "numprocesses", None)) or bool(getattr(self.config.option, "tx", None))

    # controller side ----------------------------------------------------------------------
    def _workers(self) -> int:
        tx = getattr(self.config.option, "tx", None) or []
        return max(1, len(tx) or int(getattr(self.config.option, "numprocesses", 0) or 1))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.gpus is None:
            return
        index = worker_index(node.gateway.id)
        node.workerinput[WORKER_INPUT_KEY] = ",".join(worker_gpus(self.gpus, self._workers(), index))

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") not in GROUPED_DIST_MODES:
            return None
        cls = make_scheduler_class()
        scheduler = cls(config, log)
        scheduler.scopes = scope_map(self.session.matrix.cases, group_mode())
        return scheduler

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        raw = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if not raw:
            return
        data = json.loads(raw)
        self.session.pool.info.update(data.get("engines", {}))
        for entry in data.get("entries", []):
            self.session.book.add(entry)
        document = self.session.book.document(self.config)
        self.config.hook.pytest_speedbench_results(config=self.config, document=document)
        self.session.book.save(document)

    # worker side --------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            payload = {"entries": list(self.session.book.entries.values()), "engines": self.session.pool.info}
            session.config.workeroutput[WORKER_OUTPUT_KEY] = json.dumps(payload, default=str)  # type: ignore[attr-defined]

    # everywhere ---------------------------------------------------------------------------
    def _needs(self, case: Any) -> tuple[int, dict[str, Any]]:
        parallel = parallel_settings(self.session.settings.per_engine.get(case.engine, {}))
        return gpus_needed(parallel), parallel

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("speedbench_case") if callspec else None
        if case is None or self.gpus is None or self.session.settings.server_urls():
            return
        need, parallel = self._needs(case)
        if need > len(self.gpus):
            where = os.environ.get("PYTEST_XDIST_WORKER", "this process")
            settings = ", ".join(f"{k}={v}" for k, v in parallel.items()) or "defaults"
            pytest.skip(
                f"{case.engine} needs {need} GPU(s) ({settings}) but {where} has {len(self.gpus)} "
                f"({','.join(self.gpus) or 'none'}); give each worker more GPUs (fewer -n or more --speedbench-gpus)"
            )

    def pytest_speedbench_case_finished(self, config: Any, case: Any, entry: dict[str, Any]) -> None:
        need, parallel = self._needs(case)
        entry.setdefault("extra_info", {})["placement"] = {
            **parallel,
            "gpus_needed": need,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "xdist_worker": os.environ.get("PYTEST_XDIST_WORKER"),
        }


def install(config: pytest.Config, session: Any) -> XdistSupport:
    """Register the plugin object (called from the speedbench plugin's pytest_configure)."""
    support = XdistSupport(config, session)
    config.pluginmanager.register(support, "speedbench-xdist")
    return support
