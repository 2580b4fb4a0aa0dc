"""--draft-length as a matrix axis: ids, twins, params, one engine instance per (drafter, draft length)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_speedbench.errors import UsageError
from pytest_speedbench.engine_pool import EnginePool
from pytest_speedbench.session import build_matrix
from pytest_speedbench.settings.matrix import expand, twin_of
from pytest_speedbench.settings.options import build_settings


def test_several_draft_lengths_give_one_case_each_and_share_the_none_twin() -> None:
    m = expand(["llamacpp"], ["none", "ngram"], ["throughput"], ["1k"], [1, 4], [0.0], draft_lengths=[1, 3])
    ids = [c.id for c in m.cases]
    assert ids == [
        "llamacpp-none-throughput-1k-bs1-t0", "llamacpp-none-throughput-1k-bs4-t0",
        "llamacpp-ngram-throughput-1k-bs1-t0-g1", "llamacpp-ngram-throughput-1k-bs4-t0-g1",
        "llamacpp-ngram-throughput-1k-bs1-t0-g3", "llamacpp-ngram-throughput-1k-bs4-t0-g3",
    ]
    g3 = m.cases[-1]
    assert g3.params()["draft_length"] == 3
    assert twin_of(g3, m.cases) == m.cases[1]  # drafter=none at bs4: no gamma
    assert "draft_length" not in m.cases[0].params()


def test_one_draft_length_keeps_ids_and_params_unchanged() -> None:
    m = expand(["llamacpp"], ["none", "ngram"], ["qualitative"], [], [1], [0.0], draft_lengths=[5])
    assert [c.id for c in m.cases] == ["llamacpp-none-qualitative-bs1-t0", "llamacpp-ngram-qualitative-bs1-t0"]
    assert all("draft_length" not in c.params() for c in m.cases)


def _session(cli: dict) -> EnginePool:
    settings = build_settings({"profile": "none", **cli})
    return EnginePool(settings, build_matrix(settings), Path())


def test_one_engine_start_per_drafter_and_draft_length() -> None:
    s = _session({"engine": "llamacpp", "drafter": "none,ngram", "draft_length": "1,2,4", "batch_size": "1,4"})
    keys = list(dict.fromkeys(str(c.engine_key) for c in s.matrix.cases))
    assert keys == ["llamacpp-none", "llamacpp-ngram-g1", "llamacpp-ngram-g2", "llamacpp-ngram-g4"]
    configs = {str(c.engine_key): s.config(c.engine_key) for c in s.matrix.cases}
    assert [configs[k].draft_length for k in keys[1:]] == [1, 2, 4]
    assert all(c.drafter == "ngram" and c.max_batch_size == 4 for c in list(configs.values())[1:])
    assert configs["llamacpp-none"].drafter == "none"


def test_single_draft_length_keeps_the_old_engine_key() -> None:
    s = _session({"engine": "llamacpp", "drafter": "none,ngram", "draft_length": "4"})
    assert [str(c.engine_key) for c in s.matrix.cases] == ["llamacpp-none", "llamacpp-ngram"]
    assert s.config(s.matrix.cases[1].engine_key).draft_length == 4


@pytest.mark.parametrize("raw, message", [("0", "--draft-length: 0 must be at least 1"),
                                          ("2,x", "--draft-length: '2,x' is not a valid list of int")])
def test_bad_draft_lengths_are_usage_errors(raw: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_settings({"profile": "none", "draft_length": raw})
