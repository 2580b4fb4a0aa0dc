"""Wait for a stopped server's GPU memory to be released before the next launch.

A server process can exit before the driver has reclaimed its memory (CUDA contexts of
worker processes, IPC handles), and the next engine launched right away then fails with
out-of-memory or silently gets a smaller KV cache. So the lifecycle snapshots per-GPU used
memory before a launch and, after teardown, polls until usage is back near that baseline.

Memory is compared rather than pids because inside containers `nvidia-smi` often cannot
map compute processes to pids of our PID namespace. Everything here is a no-op on hosts
without `nvidia-smi` (set SPEEDBENCH_NVIDIA_SMI to point at another executable, e.g. a fake
in tests, or to an empty string to disable the wait).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import warnings

#: memory (MiB) a GPU may stay above its pre-launch baseline and still count as released:
#: other tenants and the driver move usage by a few hundred MiB
DEFAULT_TOLERANCE_MIB = 1024


def _nvidia_smi() -> list[str] | None:
    override = os.environ.get("SPEEDBENCH_NVIDIA_SMI")
    if override is not None:
        return shlex.split(override) or None
    path = shutil.which("nvidia-smi")
    return [path] if path else None


def _visible(indices: dict[int, int]) -> dict[int, int]:
    """Restrict to CUDA_VISIBLE_DEVICES when it lists plain indices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return indices
    try:
        wanted = {int(x) for x in visible.split(",") if x.strip()}
    except ValueError:  # UUIDs: keep every GPU
        return indices
    return {i: m for i, m in indices.items() if i in wanted}


def memory_used_mib(timeout_s: float = 10.0) -> dict[int, int] | None:
    """{gpu index: used MiB}, or None when there is no nvidia-smi or it fails."""
    cmd = _nvidia_smi()
    if cmd is None:
        return None
    try:
        out = subprocess.run(
            [*cmd, "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout_s, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used: dict[int, int] = {}
    for line in out.splitlines():
        index, _, mib = line.partition(",")
        try:
            used[int(index)] = int(float(mib))
        except ValueError:
            continue
    return _visible(used) or None


def wait_memory_released(
    baseline: dict[int, int],
    *,
    timeout_s: float = 120.0,
    tolerance_mib: int = DEFAULT_TOLERANCE_MIB,
    interval_s: float = 0.5,
) -> bool:
    """Poll until every GPU uses at most baseline + tolerance; warn and return False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = memory_used_mib()
        if now is None:
            return True
        over = {i: used - baseline.get(i, 0) for i, used in now.items() if used > baseline.get(i, 0) + tolerance_mib}
        if not over:
            return True
        if time.monotonic() >= deadline:
            detail = ", ".join(f"GPU {i}: +{mib} MiB" for i, mib in sorted(over.items()))
            warnings.warn(
                f"GPU memory not released {timeout_s:g} s after the server stopped ({detail}); "
                "the next launch may run out of memory",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        time.sleep(interval_s)
