"""Goodput: the requests that met every latency SLO, per second and as a fraction (pure).

A request counts when TTFT <= ttft, TPOT <= tpot and E2E <= e2e, for each SLO given
(`--goodput ttft:MS,tpot:MS,e2e:MS`, in milliseconds, as `vllm bench serve --goodput`;
parsed by `settings.options.parse_slos`).
goodput_rps = counted requests / measured window (last arrival - first send, the window of
output TPS); goodput_fraction = counted / measured successful requests. A failed request never
counts. The speedup of goodput is SD goodput_rps / AR goodput_rps (metrics/speedup.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_speedbench.measure.records import RequestRecord
from pytest_speedbench.metrics.request import request_e2e, request_tpot, request_ttft

SLO_METRICS = {"ttft": request_ttft, "tpot": request_tpot, "e2e": request_e2e}


def meets(r: RequestRecord, slos: Mapping[str, float]) -> bool:
    """Whether a successful request met every SLO (a metric it lacks, e.g. TPOT of a one-chunk
    answer, does not count against it)."""
    for name, limit in slos.items():
        value = SLO_METRICS[name](r)
        if value is not None and value > limit:
            return False
    return r.ok


def goodput(requests: Sequence[RequestRecord], slos: Mapping[str, float]) -> dict[str, Any]:
    """{goodput_rps, goodput_fraction, goodput_requests, goodput_slos_ms} over the measured
    successful requests (a window from first send to last arrival)."""
    ok = [r for r in requests if r.ok]
    good = sum(1 for r in ok if meets(r, slos))
    window = max(r.chunk_times[-1] for r in ok) - min(r.t_send for r in ok) if ok else 0.0
    return {
        "goodput_rps": good / window if window > 0 else None,
        "goodput_fraction": good / len(ok) if ok else None,
        "goodput_requests": good,
        "goodput_slos_ms": {k: v * 1e3 for k, v in slos.items()},
    }
