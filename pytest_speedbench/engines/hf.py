"""The `hf` engine: transformers in-process on CPU or CUDA, one request at a time.

Drafters map onto transformers' assisted generation: `ngram` is prompt lookup, `draft` is an
assistant model, either a separate model or the target's own first N layers (`layers:N`, an
early-exit draft). Every decoding step reaches `generate`'s streamer as one `put` call (the
prompt first, then the prefill step, then one call per verification step with all the tokens
that step accepted); the streamer forwards each step to the client's `on_chunk`, after a CUDA
synchronize so the client's timestamp is taken when the step's tokens really exist.

The engine serves one request at a time (assisted generation is batch-size-1 only), hence
`SPEC.max_concurrency = 1`: the plugin skips cases with a larger batch rather than report a
throughput that is only a queue.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pytest_speedbench.errors import EngineError, EngineNotInstalled, UsageError
from pytest_speedbench.models import resolve_model
from pytest_speedbench.engines.prepare import model_conversion
from pytest_speedbench.engines.counters import Counters
from pytest_speedbench.engines.base import EngineConfig, InProcessEngine, SamplingParams
from pytest_speedbench.engines.spec import EngineSpec

#: the early-exit draft used when --draft-model is not given, as a fraction of the target's
#: layers (SmolLM2-135M: 30 layers -> layers:24); see DEFAULT_DRAFT_FRACTION's measurement
#: in benchmarks/bench_hf.py
DEFAULT_DRAFT_FRACTION = 0.8
_LAYERS = re.compile(r"layers:(\d+)")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_draft_spec(spec: str | None, num_layers: int) -> tuple[int | None, str | None]:
    """(early-exit layer count, draft model spec): exactly one is set.

    None means the default early-exit draft; "layers:N" needs 1 <= N < the target's layers.
    """
    if spec is None:
        return max(1, min(num_layers - 1, round(num_layers * DEFAULT_DRAFT_FRACTION))), None
    match = _LAYERS.fullmatch(spec.strip())
    if match is None:
        return None, spec
    n = int(match.group(1))
    if not 1 <= n < num_layers:
        raise UsageError(
            f"draft model {spec!r}: an early-exit draft needs 1 <= N < {num_layers} "
            f"(the target's layer count); valid values: layers:1 ... layers:{num_layers - 1}"
        )
    return n, None


def resolve_device(spec: str, cuda_available: bool, cuda_count: int) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a concrete torch device string."""
    spec = (spec or "auto").strip().lower()
    if _DEVICE.fullmatch(spec) is None:
        raise UsageError(f"unknown device {spec!r}; valid values: auto, cpu, cuda, cuda:N")
    if spec == "auto":
        return "cuda" if cuda_available else "cpu"
    if spec.startswith("cuda"):
        if not cuda_available:
            raise UsageError(f"device {spec!r} asked for, but torch sees no CUDA GPU (torch CPU build?); use --device cpu")
        index = int(spec.partition(":")[2] or 0)
        if index >= cuda_count:
            raise UsageError(f"device {spec!r}: only {cuda_count} CUDA device(s) visible; valid values: cuda:0 ... cuda:{cuda_count - 1}")
    return spec


def counters_from_steps(chunk_sizes: Sequence[int], drafted_per_step: Sequence[int] | None) -> Counters:
    """Normalized counters of one request: chunk 0 is the prefill step, every later chunk one
    decode step whose first token is the target's own and the rest accepted drafts, so
    decode_steps D = chunks - 1 (in-process, exact) and drafted_steps S = steps with a proposal."""
    steps = max(0, len(chunk_sizes) - 1)
    counters: Counters = {"decode_steps": steps, "accepted": sum(chunk_sizes[1:]) - steps}
    if drafted_per_step is not None:
        counters["drafted"] = sum(drafted_per_step[1 : len(chunk_sizes)])
        counters["drafted_steps"] = sum(1 for d in drafted_per_step[1 : len(chunk_sizes)] if d > 0)
    return counters


