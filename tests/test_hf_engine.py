"""The hf engine: pure helpers, and (real_engine) exact greedy output, step capture, sampling.

The real tests load the bundled SmolLM2-135M (converted once into the cache) on the CPU with
one thread each, and decode 24 tokens, so they fit a small shared machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_speedbench.engines.base import EngineConfig, SamplingParams
from pytest_speedbench.engines.hf import SPEC, HFEngine, counters_from_steps, parse_draft_spec, resolve_device
from pytest_speedbench.errors import UsageError

MAX_NEW = 24
REPETITIVE = "Repeat this sentence three times: the quick brown fox jumps over the lazy dog."

# -- pure helpers --------------------------------------------------------------------------


def test_draft_spec_parsing() -> None:
    assert parse_draft_spec(None, 30) == (24, None)  # the default early-exit draft
    assert parse_draft_spec("layers:12", 30) == (12, None)
    assert parse_draft_spec("/models/draft", 30) == (None, "/models/draft")
    for bad in ("layers:0", "layers:30"):
        with pytest.raises(UsageError, match="layers:1 ... layers:29"):
            parse_draft_spec(bad, 30)


def test_device_resolution() -> None:
    assert resolve_device("auto", False, 0) == "cpu"
    assert resolve_device("auto", True, 1) == "cuda"
    assert resolve_device("cuda:1", True, 2) == "cuda:1"
    with pytest.raises(UsageError, match="valid values: auto, cpu, cuda, cuda:N"):
        resolve_device("tpu", True, 1)
    with pytest.raises(UsageError, match="no CUDA"):
        resolve_device("cuda", False, 0)
    with pytest.raises(UsageError, match="cuda:0 ... cuda:1"):
        resolve_device("cuda:2", True, 2)


def test_counters_from_chunk_sizes() -> None:
    # prefill chunk of 2 (drafts accepted during prefill are not steps), then 3 steps
    assert counters_from_steps([2, 1, 4, 2], [3, 3, 3, 3]) == {"decode_steps": 3, "accepted": 4, "drafted": 9, "drafted_steps": 3}
    assert counters_from_steps([1], None) == {"decode_steps": 0, "accepted": 0}


def test_engine_contract_and_validation(tmp_path: Path) -> None:
    assert HFEngine.name == "hf" and SPEC.max_concurrency == 1 and SPEC.engine_class is HFEngine
    assert SPEC.drafters == ("none", "ngram", "draft")
    with pytest.raises(UsageError, match="valid values: none, ngram, draft"):
        HFEngine(EngineConfig("hf", "eagle3"), tmp_path)
    with pytest.raises(UsageError, match="draft length 0"):
        HFEngine(EngineConfig("hf", "ngram", draft_length=0), tmp_path)


def test_generation_kwargs_per_drafter(tmp_path: Path) -> None:
    greedy, hot = SamplingParams(0.0, 16), SamplingParams(0.7, 16, ignore_eos=False, seed=1)
    ngram = HFEngine(EngineConfig("hf", "ngram", draft_length=5), tmp_path)
    kwargs = ngram.generation_kwargs(greedy)
    assert kwargs["prompt_lookup_num_tokens"] == 5 and kwargs["min_new_tokens"] == 16
    assert kwargs["do_sample"] is False
    hot_kwargs = ngram.generation_kwargs(hot)
    assert hot_kwargs["do_sample"] and hot_kwargs["temperature"] == 0.7 and hot_kwargs["top_k"] == 0
    assert "min_new_tokens" not in hot_kwargs
    draft = HFEngine(EngineConfig("hf", "draft"), tmp_path)
    draft.early_exit = 24
    assert draft.generation_kwargs(greedy)["assistant_early_exit"] == 24


# -- real model ----------------------------------------------------------------------------


def _config(drafter: str, **kw: Any) -> EngineConfig:
    return EngineConfig("hf", drafter, device="cpu", draft_length=3, extra=(("threads", 1),), **kw)


@pytest.fixture(scope="module")
def prompt_ids() -> list[int]:
    pytest.importorskip("transformers")
    from pytest_speedbench.models import load_tokenizer

    tokenizer = load_tokenizer(None)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": REPETITIVE}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("transformers")
    started: dict[str, HFEngine] = {}

    def get(drafter: str, **kw: Any) -> HFEngine:
        key = f"{drafter}{sorted(kw.items())}"
        if key not in started:
            engine = HFEngine(_config(drafter, **kw), tmp_path_factory.mktemp("hf"))
            engine.start()
            started[key] = engine
        return started[key]

    yield get
    for engine in started.values():
        engine.stop()


@pytest.fixture(scope="module")
def reference(engines: Any, prompt_ids: list[int]) -> list[int]:
    """A bare greedy `model.generate` of the same prompt, outside the engine's code path."""
    import torch

    model = engines("none").model
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, do_sample=False
        )
    return out[0, len(prompt_ids) :].tolist()


