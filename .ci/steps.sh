# shellcheck shell=bash
# The step runner of .ci/run (sourced; tests/test_ci_steps.py drives it with stand-in steps).
#
#   step NAME COMMAND...   run one step with no standard input; say its exit code and time
#   finish                 exit 0 if every step passed, else 1 after repeating each failed step's
#                          last lines: a CI log is often read from its tail, and "readme failed"
#                          alone does not say which command did
#
# A pytest that collects nothing (exit 5) is a failed step like any other non-zero exit.

failed=()
STEP_LOGS=$(mktemp -d)
trap 'rm -rf "$STEP_LOGS"' EXIT
STEP_TAIL_LINES=${STEP_TAIL_LINES:-60}

step() {
    local name=$1 start=$SECONDS rc
    shift
    echo "::: CI step $name: $*"
    "$@" </dev/null 2>&1 | tee "$STEP_LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 5 ] && echo "CI: $name: pytest collected no tests (exit 5): a failure"
    echo "::: CI step $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

finish() {
    local entry
    if [ "${#failed[@]}" -eq 0 ]; then
        echo "CI passed"
        exit 0
    fi
    for entry in "${failed[@]}"; do
        echo "::: CI step ${entry%% *} failed; its last $STEP_TAIL_LINES lines again:"
        tail -n "$STEP_TAIL_LINES" "$STEP_LOGS/${entry%% *}.log"
    done
    echo "CI failed: ${failed[*]}"
    exit 1
}
