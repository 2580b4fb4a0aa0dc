"""Shards: one benchmark matrix split over many machines (`--speedbench-shard=K/N`).

Why: a nightly fleet runs on a GitHub Actions matrix, a Slurm array or a Kubernetes Indexed
Job; each of its N jobs runs the same `pytest benchmarks ...` command and must measure a
different, fixed part of the matrix, and `speedbench merge` joins their results into one run
to gate. We do not schedule anything ourselves: every job computes the same partition from the
same matrix, deterministically, and takes its own part.

Pure functions only (docs/scale-out.md describes them for users):

- `shard_from` reads K/N from the option or, with `auto`, from the scheduler's variables;
- `start_groups` cuts the matrix into groups that must run in one session: an SD case with its
  drafter=none twin (so its speedups are measured in interleaved rounds in one session), and,
  for launched engines, every case of one engine instance (so each server starts once);
- `case_cost` is the cost model (decode-step equivalents, below);
- `partition` places whole groups on shards, most expensive first, each on the least loaded
  shard (LPT). Its bounds (`balance_bound`): the most expensive shard costs at most the mean
  plus the most expensive group (the last group it received was placed on the least loaded
  shard, which was at most the mean), and at most 4/3 of the best any partition could do
  (Graham's LPT bound), so at most 4/3 x the largest of: the mean, the most expensive group,
  and the N-th plus the (N+1)-th most expensive groups (two of the N+1 largest must share).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from pytest_speedbench.errors import UsageError
from pytest_speedbench.settings.matrix import Case, bucket_tokens

#: the qualitative split's categories, and the throughput split's entropy levels (SPEED-Bench)
QUALITATIVE_CATEGORIES = 11
ENTROPY_LEVELS = 3
AUTO = "auto"
#: --speedbench-shard-by: what a start group keeps whole (GROUPINGS[0] is the default)
GROUPINGS = ("auto", "engine", "pair")
#: Kubernetes gives a pod its index (JOB_COMPLETION_INDEX) but not the Job's completions: the
#: manifest passes the count in this variable
COUNT_ENV = "SPEEDBENCH_SHARD_COUNT"
#: Graham's bound for LPT: max shard cost <= BALANCE_FACTOR x the best any partition can do
BALANCE_FACTOR = 4 / 3


# -- which shard --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSpec:
    index: int  # 1-based: shard 1 of N is the first
    count: int
    source: str  # where K/N came from, for the header

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"--speedbench-shard=auto: {name}={raw!r} is not an integer") from None


def _checked(index: int, count: int, source: str) -> ShardSpec:
    if count < 1:
        raise UsageError(f"--speedbench-shard: {source}: the shard count must be at least 1, got {count}")
    if not 1 <= index <= count:
        raise UsageError(f"--speedbench-shard: {source}: shard {index} is outside 1..{count} "
                         "(K/N counts shards from 1: 1/3, 2/3, 3/3)")
    return ShardSpec(index, count, source)


def shard_from(value: str | None, env: Mapping[str, str]) -> ShardSpec | None:
    """The shard this process runs: None (the whole matrix), `K/N` (1-based), or `auto`:

    - Slurm array: K = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1,
      N = SLURM_ARRAY_TASK_COUNT (so --array=0-3, 1-4 and 0-6:2 all give shards 1..4);
    - Kubernetes Indexed Job: K = JOB_COMPLETION_INDEX + 1, N = SPEEDBENCH_SHARD_COUNT.

    Only `auto` reads them: a pytest run that happens to be inside an array job is not
    sharded behind its user's back.
    """
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    if text != AUTO:
        match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
        if match is None:
            raise UsageError(f"--speedbench-shard={text}: expected K/N (shard K of N, from 1: e.g. 2/3) or "
                             f"{AUTO} (from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX/"
                             f"{COUNT_ENV})")
        return _checked(int(match.group(1)), int(match.group(2)), f"--speedbench-shard={text}")
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None:
        low, step = _int(env, "SLURM_ARRAY_TASK_MIN") or 0, _int(env, "SLURM_ARRAY_TASK_STEP") or 1
        offset = task - low
        source = f"SLURM_ARRAY_TASK_ID={task} of SLURM_ARRAY_TASK_COUNT={count} (min {low}, step {step})"
        if offset % step:
            raise UsageError(f"--speedbench-shard=auto: {source}: task id is not on the array's step")
        return _checked(offset // step + 1, count, source)
    index = _int(env, "JOB_COMPLETION_INDEX")
    if index is not None:
        total = _int(env, COUNT_ENV)
        if total is None:
            raise UsageError(f"--speedbench-shard=auto: JOB_COMPLETION_INDEX={index} is set but {COUNT_ENV} is "
                             "not: set it to the Job's completions (Kubernetes does not pass the count)")
        return _checked(index + 1, total, f"JOB_COMPLETION_INDEX={index} of {COUNT_ENV}={total}")
    if task is not None:
        raise UsageError("--speedbench-shard=auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not")
    raise UsageError("--speedbench-shard=auto: no scheduler variables found (looked for SLURM_ARRAY_TASK_ID with "
                     f"SLURM_ARRAY_TASK_COUNT, and JOB_COMPLETION_INDEX with {COUNT_ENV}); give K/N instead")


# -- the cost model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """A case's work in decode-step equivalents (what balances shards, and x `step_s` a time).

        per_request = output_len x (1 + isl / context_doubling) + isl / prefill_per_step
        waves       = ceil(requests / batch_size) x (1 + batch_size / batch_doubling)
        cost        = (passes x waves + warmup) x per_request

    requests = prompts per category x categories (qualitative) or x 3 entropy levels
    (throughput, random); isl = the bucket's tokens, `qualitative_isl` for the qualitative split;
    passes = 2 x rounds for an SD case measured in rounds with its twin (AR and SD in turns),
    else 1, plus 1 with the repeat check. A launched engine's start adds `start_steps` per
    engine instance of a group. The constants are deliberate round guesses (a decode step's
    attention doubles at 32k context, 256 prompt tokens prefill in about one step, a step
    doubles at batch 64, a server starts in a minute); the relative costs only decide the
    partition, and `--speedbench-plan` calibrates the time against a saved run.
    """

    qualitative_isl: int = 400
    context_doubling: int = 32_000
    prefill_per_step: int = 256
    batch_doubling: int = 64
    start_steps: float = 3_000.0
    #: seconds per decode step when no saved run calibrates it (an 8B model on one GPU, batch 1)
    step_s: float = 0.02


@dataclass(frozen=True)
class Workload:
    """The settings that scale every case's cost."""

    num_prompts: int
    categories: int  # qualitative categories selected (0: all)
    output_len: int
    rounds: int
    warmup: int
    repeat_check: bool = False


