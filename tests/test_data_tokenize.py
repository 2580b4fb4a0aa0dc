"""Pre-tokenization: one BOS with templates that write it, raw mode, multi-turn, the fingerprint that keys the prompt cache."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import Any

import pytest

from pytest_speedbench.data import Prompt
from pytest_speedbench.data.tokenize import PromptEncoder, tokenizer_fingerprint
from pytest_speedbench.errors import UsageError


def _prompt(i: int, *turns: str) -> Prompt:
    turns = turns or (f"the quick brown fox {i}",)
    return Prompt(f"q{i}", "writing", "", tuple(turns), "tests", str(i), "", len(turns) > 1)


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer_dir: Path) -> Any:
    """The tiny tokenizer, made to add BOS by default like Llama's (template also writes it)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir)
    bos_id = tok.convert_tokens_to_ids("<s>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)])
    assert "{{ bos_token }}" in tok.chat_template
    return tok


def test_template_bos_appears_once(bos_tokenizer: Any) -> None:
    bos = bos_tokenizer.bos_token_id
    text = PromptEncoder(bos_tokenizer).render([{"role": "user", "content": _prompt(0).turns[0]}])
    naive = bos_tokenizer(text)["input_ids"]  # default add_special_tokens=True
    assert naive[:2] == [bos, bos]  # the trap this module avoids
    ids = PromptEncoder(bos_tokenizer).encode_first_turns([_prompt(0)])[0]
    assert ids[0] == bos and ids.count(bos) == 1
    assert PromptEncoder(bos_tokenizer).decode(ids) == text


def test_raw_mode_encodes_turn_text_with_tokenizer_specials(bos_tokenizer: Any) -> None:
    enc = PromptEncoder(bos_tokenizer, chat_template=False)
    ids = enc.encode_first_turns([_prompt(1)])[0]
    assert ids[0] == bos_tokenizer.bos_token_id and ids.count(bos_tokenizer.bos_token_id) == 1
    assert enc.decode(ids[1:]) == "the quick brown fox 1"
    assert "<|user|>" not in enc.decode(ids)


def test_conversation_includes_previous_answer_and_generation_cue(bos_tokenizer: Any) -> None:
    enc = PromptEncoder(bos_tokenizer)
    p = _prompt(2, "first question", "second question")
    first = enc.encode_first_turns([p])[0]
    conv = enc.encode_conversation([
        {"role": "user", "content": p.turns[0]}, {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": p.turns[1]},
    ])
    text = enc.decode(conv)
    assert text.index("first question") < text.index("an answer") < text.index("second question")
    assert text.endswith("<|assistant|>")
    assert conv.count(bos_tokenizer.bos_token_id) == 1
    assert enc.decode(first).endswith("<|assistant|>") and "second question" not in enc.decode(first)


def test_fingerprint_follows_template_and_mode(bos_tokenizer: Any) -> None:
    """The fingerprint keys the prepared-prompt cache: a template or mode change must change it."""
    templated = PromptEncoder(bos_tokenizer).fingerprint
    raw = PromptEncoder(bos_tokenizer, chat_template=False)
    assert raw.fingerprint != templated
    assert raw.encode_first_turns([_prompt(0)])[0][1:] == \
        bos_tokenizer("the quick brown fox 0", add_special_tokens=False)["input_ids"]
    original = bos_tokenizer.chat_template
    try:
        bos_tokenizer.chat_template = original.replace("<|end|>", "<|end|>\n")
        assert PromptEncoder(bos_tokenizer).fingerprint != templated
    finally:
        bos_tokenizer.chat_template = original
    assert PromptEncoder(bos_tokenizer).fingerprint == templated


def test_fingerprint_differs_between_tokenizers(bos_tokenizer: Any, tiny_tokenizer_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir)  # no BOS post-processor
    assert tokenizer_fingerprint(plain) != tokenizer_fingerprint(bos_tokenizer)
    again = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir)
    assert tokenizer_fingerprint(plain) == tokenizer_fingerprint(again)


def test_missing_chat_template_is_a_usage_error(bos_tokenizer: Any) -> None:
    original = bos_tokenizer.chat_template
    try:
        bos_tokenizer.chat_template = None
        with pytest.raises(UsageError, match="chat-template=off"):
            PromptEncoder(bos_tokenizer)
        PromptEncoder(bos_tokenizer, chat_template=False)  # raw mode needs none
    finally:
        bos_tokenizer.chat_template = original


def test_backend_batch_encoding_matches_the_tokenizer_call(bos_tokenizer: Any) -> None:
    texts = ["the quick brown fox", "", "speculative   decoding\n\ndrafts 😀 tokens"] * 30
    for mode in (True, False):
        enc = PromptEncoder(bos_tokenizer, chat_template=mode)
        assert enc._encode_texts(texts, chunk=7) == bos_tokenizer(texts, add_special_tokens=not mode)["input_ids"]


@pytest.mark.slow
def test_bundled_smollm_matches_transformers_own_templated_encoding() -> None:
    """With the real target tokenizer, our ids equal apply_chat_template(tokenize=True)."""
    models = pytest.importorskip("pytest_speedbench.models")
    tok = models.load_tokenizer(None)
    p = _prompt(3, "Explain speculative decoding in one sentence.", "Now in French.")
    ids = PromptEncoder(tok).encode_first_turns([p])[0]
    expected = tok.apply_chat_template([{"role": "user", "content": p.turns[0]}], tokenize=True,
                                       add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, Mapping) else expected
    assert ids == list(expected)
    assert ids[:2] != [tok.bos_token_id] * 2  # SmolLM's BOS is <|im_start|>: once per message, never doubled
