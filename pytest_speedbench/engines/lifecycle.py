"""Shared lifecycle of a launched server process: port, process group, log, readiness, teardown.

Every engine that launches a server goes through `ServerProcess`, so the rules that keep a
benchmark host clean live in one place:

- the server runs in its own session (process group), so teardown reaches the workers it
  forks (SGLang schedulers, vLLM engine cores, MPI ranks) and a Ctrl-C in the terminal,
  which only reaches the foreground group, is handled by us rather than half-delivered;
- stdout and stderr go to a log file kept beside the results, and failures quote its tail;
- startup is watched: a server that exits while we wait for readiness fails at once with
  its log tail instead of after the (long, default 600 s) readiness timeout;
- teardown sends SIGTERM to the group, waits, then SIGKILLs whatever is left;
- a process-wide registry stops every server still running at interpreter exit and on
  SIGTERM/SIGHUP, so an interrupted run leaves nothing behind;
- on GPU hosts, `stop()` waits until the GPU memory the server held is released, so the
  next launch does not fail for lack of memory (see `gpu.py`; a no-op without GPUs).
"""

from __future__ import annotations

import abc
import atexit
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_speedbench.errors import EngineError
from pytest_speedbench.engines import gpu
from pytest_speedbench.engines.base import EngineConfig, HttpEngine, StateReset


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it; tiny race accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is `pgid`.

    Reads /proc, because orphaned grandchildren that already died may sit as zombies until
    their new parent reaps them, and `killpg(pgid, 0)` counts those as alive.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: fall back to the kernel's view, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


class _Registry:
    """Servers still running in this process, stopped on exit and on termination signals."""

    def __init__(self) -> None:
        # Strong references: a server whose owner forgot it (a test that failed before its
        # stop(), a dropped engine) must still be stopped at exit, not leak as an orphan.
        self._servers: set[ServerProcess] = set()
        self._lock = threading.Lock()
        self._installed = False
        self._previous: dict[int, Any] = {}

    def add(self, server: ServerProcess) -> None:
        with self._lock:
            self._servers.add(server)
            if not self._installed:
                self._install()

    def discard(self, server: ServerProcess) -> None:
        with self._lock:
            self._servers.discard(server)

    def running(self) -> list[ServerProcess]:
        with self._lock:
            return list(self._servers)

    def stop_all(self, grace_s: float = 5.0) -> None:
        for server in self.running():
            try:
                server.stop(grace_s=grace_s, wait_gpu=False)
            except Exception:  # pragma: no cover - best effort at exit
                pass

    def _install(self) -> None:
        self._installed = True
        atexit.register(self.stop_all)
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still runs
        for signum in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError):  # pragma: no cover
                pass
        # SIGINT is not replaced: Python turns it into KeyboardInterrupt, pytest unwinds the
        # fixtures (which stop their servers) and the atexit hook catches anything left.

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_all()
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_REGISTRY = _Registry()


def running_servers() -> list[ServerProcess]:
    """Servers started by this process and not yet stopped (for diagnostics and tests)."""
    return _REGISTRY.running()


def stop_all_servers() -> None:
    _REGISTRY.stop_all()