def requests_of(case: Case, load: Workload) -> int:
    if case.split == "qualitative":
        return load.num_prompts * (load.categories or QUALITATIVE_CATEGORIES)
    return load.num_prompts * ENTROPY_LEVELS


def passes_of(case: Case, matrix: Collection[Case], load: Workload) -> int:
    """Passes over the case's prompts: rounds x (AR + SD) for an SD case with its twin."""
    if not case.is_speculative:
        return 1
    paired = case.twin() in matrix
    return (2 * load.rounds if paired else 1) + (1 if load.repeat_check else 0)


def case_cost(case: Case, *, requests: int, output_len: int, passes: int, warmup: int,
              model: CostModel = CostModel()) -> float:
    """Decode-step equivalents of one case (CostModel's formula)."""
    isl = model.qualitative_isl if case.bucket is None else bucket_tokens(case.bucket)
    per_request = output_len * (1 + isl / model.context_doubling) + isl / model.prefill_per_step
    waves = math.ceil(requests / case.batch_size) * (1 + case.batch_size / model.batch_doubling)
    return (passes * waves + warmup) * per_request


def matrix_costs(cases: Sequence[Case], load: Workload, model: CostModel = CostModel()) -> dict[Case, float]:
    members = set(cases)
    return {c: case_cost(c, requests=requests_of(c, load), output_len=load.output_len,
                         passes=passes_of(c, members, load), warmup=load.warmup, model=model) for c in cases}


