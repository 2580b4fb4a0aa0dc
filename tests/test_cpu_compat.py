"""cpu_compat.py: CUDA-only torchvision & co are hidden only beside a CPU-only torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# importing the package applies the fix (pytest_speedbench/__init__.py)
CODE = ("import importlib.util, sys; import pytest_speedbench; "
        "print([k for k in ('torchvision', 'torchaudio', 'torchcodec') if k in sys.modules and sys.modules[k] is None], "
        "importlib.util.find_spec('torchaudio') is None)")


def _fake_site(tmp_path: Path, *, torch_cuda: bool, ext: bytes) -> Path:
    site = tmp_path / "site"
    (site / "torch" / "lib").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("")
    (site / "torch" / "lib" / ("libc10_cuda.so" if torch_cuda else "libc10.so")).write_bytes(b"")
    (site / "torchaudio").mkdir()
    (site / "torchaudio" / "__init__.py").write_text("raise RuntimeError('operator torchaudio::x does not exist')")
    (site / "torchaudio" / "_C.so").write_bytes(b"\x7fELF..." + ext + b"...")
    return site


def _run(site: Path) -> str:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{repo}"}
    code = f"import sys; sys.path.insert(0, {str(site)!r}); " + CODE
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_cuda_build_beside_cpu_torch_is_hidden(tmp_path: Path) -> None:
    assert _run(_fake_site(tmp_path, torch_cuda=False, ext=b"libc10_cuda.so")) == "['torchaudio'] True"


def test_nothing_hidden_with_cuda_torch_or_a_cpu_build(tmp_path: Path) -> None:
    assert _run(_fake_site(tmp_path / "a", torch_cuda=True, ext=b"libc10_cuda.so")) == "[] False"
    assert _run(_fake_site(tmp_path / "b", torch_cuda=False, ext=b"libc10.so")) == "[] False"