def _run(engine: HFEngine, prompt_ids: list[int], sampling: SamplingParams) -> tuple[list[list[int]], Any]:
    chunks: list[list[int]] = []
    counters = engine.generate(prompt_ids, sampling, lambda ids: chunks.append(list(ids)))
    return chunks, counters


@pytest.mark.real_engine
@pytest.mark.parametrize("drafter", ["none", "ngram", "draft"])
def test_greedy_output_matches_plain_decoding(engines: Any, prompt_ids: list[int], reference: list[int], drafter: str) -> None:
    chunks, counters = _run(engines(drafter), prompt_ids, SamplingParams(0.0, MAX_NEW))
    assert [t for c in chunks for t in c] == reference
    sizes = [len(c) for c in chunks]
    assert sum(sizes) == MAX_NEW  # ignore_eos: exact length
    assert counters["decode_steps"] == len(chunks) - 1
    assert counters["accepted"] == sum(sizes[1:]) - counters["decode_steps"]
    assert max(sizes) <= (1 if drafter == "none" else 3 + 1)  # a step: drafts + the target's own token
    if drafter != "none":
        # on a repetitive prompt both drafters get some drafts accepted, never more than proposed
        assert 0 < counters["accepted"] <= counters["drafted"]
        assert len(chunks) < MAX_NEW


@pytest.mark.real_engine
def test_separate_draft_model_path(engines: Any, prompt_ids: list[int], reference: list[int]) -> None:
    """The target as its own assistant: every greedy draft must be accepted."""
    from pytest_speedbench.models import resolve_model

    engine = engines("draft", draft_model=str(resolve_model(None).hf_dir))
    assert engine.assistant is not None and engine.info()["draft_model"].endswith("smollm2-135m")
    chunks, counters = _run(engine, prompt_ids, SamplingParams(0.0, MAX_NEW))
    assert [t for c in chunks for t in c] == reference
    assert counters["accepted"] == counters["drafted"] > 0


@pytest.mark.real_engine
@pytest.mark.parametrize("drafter", ["none", "ngram"])
def test_sampling_is_reproducible_under_a_seed(engines: Any, prompt_ids: list[int], reference: list[int], drafter: str) -> None:
    engine = engines(drafter)
    outputs = [
        [t for c in _run(engine, prompt_ids, SamplingParams(1.0, MAX_NEW, seed=seed))[0] for t in c]
        for seed in (7, 7, 8)
    ]
    assert all(len(o) == MAX_NEW for o in outputs)
    assert outputs[0] == outputs[1]
    assert outputs[2] != outputs[0] or outputs[0] != reference  # the seed matters, or it is not greedy


@pytest.mark.real_engine
def test_info_and_stop(engines: Any) -> None:
    info = engines("none").info()
    assert info["engine"] == "hf" and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["transformers"] and info["torch"] and Path(info["model"]).is_dir()