class ServerProcess:
    """One launched server: start, wait until ready, read its log, stop its whole group."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        name: str,
        cwd: Path | None = None,
        wait_gpu_release: bool = True,
    ) -> None:
        if not argv:
            raise ValueError("ServerProcess needs a non-empty argv")
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.name = name
        self.cwd = cwd
        self.wait_gpu_release = wait_gpu_release
        self._proc: subprocess.Popen[bytes] | None = None
        self._gpu_baseline: dict[int, int] | None = None
        self._stopped = False

    @property
    def command_line(self) -> str:
        """The launch command as a shell would show it (recorded in the results)."""
        return shlex.join(self.argv)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Launch in a new session with output to the log file; returns without waiting."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} was already started")
        if self.wait_gpu_release:
            self._gpu_baseline = gpu.memory_used_mib()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = None
        if self.env is not None:
            env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            log.write(f"$ {self.command_line}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise EngineError(f"{self.name}: cannot launch {self.argv[0]!r}: {exc.strerror or exc}") from None
        _REGISTRY.add(self)

    def wait_ready(
        self,
        probe: Callable[[], bool],
        timeout_s: float,
        interval_s: float = 0.25,
    ) -> float:
        """Poll `probe` until it returns True; returns the seconds waited.

        The probe returns False or raises while the server is not ready yet (connection
        refused, 503). The process is checked before every probe, so a crash fails at once.
        """
        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started")
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while True:
            self._raise_if_exited()
            if self._probe_while_watching(probe, deadline, interval_s):
                return time.monotonic() - t0
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"{self.name} was not ready after the {timeout_s:g} s readiness timeout "
                    f"(raise it with --ready-timeout; log: {self.log_path})",
                    log_tail=self.log_tail(),
                )
            # sleep in small slices so an early exit is noticed quickly
            self._wait_exit(min(interval_s, max(0.0, deadline - time.monotonic())))

    def _raise_if_exited(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise EngineError(
                f"{self.name} exited with code {code} during startup (log: {self.log_path})",
                log_tail=self.log_tail(),
            )

    def _probe_while_watching(self, probe: Callable[[], bool], deadline: float, interval_s: float) -> bool:
        """Run one probe in a daemon thread while watching the process: a probe stuck on a
        port that accepts but never answers must not hide an engine that already died."""
        outcome: list[bool] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append(bool(probe()))
            except Exception:
                outcome.append(False)
            finally:
                done.set()

        threading.Thread(target=run, name=f"{self.name}-ready-probe", daemon=True).start()
        while not done.wait(0):
            self._raise_if_exited()
            if time.monotonic() >= deadline:
                return False
            self._wait_exit(interval_s)
        return outcome[0]

    def _wait_exit(self, seconds: float) -> None:
        assert self._proc is not None
        try:
            self._proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server log ('' when there is none yet)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                data = f.read()
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 15.0, *, wait_gpu: bool = True, gpu_timeout_s: float = 120.0) -> None:
        """SIGTERM the process group, wait up to `grace_s`, SIGKILL what is left. Idempotent."""
        if self._proc is None or self._stopped:
            return
        pgid = self._proc.pid  # start_new_session: the leader's pid is the group id
        deadline = time.monotonic() + grace_s
        self._signal_group(pgid, signal.SIGTERM)
        self._wait_group(pgid, deadline)
        if process_group_members(pgid) or self._proc.poll() is None:
            self._signal_group(pgid, signal.SIGKILL)
            self._wait_group(pgid, time.monotonic() + 5.0)
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass
        self._stopped = True
        _REGISTRY.discard(self)
        with open(self.log_path, "ab") as log:
            log.write(f"# {self.name} stopped (exit code {self._proc.returncode})\n".encode())
        if wait_gpu and self._gpu_baseline is not None:
            gpu.wait_memory_released(self._gpu_baseline, timeout_s=gpu_timeout_s)

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _wait_group(self, pgid: int, deadline: float) -> None:
        assert self._proc is not None
        while time.monotonic() < deadline:
            self._proc.poll()  # reap the leader so it does not count as alive
            if self._proc.returncode is not None and not process_group_members(pgid):
                return
            time.sleep(0.05)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}" if self._proc else "new"
        return f"<ServerProcess {self.name} pid={self.pid} {state}>"


# -- helpers shared by the engines that launch a server --------------------------------------


def override_command(env_var: str, configured: object = None) -> list[str] | None:
    """The launcher an engine was pointed at instead of the real one (fakes, wrappers).

    `configured` (EngineConfig.extra["command"]) wins over the environment variable; both are
    shell-split, so "python tests/fakes/fake_vllm.py" works.
    """
    raw = configured if configured else os.environ.get(env_var)
    if not raw:
        return None
    if isinstance(raw, (list, tuple)):
        return [str(x) for x in raw]
    return shlex.split(str(raw))


def launch_and_wait(
    argv: Sequence[str],
    *,
    log_path: Path,
    name: str,
    probe: Callable[[], bool],
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    interval_s: float = 0.25,
) -> tuple[ServerProcess, float]:
    """Start a server and wait until `probe` says ready; on any failure the server is stopped."""
    server = ServerProcess(argv, log_path=log_path, env=env, name=name)
    server.start()
    try:
        waited = server.wait_ready(probe, timeout_s=timeout_s, interval_s=interval_s)
    except BaseException:
        server.stop(grace_s=5.0)
        raise
    return server, waited


class ServerEngine(HttpEngine):
    """An HTTP engine the suite launches as a server process, or attaches to (`--server-url`).

    Holds what every launched engine shares: the base URL, the process, its argv and readiness
    time, launching through `launch_and_wait`, teardown, and the launch facts for the results.
    """

    #: seconds between SIGTERM and SIGKILL at teardown
    stop_grace_s: float = 20.0

    def __init__(self, config: EngineConfig, workdir: Path) -> None:
        super().__init__(config, workdir)
        self.base_url = (config.server_url or "").rstrip("/")
        self._server: ServerProcess | None = None
        self._argv: list[str] = []
        self._ready_s: float | None = None
        self._version: str | None = None
        #: cases served since this process was launched (a fresh launch needs no restart)
        self._cases_since_launch = 0
        self._restarts = 0

    def _launch(
        self,
        argv: list[str],
        port: int,
        *,
        label: str,
        probe: Callable[[Any], bool],
        client_timeout: float,
        interval_s: float = 0.25,
        log_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start `argv` (listening on `port`) and wait until `probe(httpx_client)` is true;
        `env` (default: the config's "env" option) is added to this process's environment."""
        import httpx

        self._argv = list(argv)
        self._cases_since_launch = 0
        self.base_url = f"http://127.0.0.1:{port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with httpx.Client(base_url=self.base_url, timeout=client_timeout) as client:
            self._server, self._ready_s = launch_and_wait(
                self._argv,
                log_path=self.workdir / (log_name or f"{self.name}-{self.config.key}-{port}.log"),
                name=f"{label}[{self.config.key}]",
                probe=lambda: probe(client),
                timeout_s=self.config.ready_timeout_s,
                env=env if env is not None else self.config.option("env"),
                interval_s=interval_s,
            )

    def start(self) -> None:
        """Launch the server (unless attached with --server-url), then read what it says about
        itself; a failure after the launch stops the server."""
        if not self.base_url:
            self._launch_server()
        self._stop_on_failure(self._read_server)

    @abc.abstractmethod
    def _launch_server(self) -> None:
        """Build the engine's argv and `_launch` it."""

    def _read_server(self) -> None:
        """Ask the running server for its facts (version, model, slots); by default nothing."""

    def info(self) -> dict[str, Any]:
        """Engine, drafter, URL, version and launch facts, then the engine's own `server_info()`."""
        return {**super().info(), "url": self.base_url, "version": self._version, **self.launch_info(),
                **self.server_info()}

    def server_info(self) -> dict[str, Any]:
        """What this engine adds to the results' launch facts."""
        return {}

    def _stop_on_failure(self, step: Callable[[], None]) -> None:
        """Run a post-start step; a failure there must not leave the server running."""
        try:
            step()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace_s=self.stop_grace_s)

    def launch_info(self) -> dict[str, Any]:
        """How the server was started (None values in attach mode), for the results."""
        server = self._server
        return {
            "launch_command": server.command_line if server is not None else None,
            "argv": list(self._argv) or None,
            "log": str(server.log_path) if server is not None else None,
            "ready_s": self._ready_s,
            "engine_args": list(self.config.engine_args),
            "restarts": self._restarts,
        }

    # -- state between cases ---------------------------------------------------------------
    def reset_call(self) -> StateReset | None:
        """The engine's own reset of cross-request state (SGLang: POST /flush_cache).

        None when the engine has no such call; the base then restarts a launched server whose
        drafter keeps state, and warns for an attached one.
        """
        return None

    def reset_state(self) -> StateReset:
        """Reset before a case: the engine's call, else a restart of a launched server."""
        started = time.monotonic()
        try:
            result = self.reset_call()
            if result is None:
                result = self._reset_without_call()
        finally:
            self._cases_since_launch += 1
        result.seconds = time.monotonic() - started
        return result

    def _reset_without_call(self) -> StateReset:
        drafter = self.config.drafter
        if drafter not in self.cross_request_drafters:
            return super().reset_state()
        if self._server is None:
            return StateReset("none", ok=False, warning=(
                f"attached {self.name} server at {self.base_url}: drafter {drafter!r} keeps state across "
                f"requests and {self.name} has no call to reset it; earlier requests (other cases, other "
                "users) can inflate this case's acceptance. Launch the engine instead, or restart the server "
                "between cases"))
        if self._cases_since_launch == 0:
            return StateReset("fresh start", cleared=("all engine state",),
                              detail="launched for this case; no earlier case ran on it")
        self._restart()
        return StateReset("restart", cleared=("all engine state",),
                          detail=f"{self.name} has no reset call for drafter {drafter!r}: server restarted")

    def _restart(self) -> None:
        """Stop the launched server and start it again through the engine's own start()."""
        self.stop()
        self._server = None
        self.base_url = ""
        self._restarts += 1
        self.start()  # type: ignore[attr-defined]
