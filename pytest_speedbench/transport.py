"""Token-stream transport: POST a request, collect its SSE `data:` payloads with receipt times.

The receipt time is taken the moment a complete `data:` line is available, before any parsing;
payloads are kept as raw bytes and parsed once the stream ends (outside the latency-critical
window). Control-plane calls (health, info, metrics) use httpx elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from .engines.base import HttpRequest
from .errors import RequestError

Event = tuple[float, bytes]


@dataclass(slots=True)
class StreamResult:
    events: list[Event] = field(default_factory=list)
    #: the server sent `data: [DONE]` (or closed the stream after a finished event)
    done: bool = False


class StreamTransport:
    """One connection pool for a run; `stream()` is safe to call from many tasks at once."""

    def __init__(self, base_url: str, *, limit: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StreamTransport:
        connector = aiohttp.TCPConnector(limit=self._limit, force_close=False, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stream(self, request: HttpRequest, idle_timeout: float) -> StreamResult:
        """Send one request; fail with RequestError on HTTP errors, resets and idle timeouts."""
        assert self._session is not None, "use StreamTransport as an async context manager"
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
                            break
                        events.append((t, payload))
        except asyncio.TimeoutError:
            raise RequestError(
                f"no event from {url} for {idle_timeout:g} s (request timeout) after {len(events)} events"
            ) from None
        except aiohttp.ClientError as exc:
            raise RequestError(f"connection to {url} failed after {len(events)} events: {exc!r}") from None
        return result
