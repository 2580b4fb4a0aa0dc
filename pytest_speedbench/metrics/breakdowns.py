"""Where acceptance succeeds and fails: AL by output position, thinking vs answer, and the share
of accepted drafts by token rarity (pure maths over the reconciled decode steps).

Every breakdown reads the decode steps of `run.build_step_view`, the reconciliation behind the
headline AL (metrics/steps.py), and splits them, never re-counts them. A request's steps are
*framed* when each step's length is known:
- the steps came from the chunks (one streamed event per decode step): step j = chunk j, j >= 1;
- the steps came from the counters of a one-token-per-event stream (llama-server): the events
  cut into exactly the counter's step count at the largest arrival gaps (run.burst_step_lengths).
Other requests (coalesced events overruled by counters, run-level counters only) have no
per-step lengths; they are counted as `requests_unframed` and left out, so no bin shows a
figure the stream cannot support. When every request is framed, each breakdown pooled over its
bins gives back `acceptance_length_pooled` exactly: the bins partition the same steps and tokens.

For a framed step: its start s = the output position of its first token (0 = the prefill
token, so the first decode step starts at L_0) and its length k = tokens it emitted; the first
k - 1 tokens are accepted draft tokens, the last one is the step's own (target) token.

- position bins (edges e_0 = 0 < e_1 < ...): AL_bin = sum k / steps over steps with s in the bin;
- thinking vs answer: with b = the output position just after the reasoning end marker (the
  first occurrence), a step is thinking when s < b, answer otherwise (a step that straddles the
  marker counts whole on the side where it starts); requests whose output has no marker form a
  third part, `no_marker`; AL and accepted share per part;
- rarity: each emitted decode token's frequency rank r (1 = most frequent in the rank corpus,
  None = not in it) falls in a bucket; per bucket the accepted share = accepted-draft tokens /
  tokens, and own = step tokens (one per step), so sum tokens / sum own = pooled AL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_speedbench.measure.records import RequestRecord

#: default position bin edges (output positions): 0-63, 64-255, 256-1023, 1024+
POSITION_EDGES: tuple[int, ...] = (0, 64, 256, 1024)
#: default rarity bucket edges (frequency ranks): 1-100, 101-1000, 1001+ and tokens not in the corpus
RARITY_EDGES: tuple[int, ...] = (1, 101, 1001)
UNSEEN = "unseen"
THINKING, ANSWER, NO_MARKER = "thinking", "answer", "no_marker"

#: output ids -> position just after the reasoning end marker, or None when it does not appear
BoundaryFinder = Callable[[Sequence[int]], "int | None"]


@dataclass(frozen=True)
class BreakdownInputs:
    """What the breakdowns need beyond the records: the reasoning marker and the rank table.

    `ranks` maps token id -> frequency rank (1 = most frequent) in `rank_corpus`; `boundary`
    finds the thinking/answer boundary in a request's output ids (built with the target
    tokenizer from `marker`). Either may be absent: that breakdown then says why it is empty.
    """

    marker: str | None = None
    boundary: BoundaryFinder | None = None
    ranks: Mapping[int, int] | None = None
    rank_corpus: str | None = None
    position_edges: tuple[int, ...] = POSITION_EDGES
    rarity_edges: tuple[int, ...] = RARITY_EDGES
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FramedRequest:
    """One request's decode steps with their output positions: step i starts at `starts[i]` and
    emitted `lengths[i]` tokens."""

    record: RequestRecord
    starts: list[int]
    lengths: list[int]


def frame(record: RequestRecord, lengths: Sequence[int]) -> FramedRequest:
    """A request's framed steps from their lengths: step i starts where step i - 1 ended, the
    first one after the prefill chunk (at L_0)."""
    starts, pos = [], record.chunk_tokens[0]
    for k in lengths:
        starts.append(pos)
        pos += k
    return FramedRequest(record, starts, list(lengths))


def bin_label(edges: Sequence[int], i: int) -> str:
    """'0-63' for [0, 64), '1024+' for the last, open bin."""
    return f"{edges[i]}-{edges[i + 1] - 1}" if i + 1 < len(edges) else f"{edges[i]}+"


def _bin_index(edges: Sequence[int], value: int) -> int:
    index = 0
    for i, edge in enumerate(edges):
        if value >= edge:
            index = i
    return index


def _cell(tokens: int, steps: int) -> dict[str, Any]:
    return {"al": tokens / steps if steps else None, "steps": steps, "tokens": tokens}


def _pooled(cells: Mapping[str, Mapping[str, Any]]) -> float | None:
    tokens = sum(c["tokens"] for c in cells.values())
    steps = sum(c["steps"] for c in cells.values())
    return tokens / steps if steps else None


def al_by_position(framed: Sequence[FramedRequest], edges: Sequence[int] = POSITION_EDGES) -> dict[str, Any]:
    """AL per output-position bin, overall and per category: {bins, all: {bin: {al, steps,
    tokens}}, by_category: {category: {bin: ...}}, pooled_al} (pooled_al = sum tokens / sum
    steps over every bin, which equals acceptance_length_pooled when every request is framed)."""
    labels = [bin_label(edges, i) for i in range(len(edges))]
    totals: dict[str, list[int]] = {}
    per_cat: dict[str, dict[str, list[int]]] = {}
    for f in framed:
        cat = per_cat.setdefault(f.record.category, {})
        for start, k in zip(f.starts, f.lengths):
            label = labels[_bin_index(edges, start)]
            for table in (totals, cat):
                cell = table.setdefault(label, [0, 0])
                cell[0] += k
                cell[1] += 1
    everything = {b: _cell(*totals[b]) for b in labels if b in totals}
    return {
        "bins": labels,
        "all": everything,
        "by_category": {c: {b: _cell(*t[b]) for b in labels if b in t} for c, t in sorted(per_cat.items())},
        "pooled_al": _pooled(everything),
    }


def _part_cell(tokens: int, steps: int, requests: int) -> dict[str, Any]:
    cell = _cell(tokens, steps)
    cell["accepted_share"] = (tokens - steps) / tokens if tokens else None
    cell["requests"] = requests
    return cell


def thinking_vs_answer(framed: Sequence[FramedRequest], boundary: BoundaryFinder | None,
                       marker: str | None) -> dict[str, Any]:
    """AL and accepted share (accepted-draft tokens / tokens) of the thinking part, the answer
    part and the outputs without the marker (see the module doc). `applicable` is False, with
    the reason, when no marker is configured or no output contains it."""
    if boundary is None or not marker:
        return {"applicable": False, "marker": marker, "reason": "no reasoning end marker configured"}
    sums = {THINKING: [0, 0, 0], ANSWER: [0, 0, 0], NO_MARKER: [0, 0, 0]}
    for f in framed:
        b = boundary(f.record.output_ids)
        touched: set[str] = set()
        for start, k in zip(f.starts, f.lengths):
            part = NO_MARKER if b is None else THINKING if start < b else ANSWER
            sums[part][0] += k
            sums[part][1] += 1
            touched.add(part)
        for part in touched:
            sums[part][2] += 1
    parts = {p: _part_cell(*v) for p, v in sums.items()}
    applicable = sums[THINKING][1] + sums[ANSWER][1] > 0
    out: dict[str, Any] = {"applicable": applicable, "marker": marker, "parts": parts, "pooled_al": _pooled(parts)}
    if not applicable:
        out["reason"] = f"no output contained the reasoning end marker {marker!r}"
    return out


def rarity_label(edges: Sequence[int], rank: int | None) -> str:
    """Bucket of a frequency rank: 'rank 1-100', 'rank 1001+', or 'unseen' (not in the corpus)."""
    if rank is None:
        return UNSEEN
    return "rank " + bin_label(edges, _bin_index(edges, rank))


def acceptance_by_rarity(framed: Sequence[FramedRequest], ranks: Mapping[int, int] | None,
                         edges: Sequence[int] = RARITY_EDGES, corpus: str | None = None) -> dict[str, Any]:
    """Per rarity bucket of the emitted decode tokens: tokens, accepted (produced by accepted
    drafts: the first k - 1 tokens of a k-token step), own (the steps' own tokens) and
    accepted_share = accepted / tokens. A drafter that cannot propose rare tokens (a pruned
    vocabulary) shows accepted_share near 0 in the rare buckets while the frequent ones accept."""
    if ranks is None:
        return {"applicable": False, "reason": "no token frequency ranks (no tokenizer for the rank corpus)"}
    labels = [rarity_label(edges, edges[i]) for i in range(len(edges))] + [UNSEEN]
    sums = {label: [0, 0] for label in labels}  # tokens, accepted
    for f in framed:
        ids = f.record.output_ids
        for start, k in zip(f.starts, f.lengths):
            for j in range(start, start + k):
                if j >= len(ids):
                    break
                cell = sums[rarity_label(edges, ranks.get(ids[j]))]
                cell[0] += 1
                cell[1] += j < start + k - 1
    buckets = {
        label: {"tokens": t, "accepted": a, "own": t - a, "accepted_share": a / t if t else None}
        for label, (t, a) in sums.items()
    }
    tokens = sum(t for t, _ in sums.values())
    own = sum(t - a for t, a in sums.values())
    return {"applicable": tokens > 0, "corpus": corpus, "buckets": buckets,
            "pooled_al": tokens / own if own else None}


def compute_breakdowns(framed: Sequence[FramedRequest], unframed: int,
                       inputs: BreakdownInputs | None = None) -> dict[str, Any]:
    """The three breakdowns as results keys: a compact map per breakdown for plots, tables and
    compare (`al_by_position`: {bin: AL}, `al_by_position_by_category`: {"category/bin": AL};
    `al_thinking_answer`: {part: AL};
    `accepted_share_by_rarity`: {bucket: share}) and the full detail beside each (`*_detail`:
    counts, per category, coverage)."""
    inputs = inputs or BreakdownInputs()
    coverage = {"requests_framed": len(framed), "requests_unframed": unframed}
    position = {**al_by_position(framed, inputs.position_edges), **coverage}
    thinking = {**thinking_vs_answer(framed, inputs.boundary, inputs.marker), **coverage}
    rarity = {**acceptance_by_rarity(framed, inputs.ranks, inputs.rarity_edges, inputs.rank_corpus), **coverage}
    return {
        "al_by_position": {b: c["al"] for b, c in position["all"].items()},
        "al_by_position_by_category": {f"{cat}/{b}": c["al"] for cat, bins in position["by_category"].items()
                                       for b, c in bins.items()},
        "al_by_position_detail": position,
        "al_thinking_answer": {p: c["al"] for p, c in thinking.get("parts", {}).items()}
        if thinking["applicable"] else {},
        "al_thinking_answer_detail": thinking,
        "accepted_share_by_rarity": {b: c["accepted_share"] for b, c in rarity.get("buckets", {}).items()},
        "accepted_share_by_rarity_detail": rarity,
    }
