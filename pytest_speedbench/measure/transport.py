"""Token-stream transport: POST a request, collect its SSE `data:` payloads with receipt times.

The client's own cost lands in every latency it reports, so the default transport is a
minimal HTTP/1.1 client written as an `asyncio.Protocol` (run on uvloop when installed):
bytes go from the socket callback straight into a small state machine (status line and
headers, then chunked / Content-Length / close-delimited body, then SSE lines) with no
stream reader, no per-event task switch and no per-event timer. Each `data:` payload is
stored as raw bytes with the time its bytes arrived (one `perf_counter()` per socket read);
JSON is parsed by the engine's parser after the stream ends. Measured costs per event are in
docs/client-performance.md; aiohttp stays selectable as a reference (`kind="aiohttp"`).

Both transports keep connections alive between requests and fail with `RequestError`
(naming the URL, HTTP status and body excerpt, or how many events arrived before a reset or
an idle timeout).
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pytest_speedbench.engines.base import HttpRequest
from pytest_speedbench.errors import RequestError, bad_value

Event = tuple[float, bytes]

#: transport names accepted by `StreamTransport(kind=...)`; "auto" picks the first
TRANSPORTS = ("protocol", "aiohttp")

_MAX_HEAD = 64 * 1024


@dataclass(slots=True)
class StreamResult:
    events: list[Event] = field(default_factory=list)
    #: the server sent `data: [DONE]` (or closed the stream after a finished event)
    done: bool = False


# -- the lean protocol transport --------------------------------------------------------------

_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _LENGTH, _UNTIL_CLOSE, _COMPLETE = range(8)


class _Exchange:
    """One request/response on a connection: what the protocol fills in as bytes arrive."""

    __slots__ = ("result", "future", "status", "error_body", "last_rx", "reused", "received_any")

    def __init__(self, future: asyncio.Future[None], reused: bool) -> None:
        self.result = StreamResult()
        self.future = future
        self.status = 0
        self.error_body = bytearray()
        self.last_rx = time.perf_counter()
        self.reused = reused
        self.received_any = False


class _SSEProtocol(asyncio.Protocol):
    """HTTP/1.1 response parser feeding SSE `data:` lines into the current exchange."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False
        self.keep_alive = True
        self._buf = bytearray()  # undecoded response bytes (head, chunk framing)
        self._line = bytearray()  # SSE bytes not yet ending in a newline
        self._state = _HEAD
        self._remaining = 0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is None or ex.future.done():
            return
        if self._state == _UNTIL_CLOSE:
            self._flush_line(time.perf_counter())
            self._finish()
            return
        reason = f"{exc!r}" if exc else "server closed the connection"
        ex.future.set_exception(_ConnectionLost(reason, ex.received_any))

    def data_received(self, data: bytes) -> None:
        t = time.perf_counter()
        ex = self.exchange
        if ex is None:  # bytes outside an exchange: the server broke keep-alive framing
            self.keep_alive = False
            return
        ex.last_rx = t
        ex.received_any = True
        state = self._state
        if state == _UNTIL_CLOSE or (state == _LENGTH and len(data) < self._remaining):
            if state == _LENGTH:
                self._remaining -= len(data)
            self._body(data, t)
            return
        self._buf += data
        self._advance(t)

    # state machine
    def _advance(self, t: float) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        self._fail_protocol("response head larger than 64 KiB")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                if not self._on_head(head):
                    return
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                raw = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    size = int(raw, 16)
                except ValueError:
                    self._fail_protocol(f"bad chunk size line {raw[:40]!r}")
                    return
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if not buf:
                    return
                if self._take_body(buf, t):
                    self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    self._fail_protocol("chunk not followed by CRLF")
                    return
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line_empty = end == 0
                del buf[: end + 2]
                if line_empty:
                    self._flush_line(t)
                    self._finish()
                    return
            elif state == _LENGTH:
                if not buf:
                    return
                if self._take_body(buf, t):
                    self._flush_line(t)
                    self._finish()
                    return
            elif state == _UNTIL_CLOSE:
                if buf:
                    piece = bytes(buf)
                    buf.clear()
                    self._body(piece, t)
                return
            else:  # _COMPLETE: extra bytes after a response
                if buf:
                    self.keep_alive = False
                return

    def _on_head(self, head: bytes) -> bool:
        """Parse status line and headers; returns False when the exchange ended (1xx loops)."""
        ex = self.exchange
        assert ex is not None
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        try:
            version, status = parts[0], int(parts[1])
        except (IndexError, ValueError):
            self._fail_protocol(f"bad status line {lines[0][:80]!r}")
            return False
        if 100 <= status < 200:
            return True  # interim response (100 Continue): the real head follows
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        ex.status = status
        connection = headers.get(b"connection", b"").lower()
        self.keep_alive = (version == b"HTTP/1.1" and connection != b"close") or connection == b"keep-alive"
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._state = _CHUNK_SIZE
        elif b"content-length" in headers:
            try:
                self._remaining = int(headers[b"content-length"])
            except ValueError:
                self._fail_protocol(f"bad Content-Length {headers[b'content-length'][:40]!r}")
                return False
            self._state = _LENGTH
            if self._remaining == 0:
                self._finish()
                return False
        else:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False
        return True

    def _body(self, data: bytes, t: float) -> None:
        """Body bytes: SSE lines for a success, kept for the message of an HTTP error."""
        ex = self.exchange
        assert ex is not None
        if ex.status >= 400:
            if len(ex.error_body) < 4096:
                ex.error_body += data
            return
        line = self._line
        if line:
            line += data
            data = bytes(line)
            line.clear()
        start = 0
        events = ex.result.events
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if data.startswith(b"data:", start):
                payload = data[start + 5 : end].strip()
                if payload == b"[DONE]":
                    ex.result.done = True
                elif payload:
                    events.append((t, payload))
            start = end + 1
        if start < len(data):
            line += data[start:]

    def _flush_line(self, t: float) -> None:
        """A final `data:` line without a newline still counts when the body ends."""
        if self._line and self.exchange is not None:
            self._body(b"\n", t)

    def _finish(self) -> None:
        self._state = _COMPLETE
        ex = self.exchange
        if ex is not None and not ex.future.done():
            ex.future.set_result(None)

    def _take_body(self, buf: bytearray, t: float) -> bool:
        """Feed up to `_remaining` body bytes to the SSE parser; True once none remain."""
        n = min(self._remaining, len(buf))
        piece = bytes(buf[:n])
        del buf[:n]
        self._remaining -= n
        self._body(piece, t)
        return self._remaining == 0

    def _fail_protocol(self, message: str) -> None:
        self.keep_alive = False
        ex = self.exchange
        if ex is not None and not ex.future.done():
            ex.future.set_exception(RequestError(f"malformed HTTP response: {message}"))

    def begin(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        self._state = _HEAD
        self._buf.clear()
        self._line.clear()
        self._remaining = 0


class _ConnectionLost(Exception):
    def __init__(self, reason: str, received_any: bool) -> None:
        super().__init__(reason)
        self.received_any = received_any


class ProtocolTransport:
    """The lean transport: a keep-alive connection pool of `_SSEProtocol`s for one server."""

    name = "protocol"

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(f"unsupported server URL {base_url!r}: expected http://host[:port]")
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        default_port = (self._tls and self._port == 443) or (not self._tls and self._port == 80)
        self._host_header = self._host if default_port else f"{self._host}:{self._port}"
        self._prefix = parts.path.rstrip("/")
        self._idle: list[_SSEProtocol] = []
        self._all: set[_SSEProtocol] = set()
        self._head_cache: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}

    async def __aenter__(self) -> ProtocolTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proto in list(self._all):
            if proto.transport is not None:
                proto.transport.close()
        self._all.clear()
        self._idle.clear()

    def _head(self, request: HttpRequest) -> bytes:
        """Request head without Content-Length: built once per (path, headers), not per request."""
        key = (request.path, tuple(request.headers.items()))
        head = self._head_cache.get(key)
        if head is None:
            lines = [f"POST {self._prefix}{request.path} HTTP/1.1", f"Host: {self._host_header}",
                     "Accept: text/event-stream", "Connection: keep-alive"]
            lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in ("host", "content-length")]
            head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
            self._head_cache[key] = head
        return head

    async def _connect(self) -> _SSEProtocol:
        loop = asyncio.get_running_loop()
        ssl_ctx = _ssl.create_default_context() if self._tls else None
        _, proto = await loop.create_connection(_SSEProtocol, self._host, self._port, ssl=ssl_ctx)
        self._all.add(proto)
        return proto

    def _release(self, proto: _SSEProtocol) -> None:
        if proto.keep_alive and not proto.closed and proto._state == _COMPLETE:
            proto.exchange = None
            self._idle.append(proto)
        else:
            self._discard(proto)

    def _discard(self, proto: _SSEProtocol) -> None:
        self._all.discard(proto)
        if proto.transport is not None and not proto.closed:
            proto.transport.close()

    async def stream(self, request: HttpRequest, idle_timeout: float) -> StreamResult:
        """Send one request; fail with RequestError on HTTP errors, resets and idle timeouts."""
        url = self.base_url + request.path
        for attempt in (0, 1):
            proto = None
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.closed:
                    proto = candidate
                    break
                self._all.discard(candidate)
            reused = proto is not None
            if proto is None:
                try:
                    proto = await self._connect()
                except OSError as exc:
                    raise RequestError(f"cannot connect to {url}: {exc.strerror or exc!r}") from None
            try:
                return await self._exchange(proto, request, idle_timeout, url, reused)
            except _ConnectionLost as exc:
                self._discard(proto)
                # a kept-alive connection the server closed meanwhile: retry once, fresh
                if reused and not exc.received_any and attempt == 0:
                    continue
                events = len(proto.exchange.result.events) if proto.exchange else 0
                raise RequestError(f"connection to {url} lost after {events} events: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self, proto: _SSEProtocol, request: HttpRequest, idle_timeout: float, url: str, reused: bool
    ) -> StreamResult:
        loop = asyncio.get_running_loop()
        ex = _Exchange(loop.create_future(), reused)
        proto.begin(ex)
        assert proto.transport is not None
        body = request.body
        proto.transport.write(self._head(request) + str(len(body)).encode() + b"\r\n\r\n" + body)
        timer = _IdleTimer(loop, ex, idle_timeout)
        try:
            await ex.future
        except asyncio.CancelledError:
            self._discard(proto)
            raise
        except RequestError:
            self._discard(proto)
            raise
        finally:
            timer.cancel()
        if timer.fired:
            self._discard(proto)
            if ex.result.done:  # [DONE] arrived; only the end of the body is missing
                return ex.result
            raise RequestError(
                f"no event from {url} for {idle_timeout:g} s (request timeout) after "
                f"{len(ex.result.events)} events"
            )
        self._release(proto)
        if ex.status >= 400:
            text = bytes(ex.error_body[:300]).decode("utf-8", "replace")
            raise RequestError(f"HTTP {ex.status} from {url}: {text}")
        return ex.result


