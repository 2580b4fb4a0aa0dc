"""Pre-tokenization for the target model: engines receive token ids, never text.

External normalization (SPEED-Bench): the harness, not the engine, applies the chat template
and decides BOS, so every engine sees identical ids. The template is rendered as *text* and
then encoded with `add_special_tokens=False`: templates that write `{{ bos_token }}` already
put the BOS in the text, and letting the tokenizer add its own would give a double BOS (what
happens when a templated string is encoded with default settings). In raw mode
(`chat_template=False`) the turn text is encoded with the tokenizer's own special tokens, the
way a base model is prompted.

`PromptEncoder.fingerprint` (the tokenizer's full serialized definition where available, and
the template) is part of the key of the prepared-prompt cache (data/prepared.py), so a repeated
run does no tokenization work at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from pytest_speedbench.errors import UsageError
from pytest_speedbench.data.schema import Prompt

CACHE_VERSION = "1"


def _sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable hash of everything that decides the ids: vocab, merges, normalizer, specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:  # slow tokenizers: the vocab and specials are what we can see
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return _sha256(type(tokenizer).__name__, definition, specials)


class PromptEncoder:
    """Turns prompts and conversations into the target model's token ids."""

    def __init__(self, tokenizer: Any, *, chat_template: bool = True) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        if chat_template and not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise UsageError(
                f"tokenizer {name!r} has no chat template; pass --chat-template=off to send raw "
                "prompt text, or use a tokenizer that defines one"
            )

    @cached_property
    def fingerprint(self) -> str:
        template = self.tokenizer.chat_template if self.chat_template else "<raw>"
        return _sha256(CACHE_VERSION, tokenizer_fingerprint(self.tokenizer), str(template))

    # -- text ----------------------------------------------------------------------------------

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The exact text the model sees for a conversation, ending with the assistant's cue."""
        if self.chat_template:
            return self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages)

    def _encode_texts(self, texts: list[str], *, chunk: int = 64) -> list[list[int]]:
        """Encode on the Rust backend's threads, in chunks so its per-text buffers stay small."""
        special = not self.chat_template
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        batch = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
        if batch is None:  # slow (pure Python) tokenizers
            return [list(x) for x in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]
        out: list[list[int]] = []
        for start in range(0, len(texts), chunk):
            out.extend(e.ids for e in batch(texts[start:start + chunk], add_special_tokens=special))
        return out

    # -- public API ----------------------------------------------------------------------------

    def encode_conversation(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Ids of a conversation so far (e.g. turn 1, its answer, turn 2), ready for generation."""
        return self._encode_texts([self.render(messages)])[0]

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        return self.encode_conversation([{"role": "user", "content": prompt.turns[0]}])

    def encode_first_turns(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """First-turn ids of every prompt."""
        texts = [self.render([{"role": "user", "content": p.turns[0]}]) for p in prompts]
        return self._encode_texts(texts)

    def first_turn_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """First-turn ids of prompt texts as int32 arrays: the compact form a workload keeps
        (4 bytes a token, where a tuple of Python ints costs ~40)."""
        rendered = [self.render([{"role": "user", "content": t}]) for t in texts]
        return [np.asarray(ids, dtype=np.int32) for ids in self._encode_texts(rendered)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
