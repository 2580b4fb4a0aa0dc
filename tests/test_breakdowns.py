"""Acceptance breakdowns (metrics/breakdowns.py): AL by output position, thinking vs answer,
accepted share by token rarity. Each one splits the headline's reconciled decode steps, so
pooled over its bins it must give back acceptance_length_pooled exactly."""

from __future__ import annotations

import random

import pytest

from pytest_speedbench.measure.records import RequestRecord, RunRecords
from pytest_speedbench.metrics import breakdowns as B
from pytest_speedbench.metrics import run as M


def stepped(pid: str, cat: str, lengths: list[int], *, prefill: int = 1, counters=None, seed: int = 0) -> RequestRecord:
    """A step-framed record: chunk 0 = prefill, chunk j = decode step j; ids drawn from a small vocabulary."""
    rng = random.Random(seed)
    tokens = [prefill, *lengths]
    ids = [rng.randrange(50) for _ in range(sum(tokens))]
    times = [0.1 * (j + 1) for j in range(len(tokens))]
    return RequestRecord(pid, cat, t_send=0.0, chunk_times=times, chunk_tokens=tokens, output_ids=ids,
                         counters=counters)


def random_run(n: int, seed: int) -> RunRecords:
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        lengths = [rng.randint(1, 4) for _ in range(rng.randint(1, 400))]
        recs.append(stepped(f"p{i}", rng.choice(["math", "coding", "qa"]), lengths, seed=seed + i))
    return RunRecords(recs)


def test_position_bins_split_steps_at_their_first_token():
    # prefill 1 token; steps of 3 tokens start at 1, 4, 7, ..., so 0-63 holds starts 1..61 (21 steps)
    rec = stepped("a", "math", [3] * 30)
    out = B.al_by_position([B.frame(rec, rec.chunk_tokens[1:])], edges=(0, 64, 256))
    assert out["bins"] == ["0-63", "64-255", "256+"]
    assert out["all"]["0-63"] == {"al": 3.0, "steps": 21, "tokens": 63}
    assert out["all"]["64-255"] == {"al": 3.0, "steps": 9, "tokens": 27}
    assert "256+" not in out["all"]


@pytest.mark.parametrize("seed", range(5))
def test_pooled_bins_give_back_the_headline_pooled_al_exactly(seed):
    m = M.compute_run_metrics(random_run(12, seed), analysis=B.BreakdownInputs(
        marker="<m>", boundary=lambda ids: (list(ids).index(7) + 1) if 7 in ids else None,
        ranks={i: i + 1 for i in range(30)}))
    pooled = m["acceptance_length_pooled"]
    detail = m["al_by_position_detail"]
    assert detail["requests_unframed"] == 0
    assert detail["pooled_al"] == pooled
    assert sum(c["steps"] for c in detail["all"].values()) == m["num_decode_steps"]
    for cat, bins in detail["by_category"].items():
        tokens = sum(c["tokens"] for c in bins.values())
        steps = sum(c["steps"] for c in bins.values())
        cat_recs = [r for r in random_run(12, seed).requests if r.category == cat]
        assert tokens == sum(sum(r.chunk_tokens[1:]) for r in cat_recs)
        assert steps == sum(len(r.chunk_tokens) - 1 for r in cat_recs)
    assert m["al_thinking_answer_detail"]["pooled_al"] == pooled
    assert m["accepted_share_by_rarity_detail"]["pooled_al"] == pooled


def test_one_token_per_event_streams_are_framed_by_the_counters_bursts():
    # llama-server: one token per event; steps of 3, 1, 2 tokens arrive as bursts 1 s apart
    times, t = [0.0], 0.0
    for k in (3, 1, 2):
        t += 1.0
        times += [t + 0.001 * i for i in range(k)]
    rec = RequestRecord("l", "qa", t_send=-0.1, chunk_times=times, chunk_tokens=[1] * len(times),
                        output_ids=list(range(len(times))), counters={"decode_steps": 3, "accepted": 3})
    m = M.compute_run_metrics(RunRecords([rec]))
    assert m["al_source"] == "engine_counters"
    detail = m["al_by_position_detail"]
    assert detail["requests_framed"] == 1
    assert detail["all"]["0-63"] == {"al": 2.0, "steps": 3, "tokens": 6}
    rarity = m["accepted_share_by_rarity_detail"]
    assert rarity["applicable"] is False  # no ranks given


def test_coalesced_requests_are_left_out_and_counted():
    # 2 chunks after prefill, but the engine counted 4 steps: the events merged steps
    rec = stepped("c", "qa", [4, 4], counters={"decode_steps": 4, "accepted": 4})
    good = stepped("g", "qa", [2, 2])
    m = M.compute_run_metrics(RunRecords([rec, good]))
    detail = m["al_by_position_detail"]
    assert (detail["requests_framed"], detail["requests_unframed"]) == (1, 1)
    assert detail["all"]["0-63"]["steps"] == 2