class _StepStreamer:
    """transformers streamer: drops the prompt, forwards each later `put` as one step."""

    def __init__(self, on_chunk: Callable[[Sequence[int]], None], sync: Callable[[], None] | None) -> None:
        self.on_chunk = on_chunk
        self.sync = sync
        self.seen_prompt = False
        self.chunks: list[list[int]] = []

    def put(self, value: Any) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        if self.sync is not None:
            self.sync()
        ids = [int(t) for t in value.reshape(-1).tolist()]
        if ids:
            self.chunks.append(ids)
            self.on_chunk(ids)

    def end(self) -> None:
        pass


class _DraftRecorder:
    """Records how many tokens the candidate generator proposed at each step.

    Installed on the model instance around transformers' private `_get_candidate_generator`;
    if a transformers version renames it, `available` is False and `drafted` is left out of the
    counters rather than guessed.
    """

    def __init__(self, model: Any) -> None:
        self.per_step: list[int] = []
        original = getattr(type(model), "_get_candidate_generator", None)
        self.available = original is not None
        if not self.available:
            return
        recorder = self

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            generator = original(model, *args, **kwargs)
            get_candidates = generator.get_candidates

            def recording(input_ids: Any, *a: Any, **kw: Any) -> Any:
                candidates, logits = get_candidates(input_ids, *a, **kw)
                recorder.per_step.append(int(candidates.shape[-1] - input_ids.shape[-1]))
                return candidates, logits

            generator.get_candidates = recording
            return generator

        model._get_candidate_generator = wrapped


