"""The shared server lifecycle against small real processes: readiness, early exit, teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_speedbench.engines import gpu
from pytest_speedbench.engines.lifecycle import (
    ServerProcess,
    free_port,
    pid_alive,
    process_group_members,
    running_servers,
)
from pytest_speedbench.errors import EngineError
from conftest import default_signals

# A tiny server: optional delay, optional SIGTERM immunity, optional forked grandchild,
# then listens on PORT. Pids go to the log so tests can check the process table.
SERVER = textwrap.dedent(
    """
    import os, signal, socket, subprocess, sys, time
    port, delay, ignore_term, fork = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("server pid", os.getpid(), flush=True)
    if fork:
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_term else "import time"
        child = subprocess.Popen([sys.executable, "-c", code + "; time.sleep(600)"])
        print("child pid", child.pid, flush=True)
    time.sleep(delay)
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen()
    print("listening", flush=True)
    while True:
        conn, _ = s.accept(); conn.close()
    """
)


def _server(tmp_path: Path, *, delay: float = 0.0, ignore_term: bool = False, fork: bool = False):
    port = free_port()
    argv = [sys.executable, "-c", SERVER, str(port), str(delay), str(int(ignore_term)), str(int(fork))]
    return ServerProcess(argv, log_path=tmp_path / "server.log", name="toy", wait_gpu_release=False), port


def _connects(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def _pids_from_log(text: str, label: str) -> list[int]:
    return [int(line.split()[-1]) for line in text.splitlines() if line.startswith(label)]


def test_free_port_is_bindable_and_varies():
    ports = {free_port() for _ in range(5)}
    assert len(ports) > 1
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_ready_after_slow_start_and_clean_stop(tmp_path):
    server, port = _server(tmp_path, delay=0.6, fork=True)
    server.start()
    try:
        waited = server.wait_ready(lambda: _connects(port), timeout_s=30, interval_s=0.05)
        assert 0.5 <= waited < 20
        assert server.alive and server in running_servers()
        log = server.log_tail()
        assert log.splitlines()[0].startswith("$ ") and "listening" in log
        child = _pids_from_log(log, "child pid")[0]
        assert pid_alive(child)
    finally:
        server.stop(grace_s=5)
    assert not server.alive and server.returncode is not None
    assert not pid_alive(server.pid) and not pid_alive(child)
    assert process_group_members(server.pid) == []
    assert server not in running_servers()
    server.stop()  # idempotent


def test_early_exit_fails_at_once_with_log_tail(tmp_path):
    script = "import sys; print('loading weights'); print('RuntimeError: CUDA out of memory', flush=True); sys.exit(3)"
    server = ServerProcess([sys.executable, "-c", script], log_path=tmp_path / "crash.log", name="crashy",
                           wait_gpu_release=False)
    server.start()
    t0 = time.monotonic()
    with pytest.raises(EngineError) as err:
        server.wait_ready(lambda: False, timeout_s=600)
    assert time.monotonic() - t0 < 30  # the readiness timeout is 600 s; a loaded machine is slow, not 20x
    msg = str(err.value)
    assert "crashy exited with code 3 during startup" in msg
    assert "CUDA out of memory" in msg and "engine log tail" in msg
    server.stop()


def test_readiness_timeout_names_timeout_and_tail(tmp_path):
    server, port = _server(tmp_path, delay=600)
    server.start()
    try:
        with pytest.raises(EngineError) as err:
            server.wait_ready(lambda: _connects(port), timeout_s=0.5, interval_s=0.05)
        assert "0.5 s readiness timeout" in str(err.value)
        assert "server pid" in str(err.value)
    finally:
        server.stop(grace_s=2)
    assert process_group_members(server.pid) == []


def test_sigterm_immune_group_is_killed(tmp_path):
    server, port = _server(tmp_path, ignore_term=True, fork=True)
    server.start()
    server.wait_ready(lambda: _connects(port), timeout_s=30, interval_s=0.05)
    child = _pids_from_log(server.log_tail(), "child pid")[0]
    t0 = time.monotonic()
    server.stop(grace_s=0.5)
    assert time.monotonic() - t0 < 30  # a TERM-immune group would otherwise never go
    assert server.returncode == -signal.SIGKILL
    assert not pid_alive(server.pid) and not pid_alive(child)
    assert "stopped (exit code -9)" in (tmp_path / "server.log").read_text()


def test_missing_executable_is_engine_error(tmp_path):
    server = ServerProcess(["/nonexistent/speedbench-engine"], log_path=tmp_path / "x.log", name="ghost",
                           wait_gpu_release=False)
    with pytest.raises(EngineError, match="cannot launch"):
        server.start()


DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pytest_speedbench.engines.lifecycle import ServerProcess
    script = "import subprocess, sys, time; " \\
             "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); " \\
             "print(c.pid, flush=True); time.sleep(600)"
    s = ServerProcess([sys.executable, "-c", script], log_path=Path(sys.argv[1]), name="victim",
                      wait_gpu_release=False)
    s.start()
    while len(Path(sys.argv[1]).read_text().splitlines()) < 2:
        time.sleep(0.02)
    print(s.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_the_harness_leaves_no_process(tmp_path, signum, reap):
    log = tmp_path / "victim.log"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(log)], stdout=subprocess.PIPE, text=True,
                              preexec_fn=default_signals)
    reap(pid=driver.pid)
    try:
        server_pid = int(driver.stdout.readline())
        grandchild = int(log.read_text().splitlines()[1])
        reap(pid=server_pid)  # its own process group holds the grandchild
        reap(pid=grandchild)
        assert pid_alive(server_pid) and pid_alive(grandchild)
        driver.send_signal(signum)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    deadline = time.monotonic() + 10
    while (pid_alive(server_pid) or pid_alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(server_pid) and not pid_alive(grandchild)


def _fake_smi(tmp_path: Path, values: str) -> Path:
    state = tmp_path / "mem"
    state.write_text(values)
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat {state}\n")
    script.chmod(0o755)
    return state


def test_gpu_wait_polls_until_memory_back_to_baseline(tmp_path, monkeypatch):
    state = _fake_smi(tmp_path, "0, 70000\n1, 500\n")
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", str(tmp_path / "nvidia-smi"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.memory_used_mib() == {0: 70000, 1: 500}
    with pytest.warns(RuntimeWarning, match=r"GPU 0: \+69500 MiB"):
        assert gpu.wait_memory_released({0: 500, 1: 500}, timeout_s=0.3, interval_s=0.05) is False
    state.write_text("0, 900\n1, 500\n")
    assert gpu.wait_memory_released({0: 500, 1: 500}, timeout_s=5, interval_s=0.05) is True
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpu.memory_used_mib() == {1: 500}


def test_gpu_wait_is_noop_without_nvidia_smi(monkeypatch):
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", "")
    assert gpu.memory_used_mib() is None
    assert gpu.wait_memory_released({0: 0}, timeout_s=0) is True


def test_stop_waits_for_gpu_release(tmp_path, monkeypatch):
    state = _fake_smi(tmp_path, "0, 100\n")
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", str(tmp_path / "nvidia-smi"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # the "server" grabs memory at start; a helper releases it 0.5 s after teardown
    server = ServerProcess([sys.executable, "-c", "import time; time.sleep(600)"], log_path=tmp_path / "g.log",
                           name="gpu")
    server.start()
    state.write_text("0, 60000\n")
    releaser = subprocess.Popen(["sh", "-c", f"sleep 0.5; echo '0, 150' > {state}"])
    t0 = time.monotonic()
    server.stop(grace_s=2)
    assert time.monotonic() - t0 >= 0.4
    assert state.read_text().strip() == "0, 150"
    releaser.wait(timeout=5)
    assert os.path.exists(tmp_path / "g.log")


def test_exit_is_noticed_while_a_probe_hangs(tmp_path):
    """A port held by a listener that never answers must not hide an engine that died."""
    server = ServerProcess([sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"],
                           log_path=tmp_path / "hung-probe.log", name="hung-probe")
    server.start()
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="exited with code 3 during startup"):
        server.wait_ready(lambda: time.sleep(300) or True, timeout_s=600)
    assert time.monotonic() - t0 < 30  # far below the hung probe (300 s)
    server.stop()


def test_a_forgotten_server_is_still_stopped_at_exit(tmp_path):
    """The exit hook must reach a server nobody holds a reference to any more."""
    import gc

    from pytest_speedbench.engines.lifecycle import stop_all_servers

    server = ServerProcess([sys.executable, "-c", "import time; time.sleep(60)"],
                           log_path=tmp_path / "forgotten.log", name="forgotten", wait_gpu_release=False)
    server.start()
    pid = server.pid
    del server
    gc.collect()
    assert any(s.pid == pid for s in running_servers())
    stop_all_servers()
    assert not pid_alive(pid)
    assert all(s.pid != pid for s in running_servers())
