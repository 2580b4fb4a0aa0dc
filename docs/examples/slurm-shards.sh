#!/bin/bash
# One speedbench matrix as a Slurm array: N array tasks, one GPU each, each running one shard, then
# a merge job that starts when every task has ended (example; see docs/scale-out.md).
#
#   bash slurm-shards.sh [N]          # from the repository root on a login node: submits both jobs
#
# The same file is the array task's script and the merge job's script (Slurm runs it with
# SPEEDBENCH_STEP=shard or merge). Shards read their number with --speedbench-shard=auto from
# SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT.
#SBATCH --job-name=speedbench
#SBATCH --gpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=speedbench-%A_%a.log
set -euo pipefail

RESULTS=${SPEEDBENCH_RESULTS:-speedbench-results}
ENGINE_ARGS=(
  --engine=sglang "--drafter=none,eagle3"
  "--split=qualitative,throughput" "--bucket=1k,8k" "--batch-size=1,4,16,64"
  --model="${SPEEDBENCH_MODEL:-meta-llama/Llama-3.1-8B-Instruct}"
  --draft-model="${SPEEDBENCH_DRAFT_MODEL:-yuhuili/EAGLE3-LLaMA3.1-Instruct-8B}"
)

case "${SPEEDBENCH_STEP:-submit}" in
  submit)
    shards=${1:-4}
    mkdir -p "$RESULTS"
    rm -f "$RESULTS"/shard-*.json             # a stale shard of an earlier run must not be merged
    array=$(sbatch --parsable --array="1-$shards" --export="ALL,SPEEDBENCH_STEP=shard,SPEEDBENCH_RESULTS=$RESULTS" "$0")
    array=${array%%;*}                         # "jobid;cluster" on multi-cluster set-ups
    sbatch --parsable --dependency="afterany:$array" --job-name=speedbench-merge --gpus-per-task=0 \
      --export="ALL,SPEEDBENCH_STEP=merge,SPEEDBENCH_RESULTS=$RESULTS" "$0"
    echo "submitted array $array ($shards shards) and its merge; results in $RESULTS"
    ;;
  shard)
    pytest benchmarks "${ENGINE_ARGS[@]}" \
      --speedbench-shard=auto --speedbench-autosave=off \
      --speedbench-json="$RESULTS/shard-$SLURM_ARRAY_TASK_ID.json" \
      --junitxml="$RESULTS/junit-$SLURM_ARRAY_TASK_ID.xml" -p no:cacheprovider
    ;;
  merge)
    # exit 1 naming each shard that did not report; then gate: speedbench compare BASE "$RESULTS/run.json" --fail ...
    speedbench merge "$RESULTS"/shard-*.json -o "$RESULTS/run.json"
    speedbench report "$RESULTS/run.json" --out "$RESULTS/report"
    ;;
  *)
    echo "SPEEDBENCH_STEP=$SPEEDBENCH_STEP: expected submit, shard or merge" >&2
    exit 2
    ;;
esac
