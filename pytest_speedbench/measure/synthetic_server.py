"""A cheap synthetic SSE server for measuring the client itself (`speedbench client-bench`).

It speaks SGLang's native /generate stream (several processes sharing one port with
SO_REUSEPORT, each a bare `asyncio.Protocol`), and every event carries, as its one output token
id, the `perf_counter_ns()` at which it was written, so a client on the same host knows each
event's receive lag on the one host-wide monotonic clock.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import tempfile
import time
from pathlib import Path
from typing import Any


class _SyntheticStream(asyncio.Protocol):
    """HTTP/1.1 keep-alive server: POST /generate streams `max_new_tokens` events, one per interval."""

    def __init__(self, interval: float, stats: Any) -> None:
        self.interval = interval
        self.stats = stats
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            method, path = head.split(" ", 2)[:2]
            self._handle(method, path, body)

    def _handle(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        if method == "POST" and path == "/generate":
            import orjson

            params = (orjson.loads(body) or {}).get("sampling_params") or {}
            n = max(1, int(params.get("max_new_tokens", 16)))
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            t0 = self.loop.time()
            self.loop.call_at(t0 + self.interval, self._emit, t0, 0, n, time.perf_counter())
            return
        payload = b'{"version":"synthetic"}' if path in ("/get_server_info", "/health") else b""
        status = b"200 OK" if payload else b"404 Not Found"
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )

    def _emit(self, t0: float, k: int, n: int, t_arrive: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        last = k + 1 == n
        finish = b'{"type":"length"}' if last else b"null"
        sent_ns = time.perf_counter_ns()
        event = b'data: {"output_ids":[%d],"meta_info":{"completion_tokens":%d,"finish_reason":%s}}\n\n' % (
            sent_ns, k + 1, finish)
        if last:
            event += b"data: [DONE]\n\n"
        frame = b"%x\r\n%s\r\n" % (len(event), event)
        if last:
            frame += b"0\r\n\r\n"
        transport.write(frame)
        if last:
            self.stats.write(f"{t_arrive!r} {sent_ns / 1e9!r} {n}\n")
            self.stats.flush()
        else:
            self.loop.call_at(t0 + (k + 2) * self.interval, self._emit, t0, k + 1, n, t_arrive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _serve(port: int, interval: float, stats_path: str, ready: Any) -> None:
    """One server process: its own socket on the shared port (SO_REUSEPORT), its own loop."""
    from pytest_speedbench.measure.stream import asyncio_run

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4096)
        with open(stats_path, "a", encoding="utf-8") as stats:
            server = await asyncio.get_running_loop().create_server(
                lambda: _SyntheticStream(interval, stats), sock=sock, backlog=4096
            )
            ready.set()
            async with server:
                await server.serve_forever()

    asyncio_run(main())


class SyntheticServer:
    """`processes` server processes on one port; `emission(since)` reads what they sent."""

    def __init__(self, processes: int = 2, interval: float = 0.02, workdir: Path | None = None) -> None:
        self.processes = processes
        self.interval = interval
        self._tmp = tempfile.TemporaryDirectory(prefix="speedbench-synth-") if workdir is None else None
        self.workdir = Path(self._tmp.name) if self._tmp else Path(workdir)
        self._procs: list[Any] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SyntheticServer:
        ctx = mp.get_context("spawn")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        for i in range(self.processes):
            ready = ctx.Event()
            proc = ctx.Process(target=_serve, args=(self.port, self.interval, str(self.workdir / f"stats-{i}.txt"), ready),
                               daemon=True, name=f"speedbench-synth-{i}")
            proc.start()
            self._procs.append(proc)
            deadline = time.monotonic() + 60
            while not ready.wait(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"synthetic SSE server process {i} did not start (exit code {proc.exitcode})")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    def emission(self, since: float) -> list[tuple[float, float, int]]:
        """(arrival, last send, tokens) of every request that arrived after `since`."""
        rows = []
        for path in self.workdir.glob("stats-*.txt"):
            for line in path.read_text().splitlines():
                a, b, n = line.split()
                if float(a) >= since:
                    rows.append((float(a), float(b), int(n)))
        return rows