# -- groups and the partition -------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Cases that run in one session; `name` is its first case's id (unique in a matrix)."""

    name: str
    cases: tuple[Case, ...]
    starts: int  # engine instances it launches (0 for attached servers)
    cost: float


def start_groups(cases: Sequence[Case], engine_key: Callable[[Case], str], *, launched: bool,
                 costs: Mapping[Case, float], model: CostModel = CostModel(),
                 whole_instances: bool | None = None) -> list[Group]:
    """Connected cases, in matrix order: an SD case and its twin always; with
    `whole_instances` (default: `launched`) also every case of one engine instance
    (`engine_key`), so each starts once in the whole fleet. A group's cost includes a start per
    engine instance it launches (`launched`)."""
    whole = launched if whole_instances is None else whole_instances
    parent = list(range(len(cases)))
    index = {c: i for i, c in enumerate(cases)}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_of_key: dict[str, int] = {}
    for i, case in enumerate(cases):
        twin = case.twin() if case.is_speculative else None
        if twin is not None and twin in index:
            join(i, index[twin])
        if whole:
            join(i, first_of_key.setdefault(str(engine_key(case)), i))
    members: dict[int, list[Case]] = {}
    for i, case in enumerate(cases):
        members.setdefault(root(i), []).append(case)
    groups = []
    for found in members.values():
        starts = len({str(engine_key(c)) for c in found}) if launched else 0
        cost = sum(costs[c] for c in found) + starts * model.start_steps
        groups.append(Group(found[0].id, tuple(found), starts, cost))
    return groups


@dataclass(frozen=True)
class Plan:
    """Which groups each shard runs (shards[0] is shard 1), in matrix order within a shard."""

    shards: tuple[tuple[Group, ...], ...]

    @property
    def count(self) -> int:
        return len(self.shards)

    def cases(self, index: int) -> list[Case]:
        return [c for g in self.shards[index - 1] for c in g.cases]

    def cost(self, index: int) -> float:
        return sum(g.cost for g in self.shards[index - 1])

    def shard_of(self) -> dict[str, int]:
        """case id -> its shard (1-based)."""
        return {c.id: k for k in range(1, self.count + 1) for c in self.cases(k)}

    def as_dict(self) -> dict[str, list[str]]:
        """{'1': [case ids], ...}: what every shard's results record, so a merge can name the
        cases of a shard that never reported."""
        return {str(k): [c.id for c in self.cases(k)] for k in range(1, self.count + 1)}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def imbalance(self) -> float:
        """Most expensive shard / mean shard cost (1.0 = perfect; 0 shards' cost: 1.0)."""
        costs = [self.cost(k) for k in range(1, self.count + 1)]
        mean = sum(costs) / len(costs)
        return max(costs) / mean if mean > 0 else 1.0


def partition(groups: Sequence[Group], count: int) -> Plan:
    """Longest processing time first: groups by cost (descending, then name), each to the
    least loaded shard (then the lowest index). Deterministic for the same groups and count."""
    if count < 1:
        raise UsageError(f"the shard count must be at least 1, got {count}")
    order = {g.name: i for i, g in enumerate(groups)}
    loads = [0.0] * count
    placed: list[list[Group]] = [[] for _ in range(count)]
    for group in sorted(groups, key=lambda g: (-g.cost, g.name)):
        k = min(range(count), key=lambda j: (loads[j], j))
        placed[k].append(group)
        loads[k] += group.cost
    return Plan(tuple(tuple(sorted(p, key=lambda g: order[g.name])) for p in placed))


def balance_bound(groups: Sequence[Group], count: int) -> float:
    """The most a shard of `partition(groups, count)` can cost (see the module docstring):
    min(mean + largest group, 4/3 x max(mean, largest group, N-th + (N+1)-th largest))."""
    costs = sorted((g.cost for g in groups), reverse=True)
    if not costs:
        return 0.0
    mean = sum(costs) / count
    pair = costs[count - 1] + costs[count] if len(costs) > count else 0.0
    return min(mean + costs[0], BALANCE_FACTOR * max(mean, costs[0], pair))