class HFEngine(InProcessEngine):
    name: ClassVar[str] = "hf"

    def __init__(self, config: EngineConfig, workdir: Path) -> None:
        super().__init__(config, workdir)
        if config.drafter not in SPEC.drafters:
            raise UsageError(f"unknown drafter {config.drafter!r} for engine hf; valid values: {', '.join(SPEC.drafters)}")
        if config.draft_length < 1:
            raise UsageError(f"draft length {config.draft_length} for engine hf; valid values: 1 or more")
        self.model: Any = None
        self.assistant: Any = None
        self.early_exit: int | None = None
        self.device = "cpu"
        self.dtype: Any = None
        self.model_path: Path | None = None
        self.draft_path: Path | None = None
        self._recorder: _DraftRecorder | None = None
        self._torch: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def check_installed(cls) -> None:
        """torch and transformers importable (found, not imported: the matrix is built at once)."""
        import importlib.util

        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            raise EngineNotInstalled(f"engine hf needs {' and '.join(missing)}: "
                                     "pip install torch==2.13.0 'pytest-speedbench[hf]'")

    def start(self) -> None:
        try:
            import torch
            import transformers  # noqa: F401
        except ImportError as exc:
            raise EngineNotInstalled(
                f"engine hf needs torch and transformers ({exc}); "
                "pip install torch==2.13.0 'pytest-speedbench[hf]'"
            ) from None
        self._torch = torch
        self.device = resolve_device(self.config.device, torch.cuda.is_available(), torch.cuda.device_count())
        self.dtype = self._pick_dtype(torch)
        threads = self.config.option("threads")
        if threads:
            torch.set_num_threads(int(threads))
        ref = resolve_model(self.config.model)
        self.model_path = ref.hf_dir
        self.model = self._load(self.model_path)
        if self.config.drafter == "draft":
            layers = int(self.model.config.get_text_config().num_hidden_layers)
            self.early_exit, draft_spec = parse_draft_spec(self.config.draft_model, layers)
            if draft_spec is not None:
                self.draft_path = resolve_model(draft_spec).hf_dir
                self.assistant = self._load(self.draft_path)
                self._check_vocab()
            # the assistant (the target itself for early exit) sets its own draft length
            self._configure_assistant(self.assistant if self.assistant is not None else self.model)
        if self.config.drafter != "none":
            self._recorder = _DraftRecorder(self.model)

    def _pick_dtype(self, torch: Any) -> Any:
        choice = str(self.config.option("dtype", "auto")).lower()
        valid = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        if choice == "auto":
            if self.device == "cpu":
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if choice not in valid:
            raise UsageError(f"unknown dtype {choice!r} for engine hf; valid values: auto, {', '.join(valid)}")
        return valid[choice]

    def _load(self, path: Path) -> Any:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise EngineError(f"engine hf could not load the model from {path}: {exc}") from exc
        return model.to(self.device).eval()

    def _check_vocab(self) -> None:
        target = self.model.config.get_text_config().vocab_size
        draft = self.assistant.config.get_text_config().vocab_size
        if target != draft:
            raise UsageError(
                f"draft model {self.config.draft_model!r} has a vocabulary of {draft} tokens, the target "
                f"{target}: the hf engine's draft drafter needs the same tokenizer (or use layers:N)"
            )

    def _configure_assistant(self, assistant: Any) -> None:
        """A constant draft length: no heuristic schedule, no confidence-based early stop."""
        gc_ = assistant.generation_config
        gc_.num_assistant_tokens = self.config.draft_length
        gc_.num_assistant_tokens_schedule = "constant"
        gc_.assistant_confidence_threshold = 0.0

    def stop(self) -> None:
        self.model = None
        self.assistant = None
        self._recorder = None
        gc.collect()
        torch = self._torch
        if torch is not None and torch.cuda.is_available() and self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        import torch
        import transformers

        info = super().info()
        info.update(
            transformers=transformers.__version__,
            torch=torch.__version__,
            device=self.device,
            dtype=str(self.dtype).removeprefix("torch.") if self.dtype is not None else None,
            model=str(self.model_path) if self.model_path else self.config.model,
            draft_length=self.config.draft_length if self.config.drafter != "none" else None,
        )
        if self.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        if self.config.drafter == "draft":
            info["draft_model"] = str(self.draft_path) if self.draft_path else f"layers:{self.early_exit}"
        return info

    # -- generation ------------------------------------------------------------------------

    def generation_kwargs(self, sampling: SamplingParams) -> dict[str, Any]:
        """The `generate` keyword arguments for one request (no tensors, no streamer)."""
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "use_cache": True}
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = sampling.max_new_tokens
        if sampling.temperature > 0:
            # plain temperature sampling, as servers do by default (transformers adds top_k=50)
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        if self.config.drafter == "ngram":
            kwargs["prompt_lookup_num_tokens"] = self.config.draft_length
            kwargs["max_matching_ngram_size"] = int(self.config.option("ngram_size", 2))
        elif self.config.drafter == "draft":
            if self.assistant is not None:
                kwargs["assistant_model"] = self.assistant
            else:
                kwargs["assistant_early_exit"] = self.early_exit
        return kwargs

    def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        on_chunk: Callable[[Sequence[int]], None],
    ) -> Counters | None:
        if self.model is None:
            raise EngineError("engine hf: generate() called before start()")
        torch = self._torch
        cuda = self.device.startswith("cuda")
        sync = (lambda: torch.cuda.synchronize(self.device)) if cuda else None
        streamer = _StepStreamer(on_chunk, sync)
        input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        if sampling.temperature > 0 and sampling.seed is not None:
            torch.manual_seed(sampling.seed)  # seeds every CUDA device too
        if self._recorder is not None:
            self._recorder.per_step.clear()
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.model.generation_config.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=streamer,
                pad_token_id=pad,
                **self.generation_kwargs(sampling),
            )
        new_ids = output[0, input_ids.shape[1] :].tolist()
        streamed = [t for chunk in streamer.chunks for t in chunk]
        if streamed != new_ids:
            raise EngineError(
                f"engine hf: streamed tokens ({len(streamed)}) differ from generate()'s output "
                f"({len(new_ids)}); this transformers version streams steps differently"
            )
        drafted = None
        if self._recorder is not None and self._recorder.available:
            drafted = self._recorder.per_step
        elif self.config.drafter == "none":
            drafted = [0] * len(streamer.chunks)
        return counters_from_steps([len(c) for c in streamer.chunks], drafted)


SPEC = EngineSpec(
    "hf", HFEngine, drafters=("none", "ngram", "draft"), max_concurrency=1,
    installed_check=HFEngine.check_installed,
    preparation=model_conversion,
    install_hint="pip install torch==2.13.0 'pytest-speedbench[hf]'",
    parallel_flags={"tensor_parallel": None},
    options={
        "threads": "torch CPU threads (default: torch's)",
        "dtype": "auto, float32, bfloat16 or float16 (default auto)",
        "ngram_size": "prompt-lookup n-gram size (default 2)",
    },
)
