"""The stream transports against scripted raw HTTP servers: framing, reuse, errors, timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from pytest_speedbench.engines.base import HttpRequest
from pytest_speedbench.errors import RequestError, UsageError
from pytest_speedbench.measure.transport import StreamTransport, resolve_kind

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
REQUEST = HttpRequest("/generate", b'{"x": 1}')


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head + Content-Length body), or None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def serve(handler: Handler, body: Callable[[str], Awaitable[object]]) -> dict[str, int]:
    """Run `body(url)` against a server calling handler(reader, writer, connection_index)."""
    stats = {"connections": 0, "requests": 0}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = stats["connections"]
        stats["connections"] += 1
        try:
            await handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await body(f"http://127.0.0.1:{port}")
    return stats


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE = [b'data: {"i": 0}\n\n', b'data: {"i": 1}\n\n', b"data: [DONE]\n\n"]
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def keepalive_chunked(delay: float = 0.0, byte_by_byte: bool = False) -> Handler:
    async def handler(reader, writer, index):
        while await read_request(reader) is not None:
            writer.write(CHUNKED_HEAD)
            for event in SSE:
                frame = chunk(event)
                if byte_by_byte:
                    for b in frame:
                        writer.write(bytes([b]))
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(frame)
                await writer.drain()
                await asyncio.sleep(delay)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    return handler


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("kind", ["protocol", "aiohttp"])
def test_chunked_stream_with_keepalive_reuse(kind):
    results = []

    async def body(url):
        async with StreamTransport(url, kind=kind) as t:
            for _ in range(3):
                results.append(await t.stream(REQUEST, 5.0))

    stats = run(serve(keepalive_chunked(delay=0.02), body))
    assert stats["connections"] == 1, "keep-alive connection should be reused"
    for r in results:
        assert [p for _, p in r.events] == [b'{"i": 0}', b'{"i": 1}'] and r.done
        t0, t1 = r.events[0][0], r.events[1][0]
        assert 0.015 <= t1 - t0 < 0.5, "receipt times must be taken as bytes arrive"


def test_frames_split_at_every_byte_are_reassembled():
    async def body(url):
        async with StreamTransport(url, kind="protocol") as t:
            r = await t.stream(REQUEST, 5.0)
        assert [p for _, p in r.events] == [b'{"i": 0}', b'{"i": 1}'] and r.done

    run(serve(keepalive_chunked(byte_by_byte=True), body))


@pytest.mark.parametrize("kind", ["protocol", "aiohttp"])
def test_content_length_body_and_crlf_lines(kind):
    payload = b'data: {"a": 1}\r\n\r\n: comment\r\ndata:{"b": 2}\r\n\r\ndata: [DONE]\r\n\r\n'

    async def handler(reader, writer, index):
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
            await writer.drain()

    async def body(url):
        async with StreamTransport(url, kind=kind) as t:
            for _ in range(2):
                r = await t.stream(REQUEST, 5.0)
                assert [p for _, p in r.events] == [b'{"a": 1}', b'{"b": 2}'] and r.done

    stats = run(serve(handler, body))
    assert stats["connections"] == 1


@pytest.mark.parametrize("kind", ["protocol", "aiohttp"])
def test_close_delimited_body_opens_a_new_connection_each_time(kind):
    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: {\"x\": 1}\n\ndata: {\"x\": 2}")
        await writer.drain()

    async def body(url):
        async with StreamTransport(url, kind=kind) as t:
            for _ in range(2):
                r = await t.stream(REQUEST, 5.0)
                # the last line has no newline: it still counts once the body ends
                assert [p for _, p in r.events][:1] == [b'{"x": 1}']
                if kind == "protocol":
                    assert len(r.events) == 2 and not r.done

    stats = run(serve(handler, body))
    assert stats["connections"] == 2


@pytest.mark.parametrize("kind", ["protocol", "aiohttp"])
def test_http_error_names_status_and_body(kind):
    async def handler(reader, writer, index):
        while await read_request(reader) is not None:
            msg = b'{"error": "prompt too long: 40000 > 32768"}'
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(msg), msg))
            await writer.drain()

    async def body(url):
        async with StreamTransport(url, kind=kind) as t:
            with pytest.raises(RequestError, match=r"HTTP 400 from .*/generate: .*prompt too long"):
                await t.stream(REQUEST, 5.0)

    run(serve(handler, body))


@pytest.mark.parametrize("kind", ["protocol", "aiohttp"])
def test_idle_timeout_counts_events(kind):
    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(SSE[0]))
        await writer.drain()
        await asyncio.sleep(3)

    async def body(url):
        async with StreamTransport(url, kind=kind) as t:
            start = time.perf_counter()
            with pytest.raises(RequestError, match=r"no event .* for 0.3 s .* after 1 events"):
                await t.stream(REQUEST, 0.3)
            assert time.perf_counter() - start < 2.0

    run(serve(handler, body))


def test_idle_timeout_is_not_triggered_by_a_slow_but_live_stream():
    async def body(url):
        async with StreamTransport(url, kind="protocol") as t:
            r = await t.stream(REQUEST, 0.15)  # 3 events 0.1 s apart: total 0.3 s > timeout
            assert r.done and len(r.events) == 2

    run(serve(keepalive_chunked(delay=0.1), body))


@pytest.mark.parametrize("kind", ["protocol", "aiohttp"])
def test_connection_reset_midstream(kind):
    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(SSE[0]) + chunk(SSE[1]))
        await writer.drain()
        writer.transport.abort()

    async def body(url):
        async with StreamTransport(url, kind=kind) as t:
            with pytest.raises(RequestError, match=r"connection to .* lost after"):
                await t.stream(REQUEST, 5.0)

    run(serve(handler, body))


def test_stale_keepalive_connection_is_retried_once():
    async def handler(reader, writer, index):
        await read_request(reader)
        writer.write(CHUNKED_HEAD + b"".join(chunk(e) for e in SSE) + b"0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        # close without Connection: close, as a server's keep-alive timeout does

    async def body(url):
        async with StreamTransport(url, kind="protocol") as t:
            await t.stream(REQUEST, 5.0)
            await asyncio.sleep(0.2)
            r = await t.stream(REQUEST, 5.0)
            assert r.done and len(r.events) == 2

    stats = run(serve(handler, body))
    assert stats["connections"] == 2


def test_connection_refused_is_a_request_error():
    async def body():
        async with StreamTransport("http://127.0.0.1:9", kind="protocol") as t:
            with pytest.raises(RequestError, match="cannot connect"):
                await t.stream(REQUEST, 1.0)

    run(body())


def test_unknown_transport_names_the_valid_ones():
    with pytest.raises(UsageError, match="'httpx'.*auto, protocol, aiohttp"):
        resolve_kind("httpx")
    assert resolve_kind(None) == resolve_kind("auto") == "protocol"
