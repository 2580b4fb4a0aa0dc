"""The bundled throughput_1k / throughput_2k mini configs, assembled at run time from a recipe.

No third-party text is committed: `bundled/throughput_recipe.jsonl` holds only our own task
instructions plus references to text every machine with Python has, the standard library's own
source files and docstrings. Each recipe line becomes one prompt per bucket: instruction +
context, then cut or padded to the bucket's exact o200k_base length by SPEED-Bench's rule.

Entropy levels follow SPEED-Bench, which groups throughput prompts by the entropy of the
*expected output*, because that is what decides how many draft tokens are accepted:
- low_entropy: the answer is nearly determined by the prompt (continue a source file, copy a
  passage verbatim, extract the names defined in code), so n-gram and draft models do well;
- mixed: the answer is grounded in the context but phrased freely (summarize or answer
  questions about module documentation);
- high_entropy: open creative writing seeded only by a shuffled word list, where the context
  constrains the output least.

Provenance: `source` is `python-stdlib-<major.minor>` (the text differs between Python
versions, so the content hash keys every cache), `src_id` names the files or modules used, e.g.
`json/decoder.py,json/encoder.py` or `pydoc:collections` (docstrings) or `words:textwrap,string;seed=3`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import sys
from importlib import resources
from typing import Any

from pytest_speedbench.errors import UsageError
from pytest_speedbench.data.bucketing import o200k, pad_or_truncate
from pytest_speedbench.data.schema import Prompt, bucket_tokens

RECIPE = "throughput_recipe.jsonl"
MINI_CONFIGS: tuple[str, ...] = ("throughput_1k", "throughput_2k")


def stdlib_source_tag() -> str:
    return f"python-stdlib-{sys.version_info.major}.{sys.version_info.minor}"


def read_recipe() -> list[dict[str, Any]]:
    text = resources.files("pytest_speedbench.data").joinpath("bundled", RECIPE).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - stdlib modules
        raise UsageError(f"bundled throughput set needs standard-library module {name}: {exc}") from None


def _relpath(mod: Any) -> str:
    """json.decoder -> json/decoder.py (package-relative, never an install path)."""
    name = mod.__name__.replace(".", "/")
    return f"{name}/__init__.py" if hasattr(mod, "__path__") else f"{name}.py"


def _source(names: list[str]) -> tuple[str, str]:
    mods = [_module(n) for n in names]
    try:
        text = "\n\n".join(inspect.getsource(m) for m in mods)
    except OSError as exc:
        raise UsageError(
            f"bundled throughput set reads standard-library sources, which this Python lacks: {exc}"
        ) from None
    return text, ",".join(_relpath(m) for m in mods)


def _docs(names: list[str]) -> tuple[str, str]:
    """Module documentation from docstrings only (pydoc's text would embed install paths)."""
    parts = []
    for name in names:
        mod = _module(name)
        parts.append(f"MODULE {name}\n\n{inspect.cleandoc(mod.__doc__ or '')}")
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = ""
            kind = "class" if inspect.isclass(obj) else "def"
            parts.append(f"{kind} {attr}{sig}\n    " + doc.replace("\n", "\n    "))
    return "\n\n".join(parts), ",".join(f"pydoc:{n}" for n in names)


def _words(names: list[str], seed: int) -> tuple[str, str]:
    """A seeded shuffle of the distinct words in these modules' source (code, comments, docs)."""
    text, _ = _source(names)
    vocab = sorted(set(re.findall(r"[a-z]{4,}", text.lower())))
    random.Random(seed).shuffle(vocab)
    lines = [", ".join(vocab[i:i + 12]) for i in range(0, len(vocab), 12)]
    return "\n".join(lines), f"words:{','.join(names)};seed={seed}"


def _context(spec: dict[str, Any]) -> tuple[str, str]:
    kind, names = spec["kind"], list(spec["modules"])
    if kind == "source":
        return _source(names)
    if kind == "docs":
        return _docs(names)
    if kind == "words":
        return _words(names, int(spec.get("seed", 0)))
    raise ValueError(f"unknown recipe context kind {kind!r}; valid: source, docs, words")


def build_rows(config: str) -> list[Prompt]:
    """The bundled prompts of one throughput mini config, each exactly k x 1000 o200k tokens."""
    if config not in MINI_CONFIGS:
        raise UsageError(
            f"the bundled mini set has throughput configs {', '.join(MINI_CONFIGS)}, not {config!r}; "
            "for larger buckets prepare SPEED-Bench (speedbench prepare --source hf ...)"
        )
    target = bucket_tokens(config)
    assert target is not None
    enc = o200k()
    out = []
    for item in read_recipe():
        context, src_id = _context(item["context"])
        text = pad_or_truncate(item["instruction"].rstrip() + "\n\n" + context, target, enc)
        out.append(Prompt(
            question_id=f"{config}-{item['id']}", category=item["category"],
            sub_category=item["sub_category"], turns=(text,), source=stdlib_source_tag(),
            src_id=src_id, difficulty=item.get("difficulty", ""), multiturn=False,
        ))
    return out
