#!/usr/bin/env bash
# The real SGLang tier's venv: installed once with ../shared/sglang-cpu/install.sh into a cache
# outside the repo ($SPEEDBENCH_SGLANG_VENV, default ~/.cache/speedbench/venvs/sglang-0.5.23) and
# reused while it is complete. Where ../shared is absent it installs nothing and says so; the
# tier's tests then skip with that reason. A lock keeps two jobs from installing at once.
set -euo pipefail
V=${SPEEDBENCH_SGLANG_VENV:-$HOME/.cache/speedbench/venvs/sglang-0.5.23}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
INSTALLER=${SPEEDBENCH_SHARED_DIR:-$ROOT/../shared}/sglang-cpu/install.sh

complete() {  # install.sh writes the shim's .pth last, just before its import check
    [ -x "$V/bin/python" ] && ls "$V"/lib/python3*/site-packages/speedbench_sgl_cpu_shim.pth >/dev/null 2>&1
}
if complete; then echo "sglang venv: $V (cached)"; exit 0; fi
if [ ! -f "$INSTALLER" ]; then
    echo "sglang venv: $INSTALLER is absent; the real SGLang tier will be skipped" >&2
    exit 0
fi
mkdir -p "$(dirname "$V")"
exec 9>"$V.lock"
flock 9
if complete; then echo "sglang venv: $V (installed by another job)"; exit 0; fi
rm -rf "$V"
echo "sglang venv: installing into $V (~75 s with a warm pip cache, ~3.2 GB)"
bash "$INSTALLER" "$V"
touch "$V/.speedbench-complete"
