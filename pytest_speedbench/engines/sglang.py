"""SGLang: native /generate protocol (token ids in, SSE out) and its SD counters.

Wire format (python/sglang/srt/entrypoints/http_server.py): POST /generate with `input_ids`,
`sampling_params` and `stream: true` answers `data: {json}\\n\\n` events and a final
`data: [DONE]`. Each event has `output_ids` (cumulative by default, incremental when the server
runs with --incremental-streaming-output) and `meta_info` with a running `completion_tokens`;
the final event's `meta_info` carries the SD counters, whose names drifted across 0.5.x.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ..errors import RequestError
from ..records import Counters
from .base import EngineConfig, HttpEngine, HttpRequest, ParsedEvent, SamplingParams

# Spellings of the same counter across SGLang versions, newest first.
ACCEPTED_KEYS = ("spec_num_correct_drafts", "spec_accepted_drafts", "spec_accept_token_num")
DRAFTED_KEYS = ("spec_num_proposed_drafts", "spec_proposed_drafts", "spec_draft_token_num")
HISTOGRAM_KEYS = ("spec_correct_drafts_histogram", "spec_accept_histogram")


def _first(meta: dict[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if meta.get(key) is not None:
            return meta[key]
    return None


def histogram_to_per_pos(histogram: Sequence[int]) -> list[int]:
    """SGLang's histogram[k] = steps that accepted exactly k drafts -> steps accepting >= i."""
    per_pos = []
    for i in range(1, len(histogram)):
        per_pos.append(int(sum(histogram[i:])))
    return per_pos


def normalize_meta_counters(meta: dict[str, Any]) -> Counters | None:
    """meta_info -> {steps, accepted, drafted, accepted_per_pos}; None without SD counters.

    SGLang's own `spec_accept_length` counts the prefill token (completion_tokens / verify_ct),
    so it is recorded but never used: AL = 1 + accepted / steps.
    """
    steps = meta.get("spec_verify_ct")
    if not steps:
        return None
    accepted = _first(meta, ACCEPTED_KEYS)
    if accepted is None and meta.get("completion_tokens") is not None:
        # Oldest servers report only completion_tokens and verify_ct: the prefill token is
        # not a verification step and every step yields one non-draft token.
        accepted = int(meta["completion_tokens"]) - 1 - int(steps)
    if accepted is None:
        return None
    counters: Counters = {"steps": int(steps), "accepted": int(accepted)}
    drafted = _first(meta, DRAFTED_KEYS)
    if drafted is not None:
        counters["drafted"] = int(drafted)
    histogram = _first(meta, HISTOGRAM_KEYS)
    if histogram:
        counters["accepted_per_pos"] = histogram_to_per_pos(histogram)
    if meta.get("spec_accept_length") is not None:
        counters["engine_accept_length"] = float(meta["spec_accept_length"])
    return counters


class SGLangParser:
    """Per-request state: how many output ids were seen, cumulative or incremental."""

    __slots__ = ("seen", "incremental")

    def __init__(self, incremental: bool | None = None) -> None:
        self.seen = 0
        self.incremental = incremental

    def parse(self, data: bytes) -> ParsedEvent | None:
        if data == b"[DONE]":
            return None
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"malformed SGLang event JSON ({exc}): {data[:120]!r}") from None
        if not isinstance(event, dict):
            raise RequestError(f"unexpected SGLang event (not an object): {data[:120]!r}")
        if "error" in event and "output_ids" not in event:
            raise RequestError(f"SGLang reported an error: {event['error']}")
        ids = event.get("output_ids") or []
        meta = event.get("meta_info") or {}
        new_ids = self._new_ids(ids, meta.get("completion_tokens"))
        finish = meta.get("finish_reason")
        finished = finish is not None
        counters = normalize_meta_counters(meta) if finished else None
        return ParsedEvent(new_ids, finished, counters)

    def _new_ids(self, ids: list[int], completion_tokens: int | None) -> list[int]:
        if self.incremental is None and self.seen > 0 and completion_tokens is not None:
            # Both modes look alike until the second token-carrying event; the running
            # completion_tokens then tells them apart without guessing from the ids.
            if len(ids) == completion_tokens:
                self.incremental = False
            elif len(ids) == completion_tokens - self.seen:
                self.incremental = True
        if self.incremental or self.seen == 0:
            new = list(ids)
        else:
            if len(ids) < self.seen:
                raise RequestError(
                    f"SGLang output_ids went backwards: {len(ids)} ids after {self.seen} were seen"
                )
            new = ids[self.seen:]
        if completion_tokens is not None and completion_tokens < self.seen:
            raise RequestError(
                f"SGLang completion_tokens went backwards: {completion_tokens} after {self.seen}"
            )
        self.seen += len(new)
        return new


class SGLangEngine(HttpEngine):
    name = "sglang"
    drafters = ("none", "ngram", "draft", "eagle", "eagle3", "mtp")

    def __init__(self, config: EngineConfig, workdir) -> None:
        super().__init__(config, workdir)
        self.base_url = (config.server_url or "").rstrip("/")
        self._server_info: dict[str, Any] = {}

    # -- lifecycle (attach mode; launching is added by the launch support) --
    def start(self) -> None:
        if not self.base_url:
            raise NotImplementedError("launching SGLang needs the launch support; pass --server-url")
        self._server_info = self._probe_server_info()

    def stop(self) -> None:
        pass

    def _probe_server_info(self) -> dict[str, Any]:
        import httpx

        from ..errors import EngineError

        try:
            with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
                info = {}
                for path in ("/get_server_info", "/server_info"):
                    r = client.get(path)
                    if r.status_code == 200:
                        info = r.json()
                        break
                r = client.get("/get_model_info")
                if r.status_code == 200:
                    info["model_info"] = r.json()
                return info
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot reach SGLang server at {self.base_url}: {exc}") from None

    def info(self) -> dict[str, Any]:
        info = super().info()
        info.update(
            url=self.base_url,
            version=self._server_info.get("version"),
            speculative_algorithm=self._server_info.get("speculative_algorithm"),
            model=(self._server_info.get("model_info") or {}).get("model_path")
            or self._server_info.get("model_path"),
        )
        return info

    # -- protocol --
    def build_request(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> HttpRequest:
        params: dict[str, Any] = {
            "temperature": sampling.temperature,
            "max_new_tokens": sampling.max_new_tokens,
            "ignore_eos": sampling.ignore_eos,
        }
        if sampling.seed is not None and sampling.temperature > 0:
            params["sampling_seed"] = sampling.seed
        body = {"input_ids": list(prompt_ids), "sampling_params": params, "stream": True}
        return HttpRequest("/generate", orjson.dumps(body))

    def new_parser(self) -> SGLangParser:
        return SGLangParser(self.config.option("incremental_output"))
