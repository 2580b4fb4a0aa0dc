"""Normalized speculative-decoding counters: what an engine reports, in one spelling.

Engines produce them (engines/*.py parse their own fields into this shape), the client stores
them on each record (measure/records.py) and the metrics read them (metrics/steps.py), so the
type lives here, in the lowest of those stages.
"""

from __future__ import annotations

from typing import Any

# Normalized per-request (or per-run) SD counters, whatever the engine's own spelling:
#   decode_steps   D: target forward passes after the prefill token that emitted tokens,
#                  drafted or not (optional: only engines that count every step)
#   drafted_steps  S: decode steps with >= 1 proposed draft token (optional)
#   accepted       A: accepted draft tokens (engines count the last step's before truncation)
#   drafted        draft tokens proposed (optional)
#   accepted_per_pos  list: drafted steps accepting >= i drafts, i = 1..gamma (optional)
# Each engine module says which of D and S its engine reports; metrics/steps.py derives
# D = (N - L_0) - A when only S is known. AL = (N - L_0) / D; per-draft AL = 1 + A / S.
Counters = dict[str, Any]