class _IdleTimer:
    """Fails an exchange after `timeout` seconds without bytes; re-armed once per timeout, not per event."""

    __slots__ = ("loop", "ex", "timeout", "handle", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop, ex: _Exchange, timeout: float) -> None:
        self.loop, self.ex, self.timeout, self.fired = loop, ex, timeout, False
        self.handle: asyncio.TimerHandle | None = loop.call_later(timeout, self._check)

    def _check(self) -> None:
        idle = time.perf_counter() - self.ex.last_rx
        if idle < self.timeout:
            self.handle = self.loop.call_later(self.timeout - idle, self._check)
            return
        self.handle = None
        if not self.ex.future.done():
            self.fired = True
            self.ex.future.set_result(None)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


# -- the aiohttp reference transport -------------------------------------------------------


class AiohttpTransport:
    """aiohttp's StreamReader, one `readline()` per line: simpler, about twice the CPU per event."""

    name = "aiohttp"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session: Any = None

    async def __aenter__(self) -> AiohttpTransport:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(self, request: HttpRequest, idle_timeout: float) -> StreamResult:
        import aiohttp

        assert self._session is not None, "use the transport as an async context manager"
        url = self.base_url + request.path
        result = StreamResult()
        events = result.events
        perf = time.perf_counter
        try:
            async with self._session.post(url, data=request.body, headers=request.headers) as resp:
                if resp.status >= 400:
                    body = (await resp.read())[:300].decode("utf-8", "replace")
                    raise RequestError(f"HTTP {resp.status} from {url}: {body}")
                content = resp.content
                while True:
                    line = await asyncio.wait_for(content.readline(), idle_timeout)
                    t = perf()
                    if not line:
                        break
                    if line.startswith(b"data:"):
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            result.done = True
                        elif payload:
                            events.append((t, payload))
        except asyncio.TimeoutError:
            raise RequestError(
                f"no event from {url} for {idle_timeout:g} s (request timeout) after {len(events)} events"
            ) from None
        except aiohttp.ClientError as exc:
            raise RequestError(f"connection to {url} lost after {len(events)} events: {exc!r}") from None
        return result


# -- the public face -------------------------------------------------------------------------


def resolve_kind(kind: str | None) -> str:
    """'auto'/None -> 'protocol'; anything else must be one of TRANSPORTS."""
    if kind in (None, "", "auto"):
        return TRANSPORTS[0]
    if kind not in TRANSPORTS:
        raise bad_value("stream transport", kind, ("auto", *TRANSPORTS))
    return kind


class StreamTransport:
    """One connection pool for a run; `stream()` is safe to call from many tasks at once.

    `kind` picks the implementation ("protocol", the default, or "aiohttp"); both have the
    same interface and error messages.
    """

    def __init__(self, base_url: str, *, kind: str | None = "auto", limit: int = 0) -> None:
        self.kind = resolve_kind(kind)
        impl = ProtocolTransport if self.kind == "protocol" else AiohttpTransport
        self._impl: ProtocolTransport | AiohttpTransport = impl(base_url)
        self.base_url = self._impl.base_url

    async def __aenter__(self) -> StreamTransport:
        await self._impl.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._impl.__aexit__(*exc)

    async def stream(self, request: HttpRequest, idle_timeout: float) -> StreamResult:
        return await self._impl.stream(request, idle_timeout)
