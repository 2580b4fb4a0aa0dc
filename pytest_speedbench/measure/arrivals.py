"""Open-loop arrivals: when each request of a `--request-rate` run is due (pure, seeded).

The gaps between arrivals are gamma-distributed with shape k = burstiness and scale
1 / (rate x k), so their mean is 1 / rate whatever k: k = 1 is a Poisson process (exponential
gaps), k < 1 sends in bursts with long pauses between, k > 1 is more regular (k -> inf: evenly
spaced). This is how `vllm bench serve` and SGLang's bench_serving shape `--request-rate` with
`--burstiness`. rate = inf sends every request at once. The first request is due at 0.
"""

from __future__ import annotations

import math

import numpy as np


def arrival_offsets(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds after the start at which requests 0..n-1 are due: 0, g_1, g_1 + g_2, ... with
    g_i ~ Gamma(shape=burstiness, scale=1 / (rate x burstiness)); all 0 when rate is inf."""
    if n <= 0:
        return []
    if not rate > 0:
        raise ValueError(f"request rate {rate!r} must be positive")
    if not burstiness > 0:
        raise ValueError(f"burstiness {burstiness!r} must be positive")
    if math.isinf(rate):
        return [0.0] * n
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), size=n - 1)
    return [0.0, *np.cumsum(gaps).tolist()]
