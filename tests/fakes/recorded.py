"""Recorded real-engine streams (fixtures/streams/*.json): raw socket reads -> SSE events.

A recording holds, per request, every socket read of the HTTP response as [offset_s, text]
(offset from sending the request; text = the bytes as latin-1, so it round-trips exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STREAMS = Path(__file__).resolve().parents[2] / "fixtures" / "streams"


def load(name: str) -> dict[str, Any]:
    return json.loads((STREAMS / name).read_text())


def sse_events(reads: list[list[Any]]) -> list[tuple[float, str]]:
    """(receipt offset of the read that completed it, payload) of every `data:` event."""
    raw = b""
    events: list[tuple[float, str]] = []
    body_start = None
    pos = 0  # next undecoded byte of the de-chunked body
    body = b""
    for offset, text in reads:
        raw += text.encode("latin-1")
        if body_start is None:
            cut = raw.find(b"\r\n\r\n")
            if cut < 0:
                continue
            body_start = cut + 4
            raw = raw[body_start:]
        # de-chunk what is complete (HTTP/1.1 chunked transfer encoding)
        while True:
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(raw[:line_end], 16)
            if len(raw) < line_end + 2 + size + 2:
                break
            body += raw[line_end + 2 : line_end + 2 + size]
            raw = raw[line_end + 2 + size + 2 :]
            if size == 0:
                break
        while True:
            end = body.find(b"\n\n", pos)
            if end < 0:
                break
            for line in body[pos:end].split(b"\n"):
                if line.startswith(b"data: "):
                    events.append((float(offset), line[6:].decode()))
            pos = end + 2
    return events