def test_run_level_counters_that_overrule_the_chunks_frame_nothing():
    recs = [stepped("a", "qa", [5, 5]), stepped("b", "qa", [5])]
    m = M.compute_run_metrics(RunRecords(recs, engine_counters={"accepted": 4, "drafted_steps": 6}))
    assert m["al_source"] == "engine_counters"
    assert m["al_by_position_detail"]["requests_framed"] == 0
    assert m["al_by_position"] == {}


def test_thinking_and_answer_split_at_the_marker():
    # ids: prefill [9], steps: [1,1] [1] [2,2,2] [3] ; marker = id 2 ends the thinking part at position 7
    rec = RequestRecord("t", "math", chunk_times=[1, 2, 3, 4, 5], chunk_tokens=[1, 2, 1, 3, 1],
                        output_ids=[9, 1, 1, 1, 2, 2, 2, 3])
    boundary = lambda ids: list(ids).index(2) + 1  # noqa: E731  (the first marker token ends it)
    out = B.thinking_vs_answer([B.frame(rec, rec.chunk_tokens[1:])], boundary, "</think>")
    assert out["applicable"] is True
    # steps start at 1, 3, 4, 7; boundary 5 -> thinking: steps at 1, 3, 4 (6 tokens), answer: step at 7
    assert out["parts"]["thinking"] == {"al": 2.0, "steps": 3, "tokens": 6, "accepted_share": 0.5, "requests": 1}
    assert out["parts"]["answer"]["steps"] == 1 and out["parts"]["answer"]["al"] == 1.0
    assert out["pooled_al"] == 7 / 4


def test_thinking_is_not_applicable_without_the_marker():
    rec = stepped("n", "qa", [2, 3])
    out = B.thinking_vs_answer([B.frame(rec, rec.chunk_tokens[1:])], lambda ids: None, "</think>")
    assert out["applicable"] is False
    assert "</think>" in out["reason"]
    assert out["parts"]["no_marker"]["steps"] == 2
    m = M.compute_run_metrics(RunRecords([rec]))  # no marker configured at all
    assert m["al_thinking_answer"] == {}
    assert m["al_thinking_answer_detail"]["reason"] == "no reasoning end marker configured"


def test_rarity_counts_accepted_drafts_and_own_tokens():
    # steps [10, 11, 500] (2 accepted + own 500), [600] (own), [12, 13] (1 accepted + own 13)
    rec = RequestRecord("r", "qa", chunk_times=[1, 2, 3, 4], chunk_tokens=[1, 3, 1, 2],
                        output_ids=[0, 10, 11, 500, 600, 12, 13])
    ranks = {10: 1, 11: 2, 12: 3, 13: 4, 500: 150}
    out = B.acceptance_by_rarity([B.frame(rec, rec.chunk_tokens[1:])], ranks, edges=(1, 101), corpus="c")
    b = out["buckets"]
    assert b["rank 1-100"] == {"tokens": 4, "accepted": 3, "own": 1, "accepted_share": 0.75}
    assert b["rank 101+"] == {"tokens": 1, "accepted": 0, "own": 1, "accepted_share": 0.0}
    assert b["unseen"] == {"tokens": 1, "accepted": 0, "own": 1, "accepted_share": 0.0}
    assert out["pooled_al"] == 6 / 3


def test_a_pruned_vocabulary_drafter_shows_in_the_rare_buckets():
    # a drafter that never proposes ids >= 25: those tokens are always a step's own token
    rng = random.Random(3)
    recs = []
    for i in range(20):
        ids, lengths = [0], []
        while len(ids) < 200:
            step = []
            while rng.random() < 0.7 and len(step) < 3:
                tok = rng.randrange(50)
                if tok >= 25:
                    break
                step.append(tok)
            step.append(rng.randrange(50))  # the target's own token
            ids += step
            lengths.append(len(step))
        recs.append(RequestRecord(f"p{i}", "qa", chunk_times=list(range(len(lengths) + 1)),
                                  chunk_tokens=[1, *lengths], output_ids=ids))
    ranks = {i: i + 1 for i in range(50)}
    m = M.compute_run_metrics(RunRecords(recs), analysis=B.BreakdownInputs(ranks=ranks, rarity_edges=(1, 26)))
    shares = m["accepted_share_by_rarity"]
    assert shares["rank 26+"] == 0.0
    assert shares["rank 1-25"] > 0.3
    assert m["accepted_share_by_rarity_detail"]["pooled_al"] == m["acceptance_length_pooled"]
